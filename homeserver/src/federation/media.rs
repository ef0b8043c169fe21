//! Media across servers: other servers' media fetched over federation and kept in our
//! repository, and the `multipart/mixed` shape both directions use
//! (<https://spec.matrix.org/v1.19/server-server-api/#content-repository>).

use bytes::Bytes;

use super::FederationError;
use crate::api::error::{ErrCode, MatrixError};
use crate::state::AppState;
use crate::storage::{MediaItem, Uploaded, now_ms};

/// One part of a multipart body: its headers (names lower-cased) and content.
#[derive(Debug, PartialEq, Eq)]
pub struct Part<'a> {
    /// The part's headers.
    pub headers: Vec<(String, String)>,
    /// The part's content.
    pub body: &'a [u8],
}

impl Part<'_> {
    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

fn find(haystack: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    haystack.get(from..)?.windows(needle.len()).position(|w| w == needle).map(|i| i + from)
}

/// The `boundary` parameter of a `multipart/*` content type.
pub fn boundary(content_type: &str) -> Option<String> {
    let (kind, params) = content_type.split_once(';')?;
    if !kind.trim().to_ascii_lowercase().starts_with("multipart/") {
        return None;
    }
    params.split(';').find_map(|param| {
        let (name, value) = param.split_once('=')?;
        name.trim().eq_ignore_ascii_case("boundary").then(|| value.trim().trim_matches('"').to_owned())
    })
}

/// Splits a multipart body (RFC 2046) into its parts.
pub fn parse_multipart<'a>(body: &'a [u8], boundary: &str) -> Result<Vec<Part<'a>>, String> {
    let delimiter = format!("--{boundary}");
    let delimiter = delimiter.as_bytes();
    let mut position = find(body, delimiter, 0).ok_or("no multipart boundary in the body")? + delimiter.len();
    let mut parts = Vec::new();
    loop {
        let rest = &body[position..];
        if rest.starts_with(b"--") {
            return Ok(parts);
        }
        // Transport padding, then the line break that ends the delimiter line.
        let line_end = find(body, b"\r\n", position).ok_or("a multipart delimiter without line break")?;
        let start = line_end + 2;
        let mut next_delimiter = b"\r\n".to_vec();
        next_delimiter.extend_from_slice(delimiter);
        let end = find(body, &next_delimiter, start).ok_or("an unterminated multipart part")?;
        let part = &body[start..end];
        let (head, content) = if part.starts_with(b"\r\n") {
            (&part[..0], &part[2..])
        } else {
            let split = find(part, b"\r\n\r\n", 0).ok_or("a multipart part without header end")?;
            (&part[..split], &part[split + 4..])
        };
        let headers = std::str::from_utf8(head)
            .map_err(|_| "multipart headers that are not text")?
            .split("\r\n")
            .filter_map(|line| line.split_once(':'))
            .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
            .collect();
        parts.push(Part { headers, body: content });
        position = end + next_delimiter.len();
    }
}

/// The start and end of a `multipart/mixed` body whose second part is `content_type` content
/// (the bytes go between them), and the body's content type.
pub fn multipart_frame(content_type: &str, disposition: Option<&str>) -> (Bytes, Bytes, String) {
    let boundary = uuid::Uuid::new_v4().simple().to_string();
    let disposition = disposition.map(|d| format!("Content-Disposition: {d}\r\n")).unwrap_or_default();
    let head = format!(
        "--{boundary}\r\nContent-Type: application/json\r\n\r\n{{}}\r\n--{boundary}\r\nContent-Type: {content_type}\r\n{disposition}\r\n"
    );
    let tail = format!("\r\n--{boundary}--\r\n");
    (Bytes::from(head), Bytes::from(tail), format!("multipart/mixed; boundary={boundary}"))
}

/// The file name in a `Content-Disposition` header (`filename*=utf-8''…` or `filename=…`).
pub fn disposition_file_name(disposition: &str) -> Option<String> {
    let params: Vec<(String, String)> = disposition
        .split(';')
        .skip(1)
        .filter_map(|p| p.split_once('='))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    if let Some((_, value)) = params.iter().find(|(n, _)| n == "filename*") {
        let encoded = value.split_once("''").map_or(value.as_str(), |(_, rest)| rest);
        if let Ok(decoded) = percent_decode(encoded) {
            return Some(decoded);
        }
    }
    params.iter().find(|(n, _)| n == "filename").map(|(_, v)| v.trim_matches('"').to_owned())
}

fn percent_decode(text: &str) -> Result<String, ()> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3).ok_or(())?).map_err(|_| ())?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| ())?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| ())
}

