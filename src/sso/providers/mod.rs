//! Where user tokens come from (`sso.provider`).

mod header;
mod http;
mod oauth2;

use ::http::{HeaderMap, HeaderName};
use thiserror::Error;

use crate::config::{ProviderKind, SsoConfig};
use crate::upstream::HttpClient;

pub use self::header::{bearer_value, single_value};

/// What the provider is asked for: the token of this conversation's user,
/// for this card.
pub struct TokenRequest<'a> {
    pub conversation_id: &'a str,
    pub user_id: &'a str,
    pub connection_name: &'a str,
    pub resource_uri: Option<&'a str>,
    pub provider_id: Option<&'a str>,
    /// The end user's request headers the provider reads (and only those).
    pub user_headers: &'a HeaderMap,
}

#[derive(Debug, Error)]
pub enum ProviderError {
    /// The provider answered: this user has no token (signed out, 401...).
    #[error("no token: {0}")]
    NoToken(String),
    /// The provider could not answer (down, 5xx, malformed answer).
    #[error("provider failed: {0}")]
    Failed(String),
}

#[derive(Debug, Error)]
pub enum ProviderSetupError {
    #[error("sso.oauth2: cannot read the client secret from {source_name}: {message}")]
    ClientSecret {
        source_name: String,
        message: String,
    },
    #[error("sso.provider {0:?} is missing its section")]
    MissingSection(&'static str),
    #[error("{0} is invalid")]
    Invalid(&'static str),
}

pub enum Provider {
    Static(String),
    Http(http::HttpProvider),
    Header(HeaderName),
    OAuth2(oauth2::OAuth2Provider),
}

impl Provider {
    /// `None` when SSO is off (`provider = "none"`).
    pub fn from_config(
        config: &SsoConfig,
        client: HttpClient,
    ) -> Result<Option<Provider>, ProviderSetupError> {
        let missing = || ProviderSetupError::MissingSection(config.provider.name());
        let provider = match config.provider {
            ProviderKind::None => return Ok(None),
            ProviderKind::Static => {
                let token = config.static_token.as_ref().ok_or_else(missing)?;
                Provider::Static(token.token.clone())
            }
            ProviderKind::Http => {
                let http = config.http.as_ref().ok_or_else(missing)?;
                Provider::Http(http::HttpProvider::new(http, client)?)
            }
            ProviderKind::Header => Provider::Header(header::header_name(config.header.as_ref())?),
            ProviderKind::Oauth2 => {
                let oauth2 = config.oauth2.as_ref().ok_or_else(missing)?;
                Provider::OAuth2(oauth2::OAuth2Provider::new(oauth2, client)?)
            }
        };
        Ok(Some(provider))
    }

    /// The end-user headers this provider reads; only these are kept from
    /// the user's request.
    pub fn header_names(&self) -> Vec<HeaderName> {
        match self {
            Provider::Static(_) => Vec::new(),
            Provider::Http(http) => http.forward_headers().to_vec(),
            Provider::Header(name) => vec![name.clone()],
            Provider::OAuth2(oauth2) => vec![oauth2.header().clone()],
        }
    }

    /// Whether the provider may be asked for a token for this resource
    /// (`tokenExchangeResource.uri`): only `oauth2` mints tokens for an
    /// audience, and only for `sso.oauth2.allowed_resources`.
    pub fn allows_resource(&self, resource: Option<&str>) -> bool {
        match self {
            Provider::OAuth2(oauth2) => oauth2.allows_resource(resource),
            Provider::Static(_) | Provider::Http(_) | Provider::Header(_) => true,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Provider::Static(_) => "static",
            Provider::Http(_) => "http",
            Provider::Header(_) => "header",
            Provider::OAuth2(_) => "oauth2",
        }
    }

    pub async fn token(&self, request: &TokenRequest<'_>) -> Result<String, ProviderError> {
        match self {
            Provider::Static(token) => Ok(token.clone()),
            Provider::Http(http) => http.token(request).await,
            Provider::Header(name) => header::token_from(request.user_headers, name),
            Provider::OAuth2(oauth2) => oauth2.token(request).await,
        }
    }
}
