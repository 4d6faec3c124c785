//! Configuration: the TOML schema, environment overrides and validation.
//!
//! Loading happens in three steps so that every error can name the key it is
//! about: the file is parsed into a TOML table, `DLPROXY_*` environment
//! variables are merged into that table, and the table is deserialised with
//! unknown keys rejected. Values serde cannot judge (addresses, URLs, ranges)
//! are then checked by [`Config::validate`], which reports the key, the bad
//! value and what is allowed.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use serde::{Deserialize, Serialize};
use thiserror::Error;

pub mod token_post;

/// Bytes of an `sso.seal_keys` key (AES-256).
pub const SEAL_KEY_LEN: usize = 32;

/// Decodes one `sso.seal_keys` entry; the error says what is allowed.
pub fn decode_seal_key(text: &str) -> Result<[u8; SEAL_KEY_LEN], String> {
    let allowed = "expected 32 random bytes in standard base64 (e.g. `openssl rand -base64 32`)";
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(|_| allowed.to_string())?;
    bytes.try_into().map_err(|_| allowed.to_string())
}

const PUBLIC_URL_SCHEMES: &[&str] = &["http", "https", "ws", "wss"];

/// Prefix of environment variables that override config keys.
pub const ENV_PREFIX: &str = "DLPROXY_";
/// Separator between the section and key parts of an override's name.
pub const ENV_SEPARATOR: &str = "__";

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
}

/// The admin listener: `/healthz`, `/readyz` and `/metrics` on their own
/// address, so probes and scrapes answer while the public listener is
/// saturated, and metrics are not public.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Socket address; unset: the endpoints stay on the main listener.
    pub addr: Option<String>,
}

impl AdminConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        self.socket_addr().map(|_| ())
    }

    /// The admin address, parsed, if configured.
    pub fn socket_addr(&self) -> Result<Option<SocketAddr>, ConfigError> {
        self.addr
            .as_deref()
            .map(|addr| {
                addr.parse().map_err(|_| {
                    ConfigError::invalid(
                        "admin.addr",
                        addr,
                        "expected an IP socket address such as \"0.0.0.0:9090\"",
                    )
                })
            })
            .transpose()
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReloadConfig {
    /// How often the config and certificate files are checked for changes;
    /// 0 turns watching off (SIGHUP still reloads).
    pub watch_interval_ms: u64,
}

impl Default for ReloadConfig {
    fn default() -> Self {
        ReloadConfig {
            watch_interval_ms: 5_000,
        }
    }
}

impl ReloadConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.watch_interval_ms != 0 {
            check_range(
                "reload.watch_interval_ms",
                self.watch_interval_ms,
                100,
                3_600_000,
            )?;
        }
        Ok(())
    }

    /// `None` when watching is off.
    pub fn watch_interval(&self) -> Option<Duration> {
        (self.watch_interval_ms > 0).then(|| Duration::from_millis(self.watch_interval_ms))
    }
}

/// The Direct Line secret held by the proxy (never by the client).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DirectLineConfig {
    /// Environment variable holding the Direct Line secret.
    pub secret_env: Option<String>,
    /// File holding the Direct Line secret (e.g. a mounted Kubernetes Secret).
    pub secret_file: Option<PathBuf>,
    /// Header (set by the ingress's auth proxy) whose value binds the minted
    /// token to that user.
    pub user_id_header: Option<String>,
    /// Token mints allowed per client per minute, and the burst above that.
    pub mint_rate_per_minute: u32,
    pub mint_burst: u32,
    /// Without `user_id_header`, keep a client-chosen `user.id` when minting
    /// with the server-held secret (unsafe: a client can then speak as any
    /// user id it knows). Off: each mint gets a fresh random `dl_` id.
    pub allow_client_user_id: bool,
    /// A Copilot Studio agent's token endpoint: the token source instead of
    /// a secret.
    pub token_endpoint: Option<String>,
    /// Hosts besides Power Platform's that `token_endpoint` may name (a
    /// private gateway, the local emulator).
    pub token_endpoint_hosts: Vec<String>,
}

