//! `streamUrl` rewriting (`directline::stream_url`) on arbitrary bodies,
//! hosts, public URLs and base paths.
//!
//! Input: a conversation body, then optionally, each after a NUL byte, a
//! `Host` header value, a configured public URL, the upstream base path and
//! the value of an extra query parameter. A plain JSON body is a valid input,
//! so real responses seed the corpus.
//!
//! Checked: only objects are conversations; a rewritten URL points at the public authority and path prefix,
//! and carries the extra parameter; nothing else in the body changes;
//! `take_query_params` leaves no spelling of the parameter behind and keeps
//! the path; a `Host` accepted as an authority has a host and no userinfo.
#![no_main]

use directline_proxy::directline::stream_url::{
    self, PublicBase, conversation_and_token, host_authority, take_query_params,
};
use http::{HeaderMap, HeaderValue, Uri};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

const EXTRA_PARAM: &str = "dlpx";

fuzz_target!(|bytes: &[u8]| {
    let mut fields = bytes.split(|b| *b == 0);
    let body = fields.next().unwrap_or_default();
    let mut text = || fields.next().map(String::from_utf8_lossy);
    let host = text().unwrap_or("proxy.example:8443".into());
    let public_url = text().unwrap_or("https://chat.example/prefix/".into());
    let base_path = text().unwrap_or("/".into());
    let extra_value = text();

    if let Some((conversation_id, token)) = conversation_and_token(body)
        && let Ok(value) = serde_json::from_slice::<Value>(body)
    {
        assert!(value.is_object(), "a conversation read from a non-object");
        assert_eq!(value["conversationId"], conversation_id.as_str());
        assert_eq!(value["token"], token.as_str());
    }
    if let Some(authority) = host_authority(&host) {
        assert!(!authority.host().is_empty(), "an authority without a host");
        assert!(
            !authority.as_str().contains('@'),
            "userinfo accepted as a host"
        );
    }
    let mut bases = Vec::new();
    if let Ok(url) = public_url.parse::<Uri>()
        && let Some(base) = PublicBase::from_config(&url)
    {
        let prefix = url.path().trim_end_matches('/').to_string();
        bases.push((base, url.authority().map(|a| a.to_string()), prefix));
    }
    if let Some(base) = from_host_header(&host) {
        bases.push((
            base,
            host_authority(&host).map(|a| a.to_string()),
            String::new(),
        ));
    }
    let extra = extra_value.as_deref().map(|value| (EXTRA_PARAM, value));
    for (base, authority, prefix) in &bases {
        check_rewrite(body, base, &base_path, extra, authority.as_deref(), prefix);
    }
    if let Some(url) = stream_url_of(body) {
        check_take_query_params(&url);
    }
});

fn from_host_header(host: &str) -> Option<PublicBase> {
    let mut headers = HeaderMap::new();
    headers.insert(http::header::HOST, HeaderValue::from_str(host).ok()?);
    PublicBase::from_request(&Uri::from_static("/"), &headers, false, false)
}

fn check_rewrite(
    body: &[u8],
    base: &PublicBase,
    base_path: &str,
    extra: Option<(&str, &str)>,
    authority: Option<&str>,
    prefix: &str,
) {
    let Ok(Some(out)) = stream_url::rewrite(body, base, base_path, extra) else {
        return;
    };
    // Fields serde_json skips are not checked for UTF-8: judge JSON bodies.
    let Ok(mut before) = serde_json::from_slice::<Value>(body) else {
        return;
    };
    let mut after: Value = serde_json::from_slice(&out).expect("rewrite output is not JSON");
    assert!(
        before.is_object(),
        "a body that is not a JSON object was rewritten"
    );
    let new_url = after["streamUrl"]
        .as_str()
        .expect("rewritten streamUrl is not a string")
        .to_string();
    before["streamUrl"] = Value::Null;
    after["streamUrl"] = Value::Null;
    assert_eq!(before, after, "a byte beside streamUrl changed");
    let uri: Uri = new_url.parse().expect("rewritten streamUrl is not a URI");
    assert!(matches!(uri.scheme_str(), Some("ws" | "wss")), "{new_url}");
    assert_eq!(
        uri.authority().map(|a| a.as_str()),
        authority,
        "rewritten streamUrl {new_url} leaves the public authority"
    );
    assert!(
        uri.path() == prefix || uri.path().starts_with(&format!("{prefix}/")),
        "rewritten streamUrl {new_url} leaves the public prefix {prefix:?}"
    );
    if let Some((name, value)) = extra {
        let (_, values) = take_query_params(&uri, name);
        let decoded = values
            .last()
            .map(|v| form_decode(v))
            .expect("the extra parameter is missing");
        assert_eq!(decoded, value, "the extra parameter's value changed");
    }
}

fn check_take_query_params(url: &Uri) {
    for name in [EXTRA_PARAM, "t"] {
        let (stripped, _) = take_query_params(url, name);
        assert_eq!(
            stripped.path(),
            url.path(),
            "taking a parameter changed the path"
        );
        let (again, left) = take_query_params(&stripped, name);
        assert!(left.is_empty(), "{name} survived in {stripped}");
        assert_eq!(again, stripped);
    }
}

fn stream_url_of(body: &[u8]) -> Option<Uri> {
    let value: Value = serde_json::from_slice(body).ok()?;
    value.get("streamUrl")?.as_str()?.parse().ok()
}

fn form_decode(value: &str) -> String {
    let pair = format!("v={value}");
    url::form_urlencoded::parse(pair.as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}
