//! Header hygiene for forwarded messages: hop-by-hop headers (RFC 9110
//! section 7.6.1) are dropped, and `X-Forwarded-*` headers are added.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Headers that describe one connection, never the message.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHORIZATION,
    header::PROXY_AUTHENTICATE,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// The entry of an `X-Forwarded-*` header that the nearest proxy (the
/// trusted ingress) appended: the last entry of the last line. Earlier
/// entries are whatever the client claimed.
pub fn nearest_forwarded<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<&'a str> {
    headers
        .get_all(name)
        .iter()
        .next_back()?
        .to_str()
        .ok()?
        .rsplit(',')
        .next()
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
}

/// Removes hop-by-hop headers, including any the `Connection` header names,
/// and `Upgrade` (re-added explicitly by the WebSocket relay).
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none: one pass over the names is cheaper than
    // ten hashed removals.
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
    headers.remove(header::UPGRADE);
}

fn is_hop_by_hop(name: &HeaderName) -> bool {
    name == header::UPGRADE || HOP_BY_HOP.contains(name)
}

/// Who the client is, as the proxy saw it.
#[derive(Debug, Clone)]
pub struct ClientInfo {
    pub ip: IpAddr,
    /// `ip` as a header value, made once per connection (see [`ClientInfo::ip_value`]).
    pub ip_value: HeaderValue,
    /// `http` or `https`: the scheme of the listener the request came in on.
    pub proto: &'static str,
    /// The Host (or `:authority`) the client used, if any.
    pub host: Option<HeaderValue>,
}

impl ClientInfo {
    pub fn new(ip: IpAddr, proto: &'static str, host: Option<HeaderValue>) -> ClientInfo {
        ClientInfo {
            ip,
            ip_value: ClientInfo::ip_value(ip),
            proto,
            host,
        }
    }

    /// `ip` as `X-Forwarded-For` carries it.
    pub fn ip_value(ip: IpAddr) -> HeaderValue {
        HeaderValue::try_from(ip.to_string()).expect("an IP address is a valid header value")
    }
}

/// Sets `X-Forwarded-For/-Proto/-Host` for the upstream.
///
/// With `trust_incoming`, values an ingress in front already set are kept
/// (the client's address is appended to `X-Forwarded-For`); without it they
/// are replaced, so a client cannot claim another address.
pub fn add_forwarded_headers(headers: &mut HeaderMap, client: &ClientInfo, trust_incoming: bool) {
    // Several header lines count as one comma-separated list (RFC 9110 5.3).
    let existing: Vec<&str> = if trust_incoming {
        headers
            .get_all(&X_FORWARDED_FOR)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect()
    } else {
        Vec::new()
    };
    if existing.is_empty() {
        headers.insert(X_FORWARDED_FOR, client.ip_value.clone());
    } else {
        let forwarded_for = format!("{}, {}", existing.join(", "), client.ip);
        if let Ok(value) = HeaderValue::from_str(&forwarded_for) {
            headers.insert(X_FORWARDED_FOR, value);
        }
    }
    if !(trust_incoming && headers.contains_key(&X_FORWARDED_PROTO)) {
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(client.proto));
    }
    if !(trust_incoming && headers.contains_key(&X_FORWARDED_HOST)) {
        match &client.host {
            Some(host) => headers.insert(X_FORWARDED_HOST, host.clone()),
            None => headers.remove(X_FORWARDED_HOST),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client() -> ClientInfo {
        ClientInfo::new(
            "10.0.0.7".parse().expect("ip"),
            "https",
            Some(HeaderValue::from_static("chat.example.com")),
        )
    }

    #[test]
    fn strips_fixed_and_connection_named_hop_by_hop_headers() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-private"),
        );
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.insert("x-private", HeaderValue::from_static("1"));
        headers.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer x"));
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        strip_hop_by_hop(&mut headers);
        let left: Vec<&str> = headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, vec!["authorization", "content-type"]);
    }

    #[test]
    fn the_nearest_forwarded_entry_is_the_last_one_appended() {
        let mut headers = HeaderMap::new();
        headers.append(
            X_FORWARDED_HOST,
            HeaderValue::from_static("evil.example, chat.example.com"),
        );
        assert_eq!(
            nearest_forwarded(&headers, &X_FORWARDED_HOST),
            Some("chat.example.com")
        );
        headers.append(
            X_FORWARDED_HOST,
            HeaderValue::from_static(" ingress.example "),
        );
        assert_eq!(
            nearest_forwarded(&headers, &X_FORWARDED_HOST),
            Some("ingress.example")
        );
        headers.insert(X_FORWARDED_FOR, HeaderValue::from_static("1.2.3.4,"));
        assert_eq!(nearest_forwarded(&headers, &X_FORWARDED_FOR), None);
    }

    #[test]
    fn untrusted_forwarded_headers_are_replaced() {
        let mut headers = HeaderMap::new();
        headers.insert(X_FORWARDED_FOR, HeaderValue::from_static("1.2.3.4"));
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
        headers.insert(X_FORWARDED_HOST, HeaderValue::from_static("evil.example"));
        add_forwarded_headers(&mut headers, &client(), false);
        assert_eq!(headers[&X_FORWARDED_FOR], "10.0.0.7");
        assert_eq!(headers[&X_FORWARDED_PROTO], "https");
        assert_eq!(headers[&X_FORWARDED_HOST], "chat.example.com");
    }

    #[test]
    fn trusted_forwarded_headers_are_kept_and_extended() {
        let mut headers = HeaderMap::new();
        headers.insert(X_FORWARDED_FOR, HeaderValue::from_static("1.2.3.4"));
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
        add_forwarded_headers(&mut headers, &client(), true);
        assert_eq!(headers[&X_FORWARDED_FOR], "1.2.3.4, 10.0.0.7");
        assert_eq!(headers[&X_FORWARDED_PROTO], "http");
        assert_eq!(headers[&X_FORWARDED_HOST], "chat.example.com");
    }
}
