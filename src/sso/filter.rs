//! Sign-in as the filter `directline` calls: [`Sso`] is the proxy-wide
//! [`ActivityFilter`], and [`SignInConversation`] the filter of one stream
//! or poll, bound to what its request proved. Everything that ties a
//! request to a conversation's owner lives here; deciding cards is
//! `sso/mod.rs`.

use std::sync::Arc;

use futures_util::future::BoxFuture;
use http::{HeaderMap, HeaderName};

use super::seal::{KeyId, Opened, Owner, StreamContext};
use super::{ConversationContext, Sso};
use crate::directline::filter::{ActivityFilter, ConversationFilter, Requester};
use crate::metrics::ErrorKind;

impl ActivityFilter for Sso {
    fn consumed_headers(&self) -> Vec<HeaderName> {
        self.provider.consumed_headers()
    }

    /// Only the headers the provider reads are kept from a user's request.
    fn capture(&self, headers: &HeaderMap) -> HeaderMap {
        let mut kept = HeaderMap::new();
        for name in self.provider.consumed_headers() {
            for value in headers.get_all(&name) {
                kept.append(name.clone(), value.clone());
            }
        }
        kept
    }

    /// The conversation token and, when the proxy can tell, who the
    /// conversation belongs to: the bound user, else a fingerprint of the
    /// provider's inputs that the start (or reconnect) request carried.
    fn seal(
        &self,
        conversation_id: &str,
        token: String,
        requester: &Requester,
        captured: &HeaderMap,
    ) -> Option<String> {
        let owner = match requester {
            Requester::Bound(user) => user.clone().map(Owner::User),
            Requester::Anonymous => self
                .sealer
                .fingerprint(KeyId::SEALING, &self.capture(captured))
                .map(Owner::Inputs),
        };
        self.sealer
            .seal(conversation_id, &StreamContext { token, owner })
            .inspect_err(|error| tracing::warn!(%error, "stream context not sealed"))
            .ok()
    }

    /// The sealed context (if it opens) gives the conversation token and
    /// the owner, who must be the requester.
    fn for_stream(
        self: Arc<Self>,
        conversation_id: &str,
        sealed: Option<&str>,
        headers: &HeaderMap,
        requester: Requester,
    ) -> Arc<dyn ConversationFilter> {
        let user_headers = self.capture(headers);
        let opened = sealed.and_then(|sealed| self.open_stream_context(conversation_id, sealed));
        let context = ConversationContext {
            conversation_id: conversation_id.to_string(),
            owner_matches: self.stream_owner_matches(opened.as_ref(), &user_headers, &requester),
            token: opened.map(|opened| opened.context.token),
            user_headers,
            requester,
            trace_parent: self.traces.current(),
        };
        Arc::new(SignInConversation::new(self, context))
    }

    /// A poll carries the conversation token itself, and no sealed context:
    /// its owner is known only through binding (the card's recipient).
    fn for_poll(
        self: Arc<Self>,
        conversation_id: &str,
        headers: &HeaderMap,
        requester: Requester,
    ) -> Arc<dyn ConversationFilter> {
        let token = headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(crate::header_values::bearer_value)
            .map(str::to_string);
        let context = ConversationContext {
            conversation_id: conversation_id.to_string(),
            token,
            user_headers: self.capture(headers),
            owner_matches: !(self.require_owner && requester == Requester::Anonymous),
            requester,
            trace_parent: self.traces.current(),
        };
        Arc::new(SignInConversation::new(self, context))
    }
}

impl Sso {
    /// Opens a stream's sealed context; a refusal is counted and logged.
    fn open_stream_context(&self, conversation_id: &str, sealed: &str) -> Option<Opened> {
        match self.sealer.open(conversation_id, sealed) {
            Ok(opened) => Some(opened),
            Err(error) => {
                self.metrics.error(ErrorKind::StreamContextRejected);
                tracing::warn!(%error, "stream context refused: the invoke flow is off for this stream");
                None
            }
        }
    }