impl Default for DirectLineConfig {
    fn default() -> Self {
        DirectLineConfig {
            secret_env: None,
            secret_file: None,
            user_id_header: None,
            mint_rate_per_minute: 30,
            mint_burst: 10,
            allow_client_user_id: false,
            token_endpoint: None,
            token_endpoint_hosts: Vec::new(),
        }
    }
}

/// Domains of the Power Platform API in its public, US government (GCC,
/// GCC High, DoD) and China clouds: where Copilot Studio serves agents'
/// token endpoints.
const POWER_PLATFORM_HOST_SUFFIXES: [&str; 5] = [
    "api.powerplatform.com",
    "api.gov.powerplatform.microsoft.us",
    "api.high.powerplatform.microsoft.us",
    "api.appsplatform.us",
    "api.powerplatform.partner.microsoftonline.cn",
];

impl DirectLineConfig {
    /// Whether the proxy holds the Direct Line secret.
    pub fn holds_secret(&self) -> bool {
        self.secret_env.is_some() || self.secret_file.is_some()
    }

    fn validate(&self) -> Result<(), ConfigError> {
        self.validate_token_endpoint()?;
        if self.secret_env.is_some() && self.secret_file.is_some() {
            return Err(ConfigError::invalid(
                "directline.secret_file",
                self.secret_file
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default(),
                "set either directline.secret_env or directline.secret_file, not both",
            ));
        }
        if self.secret_env.as_deref().is_some_and(str::is_empty) {
            return Err(ConfigError::invalid(
                "directline.secret_env",
                "",
                "expected the name of an environment variable",
            ));
        }
        if let Some(header) = &self.user_id_header {
            validate_header_names("directline.user_id_header", std::slice::from_ref(header))?;
            if !self.holds_secret() {
                return Err(ConfigError::invalid(
                    "directline.user_id_header",
                    header,
                    "needs directline.secret_env or directline.secret_file: bound user ids are keyed by the secret and tokens are minted with it (a token_endpoint's tokens cannot carry a user id)",
                ));
            }
        }
        check_range(
            "directline.mint_rate_per_minute",
            u64::from(self.mint_rate_per_minute),
            1,
            1_000_000,
        )?;
        check_range(
            "directline.mint_burst",
            u64::from(self.mint_burst),
            1,
            1_000_000,
        )
    }

