//! A `multipart/form-data` body read at the edge (RFC 7578), enough for OpenAI's file upload:
//! text fields and file parts by name, each part's bytes as sent. What always holds: a body
//! without the boundary its header names, or with a part lacking its headers, is a 400 naming
//! `file`; nothing is written anywhere while parsing.

use crate::error::{Error, Result};
use std::collections::HashMap;

/// One part: its bytes and, for a file part, the client's file name (metadata only).
pub struct Part {
    pub filename: Option<String>,
    pub data: Vec<u8>,
}

fn bad(m: &str) -> Error {
    Error::invalid("file", format!("multipart body: {m}"))
}

/// The boundary of a `multipart/form-data; boundary=...` content type.
pub fn boundary(content_type: &str) -> Result<String> {
    let (kind, params) = content_type.split_once(';').unwrap_or((content_type, ""));
    if !kind.trim().eq_ignore_ascii_case("multipart/form-data") {
        return Err(bad("the request must be multipart/form-data"));
    }
    params
        .split(';')
        .filter_map(|p| p.trim().split_once('='))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("boundary"))
        .map(|(_, v)| v.trim().trim_matches('"').to_string())
        .filter(|b| !b.is_empty() && b.len() <= 200)
        .ok_or_else(|| bad("no boundary in the content type"))
}

fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    hay.get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|p| p + from)
}

/// `name="x"` from a Content-Disposition header value.
fn param(disposition: &str, key: &str) -> Option<String> {
    disposition.split(';').find_map(|p| {
        let (k, v) = p.trim().split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case(key)
            .then(|| v.trim().trim_matches('"').to_string())
    })
}

/// Parts by field name (the last of a repeated name wins).
pub fn parse(body: &[u8], boundary: &str) -> Result<HashMap<String, Part>> {
    let delim = format!("--{boundary}").into_bytes();
    let mut pos = find(body, &delim, 0).ok_or_else(|| bad("the boundary does not occur"))?;
    let mut parts = HashMap::new();
    loop {
        pos += delim.len();
        if body.get(pos..pos + 2) == Some(b"--") {
            return Ok(parts);
        }
        pos = find(body, b"\r\n", pos).ok_or_else(|| bad("truncated"))? + 2;
        let head_end = find(body, b"\r\n\r\n", pos).ok_or_else(|| bad("a part has no headers"))?;
        let head = String::from_utf8_lossy(&body[pos..head_end]).into_owned();
        let data_start = head_end + 4;
        let mut end_delim = b"\r\n".to_vec();
        end_delim.extend_from_slice(&delim);
        let data_end =
            find(body, &end_delim, data_start).ok_or_else(|| bad("a part is not terminated"))?;
        let disposition = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim()
                    .eq_ignore_ascii_case("content-disposition")
                    .then(|| v.to_string())
            })
            .ok_or_else(|| bad("a part has no Content-Disposition"))?;
        let name = param(&disposition, "name").ok_or_else(|| bad("a part has no name"))?;
        parts.insert(
            name,
            Part {
                filename: param(&disposition, "filename"),
                data: body[data_start..data_end].to_vec(),
            },
        );
        pos = data_end + 2;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_and_files() {
        let b = "XyZ";
        let body = format!(
            "--{b}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nfine-tune\r\n--{b}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"d.jsonl\"\r\nContent-Type: application/octet-stream\r\n\r\nline1\r\n--not-it\nline2\n\r\n--{b}--\r\n"
        );
        let ct = format!("multipart/form-data; boundary={b}");
        let parts = parse(body.as_bytes(), &boundary(&ct).unwrap()).unwrap();
        assert_eq!(parts["purpose"].data, b"fine-tune");
        assert_eq!(parts["file"].filename.as_deref(), Some("d.jsonl"));
        assert_eq!(parts["file"].data, b"line1\r\n--not-it\nline2\n");
        assert!(boundary("application/json").is_err());
        assert!(parse(b"garbage", b).is_err());
        assert!(parse(format!("--{b}\r\nX: y\r\n\r\nz").as_bytes(), b).is_err());
    }
}
