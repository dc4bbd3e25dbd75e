//! Route URIs: logspout's `ROUTE_URIS` syntax, `SCHEME://[USER[:PASS]@]HOST[:PORT][/PATH][?OPTIONS]`.

use std::fmt;
use std::path::PathBuf;

use sha2::{Digest, Sha256};

use crate::record::{ContainerMeta, Stream};

/// The schemes a route may use (aliases in brackets).
pub const SUPPORTED_SCHEMES: &str = "syslog (= syslog+udp), syslog+udp, syslog+tcp, syslog+tls, \
     relp, raw (= raw+tcp), raw+tcp, gelf (= gelf+udp), gelf+udp, gelf+tcp, \
     elasticsearch (= elasticsearch+http), elasticsearch+http, elasticsearch+https, \
     loki (= loki+http), loki+http, loki+https";

/// Where a route sends, and how.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scheme {
    SyslogUdp,
    SyslogTcp,
    SyslogTls,
    Relp,
    RawTcp,
    GelfUdp,
    GelfTcp,
    Elasticsearch { https: bool },
    Loki { https: bool },
}

impl Scheme {
    fn parse(s: &str) -> Option<Scheme> {
        Some(match s {
            "syslog" | "syslog+udp" => Scheme::SyslogUdp,
            "syslog+tcp" => Scheme::SyslogTcp,
            "syslog+tls" => Scheme::SyslogTls,
            "relp" => Scheme::Relp,
            "raw" | "raw+tcp" => Scheme::RawTcp,
            "gelf" | "gelf+udp" => Scheme::GelfUdp,
            "gelf+tcp" => Scheme::GelfTcp,
            "elasticsearch" | "elasticsearch+http" => Scheme::Elasticsearch { https: false },
            "elasticsearch+https" => Scheme::Elasticsearch { https: true },
            "loki" | "loki+http" => Scheme::Loki { https: false },
            "loki+https" => Scheme::Loki { https: true },
            _ => return None,
        })
    }

    fn default_port(self) -> Option<u16> {
        match self {
            Scheme::SyslogUdp | Scheme::SyslogTcp => Some(514),
            Scheme::SyslogTls => Some(6514),
            Scheme::Relp => Some(2514),
            Scheme::RawTcp => None,
            Scheme::GelfUdp | Scheme::GelfTcp => Some(12201),
            Scheme::Elasticsearch { .. } => Some(9200),
            Scheme::Loki { .. } => Some(3100),
        }
    }

    /// Whether records go over a TCP (or TLS) stream, where [`Framing`] applies.
    fn streams_syslog(self) -> bool {
        matches!(self, Scheme::SyslogTcp | Scheme::SyslogTls)
    }
}

/// How syslog messages are delimited on a stream (RFC 6587).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Framing {
    /// `LEN SP MSG` (RFC 6587 §3.4.1): multi-line records stay one message.
    #[default]
    Octet,
    /// `MSG LF` (§3.4.2): line breaks inside a record are sent as spaces.
    Newline,
}

/// Which records a route takes: logspout's `filter.*` options. Every given part must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// A glob (`*`, `?`) on the container's name.
    pub name: Option<String>,
    /// A prefix of the container's full id.
    pub id: Option<String>,
    /// `key:glob` pairs on the container's labels (a bare `key` means present).
    pub labels: Vec<(String, String)>,
    /// The outputs taken; empty means both.
    pub sources: Vec<Stream>,
}

impl Filter {
    /// Whether a record of `stream` written by `meta` goes through this route.
    pub fn matches(&self, meta: &ContainerMeta, stream: Stream) -> bool {
        if !self.sources.is_empty() && !self.sources.contains(&stream) {
            return false;
        }
        if let Some(id) = &self.id
            && !meta.id.starts_with(id.as_str())
        {
            return false;
        }
        if let Some(name) = &self.name
            && !glob(name, &meta.name)
        {
            return false;
        }
        self.labels.iter().all(|(k, v)| {
            meta.labels
                .get(k)
                .is_some_and(|actual| v.is_empty() || glob(v, actual))
        })
    }

    /// Whether every record goes through.
    pub fn is_empty(&self) -> bool {
        self.name.is_none()
            && self.id.is_none()
            && self.labels.is_empty()
            && self.sources.is_empty()
    }
}

/// `*` matches any run (even empty), `?` one character; everything else itself.
pub fn glob(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// A parsed route URI.
#[derive(Clone, PartialEq, Eq)]
pub struct RouteUri {
    /// The URI as given (with its password: only for the wire, never printed).
    raw: String,
    pub scheme: Scheme,
    pub host: String,
    pub port: u16,
    pub user: Option<String>,
    pub password: Option<String>,
    /// The path without its leading `/` (the Elasticsearch index; a Loki path prefix).
    pub path: String,
    pub filter: Filter,
    /// `framing=` for `syslog+tcp`/`syslog+tls`.
    pub framing: Framing,
    /// `template=` for `raw`: a minijinja template (default `{{ line }}`).
    pub template: Option<String>,
    /// `tls.ca=PATH` for `syslog+tls` and the `+https` schemes: PEM roots used instead
    /// of the webpki ones.
    pub tls_ca: Option<PathBuf>,
    /// `window=` for `relp`: unacknowledged frames in flight (default 128).
    pub window: usize,
}

impl fmt::Debug for RouteUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("RouteUri").field(&self.masked()).finish()
    }
}

