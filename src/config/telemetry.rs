//! `[telemetry]`: OpenTelemetry traces, exported over OTLP/HTTP. Off unless
//! `otlp_endpoint` is set. Read at start only: the tracing layer is part of
//! the process's subscriber, which cannot be swapped while it runs.

use http::Uri;
use serde::{Deserialize, Serialize};
use smart_default::SmartDefault;

use super::{ConfigError, value};

#[derive(Debug, Clone, SmartDefault, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// The collector's OTLP/HTTP base URL (`http://otel-collector:4318`);
    /// spans go to `<url>/v1/traces`. Unset: no traces, no OpenTelemetry
    /// layer, `traceparent` passed on as any other header.
    #[serde(
        deserialize_with = "value::some_base_url",
        serialize_with = "value::some_display",
        skip_serializing_if = "Option::is_none"
    )]
    pub otlp_endpoint: Option<Uri>,
    /// `service.name` of every span.
    #[default("directline-proxy".to_string())]
    pub service_name: String,
    /// Share of new traces kept; a trace the client started keeps the
    /// client's decision (parent-based sampling).
    #[default(1.0)]
    #[serde(deserialize_with = "value::ratio")]
    pub sample_ratio: f64,
}

impl TelemetryConfig {
    pub fn enabled(&self) -> bool {
        self.otlp_endpoint.is_some()
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.service_name.trim().is_empty() {
            return Err(ConfigError::invalid(
                "telemetry.service_name",
                &self.service_name,
                "expected a non-empty name, e.g. \"directline-proxy\"",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::{Config, ConfigError};

    fn parse(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        Config::from_toml(text, Path::new("test.toml"), env)
    }

    #[test]
    fn off_by_default_and_on_with_an_endpoint() {
        let config = parse("", &[]).expect("defaults");
        assert!(!config.telemetry.enabled());
        assert_eq!(config.telemetry.service_name, "directline-proxy");
        assert_eq!(config.telemetry.sample_ratio, 1.0);
        let config = parse(
            "[telemetry]\notlp_endpoint = \"http://127.0.0.1:4318\"\nsample_ratio = 0\n",
            &[("DLPROXY_TELEMETRY__SERVICE_NAME", "chat-proxy")],
        )
        .expect("valid");
        assert!(config.telemetry.enabled());
        assert_eq!(config.telemetry.service_name, "chat-proxy");
        assert_eq!(config.telemetry.sample_ratio, 0.0);
    }

    #[test]
    fn values_are_checked_naming_the_key() {
        for (text, env, key) in [
            (
                "[telemetry]\nsample_ratio = 1.5\n",
                None,
                "telemetry.sample_ratio",
            ),
            ("", Some("-0.1"), "telemetry.sample_ratio"),
            (
                "[telemetry]\notlp_endpoint = \"collector:4318\"\n",
                None,
                "telemetry.otlp_endpoint",
            ),
            (
                "[telemetry]\nservice_name = \" \"\n",
                None,
                "telemetry.service_name",
            ),
        ] {
            let env: Vec<_> = env
                .map(|v| ("DLPROXY_TELEMETRY__SAMPLE_RATIO", v))
                .into_iter()
                .collect();
            let err = parse(text, &env).expect_err(text).to_string();
            assert!(err.contains(key), "{text}: {err}");
        }
    }

    #[test]
    fn the_printed_endpoint_hides_its_userinfo() {
        let config = parse(
            "[telemetry]\notlp_endpoint = \"https://tenant:api-key@collector.example.com/otlp\"\n",
            &[],
        )
        .expect("valid");
        let printed = config.effective_toml().expect("printable");
        assert!(!printed.contains("api-key"), "{printed}");
        assert!(
            printed.contains("https://<redacted>@collector.example.com/otlp"),
            "{printed}"
        );
    }
}
