//! Typed config values: how they are read from TOML and written back.
//!
//! Each reader refuses a bad value while the file is deserialised, so the
//! error names the key (`serde_path_to_error` adds the path) and no consumer
//! parses strings later. Durations keep the keys and units config files
//! already use: `*_ms` and `*_secs` are integers.

use std::fmt::Display;
use std::net::SocketAddr;
use std::time::Duration;

use http::{HeaderName, Uri};
use serde::de::{Error, Unexpected};
use serde::{Deserialize, Deserializer, Serializer};

/// An integer from `MIN` to `MAX`, in any integer type it fits.
pub fn within<'de, const MIN: u64, const MAX: u64, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: TryFrom<u64>,
{
    let value = u64::deserialize(d)?;
    let out_of_range =
        || D::Error::invalid_value(Unexpected::Unsigned(value), &range::<MIN, MAX>().as_str());
    if !(MIN..=MAX).contains(&value) {
        return Err(out_of_range());
    }
    T::try_from(value).map_err(|_| out_of_range())
}

fn range<const MIN: u64, const MAX: u64>() -> String {
    format!("a number from {MIN} to {MAX}")
}

/// Milliseconds from `MIN` to `MAX` (a `*_ms` key).
pub fn millis<'de, const MIN: u64, const MAX: u64, D>(d: D) -> Result<Duration, D::Error>
where
    D: Deserializer<'de>,
{
    within::<MIN, MAX, D, u64>(d).map(Duration::from_millis)
}

/// Seconds from `MIN` to `MAX` (a `*_secs` key).
pub fn secs<'de, const MIN: u64, const MAX: u64, D>(d: D) -> Result<Duration, D::Error>
where
    D: Deserializer<'de>,
{
    within::<MIN, MAX, D, u64>(d).map(Duration::from_secs)
}

/// Milliseconds from `MIN` to `MAX`, or 0 for "off".
pub fn millis_or_off<'de, const MIN: u64, const MAX: u64, D>(
    d: D,
) -> Result<Option<Duration>, D::Error>
where
    D: Deserializer<'de>,
{
    match u64::deserialize(d)? {
        0 => Ok(None),
        ms if (MIN..=MAX).contains(&ms) => Ok(Some(Duration::from_millis(ms))),
        ms => Err(D::Error::invalid_value(
            Unexpected::Unsigned(ms),
            &format!("0 (off) or {}", range::<MIN, MAX>()).as_str(),
        )),
    }
}

pub fn as_millis<S: Serializer>(duration: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(u64::try_from(duration.as_millis()).unwrap_or(u64::MAX))
}

pub fn as_secs<S: Serializer>(duration: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(duration.as_secs())
}

/// "Off" is written as 0, as it is read.
pub fn as_millis_or_off<S: Serializer>(
    duration: &Option<Duration>,
    s: S,
) -> Result<S::Ok, S::Error> {
    as_millis(&duration.unwrap_or(Duration::ZERO), s)
}

const SOCKET_ADDR: &str = "an IP socket address such as \"127.0.0.1:8080\" or \"[::]:8080\"";

pub fn socket_addr<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    let text = String::deserialize(d)?;
    text.parse()
        .map_err(|_| D::Error::invalid_value(Unexpected::Str(&text), &SOCKET_ADDR))
}

/// For an optional key: present means set.
pub fn some_socket_addr<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
    socket_addr(d).map(Some)
}

/// An absolute `http`/`https` URL with a host and no query: a base URL
/// that paths are appended to.
pub fn base_url<'de, D: Deserializer<'de>>(d: D) -> Result<Uri, D::Error> {
    url(
        d,
        &["http", "https"],
        false,
        "https://directline.botframework.com",
    )
}

/// For an optional base URL: present means set.
pub fn some_base_url<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Uri>, D::Error> {
    base_url(d).map(Some)
}

/// A share from 0.0 to 1.0 (an integer 0 or 1 too).
pub fn ratio<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    let value = f64::deserialize(d)?;
    if (0.0..=1.0).contains(&value) {
        Ok(value)
    } else {
        Err(D::Error::invalid_value(
            Unexpected::Float(value),
            &"a number from 0.0 to 1.0",
        ))
    }
}

/// A base URL that clients reach, which may be a WebSocket one.
pub fn some_public_url<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Uri>, D::Error> {
    url(
        d,
        &["http", "https", "ws", "wss"],
        false,
        "https://chat.example.com",
    )
    .map(Some)
}

