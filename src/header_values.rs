//! Reading single header values the same way everywhere: the Direct Line
//! credentials and the SSO providers both take a token from a header.

use http::{HeaderMap, HeaderName};

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
    fn a_repeated_header_has_no_single_value() {
        let name = HeaderName::from_static("x-user");
        let mut headers = HeaderMap::new();
        headers.append(name.clone(), HeaderValue::from_static("a"));
        assert_eq!(single_value(&headers, &name), Some("a"));
        headers.append(name.clone(), HeaderValue::from_static("b"));
        assert_eq!(single_value(&headers, &name), None);
    }
}
