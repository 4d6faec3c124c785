//! Configuration: the TOML schema, environment overrides and validation.
//!
//! Loading happens in three steps so that every error can name the key it is
//! about: the file is parsed into a TOML table, `DLPROXY_*` environment
//! variables are merged into that table (`env`), and the table is
//! deserialised with unknown keys rejected. Typed values (addresses, URLs,
//! durations, bounded numbers) are refused while deserialising, with the key
//! named (`value`). What serde cannot judge alone (formats of lists, key
//! combinations) is then checked by [`Config::validate`], which calls each
//! section's own check. Each section's struct, defaults and checks live in
//! the file named after it.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

mod admin;
mod directline;
mod effective;
mod env;
mod limits;
mod listen;
mod log;
mod metrics;
mod reload;
mod sso;
mod telemetry;
pub mod token_post;
mod upstream;
mod value;
mod websocket;

pub use admin::AdminConfig;
pub use directline::DirectLineConfig;
pub use env::{ENV_PREFIX, ENV_SEPARATOR};
pub use limits::LimitsConfig;
pub use listen::ListenConfig;
pub use log::{LogConfig, LogFormat};
pub use metrics::MetricsConfig;
pub use reload::ReloadConfig;
pub use sso::{
    Flow, Grant, HeaderProviderConfig, HttpProviderConfig, OAuth2ProviderConfig, ProviderKind,
    SEAL_KEY_LEN, SsoConfig, StaticProviderConfig, decode_seal_key, default_token_header,
};
pub use telemetry::TelemetryConfig;
pub use upstream::UpstreamConfig;
pub use websocket::WebSocketConfig;

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid TOML: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("config key `{key}`: {message}")]
    Schema { key: String, message: String },
    #[error("environment variable {var}: {message}")]
    Env { var: String, message: String },
    #[error("cannot print the config: {0}")]
    Print(String),
    #[error("config key `{key}` has the invalid value {value:?}: {allowed}")]
    Invalid {
        key: String,
        value: String,
        allowed: String,
    },
}

