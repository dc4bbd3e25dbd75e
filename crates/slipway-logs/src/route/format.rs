//! What records look like on each wire: RFC 5424 syslog, GELF 1.1, raw templates.

use std::fmt::Write as _;

use crate::record::{ContainerMeta, Record, ServiceKey, Stream};

/// One record on its way out, with what every sink may put beside it.
#[derive(Debug, Clone, Copy)]
pub struct Outgoing<'a> {
    pub key: &'a ServiceKey,
    /// Where the record starts in its service's log: with the container, it names the
    /// record for good (Elasticsearch `_id`s).
    pub position: u64,
    pub record: &'a Record,
    pub meta: &'a ContainerMeta,
    /// This machine's name (syslog HOSTNAME, GELF `host`).
    pub hostname: &'a str,
}

/// The SD-ID of Slipway's structured data. 32473 is the Private Enterprise Number that
/// RFC 5612 reserves for documentation and examples: Slipway has none of its own, and a
/// receiver that does not know the SD-ID keeps it as text.
pub const SD_ID: &str = "slipway@32473";

/// RFC 3339 in UTC with microseconds: `2026-12-07T22:35:46.123456Z`.
pub fn rfc3339_micros(time_ns: i64) -> String {
    let secs = time_ns.div_euclid(1_000_000_000);
    let micros = time_ns.rem_euclid(1_000_000_000) / 1000;
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{micros:06}Z",
        sod / 3600,
        sod % 3600 / 60,
        sod % 60
    )
}

/// Howard Hinnant's `civil_from_days`: days since 1970-01-01 to (year, month, day).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// A header field: printable US-ASCII without spaces, at most `max` characters, `-` if
/// nothing is left (RFC 5424 §6.2: NILVALUE).
fn header_field(s: &str, max: usize) -> String {
    let out: String = s
        .chars()
        .map(|c| if ('!'..='~').contains(&c) { c } else { '_' })
        .take(max)
        .collect();
    if out.is_empty() { "-".into() } else { out }
}

/// An SD-NAME: 1 to 32 printable US-ASCII characters except `=`, space, `]` and `"`.
fn sd_name(s: &str) -> String {
    let out: String = s
        .chars()
        .map(|c| {
            if ('!'..='~').contains(&c) && !matches!(c, '=' | ']' | '"') {
                c
            } else {
                '_'
            }
        })
        .take(32)
        .collect();
    if out.is_empty() { "_".into() } else { out }
}

/// A PARAM-VALUE with `"`, `\` and `]` escaped (RFC 5424 §6.3.3).
fn sd_value(out: &mut String, s: &str) {
    for c in s.chars() {
        if matches!(c, '"' | '\\' | ']') {
            out.push('\\');
        }
        out.push(c);
    }
}

fn sd_param(out: &mut String, name: &str, value: &str) {
    out.push(' ');
    out.push_str(&sd_name(name));
    out.push_str("=\"");
    sd_value(out, value);
    out.push('"');
}

/// The syslog PRI: facility user (1), severity info (6) for stdout, err (3) for stderr.
pub fn syslog_pri(stream: Stream) -> u8 {
    match stream {
        Stream::Stdout => 14,
        Stream::Stderr => 11,
    }
}