impl fmt::Display for RouteUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.masked())
    }
}

/// A route URI that does not parse: which one and what in it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("log route `{uri}`: {problem}")]
pub struct UriError {
    /// The URI, its password masked.
    pub uri: String,
    pub problem: String,
}

/// Default RELP window.
pub const DEFAULT_RELP_WINDOW: usize = 128;

impl RouteUri {
    /// Parses one route URI.
    pub fn parse(input: &str) -> Result<RouteUri, UriError> {
        let input = input.trim();
        let err = |problem: String| UriError {
            uri: mask_userinfo(input),
            problem,
        };
        let Some((scheme_s, rest)) = input.split_once("://") else {
            return Err(err(format!(
                "not SCHEME://HOST:PORT (supported schemes: {SUPPORTED_SCHEMES})"
            )));
        };
        let scheme = Scheme::parse(&scheme_s.to_ascii_lowercase()).ok_or_else(|| {
            err(format!(
                "unknown scheme `{scheme_s}` (supported schemes: {SUPPORTED_SCHEMES})"
            ))
        })?;
        let (before_query, query) = match rest.split_once('?') {
            Some((a, q)) => (a, q),
            None => (rest, ""),
        };
        let (authority, path) = match before_query.split_once('/') {
            Some((a, p)) => (a, p.trim_end_matches('/')),
            None => (before_query, ""),
        };
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        let (user, password) = match userinfo {
            None => (None, None),
            Some(u) => match u.split_once(':') {
                Some((n, p)) => (Some(pct_decode(n)), Some(pct_decode(p))),
                None => (Some(pct_decode(u)), None),
            },
        };
        let (host, port) = split_host_port(hostport).map_err(err)?;
        if host.is_empty() {
            return Err(err("no host".into()));
        }
        let port = match port {
            Some(p) => p,
            None => scheme
                .default_port()
                .ok_or_else(|| err(format!("no port (`{scheme_s}` has no default port)")))?,
        };
        let mut uri = RouteUri {
            raw: input.to_string(),
            scheme,
            host,
            port,
            user,
            password,
            path: pct_decode(path),
            filter: Filter::default(),
            framing: Framing::default(),
            template: None,
            tls_ca: None,
            window: DEFAULT_RELP_WINDOW,
        };
        for (k, v) in form_urlencoded::parse(query.as_bytes()) {
            let bad = |what: &str| err(format!("option `{k}={v}`: {what}"));
            match k.as_ref() {
                "filter.name" => uri.filter.name = Some(v.into_owned()),
                "filter.id" => uri.filter.id = Some(v.into_owned()),
                "filter.labels" => {
                    for pair in v.split(',').filter(|p| !p.is_empty()) {
                        let (lk, lv) = pair.split_once(':').unwrap_or((pair, ""));
                        if lk.is_empty() {
                            return Err(bad("a label needs a key (`key:value`)"));
                        }
                        uri.filter.labels.push((lk.to_string(), lv.to_string()));
                    }
                }
                "filter.sources" => {
                    for s in v.split(',').filter(|p| !p.is_empty()) {
                        let stream = match s {
                            "stdout" => Stream::Stdout,
                            "stderr" => Stream::Stderr,
                            _ => return Err(bad("sources are `stdout` and `stderr`")),
                        };
                        if !uri.filter.sources.contains(&stream) {
                            uri.filter.sources.push(stream);
                        }
                    }
                }
                "framing" if scheme.streams_syslog() => {
                    uri.framing = match v.as_ref() {
                        "octet" | "octet-counted" => Framing::Octet,
                        "newline" | "lf" => Framing::Newline,
                        _ => return Err(bad("framing is `octet` or `newline`")),
                    }
                }
                "template" if scheme == Scheme::RawTcp => {
                    minijinja::Environment::new()
                        .template_from_str(&v)
                        .map_err(|e| bad(&format!("the template does not parse: {e}")))?;
                    uri.template = Some(v.into_owned());
                }
                "tls.ca"
                    if matches!(
                        scheme,
                        Scheme::SyslogTls
                            | Scheme::Elasticsearch { https: true }
                            | Scheme::Loki { https: true }
                    ) =>
                {
                    uri.tls_ca = Some(PathBuf::from(v.as_ref()));
                }
                "window" if scheme == Scheme::Relp => {
                    uri.window = match v.parse::<usize>() {
                        Ok(n) if (1..=65_535).contains(&n) => n,
                        _ => return Err(bad("the window is a number from 1 to 65535")),
                    }
                }
                _ => {
                    return Err(bad(&format!(
                        "unknown option for `{scheme_s}` (options: filter.name, filter.id, \
                         filter.labels, filter.sources{})",
                        match scheme {
                            Scheme::SyslogTcp => ", framing",
                            Scheme::SyslogTls => ", framing, tls.ca",
                            Scheme::RawTcp => ", template",
                            Scheme::Relp => ", window",
                            Scheme::Elasticsearch { https: true }
                            | Scheme::Loki { https: true } => ", tls.ca",
                            _ => "",
                        }
                    )));
                }
            }
        }
        if matches!(scheme, Scheme::Elasticsearch { .. }) && uri.path.is_empty() {
            uri.path = "slipway".into();
        }
        if matches!(scheme, Scheme::Elasticsearch { .. })
            && (uri.path.contains('/') || uri.path != uri.path.to_lowercase())
        {
            return Err(err(format!(
                "path `{}`: the Elasticsearch index is one lowercase name",
                uri.path
            )));
        }
        Ok(uri)
    }