impl ConfigError {
    fn invalid(key: &str, value: impl ToString, allowed: impl Into<String>) -> Self {
        ConfigError::Invalid {
            key: key.to_string(),
            value: value.to_string(),
            allowed: allowed.into(),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub listen: ListenConfig,
    pub upstream: UpstreamConfig,
    pub websocket: WebSocketConfig,
    pub limits: LimitsConfig,
    pub log: LogConfig,
    pub sso: SsoConfig,
    pub metrics: MetricsConfig,
    pub directline: DirectLineConfig,
    pub reload: ReloadConfig,
    pub admin: AdminConfig,
    pub telemetry: TelemetryConfig,
}

impl Config {
    /// Reads `path`, applies overrides from the process environment and validates.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::from_toml(&text, path, std::env::vars())
    }

    /// Parses `text`, merges the `DLPROXY_*` variables of `env` and validates.
    pub fn from_toml(
        text: &str,
        origin: &Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut table: toml::Table =
            text.parse()
                .map_err(|e: toml::de::Error| ConfigError::Syntax {
                    path: origin.to_path_buf(),
                    message: e.message().to_string(),
                })?;
        env::apply_overrides(&mut table, env)?;
        let config: Config =
            serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
                let key = e.path().to_string();
                let message = if effective::holds_secret(&key) {
                    "invalid type or shape (the value is not shown: this key holds a secret)"
                        .to_string()
                } else {
                    e.inner().message().to_string()
                };
                ConfigError::Schema { key, message }
            })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what parsing cannot: list entries and key combinations. A
    /// config built in code (tests, `demo`) is trusted with the ranges that
    /// parsing enforces; its addresses and URLs are typed already.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.listen.validate()?;
        self.websocket.validate()?;
        self.directline.validate()?;
        self.sso.validate()?;
        self.telemetry.validate()?;
        if self.sso.reads_user_request() && self.listen.allowed_origins.is_empty() {
            return Err(ConfigError::invalid(
                "listen.allowed_origins",
                "[]",
                format!(
                    "required with sso.provider = {:?}, which reads the user's request: list the exact origins of the pages that embed the chat, e.g. [\"https://www.contoso.com\"], so that no other page can spend the user's credentials",
                    self.sso.provider.name()
                ),
            ));
        }
        Ok(())
    }

    /// Settings that are valid but leave a hole open; `check` prints them
    /// and the proxy logs them at start.
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        if self.sso.enabled() && self.listen.public_url.is_none() {
            warnings.push("SSO is on and listen.public_url is not set: rewritten streamUrls are built from the request's Host header; set listen.public_url to the address clients use".to_string());
        }
        if self.listen.trust_forwarded_headers {
            warnings.push("listen.trust_forwarded_headers = true: X-Forwarded-Proto/-Host/-For are believed (the entry the nearest proxy added); make sure only your ingress can reach listen.addr and that it sets these headers itself".to_string());
        }
        if self.sso.reads_user_request()
            && self.directline.user_id_header.is_none()
            && !self.sso.require_owner
        {
            warnings.push("the SSO provider reads the user's request but neither directline.user_id_header nor sso.require_owner is set: a conversation whose owner the proxy cannot tell is decided for whoever opens it, so only listen.allowed_origins keeps other pages from using the user's credentials".to_string());
        }
        if self.directline.allow_client_user_id {
            warnings.push("directline.allow_client_user_id = true: clients choose the user id of the tokens the proxy mints, so a client can speak as any user id it knows (unsafe)".to_string());
        }
        if self.sso.provider == ProviderKind::Static {
            warnings.push(
                "sso.provider = \"static\": every user gets the same token; development only"
                    .to_string(),
            );
        }
        if self.sso.enabled() && self.sso.seal_keys.is_empty() {
            warnings.push("sso.seal_keys is empty: a per-process key is used, so a stream opened on another replica gets no invoke flow".to_string());
        }
        warnings
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::time::Duration;

    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml(text, Path::new("test.toml"), Vec::new())
    }

    fn parse_env(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        Config::from_toml(text, Path::new("test.toml"), env)
    }

    fn error_text(text: &str) -> String {
        parse(text)
            .expect_err("config should be rejected")
            .to_string()
    }

    /// An inline secret is refused because its key does not exist (so it
    /// could never be accepted), and the error does not echo its value.
    fn assert_inline_secret_refused(err: &str, key: &str) {
        let field = key.rsplit('.').next().expect("a key");
        let reason = format!("config key `{key}`: unknown field `{field}`, expected one of");
        assert!(err.starts_with(&reason), "{err}");
        assert!(!err.contains("inline-secret-value"), "{err}");
    }

    /// Refused while parsing (not by a later check), naming the key.
    fn refused_at_parse(text: &str, key: &str) -> String {
        match parse(text) {
            Err(ConfigError::Schema {
                key: named,
                message,
            }) => {
                assert_eq!(named, key, "{message}");
                message
            }
            other => panic!("{text}: expected a parse error for {key}, got {other:?}"),
        }
    }

    #[test]
    fn socket_addresses_are_parsed_at_load() {
        let message = refused_at_parse("[listen]\naddr = \"localhost:8080\"\n", "listen.addr");
        assert!(message.contains("\"localhost:8080\"") && message.contains("socket address"));
        refused_at_parse("[admin]\naddr = \"9090\"\n", "admin.addr");
        let config = parse("[admin]\naddr = \"[::1]:9090\"\n").expect("valid");
        let loopback = SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, 9090));
        assert_eq!(config.admin.addr, Some(loopback));
    }

    #[test]
    fn urls_are_parsed_at_load() {
        let base = "[listen]\nallowed_origins = [\"https://www.contoso.com\"]\n[sso]\nprovider = \"oauth2\"\n[sso.oauth2]\ngrant = \"on_behalf_of\"\nclient_id = \"c\"\nclient_secret_env = \"S\"\nallowed_resources = [\"api://b\"]\n";
        for (text, key) in [
            (
                "[upstream]\nurl = \"https://x/?a=b\"\n".to_string(),
                "upstream.url",
            ),
            (
                "[listen]\npublic_url = \"ftp://x\"\n".to_string(),
                "listen.public_url",
            ),
            ("[sso.http]\nurl = \"auth\"\n".to_string(), "sso.http.url"),
            (
                format!("{base}token_url = \"//login.example.com/t\"\n"),
                "sso.oauth2.token_url",
            ),
        ] {
            let message = refused_at_parse(&text, key);
            assert!(message.contains("absolute URL"), "{message}");
        }
        let config = parse(&format!(
            "[upstream]\nurl = \"http://127.0.0.1:3000/dl\"\n{base}token_url = \"https://login.example.com/t?tenant=x\"\n"
        ))
        .expect("valid");
        assert_eq!(config.upstream.url.path(), "/dl");
        let token_url = config.sso.oauth2.expect("section").token_url;
        assert_eq!(token_url.query(), Some("tenant=x"));
        let config =
            parse("[listen]\npublic_url = \"wss://chat.example.com/bot\"\n").expect("valid");
        let public = config.listen.public_url.expect("set");
        assert_eq!((public.scheme_str(), public.path()), (Some("wss"), "/bot"));
    }

    #[test]
    fn a_token_endpoint_that_is_no_url_is_refused_at_load() {
        let message = refused_at_parse(
            "[directline]\ntoken_endpoint = \"not a url\"\n",
            "directline.token_endpoint",
        );
        assert!(message.contains("absolute URL"), "{message}");
        refused_at_parse(
            "[directline]\ntoken_endpoint = \"ftp://x.environment.api.powerplatform.com/t\"\n",
            "directline.token_endpoint",
        );
    }

    #[test]
    fn header_names_are_parsed_at_load() {
        let sso = "[listen]\nallowed_origins = [\"https://www.contoso.com\"]\n[sso]\n";
        let oauth2 = "[sso.oauth2]\ntoken_url = \"https://l/t\"\ngrant = \"on_behalf_of\"\nclient_id = \"c\"\nclient_secret_env = \"S\"\nallowed_resources = [\"api://b\"]\n";
        for (text, key) in [
            (
                "[directline]\nsecret_env = \"DL\"\nuser_id_header = \"x user\"\n".to_string(),
                "directline.user_id_header",
            ),
            (
                format!("{sso}provider = \"header\"\n[sso.header]\nname = \"a:b\"\n"),
                "sso.header.name",
            ),
            (
                format!(
                    "{sso}provider = \"http\"\n[sso.http]\nurl = \"https://a\"\nforward_headers = [\"cookie\", \"bad header\"]\n"
                ),
                "sso.http.forward_headers",
            ),
            (
                format!("{sso}provider = \"oauth2\"\n{oauth2}header = \"\"\n"),
                "sso.oauth2.header",
            ),
        ] {
            let message = refused_at_parse(&text, key);
            assert!(message.contains("HTTP header name"), "{key}: {message}");
        }
        // Refused even when the provider that would read it is not chosen.
        refused_at_parse("[sso.header]\nname = \"a b\"\n", "sso.header.name");
        let config = parse(&format!(
            "{sso}provider = \"header\"\n[sso.header]\nname = \"X-Auth-Token\"\n"
        ))
        .expect("valid");
        assert_eq!(config.sso.header.expect("section").name, "x-auth-token");
    }

    #[test]
    fn token_post_entries_are_parsed_at_load() {
        let text = "[sso]\ntoken_post_allow_hosts = [\"token.botframework.com\", \"ftp://x/\"]\n";
        match parse(text) {
            Err(ConfigError::Schema { key, message }) => {
                assert!(key.starts_with("sso.token_post_allow_hosts"), "{key}");
                assert!(message.contains("\"ftp://x/\""), "{message}");
            }
            other => panic!("expected a parse error, got {other:?}"),
        }
        let defaults = parse("").expect("defaults").sso.token_post_allow_hosts;
        let written: Vec<String> = defaults.into_iter().map(String::from).collect();
        assert_eq!(
            written,
            [
                "token.botframework.com",
                "*.token.botframework.com",
                "token.botframework.azure.us"
            ]
        );
    }

    #[test]
    fn durations_keep_their_keys_and_units_and_are_checked_at_load() {
        let config = parse(
            "[listen]\nidle_timeout_ms = 1500\n[sso]\ndecision_ttl_secs = 60\n[reload]\nwatch_interval_ms = 0\n",
        )
        .expect("valid");
        assert_eq!(config.listen.idle_timeout, Duration::from_millis(1500));
        assert_eq!(config.sso.decision_ttl, Duration::from_secs(60));
        assert_eq!(config.reload.watch_interval, None);
        let message =
            refused_at_parse("[listen]\nidle_timeout_ms = 99\n", "listen.idle_timeout_ms");
        assert!(message.contains("from 100 to 3600000"), "{message}");
        let message = refused_at_parse(
            "[reload]\nwatch_interval_ms = 99\n",
            "reload.watch_interval_ms",
        );
        assert!(message.contains("0 (off)"), "{message}");
        refused_at_parse("[sso]\ndecision_ttl_secs = 0\n", "sso.decision_ttl_secs");
        refused_at_parse(
            "[websocket]\nclose_timeout_ms = 1.5\n",
            "websocket.close_timeout_ms",
        );
    }

    #[test]
    fn bounded_numbers_are_checked_at_load() {
        let message = refused_at_parse("[listen]\nmax_connections = 0\n", "listen.max_connections");
        assert!(message.contains("from 1 to 10000000"), "{message}");
        refused_at_parse(
            "[limits]\nmax_streams_per_client = 1000001\n",
            "limits.max_streams_per_client",
        );
    }

    #[test]
    fn typed_values_from_the_environment_are_checked_like_the_file() {
        for (var, key) in [
            ("DLPROXY_ADMIN__ADDR", "admin.addr"),
            ("DLPROXY_UPSTREAM__URL", "upstream.url"),
            (
                "DLPROXY_WEBSOCKET__CLOSE_TIMEOUT_MS",
                "websocket.close_timeout_ms",
            ),
        ] {
            let err = parse_env("", &[(var, "nowhere")]).expect_err("refused");
            assert!(
                matches!(&err, ConfigError::Schema { key: named, .. } if named == key),
                "{err}"
            );
        }
    }

    #[test]
    fn empty_file_gives_documented_defaults() {
        let config = parse("").expect("defaults are valid");
        assert_eq!(config.listen.addr.to_string(), "127.0.0.1:8080");
        assert_eq!(
            config.upstream.url.to_string(),
            "https://directline.botframework.com/"
        );
        assert!(!config.listen.tls_enabled());
    }

    #[test]
    fn shipped_config_toml_is_valid() {
        let text = include_str!("../../config.toml");
        parse(text).expect("config.toml must load");
    }

    #[test]
    fn unknown_key_is_an_error_naming_it() {
        let err = error_text("[listen]\nadr = \"127.0.0.1:1\"\n");
        assert!(err.contains("listen"), "{err}");
        assert!(err.contains("adr"), "{err}");
    }

    #[test]
    fn unknown_section_is_an_error() {
        let err = error_text("[lisen]\naddr = \"127.0.0.1:1\"\n");
        assert!(err.contains("lisen"), "{err}");
    }

    #[test]
    fn wrong_type_names_the_key() {
        let err = error_text("[upstream]\nrequest_timeout_ms = \"soon\"\n");
        assert!(err.contains("upstream.request_timeout_ms"), "{err}");
    }

    #[test]
    fn bad_listen_addr_names_key_value_and_allowed() {
        let err = error_text("[listen]\naddr = \"localhost\"\n");
        assert!(err.contains("listen.addr"), "{err}");
        assert!(err.contains("\"localhost\""), "{err}");
        assert!(err.contains("socket address"), "{err}");
    }

    #[test]
    fn upstream_url_must_be_http_or_https_with_host() {
        for bad in [
            "ftp://x",
            "directline.botframework.com",
            "https://x/?a=b",
            "not a url",
        ] {
            let err = error_text(&format!("[upstream]\nurl = \"{bad}\"\n"));
            assert!(err.contains("upstream.url"), "{err}");
            assert!(err.contains("http/https"), "{err}");
        }
    }

    #[test]
    fn public_url_must_be_absolute() {
        let err = error_text("[listen]\npublic_url = \"/chat\"\n");
        assert!(err.contains("listen.public_url"), "{err}");
    }

    #[test]
    fn tls_cert_without_key_is_rejected() {
        let err = error_text("[listen]\ntls_cert = \"c.pem\"\n");
        assert!(err.contains("listen.tls_key"), "{err}");
        let err = error_text("[listen]\ntls_key = \"k.pem\"\n");
        assert!(err.contains("listen.tls_cert"), "{err}");
    }

    #[test]
    fn out_of_range_numbers_name_the_range() {
        let err = error_text("[websocket]\nmax_message_bytes = 10\n");
        assert!(err.contains("websocket.max_message_bytes"), "{err}");
        assert!(err.contains("from 1048576"), "{err}");
        let err = error_text("[listen]\nmax_connections = 0\n");
        assert!(err.contains("listen.max_connections"), "{err}");
        let err = error_text("[websocket]\nmax_frame_bytes = 4194304\n");
        assert!(err.contains("websocket.max_frame_bytes"), "{err}");
    }

    #[test]
    fn bad_log_format_lists_choices() {
        let err = error_text("[log]\nformat = \"xml\"\n");
        assert!(err.contains("log.format") && err.contains("json"), "{err}");
    }

    #[test]
    fn syntax_error_names_the_file() {
        let err = error_text("[listen\n");
        assert!(err.contains("test.toml"), "{err}");
    }

    #[test]
    fn env_overrides_file_values_with_type_inference() {
        let config = parse_env(
            "[listen]\naddr = \"127.0.0.1:1\"\n",
            &[
                ("DLPROXY_LISTEN__ADDR", "0.0.0.0:9000"),
                ("DLPROXY_UPSTREAM__REQUEST_TIMEOUT_MS", "1234"),
                ("DLPROXY_LISTEN__TRUST_FORWARDED_HEADERS", "true"),
                ("OTHER_VAR", "ignored"),
            ],
        )
        .expect("overrides are valid");
        assert_eq!(config.listen.addr.to_string(), "0.0.0.0:9000");
        assert_eq!(config.upstream.request_timeout, Duration::from_millis(1234));
        assert!(config.listen.trust_forwarded_headers);
    }

    #[test]
    fn env_override_with_unknown_key_is_rejected() {
        let err = parse_env("", &[("DLPROXY_LISTEN__NOPE", "1")])
            .expect_err("unknown key")
            .to_string();
        assert!(err.contains("nope"), "{err}");
    }

    #[test]
    fn env_override_without_section_is_rejected() {
        let err = parse_env("", &[("DLPROXY_ADDR", "1")])
            .expect_err("no section")
            .to_string();
        assert!(err.contains("DLPROXY_ADDR"), "{err}");
    }

    #[test]
    fn env_override_values_are_validated() {
        let err = parse_env("", &[("DLPROXY_LISTEN__ADDR", "nowhere")])
            .expect_err("invalid addr")
            .to_string();
        assert!(
            err.contains("listen.addr") && err.contains("nowhere"),
            "{err}"
        );
    }

    #[test]
    fn sso_provider_must_be_known() {
        let err = error_text("[sso]\nprovider = \"magic\"\n");
        assert!(
            err.contains("sso.provider") && err.contains("`magic`"),
            "{err}"
        );
        assert!(err.contains("oauth2"), "{err}");
    }

    #[test]
    fn unknown_names_are_refused_when_parsed_naming_the_key() {
        for (toml, key, bad) in [
            (
                "[sso]\nflows = [\"invoke\", \"teleport\"]\n",
                "sso.flows",
                "teleport",
            ),
            ("[log]\nformat = \"yaml\"\n", "log.format", "yaml"),
            (
                "[sso.oauth2]\ntoken_url = \"https://a\"\ngrant = \"password\"\nclient_id = \"c\"\n",
                "sso.oauth2.grant",
                "password",
            ),
        ] {
            let err = error_text(toml);
            assert!(
                err.contains(key) && err.contains(&format!("`{bad}`")),
                "{err}"
            );
        }
        let err = parse_env("", &[("DLPROXY_SSO__PROVIDER", "magic")])
            .expect_err("an unknown provider from the environment")
            .to_string();
        assert!(err.contains("magic") && err.contains("oauth2"), "{err}");
    }

    #[test]
    fn sso_provider_needs_its_section() {
        let err = error_text("[sso]\nprovider = \"static\"\n");
        assert!(err.contains("sso.static.token"), "{err}");
        let err = error_text("[sso]\nprovider = \"http\"\n");
        assert!(err.contains("sso.http.url"), "{err}");
        let err = error_text("[sso]\nprovider = \"oauth2\"\n");
        assert!(err.contains("sso.oauth2.token_url"), "{err}");
    }

    #[test]
    fn sso_http_url_and_headers_are_checked() {
        let err = error_text("[sso]\nprovider = \"http\"\n[sso.http]\nurl = \"auth\"\n");
        assert!(
            err.contains("sso.http.url") && err.contains("\"auth\""),
            "{err}"
        );
        let err = error_text(
            "[sso]\nprovider = \"http\"\n[sso.http]\nurl = \"https://a\"\nforward_headers = [\"bad header\"]\n",
        );
        assert!(err.contains("sso.http.forward_headers"), "{err}");
        let ok = parse(
            "[listen]\nallowed_origins = [\"https://www.contoso.com\"]\n[sso]\nprovider = \"http\"\n[sso.http]\nurl = \"https://auth.example.com/t?x=1\"\n",
        )
        .expect("valid");
        assert_eq!(
            ok.sso.http.expect("section").forward_headers,
            vec!["cookie"]
        );
    }

    #[test]
    fn sso_flows_and_allow_hosts_are_checked() {
        let err = error_text("[sso]\nflows = [\"carrier_pigeon\"]\n");
        assert!(
            err.contains("sso.flows") && err.contains("carrier_pigeon"),
            "{err}"
        );
        let err = error_text("[sso]\nflows = []\n");
        assert!(err.contains("sso.flows"), "{err}");
        for bad in [
            "ftp://x/",
            "a.*.com",
            "http://token.botframework.com",
            "x/a?b",
        ] {
            let err = error_text(&format!("[sso]\ntoken_post_allow_hosts = [\"{bad}\"]\n"));
            assert!(
                err.contains("sso.token_post_allow_hosts") && err.contains(bad),
                "{err}"
            );
        }
        let ok = parse(
            "[sso]\ntoken_post_allow_hosts = [\"https://x/api/\", \"*.y.com:8443\", \"http://127.0.0.1:3978/sas/\"]\n",
        );
        assert!(ok.is_ok(), "{ok:?}");
    }

    #[test]
    fn sso_seal_keys_are_checked_without_echoing_them() {
        let err = error_text("[sso]\nseal_keys = [\"c2VjcmV0LWJ1dC1zaG9ydA==\"]\n");
        assert!(
            err.contains("sso.seal_keys") && err.contains("32 random bytes"),
            "{err}"
        );
        assert!(
            !err.contains("c2VjcmV0LWJ1dC1zaG9ydA=="),
            "the key is not printed: {err}"
        );
    }

    #[test]
    fn sso_oauth2_grant_and_secret_source_are_checked() {
        let base = "[sso]\nprovider = \"oauth2\"\n[sso.oauth2]\ntoken_url = \"https://login.example.com/token\"\nclient_id = \"c\"\n";
        let err = error_text(&format!(
            "{base}grant = \"password\"\nclient_secret_env = \"S\"\n"
        ));
        assert!(
            err.contains("sso.oauth2.grant") && err.contains("on_behalf_of"),
            "{err}"
        );
        let err = error_text(&format!("{base}grant = \"on_behalf_of\"\n"));
        assert!(err.contains("client_secret"), "{err}");
        let err = error_text(&format!(
            "{base}grant = \"on_behalf_of\"\nclient_secret = \"inline-secret-value\"\n"
        ));
        assert_inline_secret_refused(&err, "sso.oauth2.client_secret");
        let err = error_text(&format!(
            "{base}grant = \"token_exchange\"\nclient_secret_file = \"/s\"\n"
        ));
        assert!(err.contains("sso.oauth2.allowed_resources"), "{err}");
        parse(&format!(
            "[listen]\nallowed_origins = [\"https://www.contoso.com\"]\n{base}grant = \"token_exchange\"\nclient_secret_file = \"/s\"\nallowed_resources = [\"api://bot/scope\"]\n"
        ))
        .expect("valid");
    }

    #[test]
    fn a_provider_that_reads_the_users_request_needs_allowed_origins() {
        for provider in [
            "provider = \"http\"\n[sso.http]\nurl = \"https://auth.example.com\"\n",
            "provider = \"header\"\n",
            "provider = \"oauth2\"\n[sso.oauth2]\ntoken_url = \"https://l/t\"\ngrant = \"on_behalf_of\"\nclient_id = \"c\"\nclient_secret_env = \"S\"\nallowed_resources = [\"api://b\"]\n",
        ] {
            let err = error_text(&format!("[sso]\n{provider}"));
            assert!(err.contains("listen.allowed_origins"), "{err}");
            let listed = format!(
                "[listen]\nallowed_origins = [\"https://www.contoso.com\"]\n[sso]\n{provider}"
            );
            assert!(parse(&listed).is_ok(), "{listed}");
        }
        let text = "[sso]\nprovider = \"static\"\n[sso.static]\ntoken = \"t\"\n";
        assert!(parse(text).is_ok(), "static reads nothing of the user's");
    }

    #[test]
    fn allowed_origins_must_be_exact_origins() {
        for bad in [
            "*",
            "https://*.contoso.com",
            "https://www.contoso.com/chat",
            "null",
            "www.contoso.com",
        ] {
            let err = error_text(&format!("[listen]\nallowed_origins = [\"{bad}\"]\n"));
            assert!(
                err.contains("listen.allowed_origins") && err.contains(bad),
                "{err}"
            );
        }
    }

    #[test]
    fn user_binding_needs_the_secret() {
        let err = error_text("[directline]\nuser_id_header = \"x-forwarded-user\"\n");
        assert!(
            err.contains("directline.user_id_header") && err.contains("secret"),
            "{err}"
        );
        let ok =
            parse("[directline]\nuser_id_header = \"x-forwarded-user\"\nsecret_env = \"DL\"\n");
        assert!(ok.is_ok(), "{ok:?}");
    }

    #[test]
    fn warnings_name_the_settings_that_leave_a_hole() {
        let quiet = parse("").expect("defaults");
        assert!(quiet.warnings().is_empty(), "{:?}", quiet.warnings());
        let loud = parse(
            "[listen]\ntrust_forwarded_headers = true\nallowed_origins = [\"https://a.example\"]\n[directline]\nallow_client_user_id = true\n[sso]\nprovider = \"header\"\n",
        )
        .expect("valid");
        let all = loud.warnings().join("\n");
        for key in [
            "listen.public_url",
            "listen.trust_forwarded_headers",
            "directline.user_id_header",
            "directline.allow_client_user_id",
            "sso.seal_keys",
        ] {
            assert!(all.contains(key), "{key} missing from {all}");
        }
    }

    #[test]
    fn secrets_do_not_appear_in_schema_errors() {
        let err = parse_env(
            "",
            &[(
                "DLPROXY_SSO__SEAL_KEYS",
                "c2VjcmV0LWtleS1mb3JnZXRzLWJyYWNrZXRz",
            )],
        )
        .expect_err("a string is not a list")
        .to_string();
        assert!(err.contains("sso.seal_keys"), "{err}");
        assert!(
            !err.contains("c2VjcmV0LWtleS1mb3JnZXRzLWJyYWNrZXRz"),
            "{err}"
        );
        let err = error_text("[sso.static]\ntoken = 12345\n");
        assert_eq!(
            err,
            "config key `sso.static.token`: invalid type or shape (the value is not shown: this key holds a secret)"
        );
        let err = error_text(
            "[sso]\nprovider = \"http\"\n[sso.http]\nurl = \"nope?code=function-key\"\n",
        );
        assert!(!err.contains("function-key"), "{err}");
    }

    #[test]
    fn sso_numbers_are_range_checked() {
        let err = error_text("[sso]\ntimeout_ms = 0\n");
        assert!(err.contains("sso.timeout_ms"), "{err}");
        let err = error_text("[sso]\ndecision_capacity = 0\n");
        assert!(err.contains("sso.decision_capacity"), "{err}");
    }

    #[test]
    fn env_override_reaches_nested_sso_sections() {
        let config = parse_env(
            "[sso]\nprovider = \"static\"\n",
            &[
                ("DLPROXY_SSO__STATIC__TOKEN", "from-env"),
                ("DLPROXY_SSO__SEAL_KEYS", "[]"),
            ],
        )
        .expect("valid");
        assert_eq!(config.sso.static_token.expect("section").token, "from-env");
    }

    #[test]
    fn directline_secret_sources_are_exclusive_and_checked() {
        let err = error_text("[directline]\nsecret_env = \"S\"\nsecret_file = \"/s\"\n");
        assert!(
            err.contains("directline.secret_file") && err.contains("not both"),
            "{err}"
        );
        let err = error_text("[directline]\nsecret_env = \"\"\n");
        assert!(err.contains("directline.secret_env"), "{err}");
        let err = error_text("[directline]\nuser_id_header = \"x user\"\n");
        assert!(err.contains("directline.user_id_header"), "{err}");
        let err = error_text("[directline]\nmint_rate_per_minute = 0\n");
        assert!(err.contains("directline.mint_rate_per_minute"), "{err}");
        let err = error_text("[directline]\nsecret = \"inline-secret-value\"\n");
        assert_inline_secret_refused(&err, "directline.secret");
    }

    const TOKEN_ENDPOINT: &str = "https://default1234.56.environment.api.powerplatform.com/powervirtualagents/botsbyschema/cr123_agent/directline/token?api-version=2022-03-01-preview";

    #[test]
    fn a_token_endpoint_is_a_power_platform_url_or_a_listed_host() {
        let config = parse(&format!(
            "[directline]\ntoken_endpoint = \"{TOKEN_ENDPOINT}\"\n"
        ))
        .expect("a Power Platform endpoint");
        let endpoint = config.directline.token_endpoint.map(|uri| uri.to_string());
        assert_eq!(endpoint.as_deref(), Some(TOKEN_ENDPOINT));
        let gov = "https://x.environment.api.gov.powerplatform.microsoft.us/powervirtualagents/botsbyschema/a/directline/token";
        parse(&format!("[directline]\ntoken_endpoint = \"{gov}\"\n")).expect("US government cloud");
        for refused in [
            "https://evil.example.com/powervirtualagents/botsbyschema/a/directline/token",
            "https://api.powerplatform.com.evil.example/powervirtualagents/x",
            "https://xapi.powerplatform.com/powervirtualagents/x",
            "http://x.environment.api.powerplatform.com/powervirtualagents/x",
            "http://127.0.0.1:3978/powervirtualagents/botsbyschema/a/directline/token",
            "https://x.environment.api.powerplatform.com/",
            "not a url",
        ] {
            let err = error_text(&format!("[directline]\ntoken_endpoint = \"{refused}\"\n"));
            assert!(
                err.contains("directline.token_endpoint"),
                "{refused}: {err}"
            );
        }
        let local = "http://127.0.0.1:3978/powervirtualagents/botsbyschema/a/directline/token";
        parse(&format!(
            "[directline]\ntoken_endpoint = \"{local}\"\ntoken_endpoint_hosts = [\"127.0.0.1\"]\n"
        ))
        .expect("a listed host, plain http allowed");
    }

    #[test]
    fn a_token_endpoint_and_a_secret_are_exclusive() {
        let err = error_text(&format!(
            "[directline]\ntoken_endpoint = \"{TOKEN_ENDPOINT}\"\nsecret_env = \"DL\"\n"
        ));
        assert!(
            err.contains("directline.token_endpoint")
                && err.contains("secret_env")
                && err.contains("not both"),
            "{err}"
        );
        let err = error_text(&format!(
            "[directline]\ntoken_endpoint = \"{TOKEN_ENDPOINT}\"\nuser_id_header = \"x-user\"\n"
        ));
        assert!(
            err.contains("directline.user_id_header") && err.contains("secret"),
            "{err}"
        );
    }
}
