//! The hook through which a filter sees what the bot sends a conversation.
//! Server-side sign-in (`sso`) is the one filter: it implements these
//! traits, and `directline` calls them knowing nothing else of sign-in, so
//! the data flows one way (`sso` uses `directline`, never the reverse).

use std::sync::Arc;

use futures_util::future::BoxFuture;
use http::{HeaderMap, HeaderName};

/// The query parameter of a rewritten `streamUrl` that carries the value
/// of [`ActivityFilter::seal`]; the proxy takes it out of every request.
pub const SEALED_PARAM: &str = "dlpx";

/// The person behind a stream or poll.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requester {
    /// User binding is off (`directline.user_id_header` unset): the proxy
    /// cannot name users.
    Anonymous,
    /// User binding is on: the requester's bound id, `None` when the
    /// request lacked the header (then nothing is decided).
    Bound(Option<String>),
}

/// A filter for the whole proxy; it hands out one [`ConversationFilter`]
/// per stream or poll, bound to what that request proved.
pub trait ActivityFilter: Send + Sync {
    /// The user-request headers the filter reads: the proxy consumes them,
    /// they never reach Direct Line.
    fn consumed_headers(&self) -> Vec<HeaderName>;

    /// What of a start or reconnect request [`ActivityFilter::seal`] needs
    /// later: the request's headers are consumed before the answer comes.
    fn capture(&self, headers: &HeaderMap) -> HeaderMap;

    /// The value a rewritten `streamUrl` carries so that the stream can act
    /// for its user, or `None` when none can be made (logged by the filter).
    fn seal(
        &self,
        conversation_id: &str,
        token: String,
        requester: &Requester,
        captured: &HeaderMap,
    ) -> Option<String>;

    /// The filter for a stream, from its handshake and its sealed value.
    fn for_stream(
        self: Arc<Self>,
        conversation_id: &str,
        sealed: Option<&str>,
        headers: &HeaderMap,
        requester: Requester,
    ) -> Arc<dyn ConversationFilter>;

    /// The filter for a poll, which carries the conversation token itself.
    fn for_poll(
        self: Arc<Self>,
        conversation_id: &str,
        headers: &HeaderMap,
        requester: Requester,
    ) -> Arc<dyn ConversationFilter>;
}

/// One conversation's filter of the ActivitySets the bot sends.
pub trait ConversationFilter: Send + Sync {
    /// Whether `set` may be changed at all: a cheap test that lets most
    /// messages go on without being held.
    fn wants(&self, set: &[u8]) -> bool;

    /// The rewritten set, or `None` to send the original on unchanged.
    fn filter<'a>(&'a self, set: &'a [u8]) -> BoxFuture<'a, Option<Vec<u8>>>;
}
