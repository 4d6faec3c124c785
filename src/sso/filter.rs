//! Sign-in as the filter `directline` calls: [`Sso`] is the proxy-wide
//! [`ActivityFilter`], and [`SignInConversation`] the filter of one stream
//! or poll, bound to what its request proved.

use std::sync::Arc;

use futures_util::future::BoxFuture;
use http::{HeaderMap, HeaderName};

use super::{ConversationContext, Sso};
use crate::directline::filter::{ActivityFilter, ConversationFilter, Requester};

impl ActivityFilter for Sso {
    fn consumed_headers(&self) -> Vec<HeaderName> {
        self.header_names()
    }

    fn capture(&self, headers: &HeaderMap) -> HeaderMap {
        self.capture_headers(headers)
    }

    fn seal(
        &self,
        conversation_id: &str,
        token: String,
        requester: &Requester,
        captured: &HeaderMap,
    ) -> Option<String> {
        self.seal_stream_context(conversation_id, token, requester, captured)
            .inspect_err(|error| tracing::warn!(%error, "stream context not sealed"))
            .ok()
    }

    fn for_stream(
        self: Arc<Self>,
        conversation_id: &str,
        sealed: Option<&str>,
        headers: &HeaderMap,
        requester: Requester,
    ) -> Arc<dyn ConversationFilter> {
        let context = self.context_for_stream(conversation_id, sealed, headers, requester);
        Arc::new(SignInConversation::new(self, context))
    }

    fn for_poll(
        self: Arc<Self>,
        conversation_id: &str,
        headers: &HeaderMap,
        requester: Requester,
    ) -> Arc<dyn ConversationFilter> {
        let context = self.context_for_poll(conversation_id, headers, requester);
        Arc::new(SignInConversation::new(self, context))
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
