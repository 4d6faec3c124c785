//! Where the token post may send a user's token: `sso.token_post_allow_hosts`.
//!
//! An entry is `[https://]host[:port][/path-prefix]`, where `host` may be
//! `*.domain` for its subdomains. The port is 443 unless the entry names
//! another; a path prefix, when given, must match whole segments. Plain
//! `http://` is accepted only for a loopback host (local development), and
//! only when the entry says so. A `sasUrl` with userinfo, dot segments or
//! encoded slashes is never posted to.

use http::Uri;

/// The error text when an entry is not of that form.
pub const ENTRY_FORM: &str = "expected [https://]host[:port][/path], e.g. \"token.botframework.com\", \"*.example.com:8443\" or \"http://127.0.0.1:3978/sas/\" (http only for loopback hosts)";

#[derive(Debug, Clone, PartialEq, Eq)]
enum Host {
    Exact(String),
    /// `.example.com` for `*.example.com`.
    Subdomains(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    plain_http: bool,
    host: Host,
    port: u16,
    /// Without a trailing slash; empty for any path.
    path_prefix: String,
}

impl Target {
    fn parse(entry: &str) -> Option<Target> {
        let entry = entry.trim();
        let (plain_http, rest) = match entry.split_once("://") {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("https") => (false, rest),
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => (true, rest),
            Some(_) => return None,
            None => (false, entry),
        };
        let (authority, path) = match rest.find('/') {
            Some(slash) => rest.split_at(slash),
            None => (rest, ""),
        };
        // The path keeps its case: servers compare paths case-sensitively.
        let authority = authority.to_ascii_lowercase();
        if authority.contains('@') || path.contains(['?', '#', '*', '\\', '%', ';']) {
            return None;
        }
        let authority = authority.as_str();
        let (host, wildcard) = match authority.strip_prefix("*.") {
            Some(domain) => (domain, true),
            None => (authority, false),
        };
        let parsed: http::uri::Authority = host.parse().ok()?;
        let port_text = parsed.as_str().rsplit_once(':').map(|(_, p)| p);
        if port_text.is_some_and(|p| !p.contains(']') && p.parse::<u16>().is_err()) {
            return None;
        }
        let name = parsed.host();
        if name.is_empty() || name.contains('*') || (wildcard && name.starts_with('[')) {
            return None;
        }
        if plain_http && (wildcard || !is_loopback(name)) {
            return None;
        }
        let default_port = if plain_http { 80 } else { 443 };
        if has_dot_segments(path) {
            return None;
        }
        Some(Target {
            plain_http,
            host: if wildcard {
                Host::Subdomains(format!(".{name}"))
            } else {
                Host::Exact(name.to_string())
            },
            port: parsed.port_u16().unwrap_or(default_port),
            path_prefix: path.trim_end_matches('/').to_string(),
        })
    }

    fn permits(&self, scheme: &str, host: &str, port: u16, path: &str) -> bool {
        let scheme_ok = scheme == "https" || (self.plain_http && scheme == "http");
        let host_ok = match &self.host {
            Host::Exact(name) => host == name,
            Host::Subdomains(suffix) => {
                host.ends_with(suffix.as_str()) && host.len() > suffix.len()
            }
        };
        let path_ok = self.path_prefix.is_empty()
            || path == self.path_prefix
            || path
                .strip_prefix(self.path_prefix.as_str())
                .is_some_and(|rest| rest.starts_with('/'));
        scheme_ok && host_ok && port == self.port && path_ok
    }
}

/// Checks one configured entry; the error says what is allowed.
pub fn validate_entry(entry: &str) -> Result<(), &'static str> {
    Target::parse(entry).map(|_| ()).ok_or(ENTRY_FORM)
}

#[derive(Debug, Clone, Default)]
pub struct AllowList {
    targets: Vec<Target>,
}

impl AllowList {
    /// From validated entries (an entry that does not parse allows nothing).
    pub fn new(entries: &[String]) -> AllowList {
        AllowList {
            targets: entries.iter().filter_map(|e| Target::parse(e)).collect(),
        }
    }

    pub fn permits(&self, url: &Uri) -> bool {
        let (Some(scheme), Some(authority)) = (url.scheme_str(), url.authority()) else {
            return false;
        };
        if authority.as_str().contains('@') {
            return false;
        }
        let scheme = scheme.to_ascii_lowercase();
        let default_port = match scheme.as_str() {
            "https" => 443,
            "http" => 80,
            _ => return false,
        };
        let host = authority.host().to_ascii_lowercase();
        let port = authority.port_u16().unwrap_or(default_port);
        let path = url.path();
        if has_dot_segments(path) || has_encoded_separator(path) || path.contains(';') {
            return false;
        }
        self.targets
            .iter()
            .any(|target| target.permits(&scheme, &host, port, path))
    }
}

fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn has_dot_segments(path: &str) -> bool {
    path.split('/').any(|segment| {
        let decoded = segment.to_ascii_lowercase().replace("%2e", ".");
        decoded == "." || decoded == ".."
    })
}

fn has_encoded_separator(path: &str) -> bool {
    let lower = path.to_ascii_lowercase();
    lower.contains("%2f") || lower.contains("%5c") || path.contains('\\')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allow(entries: &[&str]) -> AllowList {
        for entry in entries {
            assert!(validate_entry(entry).is_ok(), "{entry}");
        }
        AllowList::new(&entries.iter().map(|e| e.to_string()).collect::<Vec<_>>())
    }

    fn permits(list: &AllowList, url: &str) -> bool {
        list.permits(&url.parse().expect("uri"))
    }

    #[test]
    fn exact_hosts_and_subdomain_wildcards() {
        let list = allow(&["token.botframework.com", "*.example.com"]);
        assert!(permits(&list, "https://token.botframework.com/api/x"));
        assert!(permits(&list, "https://TOKEN.botframework.com:443/x"));
        assert!(permits(&list, "https://a.example.com/x"));
        assert!(permits(&list, "https://b.a.example.com/x"));
        assert!(!permits(&list, "https://example.com/x"));
        assert!(!permits(&list, "https://evil-example.com/x"));
        assert!(!permits(&list, "https://token.botframework.com.evil.io/x"));
        assert!(!permits(&list, "/relative"));
    }

    #[test]
    fn the_port_is_443_unless_the_entry_names_another() {
        let list = allow(&["token.botframework.com", "auth.example.com:8443"]);
        assert!(!permits(&list, "https://token.botframework.com:19103/x"));
        assert!(permits(&list, "https://auth.example.com:8443/x"));
        assert!(!permits(&list, "https://auth.example.com/x"));
    }

    #[test]
    fn a_path_prefix_matches_whole_segments_only() {
        let list = allow(&["token.botframework.com/api/oauth/"]);
        assert!(permits(
            &list,
            "https://token.botframework.com/api/oauth/PostToken?x=1"
        ));
        assert!(permits(&list, "https://token.botframework.com/api/oauth"));
        assert!(!permits(&list, "https://token.botframework.com/api/oauthx"));
        assert!(!permits(
            &list,
            "https://token.botframework.com/internal/admin"
        ));
        assert!(!permits(
            &list,
            "https://token.botframework.com/api/oauth/../../admin"
        ));
        assert!(!permits(
            &list,
            "https://token.botframework.com/api/oauth/%2e%2e/admin"
        ));
        assert!(!permits(
            &list,
            "https://token.botframework.com/api/oauth/..%2Fadmin"
        ));
        assert!(!permits(
            &list,
            "https://token.botframework.com/api/oauth/..;/admin"
        ));
        let cased = allow(&["Token.Example.com/API/PostToken"]);
        assert!(permits(&cased, "https://token.example.com/API/PostToken/x"));
        assert!(!permits(
            &cased,
            "https://token.example.com/api/posttoken/x"
        ));
    }

    #[test]
    fn plain_http_only_where_an_entry_names_it_for_a_loopback_host() {
        let list = allow(&["token.botframework.com", "127.0.0.1"]);
        assert!(!permits(&list, "http://token.botframework.com/x"));
        assert!(
            !permits(&list, "http://127.0.0.1:3978/sas/x"),
            "a bare loopback entry means https on 443"
        );
        let dev = allow(&["http://127.0.0.1:3978/sas/"]);
        assert!(permits(&dev, "http://127.0.0.1:3978/sas/x"));
        assert!(!permits(&dev, "http://127.0.0.1:3979/sas/x"));
        assert!(!permits(&dev, "http://127.0.0.1:3978/internal/admin"));
        assert!(validate_entry("http://token.botframework.com").is_err());
        assert!(validate_entry("http://*.localhost").is_err());
    }

    #[test]
    fn userinfo_never_passes() {
        let list = allow(&["token.botframework.com"]);
        assert!(!permits(
            &list,
            "https://token.botframework.com@evil.example/x"
        ));
        assert!(!permits(&list, "https://evil@token.botframework.com/x"));
    }

    #[test]
    fn malformed_entries_are_refused() {
        for bad in [
            "",
            "*",
            "*.",
            "a*.example.com",
            "ftp://example.com",
            "user@example.com",
            "example.com/a?b",
            "example.com/../x",
            "example.com:99999",
        ] {
            assert!(validate_entry(bad).is_err(), "{bad}");
        }
    }
}
