//! `Content-Range` of chunked uploads and the `Range` header of upload status responses.
//!
//! The distribution spec writes a chunk's range as `<start>-<end>` (inclusive, no unit);
//! clients that follow RFC 9110 send `bytes <start>-<end>/<total or *>`. Both are accepted.

use std::fmt;

/// An inclusive byte range `start..=end` of an upload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContentRange {
    pub start: u64,
    pub end: u64,
}

/// Why a `Content-Range` header was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RangeError {
    #[error("Content-Range `{0}` is not of the form `<start>-<end>`")]
    Syntax(String),
    #[error("Content-Range `{0}` ends before it starts")]
    Backwards(String),
}

impl ContentRange {
    /// Parses `start-end`, `bytes start-end`, `bytes start-end/total` or `…/*`.
    pub fn parse(header: &str) -> Result<ContentRange, RangeError> {
        let err = || RangeError::Syntax(header.to_string());
        let text = header.trim();
        let text = text.strip_prefix("bytes").map_or(text, |rest| {
            rest.strip_prefix([' ', '=']).unwrap_or(rest).trim_start()
        });
        let text = match text.split_once('/') {
            Some((range, total)) => {
                if total != "*" && parse_u64(total).is_none() {
                    return Err(err());
                }
                range
            }
            None => text,
        };
        let (start, end) = text.split_once('-').ok_or_else(err)?;
        let start = parse_u64(start).ok_or_else(err)?;
        let end = parse_u64(end).ok_or_else(err)?;
        if end < start {
            return Err(RangeError::Backwards(header.to_string()));
        }
        Ok(ContentRange { start, end })
    }

    /// Number of bytes the range covers (`end - start + 1`, at least 1), saturating at
    /// `u64::MAX`.
    pub fn byte_count(&self) -> u64 {
        (self.end - self.start).saturating_add(1)
    }
}

impl fmt::Display for ContentRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.start, self.end)
    }
}

/// Plain decimal digits only (no sign, no spaces, no `+`), fitting in a u64.
fn parse_u64(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// The `Range` header value of an upload holding `size` bytes: `0-<size-1>`, and `0-0` for an
/// empty upload (what distribution sends; clients read it as "nothing yet" together with
/// `Docker-Upload-UUID`).
pub fn upload_range_header(size: u64) -> String {
    format!("0-{}", size.saturating_sub(1))
}

/// A single `Range: bytes=a-b` / `bytes=a-` / `bytes=-n` request of a blob of `size` bytes,
/// resolved to an inclusive range inside the blob. `None` when the header is absent-worthy
/// (malformed or multi-range: served whole) and `Some(Err(()))` when unsatisfiable (416).
pub fn resolve_request_range(header: &str, size: u64) -> Option<Result<ContentRange, ()>> {
    let spec = header.trim().strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None;
    }
    let (a, b) = spec.split_once('-')?;
    let range = match (a.trim(), b.trim()) {
        ("", suffix) => {
            let n = parse_u64(suffix)?;
            if n == 0 || size == 0 {
                return Some(Err(()));
            }
            ContentRange {
                start: size.saturating_sub(n),
                end: size - 1,
            }
        }
        (start, "") => {
            let start = parse_u64(start)?;
            if start >= size {
                return Some(Err(()));
            }
            ContentRange {
                start,
                end: size - 1,
            }
        }
        (start, end) => {
            let (start, end) = (parse_u64(start)?, parse_u64(end)?);
            if end < start {
                return None;
            }
            if start >= size {
                return Some(Err(()));
            }
            ContentRange {
                start,
                end: end.min(size - 1),
            }
        }
    };
    Some(Ok(range))
}
