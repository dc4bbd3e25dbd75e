//! What one route says: which requests (host, path) go where (weighted backend sets), with
//! which TLS and options, and which provider said so.
//!
//! Values here are checked when built ([`Host::parse`], [`Address::parse`],
//! [`parse_path`]), so a [`Route`] that exists is one the data plane can serve.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Serialize, Serializer};

use crate::auth::BasicAuth;

/// A request host a route matches: exact (`app.example.com`) or a wildcard of one label
/// (`*.example.com` matches `a.example.com`, not `example.com` nor `a.b.example.com`, as
/// Traefik's and nginx's wildcards do). Kept lowercase.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Host(String);

impl Host {
    /// Checks a host as written by a user; the error says what is wrong with it.
    pub fn parse(text: &str) -> Result<Host, String> {
        let t = text.trim().trim_end_matches('.').to_ascii_lowercase();
        if t.is_empty() {
            return Err("the host is empty".to_owned());
        }
        if t.contains("://") {
            return Err(format!(
                "`{text}` is a URL, not a host: write the host alone"
            ));
        }
        if t.contains('/') {
            return Err(format!(
                "`{text}` holds a path: write the host alone and the path in `path`"
            ));
        }
        if let Some((_, port)) = t.rsplit_once(':')
            && port.chars().all(|c| c.is_ascii_digit())
        {
            return Err(format!(
                "`{text}` holds a port: routes match the Host header without its port"
            ));
        }
        let name = t.strip_prefix("*.").unwrap_or(&t);
        if t.len() > 253 {
            return Err(format!("`{text}` is longer than 253 characters"));
        }
        for label in name.split('.') {
            if label.is_empty() {
                return Err(format!("`{text}` has an empty label (two dots in a row?)"));
            }
            if label.len() > 63 {
                return Err(format!("`{text}` has a label longer than 63 characters"));
            }
            if label == "*" {
                return Err(format!(
                    "`{text}`: a wildcard is only allowed as the whole first label (`*.example.com`)"
                ));
            }
            if let Some(bad) = label
                .chars()
                .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
            {
                return Err(format!(
                    "`{text}` holds `{bad}`: a host is letters, digits, `-` and dots"
                ));
            }
            if label.starts_with('-') || label.ends_with('-') {
                return Err(format!("`{text}`: a label may not start or end with `-`"));
            }
        }
        Ok(Host(t))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is_wildcard(&self) -> bool {
        self.0.starts_with("*.")
    }

    /// The part after `*.` of a wildcard.
    pub fn wildcard_suffix(&self) -> Option<&str> {
        self.0.strip_prefix("*.")
    }

    /// Whether a request's host (already lowercase, without port) matches.
    pub fn matches(&self, host: &str) -> bool {
        match self.wildcard_suffix() {
            Some(suffix) => host
                .strip_suffix(suffix)
                .and_then(|head| head.strip_suffix('.'))
                .is_some_and(|label| !label.is_empty() && !label.contains('.')),
            None => self.0 == host,
        }
    }
}

impl std::fmt::Display for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for Host {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

/// Checks a path prefix: absolute, no query or fragment, no whitespace.
pub fn parse_path(text: &str) -> Result<String, String> {
    let t = text.trim();
    if !t.starts_with('/') {
        return Err(format!("path `{text}` must start with `/`"));
    }
    if let Some(bad) = t
        .chars()
        .find(|c| c.is_whitespace() || c.is_control() || *c == '?' || *c == '#')
    {
        return Err(format!(
            "path `{text}` holds {bad:?}: a path prefix has no query, fragment or spaces"
        ));
    }
    Ok(t.to_owned())
}

/// Which requests a route takes: its host and, optionally, a path prefix (or an exact
/// path, from Traefik's `Path`). Two routes with one key conflict.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct RouteKey {
    pub host: Host,
    /// `None` is every path (the prefix `/`).
    pub path: Option<String>,
    /// The path must be equal, not only a prefix.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub exact: bool,
}

impl RouteKey {
    pub fn new(host: Host, path: Option<String>) -> Self {
        // `/` is every path: one spelling, so `path: /` and no path conflict.
        let path = path.filter(|p| p != "/");
        RouteKey {
            host,
            path,
            exact: false,
        }
    }

    /// Whether a request path falls under this key's path.
    pub fn matches_path(&self, path: &str) -> bool {
        match (&self.path, self.exact) {
            (None, _) => true,
            (Some(p), true) => path == p,
            (Some(p), false) => path.starts_with(p.as_str()),
        }
    }

