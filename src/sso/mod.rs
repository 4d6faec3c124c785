//! Server-side sign-in: decide each OAuth card the bot sends, exchange the
//! user's token for it, and remove it when that worked.
//!
//! The pipeline for one ActivitySet (stream frame or poll body):
//! 1. fast path: no OAuth marker and no proxy-invoke marker, same bytes out;
//! 2. parse the set, keeping each activity's bytes;
//! 3. decide every card concurrently, each bounded by `sso.timeout_ms`
//!    (exchange once: a decided card id is not decided again), and only
//!    for the conversation's owner, an allowed resource and within the
//!    budgets of [`limits`];
//! 4. remove exchanged cards and echoes of the proxy's own invokes,
//!    re-serialising only the activities that changed.

pub mod allow_list;
pub mod decisions;
pub mod filter;
pub mod flows;
pub mod limits;
pub mod providers;
pub mod seal;

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use http::{HeaderMap, Uri};
use thiserror::Error;
use tracing::{Instrument, Span};

use crate::config::SsoConfig;
use crate::directline::activity::{self, ActivitySet, Markers, OAuthCard};
use crate::directline::filter::Requester;
use crate::metrics::Metrics;
use crate::outcome::Outcome;
use crate::telemetry::{self, Traces};
use crate::upstream::{HttpClient, Upstream};
use allow_list::AllowList;
use decisions::{Begin, Decisions};
use flows::{ExchangeError, Flow, InvokeTarget};
use limits::{InFlight, SetBudget};
use providers::{ProviderError, ProviderSetupError, TokenProvider, TokenRequest};
use seal::{SealError, Sealer};

/// How long a sealed stream context stays valid: the client must open the
/// stream within 60 s of receiving the URL; an hour leaves room for clocks.
const SEAL_LIFETIME: Duration = Duration::from_secs(3600);

