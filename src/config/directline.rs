//! `[directline]`: the Direct Line secret held by the proxy (never by the
//! client), user binding and the mint quota.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use smart_default::SmartDefault;

use super::{ConfigError, header_names, value};

#[derive(Debug, Clone, SmartDefault, Deserialize, Serialize)]
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
}

impl DirectLineConfig {
    /// Whether the proxy holds the Direct Line secret.
    pub fn holds_secret(&self) -> bool {
        self.secret_env.is_some() || self.secret_file.is_some()
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
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
        if let Some(header) = &self.user_id_header {
            header_names("directline.user_id_header", std::slice::from_ref(header))?;
            if !self.holds_secret() {
                return Err(ConfigError::invalid(
                    "directline.user_id_header",
                    header,
                    "needs directline.secret_env or directline.secret_file: bound user ids are keyed by the secret and tokens are minted with it",
                ));
            }
        }
        Ok(())
    }
}