    /// Length of the path part, for "longest prefix wins".
    pub fn path_len(&self) -> usize {
        self.path.as_deref().map_or(0, str::len)
    }
}

impl std::fmt::Display for RouteKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.host)?;
        if let Some(p) = &self.path {
            write!(f, "{p}")?;
            if self.exact {
                write!(f, " (exact)")?;
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Scheme {
    #[default]
    Http,
    Https,
}

/// Where a backend listens: `HOST:PORT`, HOST an IPv4 address, `[IPv6]` or a DNS name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Address(String);

impl Address {
    pub fn parse(text: &str) -> Result<Address, String> {
        let t = text.trim();
        let hint = "write HOST:PORT, e.g. 127.0.0.1:9000";
        let (host, port) = if let Some(rest) = t.strip_prefix('[') {
            let (ip, after) = rest
                .split_once(']')
                .ok_or_else(|| format!("address `{text}`: `[` without `]` ({hint})"))?;
            if ip.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(format!("address `{text}`: `{ip}` is not an IPv6 address"));
            }
            let port = after
                .strip_prefix(':')
                .ok_or_else(|| format!("address `{text}` has no port ({hint})"))?;
            (None, port)
        } else {
            let (host, port) = t
                .rsplit_once(':')
                .ok_or_else(|| format!("address `{text}` has no port ({hint})"))?;
            (Some(host), port)
        };
        match port.parse::<u16>() {
            Ok(p) if p > 0 => {}
            _ => {
                return Err(format!(
                    "address `{text}`: `{port}` is not a port (1-65535) ({hint})"
                ));
            }
        }
        if let Some(host) = host {
            if host.is_empty() {
                return Err(format!("address `{text}` has no host ({hint})"));
            }
            if host.contains(':') {
                return Err(format!(
                    "address `{text}`: an IPv6 address goes in brackets, `[::1]:9000`"
                ));
            }
            let plain = host.parse::<std::net::Ipv4Addr>().is_ok();
            if !plain
                && host
                    .chars()
                    .any(|c| !(c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_'))
            {
                return Err(format!(
                    "address `{text}`: `{host}` is neither an IP address nor a host name ({hint})"
                ));
            }
        }
        Ok(Address(t.to_ascii_lowercase()))
    }

    /// Address of `host` (an IP or a name) and `port`.
    pub fn from_parts(host: &str, port: u16) -> Result<Address, String> {
        if host.contains(':') && !host.starts_with('[') {
            Address::parse(&format!("[{host}]:{port}"))
        } else {
            Address::parse(&format!("{host}:{port}"))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for Address {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

/// Most a weight may be: weights are relative, and this keeps sums far from overflow.
pub const MAX_WEIGHT: u32 = 1_000_000;

/// Checks a weight as written (`3`, not `-1`, `1.5` or `heavy`).
pub fn parse_weight(text: &str) -> Result<u32, String> {
    match text.trim().parse::<u64>() {
        Ok(w) if w <= u64::from(MAX_WEIGHT) => Ok(w as u32),
        Ok(_) => Err(format!("weight `{text}` is more than {MAX_WEIGHT}")),
        Err(_) => Err(format!(
            "weight `{text}` is not a whole number from 0 to {MAX_WEIGHT}"
        )),
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Backend {
    pub address: Address,
    pub weight: u32,
    pub scheme: Scheme,
}

impl Backend {
    pub fn new(address: Address) -> Self {
        Backend {
            address,
            weight: 1,
            scheme: Scheme::Http,
        }
    }
}

/// A group of backends that share a weight: a route with two sets splits its traffic
/// between them by their weights (a canary), then within a set by the backends' weights.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BackendSet {
    /// Unique within a route (`default` when there is one set; a revision for deploys).
    pub name: String,
    pub weight: u32,
    pub backends: Vec<Backend>,
}

impl BackendSet {
    pub fn single(name: impl Into<String>, backends: Vec<Backend>) -> Self {
        BackendSet {
            name: name.into(),
            weight: 1,
            backends,
        }
    }
}

/// How the route's HTTPS is served.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Tls {
    /// A certificate ordered by ACME for the route's host.
    Acme,
    /// No HTTPS for this host: plain HTTP only.
    #[default]
    Off,
    /// An uploaded certificate, by name.
    Certificate(String),
}

impl Tls {
    /// `acme`, `off`, or any other word as a certificate name.
    pub fn parse(text: &str) -> Result<Tls, String> {
        let t = text.trim();
        match t.to_ascii_lowercase().as_str() {
            "acme" | "true" | "on" => Ok(Tls::Acme),
            "off" | "false" | "none" => Ok(Tls::Off),
            "" => Err("tls is empty: write `acme`, `off` or a certificate's name".to_owned()),
            _ if t
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.*".contains(c)) =>
            {
                Ok(Tls::Certificate(t.to_owned()))
            }
            _ => Err(format!(
                "tls `{t}`: write `acme`, `off` or a certificate's name (letters, digits, `-_.*`)"
            )),
        }
    }

    pub fn is_on(&self) -> bool {
        !matches!(self, Tls::Off)
    }
}

/// What plain HTTP does for a route that also has TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum PlainHttp {
    /// Served like HTTPS.
    #[default]
    Serve,
    /// Answered with a permanent redirect to the same URL over HTTPS.
    Redirect,
    /// Not served (404), as nginx-proxy's `HTTPS_METHOD=nohttp`.
    Off,
}

impl PlainHttp {
    pub fn parse(text: &str) -> Result<PlainHttp, String> {
        match text.trim().to_ascii_lowercase().as_str() {
            "serve" | "true" => Ok(PlainHttp::Serve),
            "redirect" => Ok(PlainHttp::Redirect),
            "off" | "false" => Ok(PlainHttp::Off),
            other => Err(format!(
                "http `{other}`: write `serve`, `redirect` (to HTTPS) or `off`"
            )),
        }
    }
}

/// `Strict-Transport-Security`; the default (`max-age=0`) is what labels that set only a
/// flag start from.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize)]
pub struct Hsts {
    pub max_age_secs: u64,
    pub include_subdomains: bool,
    pub preload: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct StickyCookie {
    pub name: String,
    pub secure: bool,
    pub http_only: bool,
}

impl StickyCookie {
    /// The name Traefik gives a sticky cookie that names none is a hash; a fixed, readable
    /// one is as good for a single proxy.
    pub const DEFAULT_NAME: &'static str = "slipway_sticky";

    pub fn named(name: impl Into<String>) -> Self {
        StickyCookie {
            name: name.into(),
            secure: false,
            http_only: true,
        }
    }
}

/// Checks a cookie name (an RFC 6265 token).
pub fn parse_cookie_name(text: &str) -> Result<String, String> {
    let t = text.trim();
    if t.is_empty()
        || t.chars()
            .any(|c| !c.is_ascii_graphic() || "()<>@,;:\\\"/[]?={}".contains(c))
    {
        return Err(format!(
            "cookie name `{t}`: letters, digits and `-_.!#$%&'*+^`|~` only"
        ));
    }
    Ok(t.to_owned())
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum HealthProbe {
    /// `GET path`; healthy when the status is `status`, or any 2xx/3xx when `None`.
    Http { path: String, status: Option<u16> },
    /// Healthy when a TCP connection opens.
    Tcp,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct HealthCheck {
    #[serde(flatten)]
    pub probe: HealthProbe,
    #[serde(serialize_with = "human_duration")]
    pub interval: Duration,
    #[serde(serialize_with = "human_duration")]
    pub timeout: Duration,
    /// Consecutive passes before a backend gets traffic.
    pub healthy_threshold: u32,
    /// Consecutive failures before it gets none.
    pub unhealthy_threshold: u32,
}

impl HealthCheck {
    pub fn http(path: String) -> Self {
        HealthCheck {
            probe: HealthProbe::Http { path, status: None },
            ..HealthCheck::tcp()
        }
    }

    pub fn tcp() -> Self {
        HealthCheck {
            probe: HealthProbe::Tcp,
            interval: Duration::from_secs(10),
            timeout: Duration::from_secs(5),
            healthy_threshold: 1,
            unhealthy_threshold: 3,
        }
    }
}

fn human_duration<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&humantime::format_duration(*d).to_string())
}

/// `10s`, `500ms`, `1m30s`; a bare number is seconds (as Traefik v1 and nginx read it).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    if let Ok(secs) = t.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    match humantime::parse_duration(t) {
        Ok(d) if !d.is_zero() => Ok(d),
        Ok(_) => Err(format!("duration `{t}` is zero")),
        Err(e) => Err(format!("duration `{t}`: {e} (write e.g. `10s`, `500ms`)")),
    }
}

/// Checks a status code for a health check.
pub fn parse_status(text: &str) -> Result<u16, String> {
    match text.trim().parse::<u16>() {
        Ok(s) if (100..=599).contains(&s) => Ok(s),
        _ => Err(format!("status `{text}` is not an HTTP status (100-599)")),
    }
}

/// Checks a header name (an RFC 9110 token).
pub fn parse_header_name(text: &str) -> Result<String, String> {
    let t = text.trim();
    if t.is_empty()
        || t.chars()
            .any(|c| !(c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c)))
    {
        return Err(format!("`{t}` is not a header name"));
    }
    Ok(t.to_owned())
}

/// What a route does to requests besides sending them on.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct RouteOptions {
    /// For a route with TLS: what plain HTTP does.
    pub http: PlainHttp,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hsts: Option<Hsts>,
    /// Set on the request to the backend; an empty value removes the header.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub request_headers: BTreeMap<String, String>,
    /// Set on the response to the client; an empty value removes the header.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub response_headers: BTreeMap<String, String>,
    /// Prefixes removed from the path before it is sent on (the first that matches).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub strip_prefixes: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub basic_auth: Option<BasicAuth>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sticky: Option<StickyCookie>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheck>,
    /// The e-mail address an ACME account for this route's certificate is registered with
    /// (nginx-proxy's `LETSENCRYPT_EMAIL`); the proxy's own `--acme-email` otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acme_email: Option<String>,
}

/// Who said a route should exist. Providers rank in a fixed order when they claim one
/// key: see [`RouteSource::rank`].
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum RouteSource {
    /// `--public-url`: Slipway itself.
    PublicUrl,
    /// The deployer, for a stack's service.
    Deploy { stack: String, service: String },
    /// The routes file.
    File { path: String },
    /// Labels (or nginx-proxy's environment) of a container or a Swarm service.
    Labels { container: String },
}

impl RouteSource {
    /// Higher wins. Slipway's own host can never be taken by anything else; what the
    /// deployer runs beats a hand-written file, which beats what any container says about
    /// itself (labels are the least trusted: anyone who can start a container sets them).
    pub fn rank(&self) -> u8 {
        match self {
            RouteSource::PublicUrl => 3,
            RouteSource::Deploy { .. } => 2,
            RouteSource::File { .. } => 1,
            RouteSource::Labels { .. } => 0,
        }
    }
}

impl std::fmt::Display for RouteSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RouteSource::PublicUrl => write!(f, "--public-url"),
            RouteSource::Deploy { stack, service } => write!(f, "deploy {stack}/{service}"),
            RouteSource::File { path } => write!(f, "file {path}"),
            RouteSource::Labels { container } => write!(f, "labels of {container}"),
        }
    }
}

