//! The inspection step every ActivitySet from the bot passes through, on
//! the stream and on the polling path.
//!
//! Without SSO it is the identity: the frame goes out as the same bytes,
//! without a parse or a copy (`Utf8Bytes` is reference-counted). With SSO,
//! [`Sso::process`] may hold the frame while a card is decided and may
//! return a rewritten set.

use std::sync::Arc;

use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::sso::{Access, Sso};

/// One stream's inspection: the SSO engine and the conversation it serves.
#[derive(Default)]
pub struct Inspector {
    sso: Option<(Arc<Sso>, Access)>,
}

impl Inspector {
    pub fn new(sso: Option<Arc<Sso>>, access: Access) -> Inspector {
        Inspector {
            sso: sso.map(|sso| (sso, access)),
        }
    }

    pub async fn bot_text(&self, text: Utf8Bytes) -> Utf8Bytes {
        let Some((sso, access)) = &self.sso else {
            return text;
        };
        // Boxed: the decision's state machine is large and lives only while
        // a frame is inspected, not in every idle stream's task.
        match Box::pin(sso.process(access, text.as_bytes())).await {
            Some(rewritten) => String::from_utf8(rewritten)
                .map(Utf8Bytes::from)
                .unwrap_or(text),
            None => text,
        }
    }
}
