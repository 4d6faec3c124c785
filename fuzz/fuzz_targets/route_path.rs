//! Path classification and normalisation (`directline::route`) on arbitrary
//! request paths.
//!
//! Input: one byte choosing the method, then the path (tried both as given
//! and under `/v3/directline/`).
//!
//! Checked: a trailing slash and the case of the literal segments never
//! change the route; a conversation id is never empty; and a path the proxy
//! does not refuse (`Route::refusal`) is one that a WHATWG URL parser
//! (browsers, many servers) leaves where it is: it stays under the prefix
//! and is the same kind of call after that parser's normalisation (a poll
//! stays a poll, so it is inspected).
#![no_main]

use directline_proxy::directline::route::{PREFIX, Route};
use http::Method;
use http::uri::PathAndQuery;
use libfuzzer_sys::fuzz_target;

const METHODS: [Method; 4] = [Method::GET, Method::POST, Method::PUT, Method::DELETE];

fuzz_target!(|bytes: &[u8]| {
    let Some((selector, path)) = bytes.split_first() else {
        return;
    };
    let method = &METHODS[usize::from(*selector) % METHODS.len()];
    let path = String::from_utf8_lossy(path);
    check(method, &path);
    check(method, &format!("{PREFIX}{path}"));
});

fn check(method: &Method, path: &str) {
    let route = Route::classify(method, path);
    let _ = route.name();
    let _ = route.returns_stream_url();
    if let Some(id) = route.conversation_id() {
        assert!(!id.is_empty(), "an empty conversation id from {path:?}");
    }
    assert_eq!(
        route,
        Route::classify(method, &format!("{path}/")),
        "a trailing slash changed the route of {path:?}"
    );
    if let Some(rest) = path.strip_prefix(PREFIX) {
        let shouted = format!("{PREFIX}{}", rest.to_ascii_uppercase());
        assert_eq!(
            route.name(),
            Route::classify(method, &shouted).name(),
            "the case of {path:?} changed its route"
        );
    }
    if Route::refusal(path).is_none() {
        check_normalisation_keeps(method, path, &route);
    }
}

/// Only what a request line can carry is judged: a path without query or
/// fragment, as `uri.path()` gives it.
fn check_normalisation_keeps(method: &Method, path: &str, route: &Route) {
    let Ok(request_path) = path.parse::<PathAndQuery>() else {
        return;
    };
    if request_path.query().is_some() || path.contains('#') || !path.starts_with('/') {
        return;
    }
    let Ok(normalised) = url::Url::parse(&format!("http://upstream{path}")) else {
        return;
    };
    if path.starts_with(PREFIX) {
        assert!(
            normalised.path().starts_with(PREFIX),
            "{path:?} has no dot segment, yet an upstream normalises it to {:?}",
            normalised.path()
        );
    }
    assert_eq!(
        route.name(),
        Route::classify(method, normalised.path()).name(),
        "{path:?} is another call once an upstream normalised it to {:?}",
        normalised.path()
    );
}
