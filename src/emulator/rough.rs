//! The real service's rougher edges, for [`EmulatorConfig::rough`]: the
//! compliant emulator elsewhere in this module is what the proxy is written
//! against; this is what it meets in production.
//!
//! - JSON is indented with CRLF line ends, and every `/` in a string is
//!   written `\/` (as .NET serialisers do), so an OAuth card's content type
//!   reads `application\/vnd.microsoft.card.oauth`: code that searches raw
//!   bytes for the plain spelling misses it.
//! - Answers are gzip-compressed when the request accepts gzip.
//! - A WebSocket handshake that offers `permessage-deflate` gets it
//!   accepted. The emulator never compresses what it sends (RFC 7692 lets
//!   each message choose) and cannot read compressed messages
//!   (tungstenite has no deflate), so a browser connecting directly would
//!   break it. The proxy never passes a client's offer on, which is what
//!   this tests.
//! - A conversation started without a user id gets a GUID, not `dl_...`.
//!
//! [`EmulatorConfig::rough`]: super::EmulatorConfig::rough

use std::io::Write;

use bytes::Bytes;
use flate2::Compression;
use flate2::write::GzEncoder;
use http::{HeaderMap, HeaderValue, Response, header};
use http_body_util::BodyExt;
use serde_json::Value;

use super::auth::random_bytes;
use super::respond::Body;

/// How the emulator writes the JSON it sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum JsonStyle {
    /// One line, no escapes beyond what JSON requires.
    #[default]
    Compact,
    /// Indented with CRLF line ends, `/` escaped as `\/`.
    Rough,
}

impl JsonStyle {
    pub fn new(rough: bool) -> JsonStyle {
        if rough {
            JsonStyle::Rough
        } else {
            JsonStyle::Compact
        }
    }

    pub fn write(self, value: &Value) -> String {
        match self {
            JsonStyle::Compact => value.to_string(),
            // Outside strings, pretty JSON holds no `/` and no line feed
            // but the indentation's; inside them a line feed is always
            // escaped: both replacements touch exactly what they mean to.
            JsonStyle::Rough => serde_json::to_string_pretty(value)
                .unwrap_or_default()
                .replace('/', "\\/")
                .replace('\n', "\r\n"),
        }
    }
}

/// An answer as the rough service sends it: JSON rewritten in the rough
/// style, then the body gzip-compressed when the request accepted gzip.
pub async fn finish(response: Response<Body>, request_headers: &HeaderMap) -> Response<Body> {
    let (mut parts, body) = response.into_parts();
    let Ok(collected) = body.collect().await;
    let mut bytes = collected.to_bytes();
    if bytes.is_empty() {
        return Response::from_parts(parts, Body::new(bytes));
    }
    if is_json(&parts.headers)
        && let Ok(value) = serde_json::from_slice::<Value>(&bytes)
    {
        bytes = Bytes::from(JsonStyle::Rough.write(&value));
    }
    parts
        .headers
        .append(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    if accepts_gzip(request_headers)
        && let Ok(compressed) = gzip(&bytes)
    {
        parts
            .headers
            .insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        bytes = Bytes::from(compressed);
    }
    Response::from_parts(parts, Body::new(bytes))
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.to_ascii_lowercase().starts_with("application/json"))
}

/// Whether `Accept-Encoding` lists gzip with a non-zero quality.
fn accepts_gzip(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|coding| {
            let mut params = coding.split(';');
            let name = params.next().unwrap_or_default().trim();
            let quality = params
                .filter_map(|p| p.trim().strip_prefix("q="))
                .find_map(|q| q.trim().parse::<f32>().ok())
                .unwrap_or(1.0);
            name.eq_ignore_ascii_case("gzip") && quality > 0.0
        })
}

fn gzip(bytes: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
    encoder.write_all(bytes)?;
    encoder.finish()
}

/// The `Sec-WebSocket-Extensions` answer to a handshake: `permessage-deflate`
/// when the client offered it.
pub fn extension_answer(request_headers: &HeaderMap) -> Option<HeaderValue> {
    let offered = request_headers
        .get_all(header::SEC_WEBSOCKET_EXTENSIONS)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|offer| {
            let name = offer.split(';').next().unwrap_or_default();
            name.trim().eq_ignore_ascii_case("permessage-deflate")
        });
    offered.then(|| HeaderValue::from_static("permessage-deflate"))
}

/// A random version-4 GUID, lower case: the kind of user id a site gives
/// when it does not follow the `dl_` convention.
pub fn guid() -> String {
    let mut bytes = [0u8; 16];
    random_bytes(&mut bytes);
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn rough_json_is_indented_with_escaped_slashes() {
        let value = json!({"contentType": "application/vnd.microsoft.card.oauth", "text": "a\nb"});
        let written = JsonStyle::Rough.write(&value);
        assert_eq!(
            written,
            "{\r\n  \"contentType\": \"application\\/vnd.microsoft.card.oauth\",\r\n  \"text\": \"a\\nb\"\r\n}"
        );
        assert_eq!(serde_json::from_str::<Value>(&written).ok(), Some(value));
    }

    #[test]
    fn compact_json_is_serde_jsons() {
        let value = json!({"a": "b/c"});
        assert_eq!(JsonStyle::Compact.write(&value), "{\"a\":\"b/c\"}");
    }

    #[test]
    fn gzip_is_accepted_unless_its_quality_is_zero() {
        let accepts = |value: &'static str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::ACCEPT_ENCODING, HeaderValue::from_static(value));
            accepts_gzip(&headers)
        };
        assert!(accepts("gzip"));
        assert!(accepts("deflate, GZIP;q=0.5, br"));
        assert!(!accepts("gzip;q=0"));
        assert!(!accepts("br, deflate"));
        assert!(!accepts("x-gzip-ish"));
        assert!(!accepts_gzip(&HeaderMap::new()));
    }

    #[test]
    fn permessage_deflate_is_accepted_only_when_offered() {
        let mut headers = HeaderMap::new();
        assert_eq!(extension_answer(&headers), None);
        headers.insert(
            header::SEC_WEBSOCKET_EXTENSIONS,
            HeaderValue::from_static(
                "x-webkit-deflate-frame, permessage-deflate; client_max_window_bits",
            ),
        );
        assert_eq!(
            extension_answer(&headers),
            Some(HeaderValue::from_static("permessage-deflate"))
        );
    }

    #[test]
    fn guids_are_version_4_and_differ() {
        let (a, b) = (guid(), guid());
        assert_ne!(a, b);
        let groups: Vec<usize> = a.split('-').map(str::len).collect();
        assert_eq!(groups, vec![8, 4, 4, 4, 12]);
        assert_eq!(&a[14..15], "4");
        assert!(a.chars().all(|c| c == '-' || c.is_ascii_hexdigit()));
        assert!(!a.starts_with("dl_"));
    }
}
