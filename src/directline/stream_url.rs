//! Rewriting `streamUrl` in conversation responses so the client's
//! WebSocket comes to the proxy, not to Direct Line.
//!
//! Only the string value of `streamUrl` changes; every other byte of the body
//! stays as the upstream sent it.

use http::HeaderMap;
use http::uri::{Authority, Uri};
use serde::Deserialize;
use serde_json::value::RawValue;
use thiserror::Error;

use crate::header_hygiene::{X_FORWARDED_HOST, X_FORWARDED_PROTO, nearest_forwarded};

#[derive(Debug, Error, PartialEq, Eq)]
pub enum RewriteError {
    #[error("response body is not a JSON object: {0}")]
    NotJson(String),
    #[error("streamUrl is not a string URL")]
    BadStreamUrl,
}

/// Where clients reach the proxy's WebSocket endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicBase {
    /// `ws` or `wss`.
    scheme: &'static str,
    authority: Authority,
    /// Path before `/v3/directline`, without a trailing slash (often empty).
    path_prefix: String,
}

impl PublicBase {
    /// From the configured `listen.public_url`.
    pub fn from_config(url: &Uri) -> Option<PublicBase> {
        Some(PublicBase {
            scheme: ws_scheme(url.scheme_str()?)?,
            authority: url.authority()?.clone(),
            path_prefix: url.path().trim_end_matches('/').to_string(),
        })
    }

    /// From the request: its Host (or `:authority`) and the listener's
    /// scheme, or the `X-Forwarded-Proto/-Host` of a trusted ingress.
    pub fn from_request(
        uri: &Uri,
        headers: &HeaderMap,
        tls: bool,
        trust_forwarded: bool,
    ) -> Option<PublicBase> {
        let forwarded = |name: &http::HeaderName| {
            trust_forwarded
                .then(|| nearest_forwarded(headers, name))
                .flatten()
        };
        let (proto_name, host_name) = (X_FORWARDED_PROTO, X_FORWARDED_HOST);
        let scheme = match forwarded(&proto_name) {
            Some(proto) => ws_scheme(&proto.to_ascii_lowercase())?,
            None if tls => "wss",
            None => "ws",
        };
        let host = forwarded(&host_name)
            .or_else(|| headers.get(http::header::HOST)?.to_str().ok())
            .or_else(|| uri.authority().map(Authority::as_str))?;
        Some(PublicBase {
            scheme,
            authority: host_authority(host)?,
            path_prefix: String::new(),
        })
    }

    fn url_for(
        &self,
        upstream_url: &Uri,
        upstream_base_path: &str,
        extra: Option<(&str, &str)>,
    ) -> Option<String> {
        let path_and_query = upstream_url.path_and_query()?.as_str();
        // What follows the public authority must start a path or a query:
        // `*` (the asterisk form) would become part of the host.
        if !path_and_query.starts_with(['/', '?']) {
            return None;
        }
        let prefix = upstream_base_path.trim_end_matches('/');
        // Only a whole-segment prefix is the base path: `/base` is not in
        // `/basement`, whose remainder would run into the public authority.
        let relative = match path_and_query.strip_prefix(prefix) {
            Some(rest) if rest.is_empty() || rest.starts_with(['/', '?']) => rest,
            _ => path_and_query,
        };
        let mut url = format!(
            "{}://{}{}{}",
            self.scheme, self.authority, self.path_prefix, relative
        );
        if let Some((name, value)) = extra {
            url.push(if upstream_url.query().is_some() {
                '&'
            } else {
                '?'
            });
            url.push_str(name);
            url.push('=');
            url.extend(form_urlencoded::byte_serialize(value.as_bytes()));
        }
        Some(url)
    }
}

/// A `Host` value as a bare authority: userinfo (`user@evil.example`) is
/// never an address clients should be sent to.
pub fn host_authority(host: &str) -> Option<Authority> {
    let authority: Authority = host.parse().ok()?;
    (!authority.as_str().contains('@') && !authority.host().is_empty()).then_some(authority)
}

