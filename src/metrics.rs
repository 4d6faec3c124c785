//! Prometheus metrics (`GET /metrics`, Prometheus text format 0.0.4).
//!
//! Label values are fixed sets (route names, flows, outcomes, kinds), never
//! a conversation id, user or token. Every series of those sets exists from
//! the start at 0, so dashboards show 0 rather than "no data" and an alert
//! on a rate can fire on the first event. Hot-path series (connections,
//! upstream calls, frames, bytes) are resolved once, so counting costs one
//! atomic add.

use std::time::Duration;

use http::StatusCode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use crate::config::{Flow, ProviderKind};
use crate::outcome::Outcome;

/// The Prometheus text format, which every scraper and `promtool check
/// metrics` read (promtool does not parse OpenMetrics).
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    Rest,
    Polling,
    Websocket,
}

impl Transport {
    fn as_str(self) -> &'static str {
        match self {
            Transport::Rest => "rest",
            Transport::Polling => "polling",
            Transport::Websocket => "websocket",
        }
    }

    /// Walks every variant; see [`every`].
    fn next(self) -> Option<Transport> {
        match self {
            Transport::Rest => Some(Transport::Polling),
            Transport::Polling => Some(Transport::Websocket),
            Transport::Websocket => None,
        }
    }

    /// Its place in the walk from `Rest`, which is its declaration order.
    fn index(self) -> usize {
        self as usize
    }
}

/// What went wrong, for `directline_proxy_errors_total{kind}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    UpstreamUnreachable,
    UpstreamTimeout,
    UpstreamFailed,
    RequestTooLarge,
    ResponseUnreadable,
    ConnectionLimit,
    WebsocketHandshake,
    WebsocketLost,
    StreamContextRejected,
    TlsHandshake,
}

impl ErrorKind {
    fn as_str(self) -> &'static str {
        match self {
            ErrorKind::UpstreamUnreachable => "upstream_unreachable",
            ErrorKind::UpstreamTimeout => "upstream_timeout",
            ErrorKind::UpstreamFailed => "upstream_failed",
            ErrorKind::RequestTooLarge => "request_too_large",
            ErrorKind::ResponseUnreadable => "response_unreadable",
            ErrorKind::ConnectionLimit => "connection_limit",
            ErrorKind::WebsocketHandshake => "websocket_handshake",
            ErrorKind::WebsocketLost => "websocket_lost",
            ErrorKind::StreamContextRejected => "stream_context_rejected",
            ErrorKind::TlsHandshake => "tls_handshake",
        }
    }

    /// Walks every variant; see [`every`].
    fn next(self) -> Option<ErrorKind> {
        use ErrorKind::*;
        match self {
            UpstreamUnreachable => Some(UpstreamTimeout),
            UpstreamTimeout => Some(UpstreamFailed),
            UpstreamFailed => Some(RequestTooLarge),
            RequestTooLarge => Some(ResponseUnreadable),
            ResponseUnreadable => Some(ConnectionLimit),
            ConnectionLimit => Some(WebsocketHandshake),
            WebsocketHandshake => Some(WebsocketLost),
            WebsocketLost => Some(StreamContextRejected),
            StreamContextRejected => Some(TlsHandshake),
            TlsHandshake => None,
        }
    }
}

/// Every value of an enum that labels a series, from `first` along `next`.
/// Each `next` is an exhaustive match: a new variant does not compile until
/// it has its place in the walk, so its series cannot be forgotten.
fn every<T: Copy>(first: T, next: fn(T) -> Option<T>) -> impl Iterator<Item = T> {
    std::iter::successors(Some(first), move |value| next(*value))
}

fn next_flow(flow: Flow) -> Option<Flow> {
    match flow {
        Flow::Invoke => Some(Flow::TokenPost),
        Flow::TokenPost => None,
    }
}

fn next_outcome(outcome: Outcome) -> Option<Outcome> {
    use Outcome::*;
    match outcome {
        Success => Some(Rejected),
        Rejected => Some(NoToken),
        NoToken => Some(ProviderError),
        ProviderError => Some(Timeout),
        Timeout => Some(NotAllowed),
        NotAllowed => Some(NoContext),
        NoContext => Some(PrincipalMismatch),
        PrincipalMismatch => Some(ResourceNotAllowed),
        ResourceNotAllowed => Some(OverLimit),
        OverLimit => None,
    }
}