/// Another server's media item: our copy, or fetched now (and kept).
pub async fn remote_media(
    state: &AppState,
    origin: &str,
    media_id: &str,
    timeout_ms: Option<i64>,
) -> Result<(MediaItem, String), MatrixError> {
    if let Some(item) = state.storage.remote_media(origin, media_id).await? {
        let sha256 = item.sha256.clone().unwrap_or_default();
        return Ok((item, sha256));
    }
    if media_id.is_empty() || !media_id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
        return Err(MatrixError::not_found("Media not found"));
    }
    let client = state.federation().map_err(|_| MatrixError::not_found("Media not found"))?;
    let max = state.config.media.max_upload_size;
    let limit = usize::try_from(max).unwrap_or(usize::MAX).saturating_add(64 * 1024);
    let timeout = timeout_ms.unwrap_or(20_000).clamp(0, 60_000);
    let path = format!("/_matrix/federation/v1/media/download/{media_id}?timeout_ms={timeout}");
    let (content_type, disposition, bytes) = match client.get_bytes(origin, &path, limit).await {
        Ok((Some(content_type), body)) if boundary(&content_type).is_some() => {
            let boundary = boundary(&content_type).unwrap_or_default();
            let parts = parse_multipart(&body, &boundary)
                .map_err(|e| FederationError::Invalid(format!("{origin} sent a malformed multipart answer: {e}")))?;
            let media = parts.get(1).ok_or_else(|| FederationError::Invalid(format!("{origin} sent no media part")))?;
            match media.header("location") {
                Some(location) => client.get_url(location, limit).await?,
                None => (
                    media.header("content-type").map(str::to_owned),
                    media.header("content-disposition").map(str::to_owned),
                    media.body.to_vec(),
                ),
            }
        }
        Ok(_) => return Err(FederationError::Invalid(format!("{origin} did not answer with multipart media")).into()),
        Err(FederationError::Remote { status: 404, body, .. }) if body["errcode"] == "M_UNRECOGNIZED" => {
            // A server older than spec v1.11: the unauthenticated path it served then.
            let legacy = format!("/_matrix/media/v3/download/{origin}/{media_id}?allow_remote=false");
            let (content_type, body) = client.get_bytes(origin, &legacy, limit).await?;
            (content_type, None, body)
        }
        Err(err) => return Err(err.into()),
    };
    if bytes.len() as u64 > max {
        return Err(MatrixError::new(
            ErrCode::TooLarge,
            poem::http::StatusCode::BAD_GATEWAY,
            "The remote content is larger than this server keeps",
        ));
    }
    let upload_name = disposition.as_deref().and_then(disposition_file_name);
    let chunk = Bytes::from(bytes);
    let staged = state.media.put(futures_util::stream::iter([Ok::<_, std::io::Error>(chunk)]), max).await?;
    let sha256 = staged.sha256.clone();
    let size = i64::try_from(staged.size).map_err(|_| MatrixError::internal())?;
    state.media.settle(staged).await?;
    let content_type = content_type.filter(|t| !t.is_empty() && t.len() <= 255);
    let fetched =
        Uploaded { content_type: content_type.as_deref(), upload_name: upload_name.as_deref(), size, sha256: &sha256 };
    let mut write = state.storage.begin_media_write(&sha256, None).await?;
    if !state.media.exists(&sha256).await? {
        return Err(MatrixError::new(
            ErrCode::Unknown,
            poem::http::StatusCode::CONFLICT,
            "The content was deleted meanwhile; try again",
        ));
    }
    write.insert_remote(origin, media_id, &fetched, now_ms()).await?;
    write.commit().await?;
    let item = state.storage.remote_media(origin, media_id).await?.ok_or_else(MatrixError::internal)?;
    Ok((item, sha256))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multipart_round_trip_and_foreign_shapes() {
        let (head, tail, content_type) = multipart_frame("image/png", Some("inline; filename=\"cat.png\""));
        let body = [head.as_ref(), b"\x89PNG\r\n--not-the-boundary\r\n", tail.as_ref()].concat();
        let parts = parse_multipart(&body, &boundary(&content_type).unwrap()).unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].header("content-type"), Some("application/json"));
        assert_eq!(parts[0].body, b"{}");
        assert_eq!(parts[1].header("content-type"), Some("image/png"));
        assert_eq!(parts[1].body, b"\x89PNG\r\n--not-the-boundary\r\n");
        assert_eq!(disposition_file_name(parts[1].header("content-disposition").unwrap()).as_deref(), Some("cat.png"));

        // Another server's shape: a preamble, quoted boundary, a redirect part without body.
        let foreign = b"preamble\r\n--b1\r\ncontent-type: application/json\r\n\r\n{}\r\n--b1\r\nLocation: https://cdn.example/x\r\n\r\n\r\n--b1--";
        let parts = parse_multipart(foreign, &boundary("multipart/mixed; boundary=\"b1\"").unwrap()).unwrap();
        assert_eq!(parts[1].header("location"), Some("https://cdn.example/x"));
        assert!(parts[1].body.is_empty());
        assert!(parse_multipart(b"--b1\r\nunterminated", "b1").is_err());
        assert_eq!(boundary("application/json"), None);
        assert_eq!(disposition_file_name("attachment; filename*=utf-8''na%C3%AFve.txt").as_deref(), Some("naïve.txt"));
    }
}
