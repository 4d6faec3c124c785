//! `multipart/form-data` uploads (one part per file, plus an optional
//! activity part), read with `multer`. Kept here: the boundary of any
//! `multipart/*` type (`multer::parse_boundary` takes only form-data) and
//! the header parameters a raw upload's `Content-Disposition` carries.

use std::convert::Infallible;

use bytes::Bytes;
use http::header;

/// One part of a multipart body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    pub name: Option<String>,
    pub filename: Option<String>,
    /// As the part's header wrote it: it becomes the attachment's `contentType`.
    pub content_type: Option<String>,
    pub data: Bytes,
}

/// The `boundary` parameter of a `multipart/*` content type.
pub fn boundary(content_type: &str) -> Option<String> {
    let (mime, params) = content_type.split_once(';')?;
    if !mime.trim().to_ascii_lowercase().starts_with("multipart/") {
        return None;
    }
    param(params, "boundary").filter(|b| !b.is_empty())
}

/// Splits `body` into parts; `None` when it is not well-formed.
pub async fn parse(body: Bytes, boundary: &str) -> Option<Vec<Part>> {
    let whole = futures_util::stream::once(async { Ok::<_, Infallible>(body) });
    let mut reader = multer::Multipart::new(whole, boundary);
    let mut parts = Vec::new();
    while let Some(field) = reader.next_field().await.ok()? {
        let content_type = field
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|value| std::str::from_utf8(value.as_bytes()).ok())
            .map(|value| value.trim().to_string());
        parts.push(Part {
            name: field.name().map(str::to_string),
            filename: field.file_name().map(str::to_string),
            content_type,
            data: field.bytes().await.ok()?,
        });
    }
    Some(parts)
}

/// A `key=value` or `key="value"` parameter from a `;`-separated list.
pub fn param(params: &str, key: &str) -> Option<String> {
    params.split(';').find_map(|item| {
        let (k, v) = item.split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case(key)
            .then(|| v.trim().trim_matches('"').to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn parses_two_parts() {
        let body = Bytes::from_static(
            b"--xyz\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.txt\"\r\n\
Content-Type: text/plain\r\n\r\nhello\r\n--xyz\r\nContent-Disposition: form-data; name=\"activity\"\r\n\
Content-Type: application/vnd.microsoft.activity\r\n\r\n{\"type\":\"message\"}\r\n--xyz--\r\n",
        );
        let parts = parse(body, "xyz").await.expect("well-formed");
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].filename.as_deref(), Some("a.txt"));
        assert_eq!(&parts[0].data[..], b"hello");
        assert_eq!(parts[1].name.as_deref(), Some("activity"));
    }

    #[tokio::test]
    async fn a_part_keeps_its_content_type_as_written_and_needs_no_disposition() {
        let body = Bytes::from_static(
            b"preamble\r\n--b\r\nContent-Type: Text/Plain; charset=UTF-8\r\n\r\nhi\r\n--b--\r\n",
        );
        let parts = parse(body, "b").await.expect("well-formed");
        assert_eq!(
            parts,
            [Part {
                name: None,
                filename: None,
                content_type: Some("Text/Plain; charset=UTF-8".into()),
                data: Bytes::from_static(b"hi"),
            }]
        );
    }

    #[tokio::test]
    async fn rejects_truncated_bodies() {
        let body = Bytes::from_static(b"--xyz\r\nContent-Type: text/plain\r\n\r\nhel");
        assert_eq!(parse(body, "xyz").await, None);
        assert_eq!(
            boundary("multipart/form-data; boundary=\"b c\"").as_deref(),
            Some("b c")
        );
        assert_eq!(boundary("text/plain"), None);
    }
}
