//! Where user tokens come from (`sso.provider`).

mod header;
mod http;
mod oauth2;

use ::http::{HeaderMap, HeaderName};
use futures_util::future::{self, BoxFuture};
use thiserror::Error;

use crate::config::{ProviderKind, SsoConfig};
use crate::upstream::HttpClient;

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

#[derive(Debug, Clone, Error)]
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
}

/// A source of user tokens (`sso.provider`). Adding one takes a file with
/// its implementation and one line in [`build`].
pub trait TokenProvider: Send + Sync {
    /// The `sso.provider` value, for logs and metrics.
    fn name(&self) -> &'static str;

    /// The end-user request headers this provider reads: only these are
    /// kept from the user's request, and none of them reaches Direct Line.
    fn consumed_headers(&self) -> Vec<HeaderName>;

    /// Whether the provider may be asked for a token for this resource
    /// (`tokenExchangeResource.uri`).
    fn allows_resource(&self, _resource: Option<&str>) -> bool {
        true
    }

    fn token<'a>(
        &'a self,
        request: &'a TokenRequest<'a>,
    ) -> BoxFuture<'a, Result<String, ProviderError>>;
}

/// `static`: the same token for everyone (development only).
struct StaticProvider(String);

impl TokenProvider for StaticProvider {
    fn name(&self) -> &'static str {
        "static"
    }

    fn consumed_headers(&self) -> Vec<HeaderName> {
        Vec::new()
    }

    fn token<'a>(
        &'a self,
        _request: &'a TokenRequest<'a>,
    ) -> BoxFuture<'a, Result<String, ProviderError>> {
        Box::pin(future::ready(Ok(self.0.clone())))
    }
}

/// The configured provider; `None` when SSO is off (`provider = "none"`).
pub fn build(
    config: &SsoConfig,
    client: HttpClient,
) -> Result<Option<Box<dyn TokenProvider>>, ProviderSetupError> {
    let missing = || ProviderSetupError::MissingSection(config.provider.name());
    let provider: Box<dyn TokenProvider> = match config.provider {
        ProviderKind::None => return Ok(None),
        ProviderKind::Static => {
            let token = config.static_token.as_ref().ok_or_else(missing)?;
            Box::new(StaticProvider(token.token.clone()))
        }
        ProviderKind::Http => Box::new(http::HttpProvider::new(
            config.http.as_ref().ok_or_else(missing)?,
            client,
        )),
        ProviderKind::Header => Box::new(header::HeaderProvider::new(config.header.as_ref())),
        ProviderKind::Oauth2 => Box::new(oauth2::OAuth2Provider::new(
            config.oauth2.as_ref().ok_or_else(missing)?,
            client,
        )?),
    };
    Ok(Some(provider))
}
