//! The one response/request body type the proxy uses, and constructors for
//! the responses it makes itself.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, combinators::BoxBody};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type ProxyBody = BoxBody<Bytes, BoxError>;

pub fn full(bytes: impl Into<Bytes>) -> ProxyBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

pub fn empty() -> ProxyBody {
    full(Bytes::new())
}

/// A proxy-made error in Direct Line's own error shape, so clients such as
/// DirectLineJS handle it like any upstream error.
pub fn json_response(status: StatusCode, body: String) -> Response<ProxyBody> {
    let mut response = Response::new(full(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    response
}

pub fn text_response(status: StatusCode, body: &'static str) -> Response<ProxyBody> {
    let mut response = Response::new(full(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// A request body as a [`ProxyBody`] that fails once it passes `limit`
/// bytes, so an oversized upload is cut off, not buffered.
pub fn limited(body: hyper::body::Incoming, limit: u64) -> ProxyBody {
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    http_body_util::Limited::new(body, limit).boxed()
}
