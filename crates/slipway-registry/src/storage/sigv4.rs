//! AWS Signature Version 4 for S3 requests (header-based, path-style), written out here
//! instead of pulling in the AWS SDK. See
//! <https://docs.aws.amazon.com/AmazonS3/latest/API/sig-v4-header-based-auth.html>.
//!
//! [`Signer::sign`] takes the method, the URL (whose path must already be encoded with
//! [`uri_encode_path`]), the headers to sign besides `host`, the hex SHA-256 of the payload
//! (or [`UNSIGNED_PAYLOAD`]) and the time, and returns the headers to send.

use std::fmt;
use std::time::SystemTime;

use hmac::{Hmac, Mac};
use sha2::{Digest as _, Sha256};

/// `x-amz-content-sha256` of a request whose body is not hashed.
pub const UNSIGNED_PAYLOAD: &str = "UNSIGNED-PAYLOAD";
/// `x-amz-content-sha256` of an empty body.
pub const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// Signs requests with one access key for one region (service `s3`).
#[derive(Clone)]
pub struct Signer {
    access_key: String,
    secret_key: String,
    region: String,
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signer")
            .field("access_key", &self.access_key)
            .field("secret_key", &"<redacted>")
            .field("region", &self.region)
            .finish()
    }
}

/// `20130524T000000Z`, the `x-amz-date` form of `time`.
pub fn amz_date(time: SystemTime) -> String {
    humantime::format_rfc3339_seconds(time)
        .to_string()
        .replace(['-', ':'], "")
}

/// Percent-encodes everything but `A-Za-z0-9-_.~` (and `/` when `keep_slash`), as SigV4
/// wants for paths and query strings.
pub fn uri_encode(text: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            b'/' if keep_slash => out.push('/'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// An object path (`bucket/key`) encoded segment by segment.
pub fn uri_encode_path(path: &str) -> String {
    uri_encode(path, true)
}

fn hmac(key: &[u8], data: &str) -> Vec<u8> {
    // HMAC accepts keys of any length, so `new_from_slice` cannot fail here.
    let mut mac = match <Hmac<Sha256> as Mac>::new_from_slice(key) {
        Ok(mac) => mac,
        Err(_) => return Vec::new(),
    };
    mac.update(data.as_bytes());
    mac.finalize().into_bytes().to_vec()
}

fn sha256_hex(data: &[u8]) -> String {
    crate::digest::to_hex(&Sha256::digest(data))
}

impl Signer {
    pub fn new(access_key: &str, secret_key: &str, region: &str) -> Signer {
        Signer {
            access_key: access_key.to_string(),
            secret_key: secret_key.to_string(),
            region: region.to_string(),
        }
    }

    /// The headers to add to the request: `x-amz-date`, `x-amz-content-sha256` and
    /// `authorization`. `headers` are the other headers to sign (lowercase names), e.g.
    /// `range`; `host` is taken from `url`.
    pub fn sign(
        &self,
        method: &str,
        url: &reqwest::Url,
        headers: &[(&str, &str)],
        payload_sha256: &str,
        time: SystemTime,
    ) -> Vec<(&'static str, String)> {
        let date_time = amz_date(time);
        let authorization = self.authorization(method, url, headers, payload_sha256, &date_time);
        vec![
            ("x-amz-date", date_time),
            ("x-amz-content-sha256", payload_sha256.to_string()),
            ("authorization", authorization),
        ]
    }

    /// The `Authorization` header value for a request at `date_time` (`x-amz-date` form).
    pub fn authorization(
        &self,
        method: &str,
        url: &reqwest::Url,
        headers: &[(&str, &str)],
        payload_sha256: &str,
        date_time: &str,
    ) -> String {
        let host = match (url.host_str(), url.port()) {
            (Some(h), Some(p)) => format!("{h}:{p}"),
            (Some(h), None) => h.to_string(),
            (None, _) => String::new(),
        };
        let mut signed: Vec<(String, String)> = vec![
            ("host".to_string(), host),
            (
                "x-amz-content-sha256".to_string(),
                payload_sha256.to_string(),
            ),
            ("x-amz-date".to_string(), date_time.to_string()),
        ];
        signed.extend(
            headers
                .iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v.trim().to_string())),
        );
        signed.sort();
        let canonical_headers: String = signed.iter().map(|(k, v)| format!("{k}:{v}\n")).collect();
        let signed_headers = signed
            .iter()
            .map(|(k, _)| k.as_str())
            .collect::<Vec<_>>()
            .join(";");

        let mut query: Vec<(String, String)> = url
            .query_pairs()
            .map(|(k, v)| (uri_encode(&k, false), uri_encode(&v, false)))
            .collect();
        query.sort();
        let canonical_query = query
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("&");

        let canonical_request = format!(
            "{method}\n{}\n{canonical_query}\n{canonical_headers}\n{signed_headers}\n{payload_sha256}",
            url.path()
        );
        let date = date_time.get(..8).unwrap_or(date_time);
        let scope = format!("{date}/{}/s3/aws4_request", self.region);
        let string_to_sign = format!(
            "AWS4-HMAC-SHA256\n{date_time}\n{scope}\n{}",
            sha256_hex(canonical_request.as_bytes())
        );
        let key = hmac(format!("AWS4{}", self.secret_key).as_bytes(), date);
        let key = hmac(&key, &self.region);
        let key = hmac(&key, "s3");
        let key = hmac(&key, "aws4_request");
        let signature = crate::digest::to_hex(&hmac(&key, &string_to_sign));
        format!(
            "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed_headers}, Signature={signature}",
            self.access_key
        )
    }
}
