//! The inspection step every text message from the bot passes through on
//! the stream (the polling path calls [`Sso::process`] itself).
//!
//! Without SSO nothing is inspected and every frame goes on as it came.
//! With SSO, a message goes through [`Sso::process`] only when it may hold
//! an OAuth card or an echo of the proxy's invoke (a marker search); the
//! decision may hold the message and may return a rewritten set.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::sso::{ConversationContext, Sso};

/// A pending inspection: the rewritten message, or `None` to send the
/// original on unchanged. Owns what it needs, so the relay can hold it.
pub type Inspection = Pin<Box<dyn Future<Output = Option<Vec<u8>>> + Send>>;

/// One stream's inspection: the SSO engine and the conversation it serves.
#[derive(Default)]
pub struct Inspector {
    sso: Option<(Arc<Sso>, ConversationContext)>,
}

impl Inspector {
    pub fn new(sso: Option<Arc<Sso>>, context: ConversationContext) -> Inspector {
        Inspector {
            sso: sso.map(|sso| (sso, context)),
        }
    }

    /// Whether text messages must be seen whole before they go on.
    pub fn active(&self) -> bool {
        self.sso.is_some()
    }

    /// Whether this message's payload must be inspected: most are not.
    pub fn wants(&self, payload: &[u8]) -> bool {
        self.sso
            .as_ref()
            .is_some_and(|(sso, _)| sso.may_act_on(payload))
    }

    pub fn inspect(&self, payload: Vec<u8>) -> Inspection {
        let Some((sso, context)) = self.sso.clone() else {
            return Box::pin(std::future::ready(None));
        };
        Box::pin(async move { sso.process(&context, &payload).await })
    }
}
