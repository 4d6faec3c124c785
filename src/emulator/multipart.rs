//! A small `multipart/form-data` reader, enough for Direct Line uploads
//! (one part per file, plus an optional activity part).

use bytes::Bytes;
use memchr::memmem;

/// One part of a multipart body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    pub name: Option<String>,
    pub filename: Option<String>,
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
pub fn parse(body: &Bytes, boundary: &str) -> Option<Vec<Part>> {
    let delimiter = format!("--{boundary}");
    let next_delimiter = format!("\r\n--{boundary}");
    let mut pos = memmem::find(body, delimiter.as_bytes())? + delimiter.len();
    let mut parts = Vec::new();
    loop {
        let rest = body.get(pos..)?;
        if rest.starts_with(b"--") {
            return Some(parts);
        }
        let start = pos + skip_line_end(rest)?;
        let header_len = memmem::find(body.get(start..)?, b"\r\n\r\n")?;
        let headers = std::str::from_utf8(&body[start..start + header_len]).ok()?;
        let data_start = start + header_len + 4;
        let data_len = memmem::find(body.get(data_start..)?, next_delimiter.as_bytes())?;
        parts.push(part(headers, body.slice(data_start..data_start + data_len)));
        pos = data_start + data_len + next_delimiter.len();
    }
}

/// Length of the (optional whitespace and) CRLF after a delimiter.
fn skip_line_end(rest: &[u8]) -> Option<usize> {
    let end = memmem::find(rest, b"\r\n")?;
    rest[..end]
        .iter()
        .all(|b| *b == b' ' || *b == b'\t')
        .then_some(end + 2)
}

fn part(headers: &str, data: Bytes) -> Part {
    let mut part = Part {
        name: None,
        filename: None,
        content_type: None,
        data,
    };
    for line in headers.split("\r\n") {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let key = key.trim().to_ascii_lowercase();
        if key == "content-type" {
            part.content_type = Some(value.trim().to_string());
        } else if key == "content-disposition" {
            part.name = param(value, "name");
            part.filename = param(value, "filename");
        }
    }
    part
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

    #[test]
    fn parses_two_parts() {
        let body = Bytes::from_static(
            b"--xyz\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.txt\"\r\n\
Content-Type: text/plain\r\n\r\nhello\r\n--xyz\r\nContent-Disposition: form-data; name=\"activity\"\r\n\
Content-Type: application/vnd.microsoft.activity\r\n\r\n{\"type\":\"message\"}\r\n--xyz--\r\n",
        );
        let parts = parse(&body, "xyz").unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].filename.as_deref(), Some("a.txt"));
        assert_eq!(&parts[0].data[..], b"hello");
        assert_eq!(parts[1].name.as_deref(), Some("activity"));
    }

    #[test]
    fn rejects_truncated_bodies() {
        let body = Bytes::from_static(b"--xyz\r\nContent-Type: text/plain\r\n\r\nhel");
        assert_eq!(parse(&body, "xyz"), None);
        assert_eq!(
            boundary("multipart/form-data; boundary=\"b c\"").as_deref(),
            Some("b c")
        );
        assert_eq!(boundary("text/plain"), None);
    }
}
