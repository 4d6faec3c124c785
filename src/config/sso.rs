//! `[sso]`: server-side sign-in. Which provider supplies user tokens, its
//! section, and how tokens reach the bot.

use std::path::PathBuf;
use std::time::Duration;

use base64::Engine;
use http::{HeaderName, Uri};
use serde::{Deserialize, Serialize};
use smart_default::SmartDefault;

use super::token_post::TokenPostTarget;
use super::{ConfigError, value};

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

#[derive(Debug, Clone, SmartDefault, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SsoConfig {
    pub provider: ProviderKind,
    /// Upper bound on one card's decision; then the card goes out unchanged.
    #[default(Duration::from_secs(3))]
    #[serde(
        rename = "timeout_ms",
        deserialize_with = "value::millis::<1, 600_000, _>",
        serialize_with = "value::as_millis"
    )]
    pub timeout: Duration,
    /// Enabled flows in order of preference.
    #[default(vec![Flow::Invoke, Flow::TokenPost])]
    pub flows: Vec<Flow>,
    /// Hosts a `sasUrl` may point at: exact names, or `*.` for subdomains.
    #[default(TokenPostTarget::defaults())]
    pub token_post_allow_hosts: Vec<TokenPostTarget>,
    /// Base64 AES-256 keys sealing the conversation token into `streamUrl`;
    /// the first seals, all open (rotation). Empty: a per-process key.
    pub seal_keys: Vec<String>,
    /// How long a decided card id is remembered (exchange once).
    #[default(Duration::from_secs(3_600))]
    #[serde(
        rename = "decision_ttl_secs",
        deserialize_with = "value::secs::<1, 604_800, _>",
        serialize_with = "value::as_secs"
    )]
    pub decision_ttl: Duration,
    /// How many decided card ids are remembered at most.
    #[default(100_000)]
    #[serde(deserialize_with = "value::within::<1, 10_000_000, _, _>")]
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
    #[serde(
        deserialize_with = "value::endpoint_url",
        serialize_with = "value::display"
    )]
    pub url: Uri,
    /// Headers copied from the end user's request to the auth API.
    #[serde(
        default = "default_forward_headers",
        deserialize_with = "value::header_names",
        serialize_with = "value::displays"
    )]
    pub forward_headers: Vec<HeaderName>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StaticProviderConfig {
    pub token: String,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderProviderConfig {
    #[serde(
        default = "default_token_header",
        deserialize_with = "value::header_name",
        serialize_with = "value::display"
    )]
    pub name: HeaderName,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OAuth2ProviderConfig {
    /// The OAuth 2.0 token endpoint.
    #[serde(
        deserialize_with = "value::endpoint_url",
        serialize_with = "value::display"
    )]
    pub token_url: Uri,
    pub grant: Grant,
    pub client_id: String,
    /// Environment variable holding the client secret.
    pub client_secret_env: Option<String>,
    /// File holding the client secret (e.g. a mounted Kubernetes Secret).
    pub client_secret_file: Option<PathBuf>,
    /// Header of the end user's request carrying their incoming token.
    #[serde(
        default = "default_token_header",
        deserialize_with = "value::header_name",
        serialize_with = "value::display"
    )]
    pub header: HeaderName,
    /// The `tokenExchangeResource.uri` values the proxy exchanges for
    /// (exact); a card naming another resource is shown unchanged.
    #[serde(default)]
    pub allowed_resources: Vec<String>,
}

/// Only the session cookie: `Authorization` on Direct Line calls is the
/// Direct Line token, which the auth API has no use for.
fn default_forward_headers() -> Vec<HeaderName> {
    vec![http::header::COOKIE]
}

/// `sso.header.name` and `sso.oauth2.header` when not set.
pub fn default_token_header() -> HeaderName {
    HeaderName::from_static("x-forwarded-access-token")
}

impl SsoConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.flows.is_empty() {
            return Err(ConfigError::invalid(
                "sso.flows",
                "[]",
                "expected at least one of \"invoke\", \"token_post\"",
            ));
        }
        for key in &self.seal_keys {
            decode_seal_key(key)
                .map_err(|allowed| ConfigError::invalid("sso.seal_keys", "<hidden>", allowed))?;
        }
        self.validate_provider_section()
    }

    fn validate_provider_section(&self) -> Result<(), ConfigError> {
        match self.provider {
            ProviderKind::Static => match &self.static_token {
                Some(s) if !s.token.is_empty() => Ok(()),
                _ => Err(missing_section("sso.static.token", "a non-empty token")),
            },
            ProviderKind::Http => match &self.http {
                Some(_) => Ok(()),
                None => Err(missing_section("sso.http.url", "the auth API URL")),
            },
            ProviderKind::Oauth2 => self.validate_oauth2(),
            ProviderKind::Header | ProviderKind::None => Ok(()),
        }
    }

    fn validate_oauth2(&self) -> Result<(), ConfigError> {
        let oauth2 = self.oauth2.as_ref().ok_or_else(|| {
            missing_section("sso.oauth2.token_url", "the OAuth 2.0 token endpoint URL")
        })?;
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
}

fn missing_section(key: &str, allowed: &str) -> ConfigError {
    ConfigError::invalid(
        key,
        "",
        format!("is required by this sso.provider: {allowed}"),
    )
}