/// One route: a key, where its requests go, how.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Route {
    #[serde(flatten)]
    pub key: RouteKey,
    /// Breaks ties between routes that match a request equally well; higher first.
    pub priority: i64,
    pub tls: Tls,
    pub backend_sets: Vec<BackendSet>,
    pub options: RouteOptions,
    pub source: RouteSource,
    /// Where in its source: `routes.yml:4:5`, `router web`, `VIRTUAL_HOST`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
}

impl Route {
    pub fn new(key: RouteKey, backend_sets: Vec<BackendSet>, source: RouteSource) -> Self {
        Route {
            key,
            priority: 0,
            tls: Tls::Off,
            backend_sets,
            options: RouteOptions::default(),
            source,
            origin: None,
        }
    }

    /// Every backend of every set.
    pub fn backends(&self) -> impl Iterator<Item = &Backend> {
        self.backend_sets.iter().flat_map(|s| s.backends.iter())
    }
}

/// The routes one provider owns; the table is built from several.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct RouteSet {
    pub routes: Vec<Route>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_checked_and_wildcards_match_one_label() {
        let w = Host::parse("*.Example.com").expect("wildcard");
        assert!(w.matches("a.example.com"));
        assert!(!w.matches("example.com"));
        assert!(!w.matches("a.b.example.com"));
        assert!(!w.matches("aexample.com"));
        for bad in [
            "",
            "http://a.com",
            "a.com:80",
            "a..com",
            "a.*.com",
            "-a.com",
            "a b.com",
            "a.com/x",
        ] {
            assert!(Host::parse(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn addresses_need_a_host_and_a_port() {
        for good in [
            "127.0.0.1:9000",
            "[::1]:80",
            "web:8080",
            "my_app.internal:1",
        ] {
            assert!(Address::parse(good).is_ok(), "{good} refused");
        }
        for bad in [
            "127.0.0.1",
            ":80",
            "a:0",
            "a:70000",
            "::1:80",
            "a b:80",
            "[zz]:80",
        ] {
            assert!(Address::parse(bad).is_err(), "{bad} accepted");
        }
    }
}
