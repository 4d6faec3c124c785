//! The inspection step every text message from the bot passes through on
//! the stream (the polling path calls its [`ConversationFilter`] itself).
//!
//! Without a filter (SSO off) nothing is inspected and every frame goes on
//! as it came. With one, a message is filtered only when the filter
//! [`wants`](ConversationFilter::wants) it (for SSO: it may hold an OAuth
//! card or an echo of the proxy's invoke); the filter may hold the message
//! and may return a rewritten set.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use super::filter::ConversationFilter;

/// A pending inspection: the rewritten message, or `None` to send the
/// original on unchanged. Owns what it needs, so the relay can hold it.
pub type Inspection = Pin<Box<dyn Future<Output = Option<Vec<u8>>> + Send>>;

/// One stream's inspection: the filter of the conversation it serves.
#[derive(Default)]
pub struct Inspector {
    filter: Option<Arc<dyn ConversationFilter>>,
}

impl Inspector {
    pub fn new(filter: Arc<dyn ConversationFilter>) -> Inspector {
        Inspector {
            filter: Some(filter),
        }
    }

    /// Whether text messages must be seen whole before they go on.
    pub fn active(&self) -> bool {
        self.filter.is_some()
    }

    /// Whether this message's payload must be inspected: most are not.
    pub fn wants(&self, payload: &[u8]) -> bool {
        self.filter
            .as_ref()
            .is_some_and(|filter| filter.wants(payload))
    }

    pub fn inspect(&self, payload: Vec<u8>) -> Inspection {
        let Some(filter) = self.filter.clone() else {
            return Box::pin(std::future::ready(None));
        };
        Box::pin(async move { filter.filter(&payload).await })
    }
}
