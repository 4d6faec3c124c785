//! Which Direct Line call a request is, from its method and path.

use http::Method;

pub const PREFIX: &str = "/v3/directline/";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `POST /tokens/generate`: minting, where a server-held secret applies.
    GenerateToken,
    /// `POST /conversations`: the answer carries a `streamUrl` to rewrite.
    StartConversation,
    /// `GET /conversations/{id}`: reconnect, also with a `streamUrl`.
    Reconnect { conversation_id: String },
    /// `GET /conversations/{id}/activities`: the polling path.
    Poll { conversation_id: String },
    /// `.../conversations/{id}/stream` or `.../stream/multimodal`.
    Stream { conversation_id: String },
    /// `POST .../conversations/{id}/activities` or `.../upload`: the user
    /// sends something (counted against the conversation's quota).
    Send { conversation_id: String },
    /// Any other call under the prefix, forwarded as it is.
    Other { conversation_id: Option<String> },
}

impl Route {
    /// Classifies a path already known to start with [`PREFIX`]. Literal
    /// segments match case-insensitively and a trailing slash is ignored, as
    /// ASP.NET routing (Direct Line's) does, so no variant of a polling path
    /// slips past the inspection.
    pub fn classify(method: &Method, path: &str) -> Route {
        let rest = path.strip_prefix(PREFIX).unwrap_or_default();
        // At most four segments matter; no allocation unless a literal
        // segment has a percent-escape.
        let mut segments = segments(rest);
        let first = segments.next();
        let id_segment = segments.next();
        let third = segments.next();
        let fourth = segments.next();
        let count = [first, id_segment, third, fourth]
            .iter()
            .filter(|s| s.is_some())
            .count()
            + segments.count();
        let is = |segment: Option<&str>, word: &str| segment.is_some_and(|s| literal_is(s, word));
        let id = || id_segment.map(canonical_id).unwrap_or_default();
        let conversations = is(first, "conversations");
        if *method == Method::POST
            && count == 2
            && is(first, "tokens")
            && is(id_segment, "generate")
        {
            return Route::GenerateToken;
        }
        if *method == Method::POST && count == 1 && conversations {
            return Route::StartConversation;
        }
        if !conversations || count < 2 {
            return Route::Other {
                conversation_id: None,
            };
        }
        let conversation_id = id();
        match (method, count) {
            (&Method::GET, 2) => return Route::Reconnect { conversation_id },
            (&Method::GET, 3) if is(third, "activities") => return Route::Poll { conversation_id },
            (&Method::POST, 3) if is(third, "activities") || is(third, "upload") => {
                return Route::Send { conversation_id };
            }
            _ => {}
        }
        let stream =
            is(third, "stream") && (count == 3 || (count == 4 && is(fourth, "multimodal")));
        if stream {
            Route::Stream { conversation_id }
        } else {
            Route::Other {
                conversation_id: Some(conversation_id),
            }
        }
    }

