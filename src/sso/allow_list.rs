//! Where the token post may send a user's token: `sso.token_post_allow_hosts`,
//! each entry a [`TokenPostTarget`]. A `sasUrl` with userinfo, dot segments
//! or encoded slashes is never posted to.

use http::Uri;

use crate::config::token_post::{TokenPostTarget, has_dot_segments};

#[derive(Debug, Clone, Default)]
pub struct AllowList {
    targets: Vec<TokenPostTarget>,
}

impl AllowList {
    pub fn new(targets: &[TokenPostTarget]) -> AllowList {
        AllowList {
            targets: targets.to_vec(),
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

fn has_encoded_separator(path: &str) -> bool {
    let lower = path.to_ascii_lowercase();
    lower.contains("%2f") || lower.contains("%5c") || path.contains('\\')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allow(entries: &[&str]) -> AllowList {
        let targets: Vec<TokenPostTarget> = entries
            .iter()
            .map(|entry| entry.parse().expect("a valid entry"))
            .collect();
        AllowList::new(&targets)
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
        assert!(
            "http://token.botframework.com"
                .parse::<TokenPostTarget>()
                .is_err()
        );
        assert!("http://*.localhost".parse::<TokenPostTarget>().is_err());
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
            assert!(bad.parse::<TokenPostTarget>().is_err(), "{bad}");
        }
    }
}
