//! Errors: the Direct Line-shaped HTTP error bodies the emulator answers with,
//! and the error type for failures to start.

use http::StatusCode;
use serde_json::json;

/// Why the emulator could not start or keep running.
#[derive(Debug, thiserror::Error)]
pub enum EmulatorError {
    /// The listen address could not be bound (in use, no permission, ...).
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    /// The bound socket has no local address (should not happen on TCP).
    #[error("cannot read the bound address: {0}")]
    LocalAddr(std::io::Error),
    /// Waiting for ctrl-c failed in standalone mode.
    #[error("cannot wait for ctrl-c: {0}")]
    Signal(std::io::Error),
}

/// An error answer in Direct Line's shape:
/// `{"error":{"code","message"}}`, plus a top-level `httpStatusCode` when the
/// bot itself failed (Direct Line reports the bot's status that way on 502).
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub bot_status: Option<u16>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            bot_status: None,
        }
    }

    /// 400 with `BadArgument`: the request itself is wrong.
    pub fn bad_argument(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "BadArgument", message)
    }

    /// 401: no usable `Authorization` header at all.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "Unauthorized", message)
    }

    /// 403: the credential is known to be wrong for this call.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "Forbidden", message)
    }

    /// 403 `TokenExpired`, which DirectLineJS treats as "get a new token".
    pub fn token_expired() -> Self {
        Self::new(StatusCode::FORBIDDEN, "TokenExpired", "Token has expired")
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "NotFound", message)
    }

    pub fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "The method is not allowed on this resource",
        )
    }

    /// 413 `MessageSizeTooBig` (the Bot Framework's error code for this case).
    pub fn too_big(message: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, "MessageSizeTooBig", message)
    }

    /// 502 `BotError` carrying the bot's own HTTP status, as Direct Line does.
    pub fn bot_error(bot_status: u16, message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::BAD_GATEWAY,
            code: "BotError",
            message: message.into(),
            bot_status: Some(bot_status),
        }
    }

    /// The JSON body of this error.
    pub fn body(&self) -> serde_json::Value {
        let mut body = json!({ "error": { "code": self.code, "message": self.message } });
        if let Some(status) = self.bot_status {
            body["httpStatusCode"] = json!(status);
        }
        body
    }
}