    /// `token_endpoint`: instead of a secret, an absolute URL on a Power
    /// Platform host or one of `token_endpoint_hosts`; plain `http` only
    /// for a listed host (the emulator).
    fn validate_token_endpoint(&self) -> Result<(), ConfigError> {
        const KEY: &str = "directline.token_endpoint";
        let Some(endpoint) = &self.token_endpoint else {
            return Ok(());
        };
        if self.holds_secret() {
            return Err(ConfigError::invalid(
                KEY,
                endpoint,
                "set either directline.token_endpoint or directline.secret_env / secret_file, not both",
            ));
        }
        let uri: http::Uri = endpoint
            .parse()
            .map_err(|_| ConfigError::invalid(KEY, endpoint, "expected an absolute https URL"))?;
        let host = uri.host().unwrap_or_default().to_ascii_lowercase();
        let listed = self
            .token_endpoint_hosts
            .iter()
            .any(|allowed| allowed.eq_ignore_ascii_case(&host));
        let power_platform = POWER_PLATFORM_HOST_SUFFIXES.iter().any(|suffix| {
            host.strip_suffix(suffix)
                .is_some_and(|sub| sub.ends_with('.'))
        });
        let scheme_ok = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => listed,
            _ => false,
        };
        if !scheme_ok || host.is_empty() || uri.path() == "/" {
            return Err(ConfigError::invalid(
                KEY,
                endpoint,
                "expected the agent's token endpoint, an absolute https URL (https://<env>.environment.api.powerplatform.com/powervirtualagents/botsbyschema/<schema>/directline/token?api-version=2022-03-01-preview); http only for a host in directline.token_endpoint_hosts",
            ));
        }
        if !power_platform && !listed {
            return Err(ConfigError::invalid(
                KEY,
                endpoint,
                format!(
                    "the host {host} is not a Power Platform host (*.{}) and not in directline.token_endpoint_hosts",
                    POWER_PLATFORM_HOST_SUFFIXES.join(", *.")
                ),
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Serve `GET /metrics` on the listener.
    pub enabled: bool,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig { enabled: true }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ListenConfig {
    /// Socket address to bind, `host:port`.
    pub addr: String,
    /// PEM certificate chain; with `tls_key` turns on TLS.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub tls_key: Option<PathBuf>,
    /// Base URL clients reach the proxy at, used for rewritten `streamUrl`s.
    pub public_url: Option<String>,
    /// Honour `X-Forwarded-Proto/-Host/-For` from the client (only behind a
    /// trusted ingress).
    pub trust_forwarded_headers: bool,
    /// Exact origins (`https://www.contoso.com`) of the pages allowed to use
    /// the proxy; a request with another `Origin` gets 403. Empty: no check.
    pub allowed_origins: Vec<String>,
    pub max_connections: usize,
    /// From accept: the first request's headers (first byte, TLS handshake
    /// and preface included); then each request's headers.
    pub header_read_timeout_ms: u64,
    /// A connection with no request in flight is closed after this long
    /// (HTTP/1 keep-alive and HTTP/2 alike).
    pub idle_timeout_ms: u64,
    /// How long shutdown waits for in-flight requests before exiting.
    pub drain_timeout_ms: u64,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamConfig {
    /// Direct Line base URL (scheme and host, optionally a path prefix).
    pub url: String,
    /// Extra PEM trust roots for the upstream, added to the platform's.
    pub ca_file: Option<PathBuf>,
    pub connect_timeout_ms: u64,
    /// Time allowed until the upstream's response headers arrive.
    pub request_timeout_ms: u64,
    pub pool_idle_timeout_ms: u64,
    pub pool_max_idle_per_host: usize,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebSocketConfig {
    pub max_message_bytes: usize,
    pub max_frame_bytes: usize,
    /// Size of the read buffer a busy stream borrows from its worker's
    /// pool; an idle stream holds none, so this costs nothing per
    /// conversation.
    pub read_buffer_bytes: usize,
    /// How long a close handshake may take before the socket is dropped.
    pub close_timeout_ms: u64,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest request body forwarded upstream (uploads included).
    pub max_request_body_bytes: u64,
    /// Largest response body the proxy reads whole to rewrite it.
    pub max_rewrite_body_bytes: usize,
    /// Conversation starts per client per minute (also the burst); 0: no quota.
    pub conversations_per_minute_per_client: u32,
    /// Activities posted (and uploads) per conversation per minute (also the
    /// burst); 0: no quota.
    pub activities_per_minute_per_conversation: u32,
    /// WebSocket streams one client may hold open at once; 0: no quota.
    pub max_streams_per_client: u32,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Where user tokens come from: `sso.provider`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProviderKind {
    /// SSO off: a pure relay.
    #[default]
    None,
    /// The same token for everyone (development).
    Static,
    /// An auth API called with headers of the user's request.
    Http,
    /// The token in a header of the user's request.
    Header,
    /// An OAuth 2.0 exchange of the user's incoming token.
    Oauth2,
}

impl ProviderKind {
    pub fn name(self) -> &'static str {
        match self {
            ProviderKind::None => "none",
            ProviderKind::Static => "static",
            ProviderKind::Http => "http",
            ProviderKind::Header => "header",
            ProviderKind::Oauth2 => "oauth2",
        }
    }
}

/// How a token reaches the bot: `sso.flows`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Flow {
    /// A `signin/tokenExchange` invoke posted to the conversation.
    Invoke,
    /// The token posted to the card's `sasUrl`.
    TokenPost,
}

impl Flow {
    pub fn as_str(self) -> &'static str {
        match self {
            Flow::Invoke => "invoke",
            Flow::TokenPost => "token_post",
        }
    }
}

/// `sso.oauth2.grant`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Grant {
    /// RFC 8693 token exchange.
    TokenExchange,
    /// Microsoft Entra ID's on-behalf-of flow.
    OnBehalfOf,
}

/// Server-side sign-in: which provider supplies user tokens and how they
/// reach the bot.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SsoConfig {
    pub provider: ProviderKind,
    /// Upper bound on one card's decision; then the card goes out unchanged.
    pub timeout_ms: u64,
    /// Enabled flows in order of preference.
    pub flows: Vec<Flow>,
    /// Hosts a `sasUrl` may point at: exact names, or `*.` for subdomains.
    pub token_post_allow_hosts: Vec<String>,
    /// Base64 AES-256 keys sealing the conversation token into `streamUrl`;
    /// the first seals, all open (rotation). Empty: a per-process key.
    pub seal_keys: Vec<String>,
    /// How long a decided card id is remembered (exchange once).
    pub decision_ttl_secs: u64,
    /// How many decided card ids are remembered at most.
    pub decision_capacity: usize,
    /// Without user binding: decide only for a stream whose sealed context
    /// names its owner (the start carried the provider's inputs) and whose
    /// handshake carries the same inputs; polls and streams without an
    /// owner decide nothing.
    pub require_owner: bool,
    pub http: Option<HttpProviderConfig>,
    #[serde(rename = "static")]
    pub static_token: Option<StaticProviderConfig>,
    pub header: Option<HeaderProviderConfig>,
    pub oauth2: Option<OAuth2ProviderConfig>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HttpProviderConfig {
    pub url: String,
    /// Headers copied from the end user's request to the auth API.
    #[serde(default = "default_forward_headers")]
    pub forward_headers: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StaticProviderConfig {
    pub token: String,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderProviderConfig {
    #[serde(default = "default_token_header")]
    pub name: String,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OAuth2ProviderConfig {
    /// The OAuth 2.0 token endpoint.
    pub token_url: String,
    pub grant: Grant,
    pub client_id: String,
    /// Environment variable holding the client secret.
    pub client_secret_env: Option<String>,
    /// File holding the client secret (e.g. a mounted Kubernetes Secret).
    pub client_secret_file: Option<PathBuf>,
    /// Header of the end user's request carrying their incoming token.
    #[serde(default = "default_token_header")]
    pub header: String,
    /// The `tokenExchangeResource.uri` values the proxy exchanges for
    /// (exact); a card naming another resource is shown unchanged.
    #[serde(default)]
    pub allowed_resources: Vec<String>,
}

/// Only the session cookie: `Authorization` on Direct Line calls is the
/// Direct Line token, which the auth API has no use for.
fn default_forward_headers() -> Vec<String> {
    vec!["cookie".into()]
}

fn default_token_header() -> String {
    "x-forwarded-access-token".into()
}

impl Default for SsoConfig {
    fn default() -> Self {
        SsoConfig {
            provider: ProviderKind::None,
            timeout_ms: 3_000,
            flows: vec![Flow::Invoke, Flow::TokenPost],
            token_post_allow_hosts: vec![
                "token.botframework.com".into(),
                "*.token.botframework.com".into(),
                "token.botframework.azure.us".into(),
            ],
            seal_keys: Vec::new(),
            decision_ttl_secs: 3_600,
            decision_capacity: 100_000,
            require_owner: false,
            http: None,
            static_token: None,
            header: None,
            oauth2: None,
        }
    }
}

impl SsoConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        check_range("sso.timeout_ms", self.timeout_ms, 1, 600_000)?;
        check_range(
            "sso.decision_ttl_secs",
            self.decision_ttl_secs,
            1,
            7 * 24 * 3_600,
        )?;
        check_range(
            "sso.decision_capacity",
            self.decision_capacity as u64,
            1,
            10_000_000,
        )?;
        self.validate_flows()?;
        self.validate_allow_hosts()?;
        for key in &self.seal_keys {
            decode_seal_key(key)
                .map_err(|allowed| ConfigError::invalid("sso.seal_keys", "<hidden>", allowed))?;
        }
        self.validate_provider_section()
    }

    fn validate_flows(&self) -> Result<(), ConfigError> {
        if self.flows.is_empty() {
            return Err(ConfigError::invalid(
                "sso.flows",
                "[]",
                "expected at least one of \"invoke\", \"token_post\"",
            ));
        }
        Ok(())
    }

    fn validate_allow_hosts(&self) -> Result<(), ConfigError> {
        for entry in &self.token_post_allow_hosts {
            token_post::validate_entry(entry).map_err(|allowed| {
                ConfigError::invalid("sso.token_post_allow_hosts", entry, allowed)
            })?;
        }
        Ok(())
    }

    fn validate_provider_section(&self) -> Result<(), ConfigError> {
        match self.provider {
            ProviderKind::Static => match &self.static_token {
                Some(s) if !s.token.is_empty() => Ok(()),
                _ => Err(missing_section("sso.static.token", "a non-empty token")),
            },
            ProviderKind::Http => {
                let http = self
                    .http
                    .as_ref()
                    .ok_or_else(|| missing_section("sso.http.url", "the auth API URL"))?;
                parse_base_url_with_query("sso.http.url", &http.url)?;
                validate_header_names("sso.http.forward_headers", &http.forward_headers)
            }
            ProviderKind::Header => {
                let name = self
                    .header
                    .as_ref()
                    .map_or_else(default_token_header, |h| h.name.clone());
                validate_header_names("sso.header.name", &[name])
            }
            ProviderKind::Oauth2 => self.validate_oauth2(),
            ProviderKind::None => Ok(()),
        }
    }

    fn validate_oauth2(&self) -> Result<(), ConfigError> {
        let oauth2 = self.oauth2.as_ref().ok_or_else(|| {
            missing_section("sso.oauth2.token_url", "the OAuth 2.0 token endpoint URL")
        })?;
        parse_base_url_with_query("sso.oauth2.token_url", &oauth2.token_url)?;
        if oauth2.client_id.is_empty() {
            return Err(ConfigError::invalid(
                "sso.oauth2.client_id",
                "",
                "expected the client (application) id",
            ));
        }
        if oauth2.client_secret_env.is_none() && oauth2.client_secret_file.is_none() {
            return Err(missing_section(
                "sso.oauth2.client_secret_env",
                "client_secret_env or client_secret_file (the secret is never written in the config)",
            ));
        }
        validate_header_names("sso.oauth2.header", std::slice::from_ref(&oauth2.header))?;
        if oauth2.allowed_resources.is_empty() {
            return Err(ConfigError::invalid(
                "sso.oauth2.allowed_resources",
                "[]",
                "required: the tokenExchangeResource.uri values the proxy may exchange for, e.g. [\"api://botid-123/access_as_user\"]; a card must not choose the token's audience",
            ));
        }
        if let Some(empty) = oauth2
            .allowed_resources
            .iter()
            .find(|r| r.trim().is_empty())
        {
            return Err(ConfigError::invalid(
                "sso.oauth2.allowed_resources",
                empty,
                "expected resource URIs such as \"api://botid-123/access_as_user\"",
            ));
        }
        Ok(())
    }

    pub fn enabled(&self) -> bool {
        self.provider != ProviderKind::None
    }

    /// Whether the provider reads the user's request (cookies, headers):
    /// then a foreign page must not be able to make that request.
    pub fn reads_user_request(&self) -> bool {
        matches!(
            self.provider,
            ProviderKind::Http | ProviderKind::Header | ProviderKind::Oauth2
        )
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    pub fn decision_ttl(&self) -> Duration {
        Duration::from_secs(self.decision_ttl_secs)
    }
}

fn missing_section(key: &str, allowed: &str) -> ConfigError {
    ConfigError::invalid(
        key,
        "",
        format!("is required by this sso.provider: {allowed}"),
    )
}

fn validate_header_names(key: &str, names: &[String]) -> Result<(), ConfigError> {
    for name in names {
        if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            return Err(ConfigError::invalid(
                key,
                name,
                "expected an HTTP header name",
            ));
        }
    }
    Ok(())
}

/// Like [`parse_base_url`] but a query is allowed (auth endpoints may need one).
/// Keys whose values must not appear in an error message.
/// Keys whose values are URLs whose query may hold a key (an Azure
/// Functions `code=`): printed without it.
const URLS_WITH_QUERY: [&str; 2] = ["sso.http.url", "sso.oauth2.token_url"];

impl Config {
    /// The config as the proxy would run it, defaults filled in and
    /// environment overrides applied, as TOML: so tools read what the proxy
    /// reads instead of re-implementing the override rules. Secrets and URL
    /// queries are redacted.
    pub fn effective_toml(&self) -> Result<String, ConfigError> {
        let mut table =
            toml::Table::try_from(self).map_err(|e| ConfigError::Print(e.to_string()))?;
        redact(&mut table, "");
        toml::to_string(&table).map_err(|e| ConfigError::Print(e.to_string()))
    }
}

fn redact(table: &mut toml::Table, prefix: &str) {
    for (key, value) in table.iter_mut() {
        let path = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        let hidden = || toml::Value::String("<redacted>".into());
        if let toml::Value::Table(inner) = value {
            redact(inner, &path);
        } else if holds_secret(&path) {
            *value = match value {
                toml::Value::Array(items) => toml::Value::Array(vec![hidden(); items.len()]),
                _ => hidden(),
            };
        } else if let (true, toml::Value::String(url)) =
            (URLS_WITH_QUERY.contains(&path.as_str()), &mut *value)
            && let Some((base, _)) = url.split_once('?')
        {
            *url = format!("{base}?<redacted>");
        }
    }
}

fn holds_secret(key: &str) -> bool {
    ["sso.seal_keys", "sso.static"]
        .iter()
        .any(|secret| key.starts_with(secret))
}

/// Like [`parse_base_url`] but a query is allowed (auth endpoints may need
/// one); an error shows the URL without its query, which may hold a key.
fn parse_base_url_with_query(key: &str, value: &str) -> Result<http::Uri, ConfigError> {
    let uri: Option<http::Uri> = value.parse().ok();
    match uri {
        Some(uri)
            if matches!(uri.scheme_str(), Some("http" | "https"))
                && uri.host().is_some_and(|h| !h.is_empty()) =>
        {
            Ok(uri)
        }
        _ => Err(ConfigError::invalid(
            key,
            value.split('?').next().unwrap_or_default(),
            "expected an absolute http/https URL with a host",
        )),
    }
}

impl Default for ListenConfig {
    fn default() -> Self {
        ListenConfig {
            addr: "127.0.0.1:8080".into(),
            tls_cert: None,
            tls_key: None,
            public_url: None,
            trust_forwarded_headers: false,
            allowed_origins: Vec::new(),
            max_connections: 20_000,
            header_read_timeout_ms: 10_000,
            idle_timeout_ms: 60_000,
            drain_timeout_ms: 10_000,
        }
    }
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            url: "https://directline.botframework.com".into(),
            ca_file: None,
            connect_timeout_ms: 5_000,
            request_timeout_ms: 30_000,
            pool_idle_timeout_ms: 90_000,
            pool_max_idle_per_host: 64,
        }
    }
}

impl Default for WebSocketConfig {
    fn default() -> Self {
        WebSocketConfig {
            max_message_bytes: 2 * 1024 * 1024,
            max_frame_bytes: 2 * 1024 * 1024,
            read_buffer_bytes: 64 * 1024,
            close_timeout_ms: 5_000,
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_request_body_bytes: 32 * 1024 * 1024,
            max_rewrite_body_bytes: 4 * 1024 * 1024,
            conversations_per_minute_per_client: 300,
            activities_per_minute_per_conversation: 300,
            max_streams_per_client: 500,
        }
    }
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
        apply_env_overrides(&mut table, env)?;
        let config: Config =
            serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
                let key = e.path().to_string();
                let message = if holds_secret(&key) {
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

    /// Checks what the schema cannot: formats, ranges and key combinations.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.listen.validate()?;
        self.upstream.validate()?;
        self.websocket.validate()?;
        self.limits.validate()?;
        self.directline.validate()?;
        self.reload.validate()?;
        self.admin.validate()?;
        self.sso.validate()?;
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

impl ListenConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        self.socket_addr()?;
        match (&self.tls_cert, &self.tls_key) {
            (Some(_), None) => {
                return Err(ConfigError::invalid(
                    "listen.tls_key",
                    "",
                    "must be set when listen.tls_cert is set (PEM private key path)",
                ));
            }
            (None, Some(_)) => {
                return Err(ConfigError::invalid(
                    "listen.tls_cert",
                    "",
                    "must be set when listen.tls_key is set (PEM certificate chain path)",
                ));
            }
            _ => {}
        }
        if let Some(url) = &self.public_url {
            parse_base_url("listen.public_url", url, PUBLIC_URL_SCHEMES)?;
        }
        for origin in &self.allowed_origins {
            if crate::origin::normalize(origin).is_none() {
                return Err(ConfigError::invalid(
                    "listen.allowed_origins",
                    origin,
                    "expected an exact origin: scheme (http or https), host and optional port, without path or wildcard, e.g. \"https://www.contoso.com\"",
                ));
            }
        }
        check_range(
            "listen.max_connections",
            self.max_connections as u64,
            1,
            10_000_000,
        )?;
        check_range(
            "listen.header_read_timeout_ms",
            self.header_read_timeout_ms,
            100,
            600_000,
        )?;
        check_range(
            "listen.idle_timeout_ms",
            self.idle_timeout_ms,
            100,
            3_600_000,
        )?;
        check_range(
            "listen.drain_timeout_ms",
            self.drain_timeout_ms,
            0,
            3_600_000,
        )
    }

    pub fn socket_addr(&self) -> Result<SocketAddr, ConfigError> {
        self.addr.parse().map_err(|_| {
            ConfigError::invalid(
                "listen.addr",
                &self.addr,
                "expected an IP socket address such as \"127.0.0.1:8080\" or \"[::]:8080\"",
            )
        })
    }

    pub fn tls_enabled(&self) -> bool {
        self.tls_cert.is_some()
    }

    pub fn header_read_timeout(&self) -> Duration {
        Duration::from_millis(self.header_read_timeout_ms)
    }

    pub fn drain_timeout(&self) -> Duration {
        Duration::from_millis(self.drain_timeout_ms)
    }

    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms)
    }

