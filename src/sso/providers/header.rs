//! `header`: an ingress auth proxy (e.g. oauth2-proxy) already put the
//! user's token in a request header.

use http::{HeaderMap, HeaderName};

use super::{ProviderError, ProviderSetupError};
use crate::config::HeaderProviderConfig;

pub fn header_name(
    config: Option<&HeaderProviderConfig>,
) -> Result<HeaderName, ProviderSetupError> {
    let name = config.map_or("x-forwarded-access-token", |c| c.name.as_str());
    HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| ProviderSetupError::Invalid("sso.header.name"))
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

/// The value of a header that appears exactly once, as text.
pub fn single_value<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<&'a str> {
    let mut values = headers.get_all(name).iter();
    match (values.next(), values.next()) {
        (Some(value), None) => value.to_str().ok(),
        _ => None,
    }
}

/// The token of a header value, with an optional `Bearer ` prefix removed.
pub fn bearer_value(value: &str) -> Option<&str> {
    let value = value.trim();
    let token = match value.split_once(char::is_whitespace) {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => rest.trim(),
        None if value.eq_ignore_ascii_case("bearer") => "",
        _ => value,
    };
    (!token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn bearer_prefix_is_optional_and_case_insensitive() {
        assert_eq!(bearer_value("Bearer abc"), Some("abc"));
        assert_eq!(bearer_value("bearer  abc "), Some("abc"));
        assert_eq!(bearer_value("abc"), Some("abc"));
        assert_eq!(bearer_value("Bearer "), None);
        assert_eq!(bearer_value(""), None);
    }

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