/// An absolute `http`/`https` endpoint URL, whose query may hold a key (an
/// Azure Functions `code=`).
pub fn endpoint_url<'de, D: Deserializer<'de>>(d: D) -> Result<Uri, D::Error> {
    url(
        d,
        &["http", "https"],
        true,
        "https://auth.example.com/token",
    )
}

/// A Copilot Studio agent's token endpoint: whether its host may serve one
/// depends on `directline.token_endpoint_hosts`, which the section checks.
pub fn some_agent_endpoint<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Uri>, D::Error> {
    url(
        d,
        &["http", "https"],
        true,
        "https://<env>.environment.api.powerplatform.com/powervirtualagents/botsbyschema/<schema>/directline/token?api-version=2022-03-01-preview",
    )
    .map(Some)
}

/// A refused URL is shown [redacted](redacted_url): it may carry a key.
fn url<'de, D: Deserializer<'de>>(
    d: D,
    schemes: &[&str],
    query_allowed: bool,
    example: &str,
) -> Result<Uri, D::Error> {
    let text = String::deserialize(d)?;
    let usable = |uri: &Uri| {
        uri.scheme_str().is_some_and(|s| schemes.contains(&s))
            && uri.host().is_some_and(|h| !h.is_empty())
            && (query_allowed || uri.query().is_none())
    };
    match text.parse::<Uri>() {
        Ok(uri) if usable(&uri) => Ok(uri),
        _ => {
            let query = if query_allowed { "" } else { ", without query" };
            let expected = format!(
                "an absolute URL with scheme {} and a host{query}, e.g. \"{example}\"",
                schemes.join("/")
            );
            Err(D::Error::invalid_value(
                Unexpected::Str(&redacted_url(&text)),
                &expected.as_str(),
            ))
        }
    }
}

/// `text` with what may be a credential hidden: the userinfo of its
/// authority and its query (`https://<redacted>@host/path?<redacted>`).
pub fn redacted_url(text: &str) -> String {
    let (scheme, rest) = match text.split_once("://") {
        Some((scheme, rest)) => (format!("{scheme}://"), rest),
        None => (String::new(), text),
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let host = match authority.rsplit_once('@') {
        Some((_, host)) => format!("<redacted>@{host}"),
        None => authority.to_string(),
    };
    let tail = match tail.split_once('?') {
        Some((path, _)) => format!("{path}?<redacted>"),
        None => tail.to_string(),
    };
    format!("{scheme}{host}{tail}")
}

const HEADER_NAME: &str = "an HTTP header name such as \"x-forwarded-user\"";

pub fn header_name<'de, D: Deserializer<'de>>(d: D) -> Result<HeaderName, D::Error> {
    let text = String::deserialize(d)?;
    HeaderName::from_bytes(text.as_bytes())
        .map_err(|_| D::Error::invalid_value(Unexpected::Str(&text), &HEADER_NAME))
}

/// For an optional key: present means set.
pub fn some_header_name<'de, D: Deserializer<'de>>(d: D) -> Result<Option<HeaderName>, D::Error> {
    header_name(d).map(Some)
}

pub fn header_names<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<HeaderName>, D::Error> {
    Vec::<String>::deserialize(d)?
        .iter()
        .map(|text| {
            HeaderName::from_bytes(text.as_bytes())
                .map_err(|_| D::Error::invalid_value(Unexpected::Str(text), &HEADER_NAME))
        })
        .collect()
}

pub fn displays<T: Display, S: Serializer>(values: &[T], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(values.iter().map(ToString::to_string))
}

pub fn display<T: Display, S: Serializer>(value: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(value)
}

pub fn some_display<T: Display, S: Serializer>(value: &Option<T>, s: S) -> Result<S::Ok, S::Error> {
    match value {
        Some(value) => s.collect_str(value),
        None => s.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::redacted_url;

    #[test]
    fn redaction_hides_userinfo_and_query_and_keeps_the_rest() {
        for (url, shown) in [
            ("https://user:pass@host/p", "https://<redacted>@host/p"),
            (
                "https://host:8443/t?code=k",
                "https://host:8443/t?<redacted>",
            ),
            ("http://a@b@host?x#f", "http://<redacted>@host?<redacted>"),
            ("https://host/path", "https://host/path"),
            ("auth?key", "auth?<redacted>"),
        ] {
            assert_eq!(redacted_url(url), shown);
        }
    }
}
