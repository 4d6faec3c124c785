//! `header`: an ingress auth proxy (e.g. oauth2-proxy) already put the
//! user's token in a request header.

use futures_util::future::{self, BoxFuture};
use http::{HeaderMap, HeaderName};

use super::{ProviderError, TokenProvider, TokenRequest};
use crate::config::{HeaderProviderConfig, default_token_header};
use crate::header_values::{bearer_value, single_value};

pub struct HeaderProvider {
    name: HeaderName,
}

impl HeaderProvider {
    pub fn new(config: Option<&HeaderProviderConfig>) -> HeaderProvider {
        HeaderProvider {
            name: config.map_or_else(default_token_header, |c| c.name.clone()),
        }
    }
}

impl TokenProvider for HeaderProvider {
    fn name(&self) -> &'static str {
        "header"
    }

    fn consumed_headers(&self) -> Vec<HeaderName> {
        vec![self.name.clone()]
    }

    fn token<'a>(
        &'a self,
        request: &'a TokenRequest<'a>,
    ) -> BoxFuture<'a, Result<String, ProviderError>> {
        Box::pin(future::ready(token_from(request.user_headers, &self.name)))
    }
}

/// The token in the one `name` header of the user's request. A repeated
/// header is refused: an ingress that appends instead of replacing would
/// otherwise let the client's own value through.
pub fn token_from(headers: &HeaderMap, name: &HeaderName) -> Result<String, ProviderError> {
    single_value(headers, name)
        .and_then(bearer_value)
        .map(str::to_string)
        .ok_or_else(|| {
            ProviderError::NoToken(format!("the request has no single usable {name} header"))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn missing_header_is_no_token() {
        let name = HeaderName::from_static("x-forwarded-access-token");
        let mut headers = HeaderMap::new();
        assert!(matches!(
            token_from(&headers, &name),
            Err(ProviderError::NoToken(_))
        ));
        headers.insert(name.clone(), HeaderValue::from_static("Bearer user-token"));
        assert_eq!(
            token_from(&headers, &name).ok().as_deref(),
            Some("user-token")
        );
    }
}