#[derive(Debug, Error)]
pub enum SsoSetupError {
    #[error(transparent)]
    Provider(#[from] ProviderSetupError),
    #[error("sso.seal_keys: {0}")]
    Seal(#[from] SealError),
}

/// A card id longer than this is no real card's: it is shown unchanged and
/// never remembered.
pub const MAX_CARD_ID_BYTES: usize = 512;

/// What the proxy knows of the conversation a frame or poll belongs to,
/// all taken from the request that carries that stream or poll.
#[derive(Debug, Clone)]
pub struct ConversationContext {
    /// Canonical (percent-decoded), as Direct Line identifies it.
    pub conversation_id: String,
    /// The conversation token (never the stream token `t=`).
    pub token: Option<String>,
    /// The user's request headers the provider reads.
    pub user_headers: HeaderMap,
    /// Who made the request, as far as the proxy can tell.
    pub requester: Requester,
    /// False when the conversation's sealed owner is someone other than the
    /// requester: nothing is decided for them.
    pub owner_matches: bool,
    /// With traces on, the trace of the request the stream or poll came
    /// in: its decisions are part of it.
    pub trace_parent: Option<opentelemetry::Context>,
}

pub struct Sso {
    provider: Box<dyn TokenProvider>,
    flows: Vec<Flow>,
    allow: AllowList,
    /// Shared across reloads: what was decided stays decided.
    decisions: Arc<Decisions>,
    sealer: Sealer,
    /// `sso.require_owner`: without binding, an unknown owner decides nothing.
    require_owner: bool,
    in_flight: InFlight,
    markers: Markers,
    timeout: Duration,
    upstream: Arc<Upstream>,
    client: HttpClient,
    metrics: Arc<Metrics>,
    traces: Traces,
}

impl Sso {
    /// `None` when `sso.provider = "none"`.
    pub fn new(
        config: &SsoConfig,
        upstream: Arc<Upstream>,
        metrics: Arc<Metrics>,
        decisions: Arc<Decisions>,
    ) -> Result<Option<Sso>, SsoSetupError> {
        let Some(provider) = providers::build(config, upstream.client())? else {
            return Ok(None);
        };
        Ok(Some(Sso {
            flows: config.flows.clone(),
            allow: AllowList::new(&config.token_post_allow_hosts),
            decisions,
            sealer: Sealer::new(&config.seal_keys, SEAL_LIFETIME)?,
            require_owner: config.require_owner,
            in_flight: InFlight::default(),
            markers: Markers::default(),
            timeout: config.timeout,
            client: upstream.client(),
            traces: upstream.traces(),
            upstream,
            provider,
            metrics,
        }))
    }

    /// The fast path's test: without a marker, [`Sso::process`] would
    /// leave the bytes as they are.
    fn may_act_on(&self, bytes: &[u8]) -> bool {
        self.markers.present(bytes)
    }

    /// The set with exchanged cards and proxy echoes removed, or `None` when
    /// the bytes go out unchanged.
    async fn process(&self, context: &ConversationContext, bytes: &[u8]) -> Option<Vec<u8>> {
        if !self.markers.present(bytes) {
            return None;
        }
        let set = ActivitySet::parse(bytes)?;
        let findings = activity::scan(&set, &self.markers);
        if findings.is_empty() {
            return None;
        }
        let budget = SetBudget::default();
        let outcomes = join_all(
            findings
                .cards
                .iter()
                .map(|card| self.decide(context, card, &budget)),
        )
        .await;
        let exchanged: Vec<&OAuthCard> = findings
            .cards
            .iter()
            .zip(outcomes)
            .filter(|(_, success)| *success)
            .map(|(card, _)| card)
            .collect();
        if exchanged.is_empty() && findings.proxy_invokes.is_empty() {
            return None;
        }
        Some(activity::rewrite(&set, &findings, &exchanged))
    }

    /// `true` when the card may be removed.
    async fn decide(
        &self,
        context: &ConversationContext,
        card: &OAuthCard,
        budget: &SetBudget,
    ) -> bool {
        self.metrics.oauth_card_seen();
        let (Some(flow), Some(card_id)) = (self.flow_for(card, context), card.id()) else {
            if self.fell_back(card, context) {
                self.refused(context, Flow::Invoke, Outcome::NoContext);
            } else {
                tracing::debug!(conversation_id = %context.conversation_id, "OAuth card offers no enabled flow");
            }
            return false;
        };
        if card_id.len() <= MAX_CARD_ID_BYTES
            && self
                .decisions
                .peek(&decisions::key(&context.conversation_id, card_id))
                == Some(true)
        {
            // Already exchanged: removing it again spends no credentials.
            return true;
        }
        if let Some(refusal) = self.precondition(context, card, card_id) {
            self.refused(context, flow, refusal);
            return false;
        }
        let lead = match self
            .decisions
            .begin(decisions::key(&context.conversation_id, card_id))
        {
            Begin::Decided(success) => return success,
            Begin::Wait(receiver) => {
                return tokio::time::timeout(self.timeout, decisions::wait(receiver))
                    .await
                    .unwrap_or(false);
            }
            Begin::Lead(lead) => lead,
        };
        let conversation = decisions::key(&context.conversation_id, "");
        let Some(_slot) = self.in_flight.enter(conversation, budget) else {
            lead.abandon();
            self.refused(context, flow, Outcome::OverLimit);
            return false;
        };
        let started = Instant::now();
        let span = self.decision_span(context, flow);
        let outcome = tokio::time::timeout(self.timeout, self.attempt(flow, context, card))
            .instrument(span.clone())
            .await
            .unwrap_or(Outcome::Timeout);
        self.report(&span, context, flow, outcome, started.elapsed());
        let success = outcome == Outcome::Success;
        if !success && outcome.sent_nothing() && self.fell_back(card, context) {
            // Token post stood in for an invoke this stream could not make,
            // and no token went anywhere: that is no verdict on the card, a
            // poll or a stream with the conversation token may still
            // exchange it. Once a post may have gone out, the card is
            // decided (bots do not de-duplicate).
            lead.abandon();
        } else {
            lead.finish(success);
        }
        success
    }

    /// Why this card must not be decided for this requester, if it must not:
    /// the id is too long to be a real card's, the requester is not the
    /// conversation's owner or not the user the card is for, or the card
    /// asks for a resource the provider may not mint tokens for.
    fn precondition(
        &self,
        context: &ConversationContext,
        card: &OAuthCard,
        card_id: &str,
    ) -> Option<Outcome> {
        if card_id.len() > MAX_CARD_ID_BYTES {
            return Some(Outcome::OverLimit);
        }
        let recipient_is_requester = match &context.requester {
            Requester::Anonymous => true,
            Requester::Bound(requester) => {
                requester.is_some() && requester.as_deref() == card.user_id.as_deref()
            }
        };
        if !context.owner_matches || !recipient_is_requester {
            return Some(Outcome::PrincipalMismatch);
        }
        let resource = card.exchange.as_ref().and_then(|e| e.uri.as_deref());
        if !self.provider.allows_resource(resource) {
            return Some(Outcome::ResourceNotAllowed);
        }
        None
    }

    /// Counts and logs a card that was not decided: it goes out unchanged.
    fn refused(&self, context: &ConversationContext, flow: Flow, outcome: Outcome) {
        let span = self.decision_span(context, flow);
        self.report(&span, context, flow, outcome, Duration::ZERO);
    }

    /// A decision's end, in the metrics, on its span and in the log.
    fn report(
        &self,
        span: &Span,
        context: &ConversationContext,
        flow: Flow,
        outcome: Outcome,
        elapsed: Duration,
    ) {
        self.metrics
            .sso_decision(flow.as_str(), outcome.as_str(), elapsed);
        span.record("sso.outcome", outcome.as_str());
        span.in_scope(|| {
            tracing::info!(
                conversation_id = %context.conversation_id,
                flow = flow.as_str(),
                outcome = outcome.as_str(),
                provider = self.provider.name(),
                elapsed_ms = elapsed.as_millis() as u64,
                "sso decision"
            );
        });
    }

    /// With traces on, the span of one decision, in the trace of the
    /// request its stream or poll came in.
    fn decision_span(&self, context: &ConversationContext, flow: Flow) -> Span {
        self.traces.span(|| {
            let span = tracing::info_span!(
                "sso.decision",
                sso.flow = flow.as_str(),
                sso.provider = self.provider.name(),
                sso.outcome = tracing::field::Empty,
                conversation_id = %context.conversation_id,
            );
            telemetry::set_parent(&span, context.trace_parent.as_ref());
            span
        })
    }

    /// Whether the invoke was enabled and offered but this stream lacks the
    /// conversation token, so another flow (or none) was used instead.
    fn fell_back(&self, card: &OAuthCard, context: &ConversationContext) -> bool {
        context.token.is_none() && self.flows.contains(&Flow::Invoke) && Flow::Invoke.fits(card)
    }

    /// The first enabled flow the card offers and this stream can use: the
    /// invoke needs the conversation token (a stream without its sealed
    /// context falls back to token post).
    fn flow_for(&self, card: &OAuthCard, context: &ConversationContext) -> Option<Flow> {
        self.flows
            .iter()
            .copied()
            .filter(|flow| *flow != Flow::Invoke || context.token.is_some())
            .find(|flow| flow.fits(card))
    }

    async fn attempt(
        &self,
        flow: Flow,
        context: &ConversationContext,
        card: &OAuthCard,
    ) -> Outcome {
        let sas_url: Option<Uri> = card.sas_url.as_deref().and_then(|u| u.parse().ok());
        if flow == Flow::TokenPost && !sas_url.as_ref().is_some_and(|u| self.allow.permits(u)) {
            tracing::warn!(
                conversation_id = %context.conversation_id,
                host = sas_url.as_ref().and_then(Uri::host).unwrap_or("<unparsable>"),
                "token post refused: sasUrl host is not in sso.token_post_allow_hosts"
            );
            return Outcome::NotAllowed;
        }
        let Some(user_id) = card.user_id.as_deref() else {
            return Outcome::NoContext;
        };
        let exchange = card.exchange.as_ref();
        let request = TokenRequest {
            conversation_id: &context.conversation_id,
            user_id,
            connection_name: card.connection_name.as_deref().unwrap_or_default(),
            resource_uri: exchange.and_then(|e| e.uri.as_deref()),
            provider_id: exchange.and_then(|e| e.provider_id.as_deref()),
            user_headers: &context.user_headers,
        };
        let token = match self.provider_token(&request).await {
            Ok(token) => token,
            Err(error) => return provider_outcome(&context.conversation_id, &error),
        };
        let result = match (flow, sas_url) {
            (Flow::TokenPost, Some(url)) => {
                let span = self.traces.span(|| {
                    tracing::info_span!(
                        "sso.token_post",
                        otel.kind = "client",
                        server.address = url.host().unwrap_or_default(),
                        url.path = url.path(),
                    )
                });
                flows::token_post(&self.client, &url, &token)
                    .instrument(span)
                    .await
            }
            (Flow::Invoke, _) => {
                let Some(conversation_token) = context.token.as_deref() else {
                    return Outcome::NoContext;
                };
                let target = InvokeTarget {
                    conversation_id: &context.conversation_id,
                    conversation_token,
                    user_id,
                };
                let span = self.traces.span(|| tracing::info_span!("sso.invoke"));
                flows::invoke(&self.upstream, &target, card, &token)
                    .instrument(span)
                    .await
            }
            (Flow::TokenPost, None) => return Outcome::NotAllowed,
        };
        match result {
            Ok(()) => Outcome::Success,
            Err(error) => {
                let kind = match error {
                    ExchangeError::Rejected(_) => "refused",
                    ExchangeError::Transport(_) => "failed",
                };
                tracing::info!(conversation_id = %context.conversation_id, %error, "token exchange {kind}");
                Outcome::Rejected
            }
        }
    }
}

impl Sso {
    async fn provider_token(&self, request: &TokenRequest<'_>) -> Result<String, ProviderError> {
        let started = Instant::now();
        let span = self.traces.span(|| {
            tracing::info_span!(
                "sso.provider",
                otel.kind = "client",
                sso.provider = self.provider.name(),
                sso.provider.outcome = tracing::field::Empty,
            )
        });
        let result = self.provider.token(request).instrument(span.clone()).await;
        let outcome = match &result {
            Ok(_) => "token",
            Err(ProviderError::NoToken(_)) => "no_token",
            Err(ProviderError::Failed(_)) => "error",
        };
        span.record("sso.provider.outcome", outcome);
        self.metrics
            .provider_call(self.provider.name(), outcome, started.elapsed());
        result
    }
}

fn provider_outcome(conversation_id: &str, error: &ProviderError) -> Outcome {
    tracing::info!(%conversation_id, %error, "no user token from the provider");
    match error {
        ProviderError::NoToken(_) => Outcome::NoToken,
        ProviderError::Failed(_) => Outcome::ProviderError,
    }
}