/// Whether a `Host` value is one [`host_authority`] accepts. The common
/// shape (`name` or `name:port`; letters, digits, dots and dashes) is
/// recognised without parsing an `Authority`, which copies the value to the
/// heap (issue 9: this runs on every request); anything else is parsed.
pub fn is_host_authority(host: &[u8]) -> bool {
    is_plain_host(host)
        || std::str::from_utf8(host)
            .ok()
            .and_then(host_authority)
            .is_some()
}

fn is_plain_host(host: &[u8]) -> bool {
    let (name, port) = match memchr::memchr(b':', host) {
        Some(at) => (&host[..at], Some(&host[at + 1..])),
        None => (host, None),
    };
    let name_ok = !name.is_empty()
        && name
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-'));
    let port_ok = port.is_none_or(|port| {
        (1..=5).contains(&port.len())
            && port.iter().all(u8::is_ascii_digit)
            && std::str::from_utf8(port).is_ok_and(|p| p.parse::<u16>().is_ok())
    });
    name_ok && port_ok
}

fn ws_scheme(scheme: &str) -> Option<&'static str> {
    match scheme {
        "http" | "ws" => Some("ws"),
        "https" | "wss" => Some("wss"),
        _ => None,
    }
}

#[derive(Deserialize)]
struct StreamUrlField<'a> {
    #[serde(rename = "streamUrl", borrow)]
    stream_url: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct ConversationFields {
    #[serde(rename = "conversationId")]
    conversation_id: Option<String>,
    token: Option<String>,
}

/// `conversationId` and `token` of a conversation response, when both are there.
pub fn conversation_and_token(body: &[u8]) -> Option<(String, String)> {
    if !super::is_json_object(body) {
        return None;
    }
    let fields: ConversationFields = serde_json::from_slice(body).ok()?;
    Some((fields.conversation_id?, fields.token?))
}

/// Whether a query key is `name` as a server reads it: `+` is a space,
/// escapes decoded, surrounding spaces and case ignored. Only a key with an
/// escape or a `+` is decoded (into a new string).
fn key_is(key: &str, name: &str) -> bool {
    if !key.contains(['%', '+']) {
        return key.trim().eq_ignore_ascii_case(name);
    }
    percent_encoding::percent_decode_str(&key.replace('+', " "))
        .decode_utf8_lossy()
        .trim()
        .eq_ignore_ascii_case(name)
}

fn query_key(pair: &str) -> &str {
    memchr::memchr(b'=', pair.as_bytes()).map_or(pair, |at| pair.get(..at).unwrap_or(pair))
}

/// Whether `uri` has a query parameter called `name`, spelled as
/// [`take_query_params`] finds it; checked first, so a request without one
/// (nearly all) keeps its `Uri` as it is.
pub fn has_query_param(uri: &Uri, name: &str) -> bool {
    uri.query().is_some_and(|query| {
        super::split_at_byte(query, b'&').any(|pair| key_is(query_key(pair), name))
    })
}

