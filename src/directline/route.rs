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
    /// Any other call under the prefix, forwarded as it is.
    Other { conversation_id: Option<String> },
}

impl Route {
    /// Classifies a path already known to start with [`PREFIX`].
    pub fn classify(method: &Method, path: &str) -> Route {
        let rest = path.strip_prefix(PREFIX).unwrap_or_default();
        let segments: Vec<&str> = rest.split('/').collect();
        match (method, segments.as_slice()) {
            (&Method::POST, ["tokens", "generate"]) => Route::GenerateToken,
            (&Method::POST, ["conversations"]) => Route::StartConversation,
            (&Method::GET, ["conversations", id]) if !id.is_empty() => Route::Reconnect {
                conversation_id: id.to_string(),
            },
            (&Method::GET, ["conversations", id, "activities"]) if !id.is_empty() => Route::Poll {
                conversation_id: id.to_string(),
            },
            (
                _,
                ["conversations", id, "stream"] | ["conversations", id, "stream", "multimodal"],
            ) if !id.is_empty() => Route::Stream {
                conversation_id: id.to_string(),
            },
            (_, ["conversations", id, ..]) if !id.is_empty() => Route::Other {
                conversation_id: Some(id.to_string()),
            },
            _ => Route::Other {
                conversation_id: None,
            },
        }
    }

    /// A fixed, low-cardinality name for logs.
    pub fn name(&self) -> &'static str {
        match self {
            Route::GenerateToken => "generate_token",
            Route::StartConversation => "start_conversation",
            Route::Reconnect { .. } => "reconnect",
            Route::Poll { .. } => "poll",
            Route::Stream { .. } => "stream",
            Route::Other { .. } => "other",
        }
    }

    pub fn conversation_id(&self) -> Option<&str> {
        match self {
            Route::GenerateToken | Route::StartConversation => None,
            Route::Reconnect { conversation_id }
            | Route::Poll { conversation_id }
            | Route::Stream { conversation_id } => Some(conversation_id),
            Route::Other { conversation_id } => conversation_id.as_deref(),
        }
    }

    /// Whether the response body carries a `streamUrl` pointing upstream.
    pub fn returns_stream_url(&self) -> bool {
        matches!(self, Route::StartConversation | Route::Reconnect { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn everything_else_is_forwarded_as_other() {
        assert_eq!(
            classify(Method::POST, "/v3/directline/conversations/abc/activities"),
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
