//! One entry of `sso.token_post_allow_hosts`: where a token post may go.
//!
//! An entry is `[https://]host[:port][/path-prefix]`, where `host` may be
//! `*.domain` for its subdomains. The port is 443 unless the entry names
//! another; a path prefix, when given, must match whole segments. Plain
//! `http://` is accepted only for a loopback host (local development), and
//! only when the entry says so. The grammar lives with the config, which
//! parses each entry at load (a bad one is refused, the key named);
//! `sso::allow_list` matches `sasUrl`s.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The error text when an entry is not of that form.
pub const ENTRY_FORM: &str = "expected [https://]host[:port][/path], e.g. \"token.botframework.com\", \"*.example.com:8443\" or \"http://127.0.0.1:3978/sas/\" (http only for loopback hosts)";

#[derive(Debug, Clone, PartialEq, Eq)]
enum Host {
    Exact(String),
    /// `.example.com` for `*.example.com`.
    Subdomains(String),
}

/// Where Bot Framework's token service posts from, in the public and US
/// government clouds: the default `sso.token_post_allow_hosts`.
const DEFAULT_ENTRIES: [&str; 3] = [
    "token.botframework.com",
    "*.token.botframework.com",
    "token.botframework.azure.us",
];

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "String", into = "String")]
pub struct TokenPostTarget {
    /// As written, so the effective config prints what was configured.
    entry: String,
    plain_http: bool,
    host: Host,
    port: u16,
    /// Without a trailing slash; empty for any path.
    path_prefix: String,
}

impl TokenPostTarget {
    pub fn defaults() -> Vec<TokenPostTarget> {
        DEFAULT_ENTRIES
            .iter()
            .filter_map(|e| e.parse().ok())
            .collect()
    }

    fn parse(written: &str) -> Option<TokenPostTarget> {
        let entry = written.trim();
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
        Some(TokenPostTarget {
            entry: written.to_string(),
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

    pub fn permits(&self, scheme: &str, host: &str, port: u16, path: &str) -> bool {
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

impl FromStr for TokenPostTarget {
    type Err = String;

    /// The error names the entry and says what is allowed.
    fn from_str(entry: &str) -> Result<TokenPostTarget, String> {
        TokenPostTarget::parse(entry)
            .ok_or_else(|| format!("invalid value {entry:?}, {ENTRY_FORM}"))
    }
}

impl TryFrom<String> for TokenPostTarget {
    type Error = String;

    fn try_from(entry: String) -> Result<TokenPostTarget, String> {
        entry.parse()
    }
}

impl From<TokenPostTarget> for String {
    fn from(target: TokenPostTarget) -> String {
        target.entry
    }
}

impl fmt::Display for TokenPostTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.entry)
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

pub fn has_dot_segments(path: &str) -> bool {
    path.split('/').any(|segment| {
        let decoded = segment.to_ascii_lowercase().replace("%2e", ".");
        decoded == "." || decoded == ".."
    })
}
