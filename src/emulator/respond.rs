//! Small helpers to build responses and read request bodies, so handlers
//! stay about behaviour rather than plumbing.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;

use super::error::ApiError;

/// The response body type of every emulator answer.
pub type Body = Full<Bytes>;

/// Largest request body the emulator reads at all; bigger is 413.
pub const MAX_BODY: usize = 32 * 1024 * 1024;

/// A JSON answer with the given status.
pub fn json(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    let bytes = serde_json::to_vec(value).unwrap_or_default();
    raw(
        status,
        "application/json; charset=utf-8",
        Bytes::from(bytes),
    )
}

/// An answer with arbitrary bytes and content type.
pub fn raw(status: StatusCode, content_type: &str, body: Bytes) -> Response<Body> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    let value = HeaderValue::from_str(content_type)
        .unwrap_or(HeaderValue::from_static("application/octet-stream"));
    response.headers_mut().insert(header::CONTENT_TYPE, value);
    response
}

/// The Direct Line-shaped error answer.
pub fn error(err: &ApiError) -> Response<Body> {
    let mut response = json(err.status, &err.body());
    if err.status == StatusCode::METHOD_NOT_ALLOWED {
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, POST"));
    }
    response
}

/// Reads the whole body, refusing more than [`MAX_BODY`] bytes.
pub async fn read_body(body: Incoming) -> Result<Bytes, ApiError> {
    match Limited::new(body, MAX_BODY).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(err) if err.is::<http_body_util::LengthLimitError>() => {
            Err(ApiError::too_big("Request body too large"))
        }
        Err(err) => Err(ApiError::bad_argument(format!(
            "Cannot read request body: {err}"
        ))),
    }
}

/// Parses a JSON body; an empty body counts as "absent" and yields `None`.
pub fn optional_json(body: &Bytes) -> Result<Option<serde_json::Value>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    serde_json::from_slice(body)
        .map(Some)
        .map_err(|err| ApiError::bad_argument(format!("Malformed JSON body: {err}")))
}

/// One query parameter's value, decoded as browsers encode queries
/// (`%XX` and `+` for a space), by the `form_urlencoded` crate.
pub fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    form_urlencoded::parse(query?.as_bytes())
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.into_owned())
}

/// The `watermark` query parameter: absent, empty or `-` mean "from the start".
pub fn watermark(query: Option<&str>) -> Result<Option<u64>, ApiError> {
    match query_param(query, "watermark").as_deref() {
        None | Some("") | Some("-") => Ok(None),
        Some(value) => value
            .parse()
            .map(Some)
            .map_err(|_| ApiError::bad_argument(format!("Invalid watermark '{value}'"))),
    }
}