    /// The public base URL, parsed, if configured.
    pub fn public_base(&self) -> Result<Option<http::Uri>, ConfigError> {
        self.public_url
            .as_deref()
            .map(|url| parse_base_url("listen.public_url", url, PUBLIC_URL_SCHEMES))
            .transpose()
    }
}

impl UpstreamConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        parse_base_url("upstream.url", &self.url, &["http", "https"])?;
        check_range(
            "upstream.connect_timeout_ms",
            self.connect_timeout_ms,
            1,
            600_000,
        )?;
        check_range(
            "upstream.request_timeout_ms",
            self.request_timeout_ms,
            1,
            3_600_000,
        )?;
        check_range(
            "upstream.pool_idle_timeout_ms",
            self.pool_idle_timeout_ms,
            0,
            3_600_000,
        )?;
        check_range(
            "upstream.pool_max_idle_per_host",
            self.pool_max_idle_per_host as u64,
            0,
            100_000,
        )
    }

    /// The upstream base URL, parsed.
    pub fn base(&self) -> Result<http::Uri, ConfigError> {
        parse_base_url("upstream.url", &self.url, &["http", "https"])
    }

    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }

    pub fn pool_idle_timeout(&self) -> Duration {
        Duration::from_millis(self.pool_idle_timeout_ms)
    }
}