/// Removes every query parameter called `name` from `uri` (however its
/// name is spelled: percent-escaped or in another case, as servers decode
/// it), keeping every other byte of the query; returns their (undecoded)
/// values, in order. A query that cannot be rebuilt is dropped whole, so
/// the parameter never survives.
pub fn take_query_params(uri: &Uri, name: &str) -> (Uri, Vec<String>) {
    let Some(query) = uri.query() else {
        return (uri.clone(), Vec::new());
    };
    if !has_query_param(uri, name) {
        return (uri.clone(), Vec::new());
    }
    let mut values = Vec::new();
    let kept: Vec<&str> = super::split_at_byte(query, b'&')
        .filter(|pair| {
            let matches = key_is(query_key(pair), name);
            if matches {
                let value = pair.split_once('=').map_or("", |(_, value)| value);
                values.push(value.to_string());
            }
            !matches
        })
        .collect();
    let path_and_query = if kept.is_empty() {
        uri.path().to_string()
    } else {
        format!("{}?{}", uri.path(), kept.join("&"))
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = path_and_query
        .parse()
        .ok()
        .or_else(|| uri.path().parse().ok());
    let stripped = Uri::from_parts(parts).unwrap_or_else(|_| Uri::from_static("/"));
    (stripped, values)
}

/// Returns the body with `streamUrl` pointing at `public` (plus the query
/// parameter `extra`, if any), or `None` when the body has no `streamUrl`.
pub fn rewrite(
    body: &[u8],
    public: &PublicBase,
    upstream_base_path: &str,
    extra: Option<(&str, &str)>,
) -> Result<Option<Vec<u8>>, RewriteError> {
    if !super::is_json_object(body) {
        return Err(RewriteError::NotJson("not an object".into()));
    }
    let field: StreamUrlField<'_> =
        serde_json::from_slice(body).map_err(|e| RewriteError::NotJson(e.to_string()))?;
    let Some(raw) = field.stream_url else {
        return Ok(None);
    };
    let current: String =
        serde_json::from_str(raw.get()).map_err(|_| RewriteError::BadStreamUrl)?;
    let upstream_url: Uri = current.parse().map_err(|_| RewriteError::BadStreamUrl)?;
    let new_url = public
        .url_for(&upstream_url, upstream_base_path, extra)
        .ok_or(RewriteError::BadStreamUrl)?;
    let encoded = serde_json::to_string(&new_url).map_err(|_| RewriteError::BadStreamUrl)?;
    // The raw value borrows from `body`, so its position is exact.
    let start = raw.get().as_ptr() as usize - body.as_ptr() as usize;
    let end = start + raw.get().len();
    let mut out = Vec::with_capacity(body.len() + encoded.len());
    out.extend_from_slice(&body[..start]);
    out.extend_from_slice(encoded.as_bytes());
    out.extend_from_slice(&body[end..]);
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use proptest::prelude::*;

    proptest! {
        /// The shortcut never accepts a `Host` the parse refuses.
        #[test]
        fn the_host_shortcut_agrees_with_the_authority_parse(
            host in "[a-zA-Z0-9.:@\\[\\]%_ -]{0,12}|[a-z.]{1,8}:[0-9]{0,7}",
        ) {
            prop_assert_eq!(is_host_authority(host.as_bytes()), host_authority(&host).is_some());
        }
    }

    fn base(url: &str) -> PublicBase {
        PublicBase::from_config(&url.parse().expect("uri")).expect("base")
    }

    fn rewritten(body: &str, public: &PublicBase) -> String {
        let out = rewrite(body.as_bytes(), public, "/", None)
            .expect("rewrite")
            .expect("changed");
        String::from_utf8(out).expect("utf8")
    }

    #[test]
    fn only_the_stream_url_value_changes() {
        let body = "{\r\n  \"conversationId\": \"abc\",\r\n  \"token\": \"tok\",\r\n  \"expires_in\": 1800,\r\n  \"streamUrl\": \"wss://directline.botframework.com/v3/directline/conversations/abc/stream?watermark=-&t=st.k\"\r\n}";
        let out = rewritten(body, &base("https://chat.example.com"));
        let expected = body.replace(
            "wss://directline.botframework.com/",
            "wss://chat.example.com/",
        );
        assert_eq!(out, expected);
    }

    #[test]
    fn plain_public_url_gives_ws_and_keeps_prefix_path_and_query() {
        let body =
            r#"{"streamUrl":"wss://dl/v3/directline/conversations/c/stream?t=x&watermark=7"}"#;
        let out = rewritten(body, &base("http://127.0.0.1:9000/chat/"));
        assert_eq!(
            out,
            r#"{"streamUrl":"ws://127.0.0.1:9000/chat/v3/directline/conversations/c/stream?t=x&watermark=7"}"#
        );
    }

    #[test]
    fn upstream_base_path_is_replaced_by_the_public_prefix() {
        let body = r#"{"streamUrl":"ws://up/base/v3/directline/conversations/c/stream?t=x"}"#;
        let out = rewrite(body.as_bytes(), &base("wss://p"), "/base", None)
            .expect("ok")
            .expect("changed");
        assert_eq!(
            String::from_utf8(out).expect("utf8"),
            r#"{"streamUrl":"wss://p/v3/directline/conversations/c/stream?t=x"}"#
        );
    }

    #[test]
    fn the_base_path_is_stripped_only_as_whole_segments() {
        let body = r#"{"streamUrl":"wss://dl/based/v3/directline/conversations/c/stream?t=x"}"#;
        for public in ["wss://p", "wss://p/chat"] {
            let out = rewrite(body.as_bytes(), &base(public), "/base", None)
                .expect("ok")
                .expect("changed");
            assert_eq!(
                String::from_utf8(out).expect("utf8"),
                format!(
                    r#"{{"streamUrl":"{public}/based/v3/directline/conversations/c/stream?t=x"}}"#
                )
            );
        }
        let at_the_end = r#"{"streamUrl":"wss://dl/base?t=x"}"#;
        let out = rewrite(at_the_end.as_bytes(), &base("wss://p/chat"), "/base/", None)
            .expect("ok")
            .expect("changed");
        assert_eq!(
            String::from_utf8(out).expect("utf8"),
            r#"{"streamUrl":"wss://p/chat?t=x"}"#
        );
    }

    #[test]
    fn an_extra_parameter_is_appended_encoded() {
        let body = r#"{"streamUrl":"wss://dl/v3/directline/conversations/c/stream?t=x"}"#;
        let out = rewrite(
            body.as_bytes(),
            &base("http://p"),
            "/",
            Some(("dlpx", "a+b/c")),
        )
        .expect("ok")
        .expect("changed");
        assert_eq!(
            String::from_utf8(out).expect("utf8"),
            r#"{"streamUrl":"ws://p/v3/directline/conversations/c/stream?t=x&dlpx=a%2Bb%2Fc"}"#
        );
    }

    #[test]
    fn a_query_parameter_is_taken_out_and_the_rest_kept() {
        let uri: Uri = "/v3/directline/conversations/c/stream?watermark=-&dlpx=SEALED&t=a%20b"
            .parse()
            .expect("uri");
        let (stripped, values) = take_query_params(&uri, "dlpx");
        assert_eq!(values, vec!["SEALED".to_string()]);
        assert_eq!(
            stripped,
            "/v3/directline/conversations/c/stream?watermark=-&t=a%20b"
        );
        let only: Uri = "/s?dlpx=x".parse().expect("uri");
        assert_eq!(take_query_params(&only, "dlpx").0, "/s");
        let none: Uri = "/s?t=1".parse().expect("uri");
        assert_eq!(take_query_params(&none, "dlpx"), (none.clone(), Vec::new()));
    }

    #[test]
    fn every_spelling_and_repetition_of_the_parameter_is_taken_out() {
        let uri: Uri = "/s?dlpx=a&t=1&DLPX=b&%64lpx=c&dlpx&d%6Cpx=e&dlpxx=keep"
            .parse()
            .expect("uri");
        let (stripped, values) = take_query_params(&uri, "dlpx");
        assert_eq!(values, vec!["a", "b", "c", "", "e"]);
        assert_eq!(stripped, "/s?t=1&dlpxx=keep");
    }

    #[test]
    fn a_host_with_userinfo_is_no_public_base() {
        assert!(host_authority("user@evil.example").is_none());
        assert!(!is_host_authority(b"user@evil.example"));
        assert!(is_host_authority(b"chat.example.com:8443"));
        assert!(is_host_authority(b"[::1]:8080"));
        assert!(!is_host_authority(b""));
        assert!(!is_host_authority(b":80"));
        assert!(host_authority("chat.example.com:8443").is_some());
        assert!(host_authority("").is_none());
        let mut headers = HeaderMap::new();
        headers.insert(
            http::header::HOST,
            HeaderValue::from_static("user@evil.example"),
        );
        let uri: Uri = "/".parse().expect("uri");
        assert_eq!(PublicBase::from_request(&uri, &headers, false, false), None);
    }

    #[test]
    fn forwarded_host_is_the_entry_the_ingress_appended() {
        let mut headers = HeaderMap::new();
        headers.insert(
            http::header::HOST,
            HeaderValue::from_static("internal:8080"),
        );
        headers.insert(
            X_FORWARDED_HOST,
            HeaderValue::from_static("evil.example, chat.example.com"),
        );
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http, https"));
        let uri: Uri = "/".parse().expect("uri");
        let trusted = PublicBase::from_request(&uri, &headers, false, true).expect("base");
        assert_eq!(trusted, base("wss://chat.example.com"));
    }

    #[test]
    fn conversation_and_token_are_read_from_the_body() {
        let body = br#"{"conversationId":"c","token":"tok","streamUrl":"x"}"#;
        assert_eq!(
            conversation_and_token(body),
            Some(("c".into(), "tok".into()))
        );
        assert_eq!(conversation_and_token(br#"{"conversationId":"c"}"#), None);
    }

    #[test]
    fn a_body_that_is_an_array_is_not_a_conversation() {
        // serde reads a struct from an array too, positionally.
        assert_eq!(
            rewrite(br#"["wss://dl/s"]"#, &base("http://p"), "/", None),
            Err(RewriteError::NotJson("not an object".into()))
        );
        assert_eq!(conversation_and_token(br#"["c", "tok"]"#), None);
    }

    #[test]
    fn body_without_stream_url_is_left_alone() {
        assert_eq!(
            rewrite(br#"{"conversationId":"c"}"#, &base("http://p"), "/", None),
            Ok(None)
        );
    }

    #[test]
    fn malformed_bodies_are_errors_not_panics() {
        assert!(rewrite(b"not json", &base("http://p"), "/", None).is_err());
        assert_eq!(
            rewrite(br#"{"streamUrl":42}"#, &base("http://p"), "/", None),
            Err(RewriteError::BadStreamUrl)
        );
        assert_eq!(
            rewrite(br#"{"streamUrl":"::"}"#, &base("http://p"), "/", None),
            Err(RewriteError::BadStreamUrl)
        );
    }

    #[test]
    fn a_stream_url_without_a_path_is_refused() {
        for url in ["*", "dl.example:443"] {
            let body = format!(r#"{{"streamUrl":"{url}"}}"#);
            assert_eq!(
                rewrite(body.as_bytes(), &base("http://p"), "/", None),
                Err(RewriteError::BadStreamUrl),
                "{url}"
            );
        }
    }

    #[test]
    fn escaped_characters_in_the_url_are_decoded_and_reencoded() {
        let body =
            r#"{"streamUrl":"wss:\/\/dl\/v3\/directline\/conversations\/c\/stream?t=a\u0026b"}"#;
        let out = rewritten(body, &base("http://p"));
        assert_eq!(
            out,
            r#"{"streamUrl":"ws://p/v3/directline/conversations/c/stream?t=a&b"}"#
        );
    }

    #[test]
    fn request_host_and_listener_scheme_derive_the_base() {
        let mut headers = HeaderMap::new();
        headers.insert(
            http::header::HOST,
            HeaderValue::from_static("proxy.local:8443"),
        );
        let uri: Uri = "/v3/directline/conversations".parse().expect("uri");
        let derived = PublicBase::from_request(&uri, &headers, true, false).expect("base");
        assert_eq!(derived, base("wss://proxy.local:8443"));
    }

    #[test]
    fn forwarded_headers_count_only_when_trusted() {
        let mut headers = HeaderMap::new();
        headers.insert(
            http::header::HOST,
            HeaderValue::from_static("internal:8080"),
        );
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("https"));
        headers.insert(
            X_FORWARDED_HOST,
            HeaderValue::from_static("chat.example.com"),
        );
        let uri: Uri = "/".parse().expect("uri");
        let untrusted = PublicBase::from_request(&uri, &headers, false, false).expect("base");
        assert_eq!(untrusted, base("ws://internal:8080"));
        let trusted = PublicBase::from_request(&uri, &headers, false, true).expect("base");
        assert_eq!(trusted, base("wss://chat.example.com"));
    }

    #[test]
    fn a_host_header_that_is_not_an_authority_is_refused() {
        let mut headers = HeaderMap::new();
        headers.insert(http::header::HOST, HeaderValue::from_static("evil/path?x"));
        let uri: Uri = "/".parse().expect("uri");
        assert_eq!(PublicBase::from_request(&uri, &headers, false, false), None);
    }
}