    /// Why a path is refused before it reaches the upstream, if it is:
    /// dot segments (also encoded) could leave `/v3/directline/` at an
    /// upstream that normalises them; encoded slashes and backslashes, raw
    /// backslashes, encoded NUL and double encoding (`%25`) could be decoded
    /// or converted by an IIS-style upstream into a path the proxy never saw.
    pub fn refusal(path: &str) -> Option<&'static str> {
        if Route::has_dot_segments(path) {
            return Some("Dot segments are not allowed in the path.");
        }
        let bytes = path.as_bytes();
        let smuggles = memchr::memchr_iter(b'%', bytes).any(|at| {
            let escape = bytes
                .get(at + 1..at + 3)
                .map(|e| (e[0], e[1].to_ascii_lowercase()));
            matches!(
                escape,
                Some((b'2', b'f') | (b'5', b'c') | (b'0', b'0') | (b'2', b'5'))
            )
        }) || memchr::memchr(b'\\', bytes).is_some();
        smuggles.then_some(
            "Encoded slashes, backslashes, NUL and double encoding are not allowed in the path.",
        )
    }

    /// Whether the path has a `.` or `..` segment (also percent-encoded).
    pub fn has_dot_segments(path: &str) -> bool {
        // Most paths have neither a dot nor an escape: one scan says so.
        if memchr::memchr2(b'.', b'%', path.as_bytes()).is_none() {
            return false;
        }
        path.split('/').any(|segment| {
            // One or two dots, each `.` or `%2e` in either case.
            let mut rest = segment.as_bytes();
            let mut dots = 0;
            while !rest.is_empty() && dots < 3 {
                rest = match rest {
                    [b'.', tail @ ..] => tail,
                    [b'%', b'2', b'e' | b'E', tail @ ..] => tail,
                    _ => return false,
                };
                dots += 1;
            }
            rest.is_empty() && (dots == 1 || dots == 2)
        })
    }

    /// A fixed, low-cardinality name for logs.
    pub fn name(&self) -> &'static str {
        match self {
            Route::GenerateToken => "generate_token",
            Route::StartConversation => "start_conversation",
            Route::Reconnect { .. } => "reconnect",
            Route::Poll { .. } => "poll",
            Route::Stream { .. } => "stream",
            Route::Send { .. } => "send",
            Route::Other { .. } => "other",
        }
    }

    pub fn conversation_id(&self) -> Option<&str> {
        match self {
            Route::GenerateToken | Route::StartConversation => None,
            Route::Reconnect { conversation_id }
            | Route::Poll { conversation_id }
            | Route::Stream { conversation_id }
            | Route::Send { conversation_id } => Some(conversation_id),
            Route::Other { conversation_id } => conversation_id.as_deref(),
        }
    }

    /// Whether the response body carries a `streamUrl` pointing upstream.
    pub fn returns_stream_url(&self) -> bool {
        matches!(self, Route::StartConversation | Route::Reconnect { .. })
    }
}

/// A conversation id as Direct Line identifies it: percent-decoded, so
/// `%4Dx` and `Mx` are one conversation (for exchange once and for the
/// sealed context). An escape that does not decode to UTF-8 stays as it is.
fn canonical_id(segment: &str) -> String {
    if !segment.as_bytes().contains(&b'%') {
        return segment.to_string();
    }
    percent_encoding::percent_decode_str(segment)
        .decode_utf8()
        .map_or_else(|_| segment.to_string(), |id| id.into_owned())
}

/// The non-empty `/`-separated segments of `path`.
fn segments(path: &str) -> impl Iterator<Item = &str> {
    super::split_at_byte(path, b'/').filter(|segment| !segment.is_empty())
}

/// Whether a path segment is the literal `word` (lower-case ASCII, no `%`),
/// compared as ASP.NET routing does: case-insensitively, after decoding
/// escaped unreserved characters. Only a segment with an escape is decoded.
fn literal_is(segment: &str, word: &str) -> bool {
    segment.eq_ignore_ascii_case(word)
        || (memchr::memchr(b'%', segment.as_bytes()).is_some()
            && decode_unreserved(segment).eq_ignore_ascii_case(word))
}