/// Direct Line activities are limited to 256K characters; one character can be
/// up to four UTF-8 bytes, so smaller limits could refuse legal traffic.
const MIN_MESSAGE_BYTES: u64 = 1024 * 1024;

impl WebSocketConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        check_range(
            "websocket.max_message_bytes",
            self.max_message_bytes as u64,
            MIN_MESSAGE_BYTES,
            256 * 1024 * 1024,
        )?;
        check_range(
            "websocket.max_frame_bytes",
            self.max_frame_bytes as u64,
            1024,
            self.max_message_bytes as u64,
        )?;
        check_range(
            "websocket.read_buffer_bytes",
            self.read_buffer_bytes as u64,
            256,
            1024 * 1024,
        )?;
        check_range(
            "websocket.close_timeout_ms",
            self.close_timeout_ms,
            1,
            600_000,
        )
    }

    pub fn close_timeout(&self) -> Duration {
        Duration::from_millis(self.close_timeout_ms)
    }
}

impl LimitsConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        check_range(
            "limits.max_request_body_bytes",
            self.max_request_body_bytes,
            1024,
            1024 * 1024 * 1024,
        )?;
        check_range(
            "limits.max_rewrite_body_bytes",
            self.max_rewrite_body_bytes as u64,
            64 * 1024,
            256 * 1024 * 1024,
        )?;
        for (key, value) in [
            (
                "limits.conversations_per_minute_per_client",
                self.conversations_per_minute_per_client,
            ),
            (
                "limits.activities_per_minute_per_conversation",
                self.activities_per_minute_per_conversation,
            ),
            ("limits.max_streams_per_client", self.max_streams_per_client),
        ] {
            check_range(key, u64::from(value), 0, 1_000_000)?;
        }
        Ok(())
    }
}

