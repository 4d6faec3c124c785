//! The export pipeline: an OTLP/HTTP exporter behind the SDK's bounded
//! batch processor, the tracer provider, and the tracing layer that turns
//! the proxy's spans into OpenTelemetry spans.
//!
//! Built only when `[telemetry] otlp_endpoint` is set: with telemetry off
//! there is no layer in the subscriber, so a request pays nothing for it.
//! A dead or slow collector never reaches a request: finished spans are put
//! on a bounded queue without waiting, exports run on the processor's own
//! thread, and when the queue is full spans are dropped (the SDK logs the
//! first drop, and the total at shutdown, as warnings).

use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, SpanExporter, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use thiserror::Error;
use tokio::runtime::Handle;
use tracing::Subscriber;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::registry::LookupSpan;

use super::LOG_ONLY;
use super::export::Exporter;
use crate::config::TelemetryConfig;
use crate::tls::TlsError;

/// Where OTLP/HTTP takes spans, under the collector's base URL.
const TRACES_PATH: &str = "/v1/traces";

/// One export may take this long before it counts as failed.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the spans still queued at shutdown may take to leave.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// The crate whose spans and events are exported: libraries' own (hyper,
/// h2, rustls) carry headers and frames.
const EXPORTED_TARGET: &str = "directline_proxy";

#[derive(Debug, Error)]
pub enum TelemetryError {
    #[error("telemetry exporter TLS: {0}")]
    Tls(#[from] TlsError),
    #[error("telemetry.otlp_endpoint: {0}")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
}

/// The running pipeline; [`Telemetry::shutdown`] sends what is queued.
pub struct Telemetry {
    provider: SdkTracerProvider,
}

impl Telemetry {
    /// The pipeline for `config`, or `None` when telemetry is off. Exports
    /// run on `runtime`.
    pub fn start(
        config: &TelemetryConfig,
        runtime: Handle,
    ) -> Result<Option<Telemetry>, TelemetryError> {
        let Some(endpoint) = &config.otlp_endpoint else {
            return Ok(None);
        };
        let exporter = SpanExporter::builder()
            .with_http()
            .with_http_client(Exporter::new(runtime, EXPORT_TIMEOUT)?)
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(traces_url(&endpoint.to_string()))
            .with_timeout(EXPORT_TIMEOUT)
            .build()?;
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                config.sample_ratio,
            ))))
            .with_resource(
                Resource::builder_empty()
                    .with_service_name(config.service_name.clone())
                    .build(),
            )
            .build();
        Ok(Some(Telemetry { provider }))
    }

    /// The layer that exports the proxy's spans, with the events inside
    /// them as span events. Its own filter ignores `RUST_LOG`, so traces do
    /// not depend on the log level, and leaves out libraries' spans and
    /// the log-only span of a stream's lifetime.
    pub fn layer<S>(&self) -> impl Layer<S> + use<S>
    where
        S: Subscriber + for<'a> LookupSpan<'a> + Send + Sync,
    {
        tracing_opentelemetry::layer()
            .with_tracer(self.provider.tracer(EXPORTED_TARGET))
            .with_location(false)
            .with_threads(false)
            .with_tracked_inactivity(false)
            .with_filter(filter_fn(|metadata| {
                metadata.target().starts_with(EXPORTED_TARGET)
                    && metadata.target() != LOG_ONLY
                    && *metadata.level() <= tracing::Level::INFO
            }))
    }

    /// Exports what is still queued, for at most a few seconds, and stops
    /// the processor's thread.
    pub async fn shutdown(self) {
        let provider = self.provider;
        let stopped =
            tokio::task::spawn_blocking(move || provider.shutdown_with_timeout(SHUTDOWN_TIMEOUT))
                .await;
        match stopped {
            Ok(Ok(())) => tracing::debug!("telemetry flushed"),
            Ok(Err(error)) => tracing::warn!(%error, "telemetry not flushed at shutdown"),
            Err(error) => tracing::warn!(%error, "telemetry shutdown failed"),
        }
    }
}

/// The OTLP/HTTP traces URL under a collector's base URL; a URL that names
/// the traces path already is kept.
fn traces_url(base: &str) -> String {
    let base = base.trim_end_matches('/');
    if base.ends_with(TRACES_PATH) {
        base.to_string()
    } else {
        format!("{base}{TRACES_PATH}")
    }
}

#[cfg(test)]
mod tests {
    use super::traces_url;

    #[test]
    fn the_traces_path_is_added_once() {
        for (base, url) in [
            ("http://collector:4318", "http://collector:4318/v1/traces"),
            ("http://collector:4318/", "http://collector:4318/v1/traces"),
            ("https://c/otlp/", "https://c/otlp/v1/traces"),
            ("http://c:4318/v1/traces", "http://c:4318/v1/traces"),
        ] {
            assert_eq!(traces_url(base), url);
        }
    }
}