/// One record as an RFC 5424 message:
/// `<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID [slipway@32473 …] MSG`.
///
/// APP-NAME is the service (48 characters at most), PROCID the container's name (128),
/// MSGID `-`. The structured data carries env, stack, service, container (name),
/// container_id, replica, revision, stream and then each JSON field (non-string values as
/// JSON text), names made valid SD-NAMEs. MSG is the line as it is (MSG-ANY: no BOM), line
/// breaks of a joined record inside.
pub fn rfc5424(o: &Outgoing<'_>) -> String {
    let r = o.record;
    let mut out = String::with_capacity(r.line.len() + 256);
    let _ = write!(
        out,
        "<{}>1 {} {} {} {} - [{SD_ID}",
        syslog_pri(r.stream),
        rfc3339_micros(r.time_ns),
        header_field(o.hostname, 255),
        header_field(&o.key.service, 48),
        header_field(&o.meta.name, 128),
    );
    sd_param(&mut out, "env", &o.key.env);
    sd_param(&mut out, "stack", &o.key.stack);
    sd_param(&mut out, "service", &o.key.service);
    sd_param(&mut out, "container", &o.meta.name);
    sd_param(&mut out, "container_id", &r.container);
    if let Some(replica) = r.replica {
        sd_param(&mut out, "replica", &replica.to_string());
    }
    if let Some(revision) = &r.revision {
        sd_param(&mut out, "revision", revision);
    }
    sd_param(&mut out, "stream", r.stream.as_str());
    if let Some(fields) = &r.fields {
        for (k, v) in fields {
            let text = match v {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            sd_param(&mut out, k, &text);
        }
    }
    out.push_str("] ");
    out.push_str(&r.line);
    out
}

/// The largest syslog message sent over UDP: what fits one IPv4 datagram (65,507 bytes
/// of payload). Longer messages are cut at a character boundary; the record is still
/// counted as delivered (UDP promises nothing more).
pub const UDP_MAX: usize = 65_507;

/// `s` cut to at most `max` bytes at a character boundary.
pub fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// A GELF 1.1 message: `short_message` the first line, `full_message` the whole record
/// when it has several, `level` 6 (info) for stdout and 3 (error) for stderr, and `_env`,
/// `_stack`, `_service`, `_container`, `_container_id`, `_replica`, `_revision`, `_stream`
/// and each JSON field as `_NAME` (`_id` is reserved by GELF and becomes `_id_`).
pub fn gelf(o: &Outgoing<'_>) -> serde_json::Value {
    let r = o.record;
    let line = crate::record::strip_ansi(&r.line);
    let short = line.lines().next().unwrap_or("");
    let mut m = serde_json::Map::new();
    m.insert("version".into(), "1.1".into());
    m.insert("host".into(), o.hostname.into());
    m.insert(
        "short_message".into(),
        if short.is_empty() { "-" } else { short }.into(),
    );
    if line.contains('\n') {
        m.insert("full_message".into(), line.as_ref().into());
    }
    m.insert(
        "timestamp".into(),
        serde_json::json!(r.time_ns.div_euclid(1000) as f64 / 1e6),
    );
    m.insert(
        "level".into(),
        match r.stream {
            Stream::Stdout => 6,
            Stream::Stderr => 3,
        }
        .into(),
    );
    m.insert("_env".into(), o.key.env.clone().into());
    m.insert("_stack".into(), o.key.stack.clone().into());
    m.insert("_service".into(), o.key.service.clone().into());
    m.insert("_container".into(), o.meta.name.clone().into());
    m.insert("_container_id".into(), r.container.clone().into());
    if let Some(replica) = r.replica {
        m.insert("_replica".into(), replica.into());
    }
    if let Some(rev) = &r.revision {
        m.insert("_revision".into(), rev.clone().into());
    }
    m.insert("_stream".into(), r.stream.as_str().into());
    if let Some(fields) = &r.fields {
        for (k, v) in fields {
            let mut name: String = k
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                        c
                    } else {
                        '_'
                    }
                })
                .collect();
            if name == "id" {
                name = "id_".into();
            }
            let key = format!("_{name}");
            m.entry(key).or_insert_with(|| match v {
                serde_json::Value::Number(_) | serde_json::Value::String(_) => v.clone(),
                other => other.to_string().into(),
            });
        }
    }
    serde_json::Value::Object(m)
}

/// GELF over UDP: messages above this are chunked (the limit Graylog suggests for the
/// public internet is lower; 8192 is the common LAN value).
pub const GELF_CHUNK: usize = 8192;
/// At most this many chunks (GELF's limit); a message needing more is cut.
pub const GELF_MAX_CHUNKS: usize = 128;
const GELF_CHUNK_HEADER: usize = 12;

/// `payload` as GELF UDP datagrams: one when it fits in [`GELF_CHUNK`] bytes, otherwise
/// chunks of `0x1e 0x0f`, the 8-byte message id, the sequence number and the count. A
/// message above 128 chunks is cut to what fits (and is no longer valid JSON: Graylog
/// drops it; the route still counts it as delivered, as for any UDP datagram).
pub fn gelf_chunks(payload: &[u8], message_id: [u8; 8]) -> Vec<Vec<u8>> {
    if payload.len() <= GELF_CHUNK {
        return vec![payload.to_vec()];
    }
    let per = GELF_CHUNK - GELF_CHUNK_HEADER;
    let count = payload.len().div_ceil(per).min(GELF_MAX_CHUNKS);
    payload
        .chunks(per)
        .take(count)
        .enumerate()
        .map(|(seq, part)| {
            let mut d = Vec::with_capacity(GELF_CHUNK_HEADER + part.len());
            d.extend_from_slice(&[0x1e, 0x0f]);
            d.extend_from_slice(&message_id);
            d.push(seq as u8);
            d.push(count as u8);
            d.extend_from_slice(part);
            d
        })
        .collect()
}

/// What a raw template sees: `time` (RFC 3339), `time_ns`, `env`, `stack`, `service`,
/// `container` (name), `container_id`, `replica`, `revision`, `stream`, `line`, `fields`.
pub fn template_context(o: &Outgoing<'_>) -> serde_json::Value {
    let r = o.record;
    serde_json::json!({
        "time": rfc3339_micros(r.time_ns),
        "time_ns": r.time_ns,
        "env": o.key.env,
        "stack": o.key.stack,
        "service": o.key.service,
        "container": o.meta.name,
        "container_id": r.container,
        "replica": r.replica,
        "revision": r.revision,
        "stream": r.stream.as_str(),
        "line": r.line,
        "fields": r.fields,
        "hostname": o.hostname,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps() {
        assert_eq!(rfc3339_micros(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(
            rfc3339_micros(1_796_682_946_123_456_789),
            "2026-12-07T22:35:46.123456Z"
        );
        assert_eq!(
            rfc3339_micros(951_782_400_000_001_000),
            "2000-02-29T00:00:00.000001Z"
        );
    }

    #[test]
    fn truncation_keeps_characters_whole() {
        assert_eq!(truncate_utf8("aé", 2), "a");
        assert_eq!(truncate_utf8("abc", 5), "abc");
    }
}