    /// A stable short id: the first 12 hex digits of the URI's SHA-256 (the URI as given,
    /// so two routes differing only in options have their own cursors).
    pub fn id(&self) -> String {
        let digest = Sha256::digest(self.raw.as_bytes());
        hex::encode(&digest[..6])
    }

    /// The URI with its password as `******`.
    /// The URI as given, password included: for keeping it (the server's route list in
    /// its private data dir), never for printing.
    pub fn as_str(&self) -> &str {
        &self.raw
    }

    pub fn masked(&self) -> String {
        mask_userinfo(&self.raw)
    }

    /// `host:port`, IPv6 hosts in brackets.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// Parses logspout's `ROUTE_URIS`: URIs separated by commas (a comma inside
/// `filter.labels=` or `filter.sources=` belongs to the option: a new URI starts only
/// where the text after the comma has `://`).
pub fn parse_route_uris(list: &str) -> Result<Vec<RouteUri>, UriError> {
    let mut parts: Vec<String> = Vec::new();
    for piece in list.split(',') {
        let starts_uri = piece
            .split_once("://")
            .is_some_and(|(s, _)| !s.is_empty() && !s.contains(['?', '&', '=', '/']));
        match parts.last_mut() {
            Some(last) if !starts_uri => {
                last.push(',');
                last.push_str(piece);
            }
            _ => parts.push(piece.to_string()),
        }
    }
    parts
        .iter()
        .map(|p| p.trim())
        .filter(|p| !p.is_empty())
        .map(RouteUri::parse)
        .collect()
}

fn split_host_port(s: &str) -> Result<(String, Option<u16>), String> {
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let Some((h, after)) = rest.split_once(']') else {
            return Err(format!("host `{s}`: an IPv6 address needs its closing `]`"));
        };
        match after.strip_prefix(':') {
            Some(p) => (h, Some(p)),
            None if after.is_empty() => (h, None),
            None => return Err(format!("`{after}` after the host")),
        }
    } else {
        match s.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        }
    };
    let port = match port {
        None => None,
        Some(p) => Some(
            p.parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| format!("port `{p}` is not a number from 1 to 65535"))?,
        ),
    };
    Ok((host.to_string(), port))
}

fn pct_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Ok(b) = u8::from_str_radix(s.get(i + 1..i + 3).unwrap_or("zz"), 16)
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `scheme://user:******@host…`: what may be printed of a URI.
pub(crate) fn mask_userinfo(uri: &str) -> String {
    let Some((scheme, rest)) = uri.split_once("://") else {
        return uri.to_string();
    };
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let authority = &rest[..end];
    let Some((userinfo, host)) = authority.rsplit_once('@') else {
        return uri.to_string();
    };
    let user = match userinfo.split_once(':') {
        Some((u, _)) => format!("{u}:******"),
        None => userinfo.to_string(),
    };
    format!("{scheme}://{user}@{host}{}", &rest[end..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob("web*", "web-1"));
        assert!(glob("*_db", "app_db"));
        assert!(!glob("*_db", "app_dbx"));
        assert!(glob("a?c", "abc"));
        assert!(glob("*", ""));
        assert!(glob("a*b*c", "aXXbYYc"));
        assert!(!glob("a*b*c", "aXXbYY"));
    }

    #[test]
    fn masking() {
        assert_eq!(
            mask_userinfo("loki+https://u:secret@h:1/x?y=z"),
            "loki+https://u:******@h:1/x?y=z"
        );
        assert_eq!(mask_userinfo("relp://h:1"), "relp://h:1");
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(pct_decode("a%40b%"), "a@b%");
    }
}