fn next_provider(kind: ProviderKind) -> Option<ProviderKind> {
    match kind {
        ProviderKind::None => Some(ProviderKind::Static),
        ProviderKind::Static => Some(ProviderKind::Http),
        ProviderKind::Http => Some(ProviderKind::Header),
        ProviderKind::Header => Some(ProviderKind::Oauth2),
        ProviderKind::Oauth2 => None,
    }
}

/// The providers that make calls (`none` is SSO off).
fn calling_providers() -> impl Iterator<Item = &'static str> {
    every(ProviderKind::None, next_provider)
        .filter(|kind| *kind != ProviderKind::None)
        .map(ProviderKind::name)
}

/// Creates the series at 0, unless it exists.
fn create<L, M, C>(family: &Family<L, M, C>, labels: &L)
where
    L: Clone + std::hash::Hash + Eq,
    M: Clone,
    C: MetricConstructor<M>,
{
    family.get_or_create_owned(labels);
}

/// The route names callers of `upstream_request` pass: the REST routes'
/// names, the SSO invoke, and a Copilot Studio agent's token endpoint and
/// regional settings. Another name still counts, from its first use.
const ROUTES: [&str; 10] = [
    "generate_token",
    "start_conversation",
    "reconnect",
    "poll",
    "stream",
    "send",
    "other",
    "sso_invoke",
    "token_endpoint",
    "regional_settings",
];
const STATUS_CLASSES: [&str; 7] = ["1xx", "2xx", "3xx", "4xx", "5xx", "error", "timeout"];
const DIRECTIONS: [&str; 2] = ["to_client", "to_bot"];
/// The `outcome` of a token provider call.
const PROVIDER_OUTCOMES: [&str; 3] = ["token", "no_token", "error"];
const RELOAD_OUTCOMES: [&str; 2] = ["applied", "rejected"];
/// The quotas that answer 429.
const QUOTAS: [&str; 4] = ["mint", "conversations", "activities", "streams"];

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct TransportLabels {
    transport: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct DirectionLabels {
    direction: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RouteLabels {
    route: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct UpstreamLabels {
    route: &'static str,
    status_class: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct FlowLabels {
    flow: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct DecisionLabels {
    flow: &'static str,
    outcome: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ProviderLabels {
    provider: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ProviderOutcomeLabels {
    provider: &'static str,
    outcome: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ErrorLabels {
    kind: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct VersionLabels {
    version: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct QuotaLabels {
    quota: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// 1 ms to about 33 s.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

pub struct Metrics {
    registry: Registry,
    connections_active: Family<TransportLabels, Gauge>,
    connections: Family<TransportLabels, Counter>,
    frames: Family<DirectionLabels, Counter>,
    bytes: Family<DirectionLabels, Counter>,
    upstream_requests: Family<UpstreamLabels, Counter>,
    upstream_duration: HistogramFamily<RouteLabels>,
    oauth_cards: Counter,
    sso_decisions: Family<DecisionLabels, Counter>,
    sso_duration: HistogramFamily<FlowLabels>,
    provider_calls: Family<ProviderOutcomeLabels, Counter>,
    provider_duration: HistogramFamily<ProviderLabels>,
    errors: Family<ErrorLabels, Counter>,
    reloads: Family<OutcomeLabels, Counter>,
    quota_rejections: Family<QuotaLabels, Counter>,
    tasks_alive: Gauge,
    hot: HotSeries,
}

/// Per-request series, resolved at start so counting needs no hashed lookup.
struct HotSeries {
    /// By [`Transport::index`]: (connections, connections_active).
    connections: Vec<(Counter, Gauge)>,
    /// By the route's index in [`ROUTES`].
    upstream: [RouteSeries; ROUTES.len()],
}

struct RouteSeries {
    /// By the status class's index in [`STATUS_CLASSES`].
    requests: [Counter; STATUS_CLASSES.len()],
    duration: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let histogram: fn() -> Histogram = latency_histogram;
        let connections_active = Family::default();
        let connections = Family::default();
        let upstream_requests = Family::default();
        let upstream_duration = Family::new_with_constructor(histogram);
        let hot = HotSeries::resolve(
            &connections,
            &connections_active,
            &upstream_requests,
            &upstream_duration,
        );
        let metrics = Metrics {
            registry: Registry::with_prefix("directline_proxy"),
            connections_active,
            connections,
            frames: Family::default(),
            bytes: Family::default(),
            upstream_requests,
            upstream_duration,
            oauth_cards: Counter::default(),
            sso_decisions: Family::default(),
            sso_duration: Family::new_with_constructor(histogram),
            provider_calls: Family::default(),
            provider_duration: Family::new_with_constructor(histogram),
            errors: Family::default(),
            reloads: Family::default(),
            quota_rejections: Family::default(),
            tasks_alive: Gauge::default(),
            hot,
        };
        metrics.create_bounded_series();
        metrics.register()
    }

    /// Creates, at 0, every series whose labels come from a fixed set (the
    /// hot ones exist already).
    fn create_bounded_series(&self) {
        for direction in DIRECTIONS {
            create(&self.frames, &DirectionLabels { direction });
            create(&self.bytes, &DirectionLabels { direction });
        }
        for flow in every(Flow::Invoke, next_flow).map(Flow::as_str) {
            create(&self.sso_duration, &FlowLabels { flow });
            for outcome in every(Outcome::Success, next_outcome).map(Outcome::as_str) {
                create(&self.sso_decisions, &DecisionLabels { flow, outcome });
            }
        }
        for provider in calling_providers() {
            create(&self.provider_duration, &ProviderLabels { provider });
            for outcome in PROVIDER_OUTCOMES {
                create(
                    &self.provider_calls,
                    &ProviderOutcomeLabels { provider, outcome },
                );
            }
        }
        for kind in every(ErrorKind::UpstreamUnreachable, ErrorKind::next) {
            create(
                &self.errors,
                &ErrorLabels {
                    kind: kind.as_str(),
                },
            );
        }
        for outcome in RELOAD_OUTCOMES {
            create(&self.reloads, &OutcomeLabels { outcome });
        }
        for quota in QUOTAS {
            create(&self.quota_rejections, &QuotaLabels { quota });
        }
    }

    fn register(mut self) -> Metrics {
        let r = &mut self.registry;
        r.register(
            "connections_active",
            "Requests in flight (rest, polling) and open WebSocket relays (websocket)",
            self.connections_active.clone(),
        );
        r.register(
            "connections",
            "Requests (rest, polling) and WebSocket relays (websocket) handled",
            self.connections.clone(),
        );
        r.register(
            "websocket_frames",
            "WebSocket frames relayed (data, continuation, ping, pong; not close), by direction (to_client, to_bot)",
            self.frames.clone(),
        );
        r.register_with_unit(
            "websocket_payload",
            "WebSocket payload bytes relayed, by direction",
            Unit::Bytes,
            self.bytes.clone(),
        );
        r.register(
            "upstream_requests",
            "Requests sent to Direct Line, by route and status class (2xx..5xx, error, timeout)",
            self.upstream_requests.clone(),
        );
        r.register_with_unit(
            "upstream_request_duration",
            "Time until Direct Line's response headers, by route",
            Unit::Seconds,
            self.upstream_duration.clone(),
        );
        r.register(
            "oauth_cards",
            "OAuth cards seen in ActivitySets from the bot",
            self.oauth_cards.clone(),
        );
        r.register(
            "sso_decisions",
            "SSO decisions by flow and outcome",
            self.sso_decisions.clone(),
        );
        r.register_with_unit(
            "sso_decision_duration",
            "Time to decide one OAuth card, by flow",
            Unit::Seconds,
            self.sso_duration.clone(),
        );
        r.register(
            "provider_calls",
            "Token provider calls by provider and outcome (token, no_token, error)",
            self.provider_calls.clone(),
        );
        r.register_with_unit(
            "provider_call_duration",
            "Token provider call time, by provider",
            Unit::Seconds,
            self.provider_duration.clone(),
        );
        r.register("errors", "Errors by kind", self.errors.clone());
        r.register(
            "config_reloads",
            "Config reloads by outcome (applied, rejected)",
            self.reloads.clone(),
        );
        r.register(
            "tasks_alive",
            "Tokio tasks alive in the proxy's runtime (a leak shows as steady growth)",
            self.tasks_alive.clone(),
        );
        r.register(
            "quota_rejections",
            "Requests answered 429 by quota (mint, conversations, activities, streams)",
            self.quota_rejections.clone(),
        );
        // A gauge at 1, the Prometheus convention for build information:
        // OpenMetrics' info type has no Prometheus text form.
        let build = Family::<VersionLabels, Gauge>::default();
        build
            .get_or_create(&VersionLabels {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        r.register("build_info", "Build information", build);
        self
    }

    /// The exposition text.
    pub fn encode(&self) -> String {
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let alive = runtime.metrics().num_alive_tasks();
            self.tasks_alive
                .set(i64::try_from(alive).unwrap_or(i64::MAX));
        }
        let mut text = String::new();
        if let Err(error) = prometheus_client::encoding::text::encode(&mut text, &self.registry) {
            tracing::warn!(%error, "metrics could not be encoded");
        }
        prometheus_text(&text)
    }

    /// Counts a request or relay; it stays active until the guard drops.
    pub fn connection(&self, transport: Transport) -> ActiveConnection {
        let (total, active) = &self.hot.connections[transport.index()];
        total.inc();
        active.inc();
        ActiveConnection {
            active: active.clone(),
        }
    }

    /// The counters one WebSocket relay increments, resolved once.
    pub fn relay_counters(&self) -> RelayCounters {
        let direction = |direction| DirectionLabels { direction };
        RelayCounters {
            frames_to_client: self.frames.get_or_create_owned(&direction("to_client")),
            bytes_to_client: self.bytes.get_or_create_owned(&direction("to_client")),
            frames_to_bot: self.frames.get_or_create_owned(&direction("to_bot")),
            bytes_to_bot: self.bytes.get_or_create_owned(&direction("to_bot")),
        }
    }

    /// `status` is `None` when no response came: `error`, or `timeout`.
    pub fn upstream_request(
        &self,
        route: &'static str,
        status: Option<StatusCode>,
        timed_out: bool,
        elapsed: Duration,
    ) {
        let status_class = match (status, timed_out) {
            (_, true) => "timeout",
            (None, false) => "error",
            (Some(status), false) => status_class(status),
        };
        let seconds = elapsed.as_secs_f64();
        let route_index = ROUTES.iter().position(|known| *known == route);
        let class_index = STATUS_CLASSES
            .iter()
            .position(|known| *known == status_class);
        match (route_index, class_index) {
            (Some(r), Some(c)) => {
                let series = &self.hot.upstream[r];
                series.requests[c].inc();
                series.duration.observe(seconds);
            }
            _ => {
                self.upstream_requests
                    .get_or_create(&UpstreamLabels {
                        route,
                        status_class,
                    })
                    .inc();
                self.upstream_duration
                    .get_or_create(&RouteLabels { route })
                    .observe(seconds);
            }
        }
    }

    pub fn oauth_card_seen(&self) {
        self.oauth_cards.inc();
    }

    pub fn sso_decision(&self, flow: &'static str, outcome: &'static str, elapsed: Duration) {
        self.sso_decisions
            .get_or_create(&DecisionLabels { flow, outcome })
            .inc();
        self.sso_duration
            .get_or_create(&FlowLabels { flow })
            .observe(elapsed.as_secs_f64());
    }

    pub fn provider_call(&self, provider: &'static str, outcome: &'static str, elapsed: Duration) {
        self.provider_calls
            .get_or_create(&ProviderOutcomeLabels { provider, outcome })
            .inc();
        self.provider_duration
            .get_or_create(&ProviderLabels { provider })
            .observe(elapsed.as_secs_f64());
    }

    pub fn quota_rejected(&self, quota: &'static str) {
        self.quota_rejections
            .get_or_create(&QuotaLabels { quota })
            .inc();
    }

    pub fn config_reload(&self, applied: bool) {
        let outcome = if applied { "applied" } else { "rejected" };
        self.reloads.get_or_create(&OutcomeLabels { outcome }).inc();
    }

    pub fn error(&self, kind: ErrorKind) {
        self.errors
            .get_or_create(&ErrorLabels {
                kind: kind.as_str(),
            })
            .inc();
    }
}

/// The Prometheus text form of the encoder's OpenMetrics text. The two
/// differ, for what this registry holds, only in that a counter's `# HELP`
/// and `# TYPE` name its samples (`..._total`) rather than its family, and
/// that Prometheus text has no `# UNIT` and no `# EOF`.
fn prometheus_text(open_metrics: &str) -> String {
    let counters: Vec<&str> = open_metrics
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.strip_suffix(" counter"))
        .collect();
    let mut text = String::with_capacity(open_metrics.len() + 16 * counters.len());
    for line in open_metrics.lines() {
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        match comment_naming_a_counter(line, &counters) {
            Some((keyword, family, rest)) => {
                text.push_str(&format!("# {keyword} {family}_total{rest}"));
            }
            None => text.push_str(line),
        }
        text.push('\n');
    }
    text
}

/// `# HELP name rest` or `# TYPE name rest` where `name` is a counter's
/// family: (keyword, name, rest with its leading space).
fn comment_naming_a_counter<'a>(
    line: &'a str,
    counters: &[&str],
) -> Option<(&'a str, &'a str, &'a str)> {
    let (keyword, rest) = line
        .strip_prefix("# ")?
        .split_once(' ')
        .filter(|(keyword, _)| matches!(*keyword, "HELP" | "TYPE"))?;
    let (name, rest) = rest.split_at(rest.find(' ').unwrap_or(rest.len()));
    counters.contains(&name).then_some((keyword, name, rest))
}

fn status_class(status: StatusCode) -> &'static str {
    match status.as_u16() {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

impl HotSeries {
    fn resolve(
        connections: &Family<TransportLabels, Counter>,
        connections_active: &Family<TransportLabels, Gauge>,
        upstream_requests: &Family<UpstreamLabels, Counter>,
        upstream_duration: &HistogramFamily<RouteLabels>,
    ) -> HotSeries {
        let connections = every(Transport::Rest, Transport::next)
            .map(|transport| {
                let labels = TransportLabels {
                    transport: transport.as_str(),
                };
                (
                    connections.get_or_create_owned(&labels),
                    connections_active.get_or_create_owned(&labels),
                )
            })
            .collect();
        let upstream = ROUTES.map(|route| RouteSeries {
            requests: STATUS_CLASSES.map(|status_class| {
                upstream_requests.get_or_create_owned(&UpstreamLabels {
                    route,
                    status_class,
                })
            }),
            duration: upstream_duration.get_or_create_owned(&RouteLabels { route }),
        });
        HotSeries {
            connections,
            upstream,
        }
    }
}

/// Decrements the active gauge when the request or relay ends.
pub struct ActiveConnection {
    active: Gauge,
}

impl Drop for ActiveConnection {
    fn drop(&mut self) {
        self.active.dec();
    }
}

#[derive(Clone)]
pub struct RelayCounters {
    pub frames_to_client: Counter,
    pub bytes_to_client: Counter,
    pub frames_to_bot: Counter,
    pub bytes_to_bot: Counter,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line_value(text: &str, prefix: &str) -> Option<f64> {
        text.lines()
            .find(|line| line.starts_with(prefix))
            .and_then(|line| line.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }

    /// The labels of a walk, at most 100 (a cycle would never end).
    fn walk<T: Copy>(
        first: T,
        next: fn(T) -> Option<T>,
        label: fn(T) -> &'static str,
    ) -> Vec<&'static str> {
        every(first, next).take(100).map(label).collect()
    }

    fn assert_distinct(labels: &[&str]) {
        let unique: std::collections::BTreeSet<_> = labels.iter().collect();
        assert_eq!(unique.len(), labels.len(), "a value twice: {labels:?}");
    }

    #[test]
    fn each_walk_names_each_value_once() {
        assert_distinct(&walk(Transport::Rest, Transport::next, Transport::as_str));
        assert_distinct(&walk(
            ErrorKind::UpstreamUnreachable,
            ErrorKind::next,
            ErrorKind::as_str,
        ));
        assert_distinct(&walk(Flow::Invoke, next_flow, Flow::as_str));
        assert_distinct(&walk(Outcome::Success, next_outcome, Outcome::as_str));
        assert_distinct(&walk(ProviderKind::None, next_provider, ProviderKind::name));
        for (position, transport) in every(Transport::Rest, Transport::next).enumerate() {
            assert_eq!(transport.index(), position, "{transport:?}");
        }
    }

    #[test]
    fn a_fresh_registry_has_every_bounded_series_at_zero() {
        let text = Metrics::new().encode();
        let series = [
            "directline_proxy_connections_total{transport=\"polling\"}",
            "directline_proxy_connections_active{transport=\"websocket\"}",
            "directline_proxy_websocket_payload_bytes_total{direction=\"to_bot\"}",
            "directline_proxy_upstream_requests_total{route=\"sso_invoke\",status_class=\"timeout\"}",
            "directline_proxy_upstream_request_duration_seconds_count{route=\"generate_token\"}",
            "directline_proxy_sso_decisions_total{flow=\"token_post\",outcome=\"over_limit\"}",
            "directline_proxy_sso_decision_duration_seconds_count{flow=\"invoke\"}",
            "directline_proxy_provider_calls_total{provider=\"oauth2\",outcome=\"no_token\"}",
            "directline_proxy_provider_call_duration_seconds_count{provider=\"header\"}",
            "directline_proxy_errors_total{kind=\"tls_handshake\"}",
            "directline_proxy_config_reloads_total{outcome=\"rejected\"}",
            "directline_proxy_quota_rejections_total{quota=\"streams\"}",
        ];
        for name in series {
            assert_eq!(
                line_value(&text, &format!("{name} ")),
                Some(0.0),
                "{name} in\n{text}"
            );
        }
        assert!(
            !text.contains("provider=\"none\""),
            "SSO off makes no provider calls"
        );
    }

    #[test]
    fn an_unknown_route_is_counted_from_its_first_use() {
        let metrics = Metrics::new();
        metrics.upstream_request("novel", None, true, Duration::from_millis(1));
        assert_eq!(
            line_value(
                &metrics.encode(),
                "directline_proxy_upstream_requests_total{route=\"novel\",status_class=\"timeout\"} "
            ),
            Some(1.0)
        );
    }

    #[test]
    fn names_follow_prometheus_conventions() {
        let metrics = Metrics::new();
        metrics.upstream_request(
            "poll",
            Some(StatusCode::OK),
            false,
            Duration::from_millis(3),
        );
        metrics.sso_decision("invoke", "success", Duration::from_millis(20));
        metrics.provider_call("http", "token", Duration::from_millis(5));
        metrics.error(ErrorKind::UpstreamTimeout);
        metrics.oauth_card_seen();
        let text = metrics.encode();
        for expected in [
            "directline_proxy_upstream_requests_total{route=\"poll\",status_class=\"2xx\"} 1",
            "directline_proxy_sso_decisions_total{flow=\"invoke\",outcome=\"success\"} 1",
            "directline_proxy_provider_calls_total{provider=\"http\",outcome=\"token\"} 1",
            "directline_proxy_errors_total{kind=\"upstream_timeout\"} 1",
            "directline_proxy_oauth_cards_total 1",
            "directline_proxy_build_info{version=",
            "# TYPE directline_proxy_sso_decision_duration_seconds histogram",
            "# TYPE directline_proxy_oauth_cards_total counter",
            "# HELP directline_proxy_oauth_cards_total OAuth cards",
            "# TYPE directline_proxy_upstream_request_duration_seconds histogram",
        ] {
            assert!(text.contains(expected), "missing {expected} in\n{text}");
        }
        assert!(
            !text.contains("# EOF") && !text.contains("# UNIT"),
            "{text}"
        );
        assert_eq!(
            line_value(
                &text,
                "directline_proxy_sso_decision_duration_seconds_count{flow=\"invoke\"} "
            ),
            Some(1.0)
        );
    }

    #[test]
    fn active_connections_go_down_when_the_guard_drops() {
        let metrics = Metrics::new();
        let guard = metrics.connection(Transport::Websocket);
        let active = "directline_proxy_connections_active{transport=\"websocket\"}";
        assert_eq!(line_value(&metrics.encode(), active), Some(1.0));
        drop(guard);
        assert_eq!(line_value(&metrics.encode(), active), Some(0.0));
        assert_eq!(
            line_value(
                &metrics.encode(),
                "directline_proxy_connections_total{transport=\"websocket\"}"
            ),
            Some(1.0)
        );
    }

    #[test]
    fn relay_counters_share_the_registered_series() {
        let metrics = Metrics::new();
        let counters = metrics.relay_counters();
        counters.frames_to_client.inc();
        counters.bytes_to_client.inc_by(42);
        let text = metrics.encode();
        assert_eq!(
            line_value(
                &text,
                "directline_proxy_websocket_frames_total{direction=\"to_client\"}"
            ),
            Some(1.0)
        );
        assert_eq!(
            line_value(
                &text,
                "directline_proxy_websocket_payload_bytes_total{direction=\"to_client\"}"
            ),
            Some(42.0)
        );
    }
}
