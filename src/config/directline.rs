//! `[directline]`: the Direct Line secret held by the proxy (never by the
//! client), user binding and the mint quota.

use std::path::PathBuf;

use http::{HeaderName, Uri};
use serde::{Deserialize, Serialize};
use smart_default::SmartDefault;

use super::{ConfigError, value};

#[derive(Debug, Clone, PartialEq, SmartDefault, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DirectLineConfig {
    /// Environment variable holding the Direct Line secret.
    pub secret_env: Option<String>,
    /// File holding the Direct Line secret (e.g. a mounted Kubernetes Secret).
    pub secret_file: Option<PathBuf>,
    /// Header (set by the ingress's auth proxy) whose value binds the minted
    /// token to that user.
    #[serde(
        deserialize_with = "value::some_header_name",
        serialize_with = "value::some_display",
        skip_serializing_if = "Option::is_none"
    )]
    pub user_id_header: Option<HeaderName>,
    /// Token mints allowed per client per minute, and the burst above that.
    #[default(30)]
    #[serde(deserialize_with = "value::within::<1, 1_000_000, _, _>")]
    pub mint_rate_per_minute: u32,
    #[default(10)]
    #[serde(deserialize_with = "value::within::<1, 1_000_000, _, _>")]
    pub mint_burst: u32,
    /// Without `user_id_header`, keep a client-chosen `user.id` when minting
    /// with the server-held secret (unsafe: a client can then speak as any
    /// user id it knows). Off: each mint gets a fresh random `dl_` id.
    pub allow_client_user_id: bool,
    /// A Copilot Studio agent's token endpoint: the token source instead of
    /// a secret.
    #[serde(
        deserialize_with = "value::some_agent_endpoint",
        serialize_with = "value::some_display",
        skip_serializing_if = "Option::is_none"
    )]
    pub token_endpoint: Option<Uri>,
    /// Hosts besides Power Platform's that `token_endpoint` may name (a
    /// private gateway, the local emulator).
    pub token_endpoint_hosts: Vec<String>,
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

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        self.validate_token_endpoint()?;
        if let (Some(_), Some(file)) = (&self.secret_env, &self.secret_file) {
            return Err(ConfigError::invalid(
                "directline.secret_file",
                file.display(),
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
        if let Some(header) = &self.user_id_header
            && !self.holds_secret()
        {
            return Err(ConfigError::invalid(
                "directline.user_id_header",
                header,
                "needs directline.secret_env or directline.secret_file: bound user ids are keyed by the secret and tokens are minted with it (a token_endpoint's tokens cannot carry a user id)",
            ));
        }
        Ok(())
    }

    /// `token_endpoint`: instead of a secret, a URL (parsed at load) on a
    /// Power Platform host or one of `token_endpoint_hosts`; plain `http`
    /// only for a listed host (the emulator).
    fn validate_token_endpoint(&self) -> Result<(), ConfigError> {
        const KEY: &str = "directline.token_endpoint";
        let Some(uri) = &self.token_endpoint else {
            return Ok(());
        };
        let endpoint = uri.to_string();
        if self.holds_secret() {
            return Err(ConfigError::invalid(
                KEY,
                &endpoint,
                "set either directline.token_endpoint or directline.secret_env / secret_file, not both",
            ));
        }
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
                &endpoint,
                "expected the agent's token endpoint, an absolute https URL (https://<env>.environment.api.powerplatform.com/powervirtualagents/botsbyschema/<schema>/directline/token?api-version=2022-03-01-preview); http only for a host in directline.token_endpoint_hosts",
            ));
        }
        if !power_platform && !listed {
            return Err(ConfigError::invalid(
                KEY,
                &endpoint,
                format!(
                    "the host {host} is not a Power Platform host (*.{}) and not in directline.token_endpoint_hosts",
                    POWER_PLATFORM_HOST_SUFFIXES.join(", *.")
                ),
            ));
        }
        Ok(())
    }
}