impl LogConfig {
    pub fn json(&self) -> bool {
        self.format == LogFormat::Json
    }
}

fn check_range(key: &str, value: u64, min: u64, max: u64) -> Result<(), ConfigError> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(ConfigError::invalid(
            key,
            value,
            format!("expected a number from {min} to {max}"),
        ))
    }
}

fn parse_base_url(key: &str, value: &str, schemes: &[&str]) -> Result<http::Uri, ConfigError> {
    let allowed = format!(
        "expected an absolute URL with scheme {} and a host, without query, e.g. \"https://directline.botframework.com\"",
        schemes.join("/")
    );
    let uri: http::Uri = value
        .parse()
        .map_err(|_| ConfigError::invalid(key, value, allowed.clone()))?;
    let scheme_ok = uri.scheme_str().is_some_and(|s| schemes.contains(&s));
    let has_host = uri.host().is_some_and(|h| !h.is_empty());
    if !scheme_ok || !has_host || uri.query().is_some() {
        return Err(ConfigError::invalid(key, value, allowed));
    }
    Ok(uri)
}

/// Merges `DLPROXY_SECTION__KEY=value` variables into `table`.
///
/// A value is read as a TOML literal when it is one (numbers, booleans,
/// arrays, quoted strings), otherwise as a plain string, so that
/// `DLPROXY_LISTEN__ADDR=0.0.0.0:8080` needs no quoting.
fn apply_env_overrides(
    table: &mut toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<(), ConfigError> {
    let mut vars: Vec<(String, String)> = env
        .into_iter()
        .filter(|(name, _)| name.starts_with(ENV_PREFIX))
        .collect();
    vars.sort();
    for (var, raw) in vars {
        let path: Vec<String> = var[ENV_PREFIX.len()..]
            .split(ENV_SEPARATOR)
            .map(str::to_ascii_lowercase)
            .collect();
        if path.len() < 2 || path.iter().any(String::is_empty) {
            return Err(ConfigError::Env {
                var,
                message: format!(
                    "expected {ENV_PREFIX}<SECTION>{ENV_SEPARATOR}<KEY>, e.g. DLPROXY_LISTEN__ADDR"
                ),
            });
        }
        insert_at(table, &path, parse_env_value(&raw)).map_err(|message| ConfigError::Env {
            var: var.clone(),
            message,
        })?;
    }
    Ok(())
}

fn parse_env_value(raw: &str) -> toml::Value {
    let wrapped = format!("v = {raw}");
    match wrapped.parse::<toml::Table>() {
        Ok(mut t) => t
            .remove("v")
            .unwrap_or_else(|| toml::Value::String(raw.to_string())),
        Err(_) => toml::Value::String(raw.to_string()),
    }
}

fn insert_at(table: &mut toml::Table, path: &[String], value: toml::Value) -> Result<(), String> {
    let (last, sections) = path.split_last().ok_or("empty key")?;
    let mut current = table;
    for section in sections {
        let entry = current
            .entry(section.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        current = entry
            .as_table_mut()
            .ok_or_else(|| format!("`{section}` is not a section"))?;
    }
    current.insert(last.clone(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
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

    #[test]
    fn empty_file_gives_documented_defaults() {
        let config = parse("").expect("defaults are valid");
        assert_eq!(config.listen.addr, "127.0.0.1:8080");
        assert_eq!(config.upstream.url, "https://directline.botframework.com");
        assert!(!config.listen.tls_enabled());
    }

    #[test]
    fn shipped_config_toml_is_valid() {
        let text = include_str!("../config.toml");
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
        assert_eq!(config.listen.addr, "0.0.0.0:9000");
        assert_eq!(config.upstream.request_timeout_ms, 1234);
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
        assert_eq!(
            config.directline.token_endpoint.as_deref(),
            Some(TOKEN_ENDPOINT)
        );
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
