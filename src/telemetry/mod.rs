//! OpenTelemetry traces (`[telemetry]`): which spans exist, how a client's
//! W3C trace context is joined, and how it is passed on to Direct Line, the
//! token provider and the token post.
//!
//! Off (no `otlp_endpoint`), nothing here acts: the spans only traces need
//! are disabled ones, `traceparent` and `tracestate` pass through as any
//! other header, and [`pipeline`] installs no layer. On, the proxy's own
//! span replaces the client's as the parent in what it sends on, with the
//! same trace id and `tracestate`.
//!
//! What spans carry: route names, conversation ids, status codes, outcomes,
//! hosts and paths. Never a query (it holds `t=` and `dlpx=`), a header
//! value, a token or a body: spans are built from chosen fields only, as
//! log lines are.

mod export;
mod pipeline;

pub use pipeline::{Telemetry, TelemetryError};

use std::time::Duration;

use http::{HeaderMap, HeaderName};
use opentelemetry::Context;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TraceContextExt;
use opentelemetry_http::{HeaderExtractor, HeaderInjector};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::config::TelemetryConfig;

/// The target of spans that are logged but never exported: a stream's
/// lifetime, which would otherwise be one span as long as the stream.
pub const LOG_ONLY: &str = "directline_proxy::log_only";

const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// Whether this proxy traces: read once from `[telemetry]` and copied into
/// whatever makes spans or outgoing calls.
#[derive(Debug, Clone, Copy, Default)]
pub struct Traces {
    on: bool,
}

impl Traces {
    pub fn new(config: &TelemetryConfig) -> Traces {
        Traces {
            on: config.enabled(),
        }
    }

    pub fn on(self) -> bool {
        self.on
    }

    /// The span `make` builds when tracing, a disabled one otherwise: spans
    /// that only traces need cost nothing with telemetry off.
    pub fn span(self, make: impl FnOnce() -> Span) -> Span {
        if self.on { make() } else { Span::none() }
    }

    /// Makes a request's span the server span of the client's trace: its
    /// `traceparent` (and `tracestate`), when valid, become the parent.
    pub fn join_client(self, span: &Span, name: &str, headers: &HeaderMap) {
        if !self.on {
            return;
        }
        span.record("otel.name", name);
        span.record("otel.kind", "server");
        let parent = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
        if parent.span().span_context().is_valid() {
            set_parent(span, Some(&parent));
        }
    }

    /// Records the answer's status on a request's or a call's span.
    pub fn record_status(self, span: &Span, status: u16) {
        if self.on {
            span.record("http.response.status_code", status);
        }
    }

    /// The current span's context, kept by what acts later in its name (a
    /// stream's sign-in decisions, long after the handshake's span ended).
    pub fn current(self) -> Option<Context> {
        self.on.then(|| Span::current().context())
    }

    /// Puts `span`'s trace context into an outgoing request's headers.
    pub fn inject(self, span: &Span, headers: &mut HeaderMap) {
        if self.on {
            inject_context(&span.context(), headers);
        }
    }

    /// The span a stream's relay runs in once its handshake is done. Off,
    /// the handshake's own, as in the logs without telemetry; on, a
    /// log-only span of its own, so the exported handshake span ends now.
    pub fn stream_lifetime(self, opening: Span, conversation_id: &str) -> Span {
        if !self.on {
            return opening;
        }
        tracing::info_span!(target: LOG_ONLY, parent: None, "stream", conversation_id)
    }
}

impl Traces {
    /// With traces on, a short span for a stream's end, in the trace of
    /// its handshake: the closing event and the stream's lifetime go there,
    /// since the handshake's span ended long before.
    pub fn stream_closed(self, parent: Option<&Context>, lifetime: Duration) -> Span {
        self.span(|| {
            let span = tracing::info_span!(
                "stream.closed",
                stream.lifetime_ms = u64::try_from(lifetime.as_millis()).unwrap_or(u64::MAX),
            );
            set_parent(&span, parent);
            span
        })
    }
}

/// `parent` as `span`'s parent in the trace, if it has one.
pub fn set_parent(span: &Span, parent: Option<&Context>) {
    if let Some(parent) = parent {
        // Refused only for a span that is not exported or already started:
        // then there is no parent to set.
        let _ = span.set_parent(parent.clone());
    }
}

/// Puts the current span's trace context into an outgoing request's
/// headers. Without an OpenTelemetry layer (telemetry off) there is no
/// context and the headers stay as they are.
pub fn inject_current(headers: &mut HeaderMap) {
    inject_context(&Span::current().context(), headers);
}

/// Replaces any `traceparent` and `tracestate` with `context`'s, when it
/// holds a span; otherwise leaves them.
fn inject_context(context: &Context, headers: &mut HeaderMap) {
    if !context.span().span_context().is_valid() {
        return;
    }
    headers.remove(TRACEPARENT);
    headers.remove(TRACESTATE);
    TraceContextPropagator::new().inject_context(context, &mut HeaderInjector(headers));
}
