//! Which web pages may use the proxy: `listen.allowed_origins`.
//!
//! Browsers attach the user's cookies to a WebSocket upgrade from any page,
//! and WebSockets have no CORS, so without this check a foreign page could
//! open a stream in the user's name. When the list is set, a request whose
//! `Origin` is present and not listed is refused before anything else
//! happens; requests without `Origin` come from non-browser clients, which
//! never carry another person's cookies, and pass.

use http::header::{self, HeaderMap, HeaderValue};

/// `scheme://host[:port]` in the form browsers send in `Origin`: scheme and
/// host lower-case, the default port left out. `None` for anything that is
/// not an origin (a path, a query, userinfo, a wildcard, `null`).
pub fn normalize(text: &str) -> Option<String> {
    if text.contains(['*', '@', '\\']) || text.chars().any(|c| c.is_whitespace()) {
        return None;
    }
    let uri: http::Uri = text.parse().ok()?;
    let scheme = uri.scheme_str()?.to_ascii_lowercase();
    let default_port = match scheme.as_str() {
        "http" => 80,
        "https" => 443,
        _ => return None,
    };
    let host = uri.host().filter(|h| !h.is_empty())?.to_ascii_lowercase();
    if uri.path_and_query().is_some_and(|p| p.as_str() != "/") {
        return None;
    }
    match uri.port_u16() {
        Some(port) if port != default_port => Some(format!("{scheme}://{host}:{port}")),
        _ => Some(format!("{scheme}://{host}")),
    }
}

/// What the origin check says about one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OriginCheck {
    /// No list configured, or no `Origin` header: nothing to enforce.
    Unchecked,
    /// The request's `Origin` is listed (normalised form).
    Allowed(HeaderValue),
    /// Present and not listed, malformed, repeated, or `null`.
    Refused,
}

#[derive(Debug, Clone, Default)]
pub struct OriginPolicy {
    /// Normalised; empty means no list is configured.
    allowed: Vec<String>,
}

impl OriginPolicy {
    /// From `listen.allowed_origins` (already validated: entries that do
    /// not normalise are left out).
    pub fn new(configured: &[String]) -> OriginPolicy {
        OriginPolicy {
            allowed: configured.iter().filter_map(|o| normalize(o)).collect(),
        }
    }

    pub fn is_enforced(&self) -> bool {
        !self.allowed.is_empty()
    }

    pub fn check(&self, headers: &HeaderMap) -> OriginCheck {
        if !self.is_enforced() {
            return OriginCheck::Unchecked;
        }
        let mut values = headers.get_all(header::ORIGIN).iter();
        let (Some(value), None) = (values.next(), values.next()) else {
            return if headers.contains_key(header::ORIGIN) {
                OriginCheck::Refused
            } else {
                OriginCheck::Unchecked
            };
        };
        let listed = value
            .to_str()
            .ok()
            .and_then(normalize)
            .filter(|origin| self.allowed.contains(origin));
        match listed.and_then(|origin| HeaderValue::from_str(&origin).ok()) {
            Some(origin) => OriginCheck::Allowed(origin),
            None => OriginCheck::Refused,
        }
    }

    /// With a list configured, CORS answers name only a listed origin: the
    /// request's own when it was allowed, none otherwise.
    pub fn restrict_cors(&self, check: &OriginCheck, response: &mut HeaderMap) {
        if !self.is_enforced() || !response.contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN) {
            return;
        }
        match check {
            OriginCheck::Allowed(origin) => {
                response.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
                response.append(header::VARY, HeaderValue::from_static("origin"));
            }
            OriginCheck::Unchecked | OriginCheck::Refused => {
                response.remove(header::ACCESS_CONTROL_ALLOW_ORIGIN);
                response.remove(header::ACCESS_CONTROL_ALLOW_CREDENTIALS);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(list: &[&str]) -> OriginPolicy {
        OriginPolicy::new(&list.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    fn with_origins(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(header::ORIGIN, HeaderValue::from_str(value).expect("value"));
        }
        headers
    }

    #[test]
    fn origins_are_normalised_as_browsers_send_them() {
        assert_eq!(
            normalize("https://WWW.Contoso.com").as_deref(),
            Some("https://www.contoso.com")
        );
        assert_eq!(
            normalize("https://www.contoso.com:443/").as_deref(),
            Some("https://www.contoso.com")
        );
        assert_eq!(
            normalize("http://localhost:3000").as_deref(),
            Some("http://localhost:3000")
        );
        assert_eq!(
            normalize("http://[::1]:80").as_deref(),
            Some("http://[::1]")
        );
    }

    #[test]
    fn anything_but_an_origin_is_refused() {
        for bad in [
            "null",
            "*",
            "https://*.contoso.com",
            "https://www.contoso.com/chat",
            "https://www.contoso.com?x=1",
            "https://user@www.contoso.com",
            "ftp://www.contoso.com",
            "www.contoso.com",
            "https://",
            "",
        ] {
            assert_eq!(normalize(bad), None, "{bad}");
        }
    }

    #[test]
    fn without_a_list_nothing_is_checked() {
        let open = policy(&[]);
        assert_eq!(
            open.check(&with_origins(&["https://evil.example"])),
            OriginCheck::Unchecked
        );
    }

    #[test]
    fn a_listed_origin_passes_and_any_other_is_refused() {
        let list = policy(&["https://www.contoso.com"]);
        assert_eq!(
            list.check(&with_origins(&["https://www.contoso.com"])),
            OriginCheck::Allowed(HeaderValue::from_static("https://www.contoso.com"))
        );
        assert_eq!(list.check(&HeaderMap::new()), OriginCheck::Unchecked);
        for refused in [
            vec!["https://evil.example"],
            vec!["null"],
            vec!["http://www.contoso.com"],
            vec!["https://www.contoso.com:8443"],
            vec!["https://www.contoso.com", "https://evil.example"],
            vec!["https://www.contoso.com", "https://www.contoso.com"],
        ] {
            assert_eq!(
                list.check(&with_origins(&refused)),
                OriginCheck::Refused,
                "{refused:?}"
            );
        }
    }

    #[test]
    fn cors_answers_name_only_the_listed_origin() {
        let list = policy(&["https://www.contoso.com"]);
        let mut answer = HeaderMap::new();
        answer.insert(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            HeaderValue::from_static("https://evil.example"),
        );
        let allowed = list.check(&with_origins(&["https://www.contoso.com"]));
        list.restrict_cors(&allowed, &mut answer);
        assert_eq!(
            answer[header::ACCESS_CONTROL_ALLOW_ORIGIN],
            "https://www.contoso.com"
        );
        assert_eq!(answer[header::VARY], "origin");

        let mut wildcard = HeaderMap::new();
        wildcard.insert(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            HeaderValue::from_static("*"),
        );
        wildcard.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
        list.restrict_cors(&OriginCheck::Unchecked, &mut wildcard);
        assert!(wildcard.is_empty(), "{wildcard:?}");
    }
}