/// Decodes percent-escapes of unreserved characters (RFC 3986 section 6.2.2.2:
/// `%61` is `a`), which servers decode before routing; others stay.
fn decode_unreserved(segment: &str) -> String {
    let bytes = segment.as_bytes();
    let mut out = String::with_capacity(segment.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%')
            .then(|| segment.get(i + 1..i + 3))
            .flatten()
            .and_then(|hex| u8::from_str_radix(hex, 16).ok())
            .filter(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'));
        match escaped {
            Some(byte) => {
                out.push(char::from(byte));
                i += 3;
            }
            None => {
                let ch = segment[i..].chars().next().unwrap_or_default();
                out.push(ch);
                i += ch.len_utf8().max(1);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// The allocating implementations the hot path used before (issue 9),
    /// kept as the reference the new ones must agree with.
    mod reference {
        use super::*;

        pub fn classify(method: &Method, path: &str) -> Route {
            let rest = path.strip_prefix(PREFIX).unwrap_or_default();
            let segments: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
            let lower: Vec<String> = segments
                .iter()
                .map(|s| decode_unreserved(s).to_ascii_lowercase())
                .collect();
            let lower: Vec<&str> = lower.iter().map(String::as_str).collect();
            let id = || {
                segments
                    .get(1)
                    .map(|id| canonical_id(id))
                    .unwrap_or_default()
            };
            let has_id = segments.get(1).is_some_and(|id| !id.is_empty());
            match (method, lower.as_slice()) {
                (&Method::POST, ["tokens", "generate"]) => Route::GenerateToken,
                (&Method::POST, ["conversations"]) => Route::StartConversation,
                (&Method::GET, ["conversations", _]) if has_id => Route::Reconnect {
                    conversation_id: id(),
                },
                (&Method::GET, ["conversations", _, "activities"]) if has_id => Route::Poll {
                    conversation_id: id(),
                },
                (&Method::POST, ["conversations", _, "activities" | "upload"]) if has_id => {
                    Route::Send {
                        conversation_id: id(),
                    }
                }
                (
                    _,
                    ["conversations", _, "stream"] | ["conversations", _, "stream", "multimodal"],
                ) if has_id => Route::Stream {
                    conversation_id: id(),
                },
                (_, ["conversations", _, ..]) if has_id => Route::Other {
                    conversation_id: Some(id()),
                },
                _ => Route::Other {
                    conversation_id: None,
                },
            }
        }

        pub fn refusal(path: &str) -> Option<&'static str> {
            if has_dot_segments(path) {
                return Some("Dot segments are not allowed in the path.");
            }
            let lower = path.to_ascii_lowercase();
            let smuggles = ["%2f", "%5c", "%00", "%25"]
                .iter()
                .any(|escape| lower.contains(escape))
                || path.contains('\\');
            smuggles.then_some(
                "Encoded slashes, backslashes, NUL and double encoding are not allowed in the path.",
            )
        }

        pub fn has_dot_segments(path: &str) -> bool {
            path.split('/').any(|segment| {
                let decoded = segment.to_ascii_lowercase().replace("%2e", ".");
                decoded == "." || decoded == ".."
            })
        }
    }

    const PIECES: [&str; 28] = [
        "",
        "é",
        "activitiés",
        "conversations",
        "CONVERSATIONS",
        "%63onversations",
        "%43onversations",
        "abc",
        "%4Dx",
        "activities",
        "Activities",
        "%61ctivities",
        "stream",
        "multimodal",
        "upload",
        "tokens",
        "generate",
        ".",
        "..",
        "...",
        "%2e",
        "%2E%2e",
        ".%2e",
        "a%2Fb",
        "%25",
        "%00",
        "a\\b",
        "%5c",
    ];

    proptest! {
        #[test]
        fn the_allocation_free_checks_agree_with_the_reference(
            method in 0..4usize,
            pieces in proptest::collection::vec(proptest::sample::select(&PIECES[..]), 0..7),
            prefixed in any::<bool>(),
        ) {
            let method = [Method::GET, Method::POST, Method::PUT, Method::DELETE][method].clone();
            let joined = pieces.join("/");
            let path = if prefixed { format!("{PREFIX}{joined}") } else { joined };
            prop_assert_eq!(Route::classify(&method, &path), reference::classify(&method, &path));
            prop_assert_eq!(Route::refusal(&path), reference::refusal(&path));
            prop_assert_eq!(Route::has_dot_segments(&path), reference::has_dot_segments(&path));
        }
    }

    fn classify(method: Method, path: &str) -> Route {
        Route::classify(&method, path)
    }

    #[test]
    fn recognises_the_calls_that_need_special_handling() {
        assert_eq!(
            classify(Method::POST, "/v3/directline/tokens/generate"),
            Route::GenerateToken
        );
        assert_eq!(
            classify(Method::POST, "/v3/directline/conversations"),
            Route::StartConversation
        );
        assert_eq!(
            classify(Method::GET, "/v3/directline/conversations/abc"),
            Route::Reconnect {
                conversation_id: "abc".into()
            }
        );
        assert_eq!(
            classify(Method::GET, "/v3/directline/conversations/abc/activities"),
            Route::Poll {
                conversation_id: "abc".into()
            }
        );
        assert_eq!(
            classify(Method::GET, "/v3/directline/conversations/abc/stream"),
            Route::Stream {
                conversation_id: "abc".into()
            }
        );
        assert_eq!(
            classify(
                Method::GET,
                "/v3/directline/conversations/abc/stream/multimodal"
            ),
            Route::Stream {
                conversation_id: "abc".into()
            }
        );
    }

    #[test]
    fn case_and_a_trailing_slash_do_not_hide_a_poll() {
        assert_eq!(
            classify(Method::GET, "/v3/directline/Conversations/AbC/Activities/"),
            Route::Poll {
                conversation_id: "AbC".into()
            }
        );
        assert_eq!(
            classify(Method::GET, "/v3/directline/conversations/abc/"),
            Route::Reconnect {
                conversation_id: "abc".into()
            }
        );
    }

    #[test]
    fn encoded_letters_and_empty_segments_do_not_hide_a_poll() {
        assert_eq!(
            classify(
                Method::GET,
                "/v3/directline/%63onversations/abc/%61ctivities"
            ),
            Route::Poll {
                conversation_id: "abc".into()
            }
        );
        assert_eq!(
            classify(Method::GET, "/v3/directline/conversations//abc//activities"),
            Route::Poll {
                conversation_id: "abc".into()
            }
        );
        assert_eq!(decode_unreserved("a%2Fb%7e%C3%A9"), "a%2Fb~%C3%A9");
        assert_eq!(
            classify(
                Method::GET,
                "/v3/directline/conversations/%4Dx%7C1/activities"
            ),
            Route::Poll {
                conversation_id: "Mx|1".into()
            },
            "the id is canonical, as Direct Line decodes it"
        );
        assert_eq!(canonical_id("a%FFb"), "a%FFb");
        assert_eq!(decode_unreserved("%"), "%");
        assert_eq!(decode_unreserved("é%4"), "é%4");
    }

    #[test]
    fn paths_that_an_upstream_could_decode_differently_are_refused() {
        for path in [
            "/v3/directline/conversations/..%2F..%2Fetc%2Fpasswd",
            "/v3/directline/conversations/a%2fb/activities",
            "/v3/directline/conversations/a%5Cb",
            "/v3/directline/..\\..\\x",
            "/v3/directline/conversations/a%00/activities",
            "/v3/directline/conversations/a%252F/activities",
            "/v3/directline/../admin",
        ] {
            assert!(Route::refusal(path).is_some(), "{path}");
        }
        for path in [
            "/v3/directline/conversations/abc/activities",
            "/v3/directline/conversations/%4Dx/activities",
            "/v3/directline/conversations/a.b/stream",
        ] {
            assert_eq!(Route::refusal(path), None, "{path}");
        }
    }

    #[test]
    fn dot_segments_are_detected_also_encoded() {
        assert!(Route::has_dot_segments("/v3/directline/../admin"));
        assert!(Route::has_dot_segments("/v3/directline/%2e%2E/admin"));
        assert!(Route::has_dot_segments("/v3/directline/./conversations"));
        assert!(!Route::has_dot_segments(
            "/v3/directline/conversations/a.b/activities"
        ));
    }

    #[test]
    fn everything_else_is_forwarded_as_other() {
        assert_eq!(
            classify(Method::POST, "/v3/directline/conversations/abc/activities"),
            Route::Send {
                conversation_id: "abc".into()
            }
        );
        assert_eq!(
            classify(Method::POST, "/v3/directline/conversations/abc/upload"),
            Route::Send {
                conversation_id: "abc".into()
            }
        );
        assert_eq!(
            classify(Method::PUT, "/v3/directline/conversations/abc/activities"),
            Route::Other {
                conversation_id: Some("abc".into())
            }
        );
        assert_eq!(
            classify(Method::POST, "/v3/directline/tokens/refresh"),
            Route::Other {
                conversation_id: None
            }
        );
        assert_eq!(
            classify(Method::GET, "/v3/directline/conversations/"),
            Route::Other {
                conversation_id: None
            }
        );
        assert!(
            !classify(Method::GET, "/v3/directline/conversations/a/activities")
                .returns_stream_url()
        );
    }
}