    /// Whether the stream's requester is the owner its sealed context names.
    fn stream_owner_matches(
        &self,
        opened: Option<&Opened>,
        user_headers: &HeaderMap,
        requester: &Requester,
    ) -> bool {
        let sealed_owner =
            opened.and_then(|opened| Some((opened.context.owner.as_ref()?, opened.key)));
        match (sealed_owner, requester) {
            (Some((Owner::User(owner), _)), requester) => {
                *requester == Requester::Bound(Some(owner.clone()))
            }
            (Some((Owner::Inputs(fingerprint), key)), _) => {
                self.sealer.fingerprint(key, user_headers).as_ref() == Some(fingerprint)
            }
            // With binding, a stream acts only for an owner its context names.
            (None, Requester::Bound(_)) => false,
            (None, Requester::Anonymous) => !self.require_owner,
        }
    }
}

/// The sign-in engine and the conversation it acts in.
pub struct SignInConversation {
    sso: Arc<Sso>,
    context: ConversationContext,
}

impl SignInConversation {
    pub fn new(sso: Arc<Sso>, context: ConversationContext) -> SignInConversation {
        SignInConversation { sso, context }
    }
}

impl ConversationFilter for SignInConversation {
    fn wants(&self, set: &[u8]) -> bool {
        self.sso.may_act_on(set)
    }

    fn filter<'a>(&'a self, set: &'a [u8]) -> BoxFuture<'a, Option<Vec<u8>>> {
        Box::pin(self.sso.process(&self.context, set))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::{Value, json};

    use super::*;
    use crate::config::{ProviderKind, SsoConfig, StaticProviderConfig, UpstreamConfig};
    use crate::directline::activity::card_set;
    use crate::metrics::Metrics;
    use crate::sso::decisions::{self, Begin, Decisions};
    use crate::upstream::Upstream;

    const CONVERSATION: &str = "conv-1";
    const EXCHANGED_CARD: &str = "card-exchanged";

    /// Sign-in for which `EXCHANGED_CARD` was exchanged before, so removing
    /// it needs no provider and no upstream.
    fn conversation() -> SignInConversation {
        let metrics = Arc::new(Metrics::new());
        let config = SsoConfig {
            provider: ProviderKind::Static,
            static_token: Some(StaticProviderConfig {
                token: "user-token".into(),
            }),
            ..SsoConfig::default()
        };
        // A port nothing listens on: an invoke fails at once, on this host.
        let nowhere = UpstreamConfig {
            url: http::Uri::from_static("http://127.0.0.1:1"),
            ..UpstreamConfig::default()
        };
        let upstream = Upstream::new(&nowhere, metrics.clone()).expect("an upstream client");
        let decisions = Arc::new(Decisions::new(Duration::from_secs(3600), 100));
        let Begin::Lead(lead) = decisions.begin(decisions::key(CONVERSATION, EXCHANGED_CARD))
        else {
            panic!("a fresh decision memory");
        };
        lead.finish(true);
        let sso = Sso::new(&config, Arc::new(upstream), metrics, decisions)
            .expect("valid SSO")
            .expect("SSO on");
        let context = ConversationContext {
            conversation_id: CONVERSATION.into(),
            token: Some("conversation-token".into()),
            user_headers: HeaderMap::new(),
            requester: Requester::Anonymous,
            owner_matches: true,
            trace_parent: None,
        };
        SignInConversation::new(Arc::new(sso), context)
    }

    #[tokio::test]
    async fn an_exchanged_card_is_filtered_out_and_the_rest_kept() {
        let filter = conversation();
        let set = card_set(EXCHANGED_CARD);
        assert!(filter.wants(set.as_bytes()));
        let filtered = filter.filter(set.as_bytes()).await.expect("rewritten");
        let filtered: Value = serde_json::from_slice(&filtered).expect("JSON");
        let ids: Vec<&str> = filtered["activities"]
            .as_array()
            .expect("activities")
            .iter()
            .filter_map(|a| a["id"].as_str())
            .collect();
        assert_eq!(ids, ["a1", "a3"]);
        assert_eq!(filtered["watermark"], "3");
    }

    #[tokio::test]
    async fn a_card_the_exchange_failed_for_goes_on_unchanged() {
        let set = card_set("never-exchanged");
        assert_eq!(conversation().filter(set.as_bytes()).await, None);
    }

    #[test]
    fn a_set_without_a_card_is_not_wanted() {
        let set = json!({"activities": [{"type": "message", "text": "hi"}]}).to_string();
        assert!(!conversation().wants(set.as_bytes()));
    }
}
