//! Label readers: what one container or Swarm service says about its routes, in the
//! conventions users already write. Pure: the input is a [`Workload`], a description the
//! Docker provider (of a running container or a live Swarm service) or the compose reader
//! builds.
//!
//! Conventions, read in this order; a key a former one already routes is not routed again
//! by a later one (a warning says so):
//! 1. Slipway: `slipway.proxy.*` labels (every key in [`SLIPWAY_KEYS`]).
//! 2. Traefik v2/v3: `traefik.http.routers|services|middlewares.*`. Middlewares are looked
//!    up among those every workload defines, as Traefik's provider namespace is shared.
//! 3. Traefik v1: `traefik.port`, `traefik.frontend.*`, `traefik.backend*`,
//!    `traefik.weight`, and Rancher's `traefik.domain` + `traefik.alias`.
//! 4. nginx-proxy and its ACME companion: `VIRTUAL_HOST` and friends in the environment.
//!
//! `slipway.proxy=false` or `traefik.enable=false` skips the workload altogether. A
//! wildcard host with ACME (a Traefik DNS-01 resolver's usual case) is an error: Slipway
//! orders certificates by HTTP-01 and TLS-ALPN-01 only.
//!
//! Choices where the conventions leave it to the proxy's configuration:
//! - Only workloads with a `traefik.` label are Traefik's (its `exposedByDefault=false`,
//!   which nearly every setup sets: a container without labels is not published).
//! - A Traefik workload with no router gets one with Traefik's default `defaultRule`,
//!   ``Host(`{{ normalize .Name }}`)`` (the name with every run of other characters than
//!   letters and digits made one `-`); Slipway has no `--providers.docker.defaultRule`.
//! - A router is TLS when it has `tls` labels or all its entry points read as secure (a
//!   name holding `secure`, `https`, `ssl`, `tls` or `443`). Routers of one workload with
//!   one key are one route: the TLS router's options, and plain HTTP redirected when the
//!   plain router has a `redirectscheme` to https or there is no plain router (the
//!   entry-point redirect such setups have), else served.
//! - `tls=true` and every certificate resolver mean an ACME certificate.
//! - A service with no port and no single exposed port gets 80, with a warning.
//! - Middlewares that guard (`ipallowlist`, `ipwhitelist`, `forwardauth`, `chain`, a
//!   `basicauth` from a file) make their router an error, not a wider route; others that
//!   Slipway has no equivalent for are warnings.
//!
//! A backend is the workload's first network address with the port, else the published
//! port of that port (on 127.0.0.1 when published on every interface), else `NAME:PORT`
//! (the name a compose network resolves). A Swarm service the Docker provider reaches at
//! its tasks ([`Workload::task_addresses`]) has one backend per running task instead.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::auth::BasicAuth;
use crate::diagnostic::{Diagnostic, suggestion};
use crate::route::{
    Address, Backend, BackendSet, HealthCheck, HealthProbe, Host, Hsts, PlainHttp, Route, RouteKey,
    RouteOptions, RouteSet, RouteSource, Scheme, StickyCookie, Tls, parse_cookie_name,
    parse_duration, parse_header_name, parse_path, parse_status, parse_weight,
};
use crate::rule;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum WorkloadKind {
    #[default]
    Container,
    /// A Swarm or compose service.
    Service,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PublishedPort {
    pub target: u16,
    pub published: u16,
    pub host_ip: Option<String>,
}

/// One container or service, as the label readers see it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct Workload {
    pub name: String,
    pub kind: WorkloadKind,
    /// Container labels and, for a Swarm service, its `deploy.labels` over them.
    pub labels: BTreeMap<String, String>,
    pub environment: BTreeMap<String, String>,
    /// Ports the workload listens on (`EXPOSE`, `expose:`, the targets of `ports:`).
    pub exposed_ports: Vec<u16>,
    pub published_ports: Vec<PublishedPort>,
    /// Its IP addresses on networks the proxy shares, best first.
    pub addresses: Vec<String>,
    /// A Swarm service reached at its tasks: each running task's IP on the network the
    /// proxy shares with it, one backend each (none while no task runs, so its routes
    /// answer 503, not 404, through a restart). `None` for anything reached at one address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task_addresses: Option<Vec<String>>,
}

impl Workload {
    fn origin(&self) -> String {
        match self.kind {
            WorkloadKind::Container => format!("container {}", self.name),
            WorkloadKind::Service => format!("service {}", self.name),
        }
    }

    fn source(&self) -> RouteSource {
        RouteSource::Labels {
            container: self.origin(),
        }
    }

    fn label(&self, key: &str) -> Option<&str> {
        self.labels.get(key).map(String::as_str)
    }

    /// Exposed ports without repeats, in order.
    fn ports(&self) -> Vec<u16> {
        let mut seen = BTreeSet::new();
        self.exposed_ports
            .iter()
            .copied()
            .filter(|p| seen.insert(*p))
            .collect()
    }

    /// Where `port` is reached: every task of a service reached at its tasks, else one
    /// address.
    fn addresses(&self, port: u16) -> Result<Vec<Address>, String> {
        match &self.task_addresses {
            Some(tasks) => tasks
                .iter()
                .map(|ip| Address::from_parts(ip, port))
                .collect(),
            None => self.address(port).map(|a| vec![a]),
        }
    }

    fn address(&self, port: u16) -> Result<Address, String> {
        if let Some(ip) = self.addresses.first() {
            return Address::from_parts(ip, port);
        }
        if let Some(p) = self.published_ports.iter().find(|p| p.target == port) {
            let ip = match p.host_ip.as_deref() {
                None | Some("" | "0.0.0.0" | "::") => "127.0.0.1",
                Some(ip) => ip,
            };
            return Address::from_parts(ip, p.published);
        }
        Address::from_parts(&self.name, port)
    }
}

/// Traefik's `normalize`: runs of anything but letters and digits become one `-`.
pub fn normalize(name: &str) -> String {
    name.split(|c: char| !c.is_alphanumeric())
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join("-")
}

fn truthy(v: &str) -> Option<bool> {
    match v.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Some(true),
        "false" | "0" | "no" | "off" => Some(false),
        _ => None,
    }
}

/// Reads every workload: the routes of all, and every problem.
pub fn read_all(workloads: &[Workload]) -> (RouteSet, Vec<Diagnostic>) {
    let middlewares = Middlewares::collect(workloads);
    let mut routes = Vec::new();
    let mut diags = Vec::new();
    for w in workloads {
        let (mut r, mut d) = read(w, &middlewares);
        routes.append(&mut r);
        diags.append(&mut d);
    }
    (RouteSet { routes }, diags)
}

/// Reads one workload, with the Traefik middlewares every workload defines.
pub fn read(w: &Workload, middlewares: &Middlewares) -> (Vec<Route>, Vec<Diagnostic>) {
    let mut cx = Cx {
        w,
        diags: Vec::new(),
    };
    if w.label("slipway.proxy").and_then(truthy) == Some(false) {
        return (Vec::new(), Vec::new());
    }
    if w.label("traefik.enable").and_then(truthy) == Some(false) {
        return (Vec::new(), Vec::new());
    }
    let mut routes: Vec<Route> = Vec::new();
    let readers: [fn(&mut Cx, &Middlewares) -> Vec<Route>; 4] = [
        |cx, _| cx.slipway(),
        |cx, m| cx.traefik_v2(m),
        |cx, _| cx.traefik_v1(),
        |cx, _| cx.nginx_proxy(),
    ];
    for reader in readers {
        for r in reader(&mut cx, middlewares) {
            if r.key.host.is_wildcard() && r.tls == Tls::Acme {
                let d = Diagnostic::error(format!(
                    "`{}`: an ACME certificate cannot be ordered for a wildcard by HTTP-01 or TLS-ALPN-01, and Slipway does no DNS-01",
                    r.key.host
                ))
                .origin(w.origin())
                .hint("upload a wildcard certificate and name it (`slipway.proxy.tls=NAME`), or list the hosts");
                cx.diags.push(d);
                continue;
            }
            if let Some(first) = routes.iter().find(|o| o.key == r.key) {
                let d = Diagnostic::warning(format!(
                    "`{}` is routed by {} already; {} is not used",
                    r.key,
                    first.origin.as_deref().unwrap_or("another label"),
                    r.origin.as_deref().unwrap_or("this one"),
                ))
                .origin(w.origin());
                cx.diags.push(d);
                continue;
            }
            routes.push(r);
        }
    }
    (routes, cx.diags)
}

/// Traefik middlewares by name, from every workload's labels.
#[derive(Debug, Clone, Default)]
pub struct Middlewares {
    by_name: BTreeMap<String, BTreeMap<String, (String, String)>>,
}

impl Middlewares {
    pub fn collect(workloads: &[Workload]) -> Self {
        let mut m = Middlewares::default();
        // Traefik reads no label of a disabled container, its middlewares' neither.
        for w in workloads
            .iter()
            .filter(|w| w.label("traefik.enable").and_then(truthy) != Some(false))
        {
            for (k, v) in &w.labels {
                if let Some(rest) = strip_prefix_ci(k, "traefik.http.middlewares.")
                    && let Some((name, attr)) = rest.split_once('.')
                {
                    m.by_name
                        .entry(name.to_owned())
                        .or_default()
                        .insert(attr.to_ascii_lowercase(), (k.clone(), v.clone()));
                }
            }
        }
        m
    }
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    // `get`, not indexing: a label may hold any UTF-8, and the cut may fall inside a char.
    s.get(..prefix.len())
        .filter(|head| head.eq_ignore_ascii_case(prefix))
        .and_then(|_| s.get(prefix.len()..))
}

/// Every `slipway.proxy.` key (after the prefix); `request_headers.` and
/// `response_headers.` take a header name after them.
pub const SLIPWAY_KEYS: &[&str] = &[
    "host",
    "path",
    "port",
    "weight",
    "set",
    "set_weight",
    "tls",
    "priority",
    "scheme",
    "http",
    "hsts",
    "strip_prefix",
    "basic_auth",
    "basic_auth.realm",
    "sticky",
    "sticky.secure",
    "acme_email",
    "health.type",
    "health.path",
    "health.status",
    "health.interval",
    "health.timeout",
    "health.healthy_threshold",
    "health.unhealthy_threshold",
];

struct Cx<'a> {
    w: &'a Workload,
    diags: Vec<Diagnostic>,
}

/// One Traefik router, read.
struct Router {
    name: String,
    keys: Vec<RouteKey>,
    tls: bool,
    redirect: bool,
    options: RouteOptions,
    priority: i64,
    set: BackendSet,
}

impl Cx<'_> {
    fn err(&mut self, key: &str, message: impl Into<String>) {
        let d = Diagnostic::error(message).origin(self.w.origin()).key(key);
        self.diags.push(d);
    }

    fn warn(&mut self, key: &str, message: impl Into<String>) {
        let d = Diagnostic::warning(message)
            .origin(self.w.origin())
            .key(key);
        self.diags.push(d);
    }

    fn check<T>(
        &mut self,
        key: &str,
        value: &str,
        f: impl FnOnce(&str) -> Result<T, String>,
    ) -> Option<T> {
        match f(value) {
            Ok(v) => Some(v),
            Err(e) => {
                self.err(key, e);
                None
            }
        }
    }

    fn port_of(&mut self, key: &str, value: &str) -> Option<u16> {
        self.check(key, value, |t| match t.trim().parse::<u16>() {
            Ok(p) if p > 0 => Ok(p),
            _ => Err(format!("`{t}` is not a port (1-65535)")),
        })
    }

    /// The port when no label names one: the single exposed port, else 80.
    fn default_port(&mut self, key: &str, hint: &str) -> Option<u16> {
        let ports = self.w.ports();
        match ports.as_slice() {
            [p] => Some(*p),
            [] => {
                let d = Diagnostic::warning("no port is labelled or exposed: assuming 80")
                    .origin(self.w.origin())
                    .key(key)
                    .hint(format!("set `{hint}`"));
                self.diags.push(d);
                Some(80)
            }
            many => {
                let list: Vec<String> = many.iter().map(u16::to_string).collect();
                let d = Diagnostic::error(format!(
                    "several ports are exposed ({}): which one is served?",
                    list.join(", ")
                ))
                .origin(self.w.origin())
                .key(key)
                .hint(format!("set `{hint}`"));
                self.diags.push(d);
                None
            }
        }
    }

    /// The backends of `port`: one, or one per task of a Swarm service.
    fn backends(
        &mut self,
        key: &str,
        port: u16,
        scheme: Scheme,
        weight: u32,
    ) -> Option<Vec<Backend>> {
        let addresses = match self.w.addresses(port) {
            Ok(a) => a,
            Err(e) => {
                self.err(key, e);
                return None;
            }
        };
        Some(
            addresses
                .into_iter()
                .map(|address| Backend {
                    address,
                    weight,
                    scheme,
                })
                .collect(),
        )
    }

    fn route(&self, key: RouteKey, set: BackendSet, origin: String) -> Route {
        let mut r = Route::new(key, vec![set], self.w.source());
        r.origin = Some(origin);
        r
    }

    // ---- Slipway ----

    fn slipway(&mut self) -> Vec<Route> {
        let w = self.w;
        let labels: Vec<(&str, &str, &str)> = w
            .labels
            .iter()
            .filter_map(|(k, v)| {
                k.strip_prefix("slipway.proxy.")
                    .map(|rest| (k.as_str(), rest, v.as_str()))
            })
            .collect();
        if labels.is_empty() {
            return Vec::new();
        }
        let before = self.diags.len();
        let mut hosts: Vec<Host> = Vec::new();
        let mut path = None;
        let mut port = None;
        let mut weight = 1;
        let mut set_name = "default".to_owned();
        let mut set_weight = 1;
        let mut tls = Tls::Off;
        let mut priority = 0;
        let mut scheme = Scheme::Http;
        let mut o = RouteOptions::default();
        let mut strip: Option<String> = None;
        let mut realm = None;
        let mut sticky_secure = false;
        let mut health: BTreeMap<&str, (&str, &str)> = BTreeMap::new();
        for (key, rest, v) in labels {
            if let Some(name) = rest.strip_prefix("request_headers.") {
                if let Some(n) = self.check(key, name, parse_header_name) {
                    o.request_headers.insert(n, v.to_owned());
                }
                continue;
            }
            if let Some(name) = rest.strip_prefix("response_headers.") {
                if let Some(n) = self.check(key, name, parse_header_name) {
                    o.response_headers.insert(n, v.to_owned());
                }
                continue;
            }
            match rest {
                "host" => {
                    for h in v.split(',').filter(|h| !h.trim().is_empty()) {
                        if let Some(h) = self.check(key, h, Host::parse) {
                            hosts.push(h);
                        }
                    }
                }
                "path" => path = self.check(key, v, parse_path),
                "port" => port = self.port_of(key, v),
                "weight" => weight = self.check(key, v, parse_weight).unwrap_or(1),
                "set" => set_name = v.trim().to_owned(),
                "set_weight" => set_weight = self.check(key, v, parse_weight).unwrap_or(1),
                "tls" => tls = self.check(key, v, Tls::parse).unwrap_or(Tls::Off),
                "priority" => {
                    priority = self
                        .check(key, v, |t| {
                            t.trim()
                                .parse::<i64>()
                                .map_err(|_| format!("`{t}` is not a whole number"))
                        })
                        .unwrap_or(0)
                }
                "scheme" => {
                    scheme = self
                        .check(key, v, |t| match t.trim() {
                            "http" => Ok(Scheme::Http),
                            "https" => Ok(Scheme::Https),
                            _ => Err(format!("scheme is http or https, not `{t}`")),
                        })
                        .unwrap_or_default()
                }
                "http" => o.http = self.check(key, v, PlainHttp::parse).unwrap_or_default(),
                "hsts" => {
                    o.hsts = self.check(key, v, |t| {
                        t.trim()
                            .parse::<u64>()
                            .map(|max_age_secs| Hsts {
                                max_age_secs,
                                include_subdomains: false,
                                preload: false,
                            })
                            .map_err(|_| format!("hsts is the max-age in seconds, not `{t}`"))
                    })
                }
                "strip_prefix" => strip = Some(v.trim().to_owned()),
                "basic_auth" => {
                    if let Some(users) = self.check(key, v, BasicAuth::parse_users) {
                        o.basic_auth = Some(BasicAuth {
                            realm: BasicAuth::DEFAULT_REALM.to_owned(),
                            users,
                        });
                    }
                }
                "basic_auth.realm" => realm = Some(v.to_owned()),
                "sticky" => {
                    o.sticky = match truthy(v) {
                        Some(true) => Some(StickyCookie::named(StickyCookie::DEFAULT_NAME)),
                        Some(false) => None,
                        None => self
                            .check(key, v, parse_cookie_name)
                            .map(StickyCookie::named),
                    }
                }
                "sticky.secure" => sticky_secure = truthy(v).unwrap_or(false),
                "acme_email" => o.acme_email = Some(v.trim().to_owned()),
                h if h.starts_with("health.") && SLIPWAY_KEYS.contains(&h) => {
                    health.insert(&h[7..], (key, v));
                }
                other => {
                    let d = Diagnostic::error(format!("unknown label `slipway.proxy.{other}`"))
                        .origin(w.origin())
                        .key(key)
                        .with_hint(
                            suggestion(other, SLIPWAY_KEYS)
                                .or_else(|| Some("see the README's table of labels".to_owned())),
                        );
                    self.diags.push(d);
                }
            }
        }
        if let (Some(r), Some(a)) = (realm, o.basic_auth.as_mut()) {
            a.realm = r;
        }
        if let Some(s) = o.sticky.as_mut() {
            s.secure = sticky_secure;
        }
        if let Some(s) = strip {
            match truthy(&s) {
                Some(true) => o.strip_prefixes = path.iter().cloned().collect(),
                Some(false) => {}
                None => {
                    if let Some(p) = self.check("slipway.proxy.strip_prefix", &s, parse_path) {
                        o.strip_prefixes = vec![p];
                    }
                }
            }
        }
        if !health.is_empty() {
            o.health_check = self.slipway_health(&health);
        }
        if hosts.is_empty() {
            if self.diags.len() == before {
                let d = Diagnostic::error("slipway.proxy labels without a host")
                    .origin(w.origin())
                    .key("slipway.proxy.host")
                    .hint("add `slipway.proxy.host=app.example.com`");
                self.diags.push(d);
            }
            return Vec::new();
        }
        if o.http != PlainHttp::Serve && !tls.is_on() {
            self.err(
                "slipway.proxy.http",
                "`redirect` or `off` needs `slipway.proxy.tls`",
            );
        }
        let port = match port {
            Some(p) => Some(p),
            None => self.default_port("slipway.proxy.port", "slipway.proxy.port=PORT"),
        };
        if self.diags[before..].iter().any(Diagnostic::is_error) {
            return Vec::new();
        }
        let Some(port) = port else {
            return Vec::new();
        };
        let Some(backends) = self.backends("slipway.proxy.port", port, scheme, weight) else {
            return Vec::new();
        };
        let set = BackendSet {
            name: set_name,
            weight: set_weight,
            backends,
        };
        hosts
            .into_iter()
            .map(|h| {
                let mut r = self.route(
                    RouteKey::new(h, path.clone()),
                    set.clone(),
                    "slipway.proxy labels".to_owned(),
                );
                r.tls = tls.clone();
                r.priority = priority;
                r.options = o.clone();
                r
            })
            .collect()
    }

    fn slipway_health(&mut self, h: &BTreeMap<&str, (&str, &str)>) -> Option<HealthCheck> {
        let mut check = HealthCheck::tcp();
        let tcp = h.get("type").is_some_and(|(_, v)| v.trim() == "tcp");
        if let Some((k, v)) = h.get("type")
            && !matches!(v.trim(), "tcp" | "http")
        {
            self.err(k, format!("health type is http or tcp, not `{v}`"));
        }
        if !tcp {
            let Some((k, v)) = h.get("path") else {
                self.err(
                    "slipway.proxy.health.path",
                    "an http health check needs a path (or `health.type=tcp`)",
                );
                return None;
            };
            let path = self.check(k, v, parse_path)?;
            let status = match h.get("status") {
                Some((k, v)) => Some(self.check(k, v, parse_status)?),
                None => None,
            };
            check.probe = HealthProbe::Http { path, status };
        }
        if let Some((k, v)) = h.get("interval") {
            check.interval = self.check(k, v, parse_duration)?;
        }
        if let Some((k, v)) = h.get("timeout") {
            check.timeout = self.check(k, v, parse_duration)?;
        }
        for (name, slot) in [
            ("healthy_threshold", &mut check.healthy_threshold),
            ("unhealthy_threshold", &mut check.unhealthy_threshold),
        ] {
            if let Some((k, v)) = h.get(name) {
                match v.trim().parse::<u32>() {
                    Ok(n) if n > 0 => *slot = n,
                    _ => {
                        let d = Diagnostic::error(format!("`{v}` is not a count of at least 1"))
                            .origin(self.w.origin())
                            .key(*k);
                        self.diags.push(d);
                        return None;
                    }
                }
            }
        }
        Some(check)
    }

    // ---- Traefik v2/v3 ----

    fn traefik_v2(&mut self, mws: &Middlewares) -> Vec<Route> {
        let w = self.w;
        let mut routers: BTreeMap<String, BTreeMap<String, (String, String)>> = BTreeMap::new();
        let mut services: BTreeMap<String, BTreeMap<String, (String, String)>> = BTreeMap::new();
        let mut any_v2 = false;
        for (k, v) in &w.labels {
            let Some(rest) = strip_prefix_ci(k, "traefik.") else {
                continue;
            };
            let lower = rest.to_ascii_lowercase();
            let (table, tail) = if let Some(t) = strip_prefix_ci(rest, "http.routers.") {
                (&mut routers, t)
            } else if let Some(t) = strip_prefix_ci(rest, "http.services.") {
                (&mut services, t)
            } else {
                if lower.starts_with("http.") {
                    any_v2 = true;
                }
                if lower.starts_with("tcp.") || lower.starts_with("udp.") {
                    any_v2 = true;
                    self.warn(
                        k,
                        "TCP and UDP routers are not served by Slipway's proxy: ignored",
                    );
                }
                continue;
            };
            any_v2 = true;
            match tail.split_once('.') {
                Some((name, attr)) => {
                    table
                        .entry(name.to_owned())
                        .or_default()
                        .insert(attr.to_ascii_lowercase(), (k.clone(), v.clone()));
                }
                None => self.warn(
                    k,
                    "a router or service label needs an attribute after its name",
                ),
            }
        }
        let only_enable = !any_v2
            && w.labels
                .keys()
                .any(|k| strip_prefix_ci(k, "traefik.").is_some())
            && !self.has_v1();
        if !any_v2 && !only_enable {
            return Vec::new();
        }
        if routers.is_empty() {
            // Traefik makes one router, named after the workload, with its default rule.
            routers.insert(normalize(&w.name), BTreeMap::new());
        }
        let mut read: Vec<Router> = Vec::new();
        for (name, attrs) in &routers {
            if let Some(r) = self.v2_router(name, attrs, &services, mws) {
                read.push(r);
            }
        }
        self.combine(read)
    }

    fn has_v1(&self) -> bool {
        has_v1_in(&self.w.labels) || !v1_segments(&self.w.labels).is_empty()
    }

    fn v2_router(
        &mut self,
        name: &str,
        attrs: &BTreeMap<String, (String, String)>,
        services: &BTreeMap<String, BTreeMap<String, (String, String)>>,
        mws: &Middlewares,
    ) -> Option<Router> {
        let label = |a: &str| format!("traefik.http.routers.{name}.{a}");
        let before = self.diags.len();
        let rule_text = match attrs.get("rule") {
            Some((_, v)) => v.clone(),
            None => format!("Host(`{}`)", normalize(&self.w.name)),
        };
        let rule_key = attrs
            .get("rule")
            .map_or_else(|| label("rule"), |(k, _)| k.clone());
        let parsed = match rule::parse(&rule_text) {
            Ok(r) => r,
            Err(e) => {
                let d = Diagnostic::error(format!("rule `{rule_text}` does not parse, {e}"))
                    .origin(self.w.origin())
                    .key(&rule_key)
                    .hint("a rule reads like Host(`a.example.com`) && PathPrefix(`/api`)");
                self.diags.push(d);
                return None;
            }
        };
        let (keys, problems) = rule::to_targets(&parsed);
        for p in problems {
            self.err(&rule_key, p);
        }
        let mut tls = false;
        let mut priority = 0;
        let mut service_name = None;
        let mut middleware_names = Vec::new();
        let mut entrypoints: Option<Vec<String>> = None;
        for (attr, (k, v)) in attrs {
            match attr.as_str() {
                "rule" => {}
                "entrypoints" => {
                    entrypoints = Some(
                        v.split(',')
                            .map(|e| e.trim().to_ascii_lowercase())
                            .collect(),
                    )
                }
                "tls" => tls = truthy(v).unwrap_or(true),
                "priority" => {
                    priority = self
                        .check(k, v, |t| {
                            t.trim()
                                .parse::<i64>()
                                .map_err(|_| format!("`{t}` is not a whole number"))
                        })
                        .unwrap_or(0)
                }
                "service" => service_name = Some(v.trim().to_owned()),
                "middlewares" => {
                    middleware_names = v
                        .split(',')
                        .map(|m| m.trim().to_owned())
                        .filter(|m| !m.is_empty())
                        .collect()
                }
                a if a.starts_with("tls.") => tls = true,
                a if a.starts_with("observability") => {}
                _ => {
                    let known = [
                        "rule",
                        "entrypoints",
                        "tls",
                        "tls.certresolver",
                        "middlewares",
                        "priority",
                        "service",
                    ];
                    let d =
                        Diagnostic::warning(format!("unknown router attribute `{attr}`: ignored"))
                            .origin(self.w.origin())
                            .key(k)
                            .with_hint(suggestion(attr, &known));
                    self.diags.push(d);
                }
            }
        }
        if let Some(eps) = &entrypoints
            && !eps.is_empty()
            && eps.iter().all(|e| {
                ["secure", "https", "ssl", "tls", "443"]
                    .iter()
                    .any(|s| e.contains(s))
            })
        {
            tls = true;
        }
        // The service: named, the only one labelled, or the implicit one.
        let service = match &service_name {
            Some(s) if s.contains('@') && !s.ends_with("@docker") && !s.ends_with("@swarm") => {
                self.err(&label("service"), format!("service `{s}` is not one of this workload's: Slipway routes only to the workload itself"));
                return None;
            }
            Some(s) => {
                let s = s.split('@').next().unwrap_or(s).to_owned();
                if !services.contains_key(&s) && !services.is_empty() {
                    self.err(
                        &label("service"),
                        format!(
                            "service `{s}` is not defined by a `traefik.http.services.{s}.*` label"
                        ),
                    );
                    return None;
                }
                s
            }
            None => match services.keys().collect::<Vec<_>>().as_slice() {
                [] => normalize(&self.w.name),
                [one] => (*one).clone(),
                _ => {
                    self.err(
                        &label("service"),
                        "several services are labelled: name this router's",
                    );
                    return None;
                }
            },
        };
        let empty = BTreeMap::new();
        let sattrs = services.get(&service).unwrap_or(&empty);
        let slabel = |a: &str| format!("traefik.http.services.{service}.loadbalancer.{a}");
        let mut scheme = Scheme::Http;
        let mut port = None;
        let mut options = RouteOptions::default();
        let mut sticky: Option<StickyCookie> = None;
        let mut health: BTreeMap<String, (String, String)> = BTreeMap::new();
        for (attr, (k, v)) in sattrs {
            let Some(a) = attr.strip_prefix("loadbalancer.") else {
                self.warn(k, "only loadbalancer services are read: ignored");
                continue;
            };
            match a {
                "server.port" => port = self.port_of(k, v),
                "server.scheme" => {
                    scheme = match v.trim() {
                        "https" => Scheme::Https,
                        "http" => Scheme::Http,
                        other => {
                            self.err(k, format!("scheme `{other}` is not served: http or https"));
                            Scheme::Http
                        }
                    }
                }
                "sticky" | "sticky.cookie" => {
                    if truthy(v) != Some(false) {
                        sticky
                            .get_or_insert_with(|| StickyCookie::named(StickyCookie::DEFAULT_NAME));
                    }
                }
                "sticky.cookie.name" => {
                    if let Some(n) = self.check(k, v, parse_cookie_name) {
                        sticky
                            .get_or_insert_with(|| StickyCookie::named(StickyCookie::DEFAULT_NAME))
                            .name = n;
                    }
                }
                "sticky.cookie.secure" => {
                    sticky
                        .get_or_insert_with(|| StickyCookie::named(StickyCookie::DEFAULT_NAME))
                        .secure = truthy(v).unwrap_or(false)
                }
                "sticky.cookie.httponly" => {
                    sticky
                        .get_or_insert_with(|| StickyCookie::named(StickyCookie::DEFAULT_NAME))
                        .http_only = truthy(v).unwrap_or(true)
                }
                "passhostheader" | "server.weight" => {}
                h if h.starts_with("healthcheck.") => {
                    health.insert(h["healthcheck.".len()..].to_owned(), (k.clone(), v.clone()));
                }
                _ => self.warn(
                    k,
                    format!("service attribute `loadbalancer.{a}` is not supported: ignored"),
                ),
            }
        }
        options.sticky = sticky;
        if !health.is_empty() {
            options.health_check = self.traefik_health(&health);
        }
        let port = match port {
            Some(p) => p,
            None => self.default_port(
                &slabel("server.port"),
                &format!("{}=PORT", slabel("server.port")),
            )?,
        };
        let mut redirect = false;
        for m in &middleware_names {
            self.v2_middleware(m, &label("middlewares"), mws, &mut options, &mut redirect);
        }
        if self.diags[before..].iter().any(Diagnostic::is_error) {
            return None;
        }
        let backends = self.backends(&slabel("server.port"), port, scheme, 1)?;
        Some(Router {
            name: name.to_owned(),
            keys,
            tls,
            redirect,
            options,
            priority,
            set: BackendSet::single(service, backends),
        })
    }

    fn traefik_health(&mut self, h: &BTreeMap<String, (String, String)>) -> Option<HealthCheck> {
        let mut check = HealthCheck::tcp();
        let path = h
            .get("path")
            .and_then(|(k, v)| self.check(k, v, parse_path));
        let Some(path) = path else {
            if let Some((k, _)) = h.values().next() {
                self.warn(k, "a health check without `healthcheck.path` is not run");
            }
            return None;
        };
        let status = h
            .get("status")
            .and_then(|(k, v)| self.check(k, v, parse_status));
        check.probe = HealthProbe::Http { path, status };
        if let Some((k, v)) = h.get("interval") {
            check.interval = self.check(k, v, parse_duration)?;
        }
        if let Some((k, v)) = h.get("timeout") {
            check.timeout = self.check(k, v, parse_duration)?;
        }
        for (attr, (k, _)) in h {
            if !["path", "status", "interval", "timeout"].contains(&attr.as_str()) {
                let k = k.clone();
                self.warn(
                    &k,
                    format!("health check attribute `{attr}` is not supported: ignored"),
                );
            }
        }
        Some(check)
    }

    fn v2_middleware(
        &mut self,
        name: &str,
        key: &str,
        mws: &Middlewares,
        o: &mut RouteOptions,
        redirect: &mut bool,
    ) {
        let (base, provider) = match name.split_once('@') {
            Some((b, p)) => (b, Some(p)),
            None => (name, None),
        };
        if let Some(p) = provider
            && p != "docker"
            && p != "swarm"
        {
            self.err(key, format!("middleware `{name}` comes from Traefik's `{p}` provider, which Slipway does not read: the router is not routed"));
            return;
        }
        let Some(attrs) = mws.by_name.get(base) else {
            self.warn(
                key,
                format!("middleware `{base}` is not defined by any workload's labels: ignored"),
            );
            return;
        };
        for (attr, (k, v)) in attrs {
            let (kind, rest) = attr.split_once('.').unwrap_or((attr.as_str(), ""));
            match (kind, rest) {
                ("redirectscheme", "scheme") => {
                    if v.trim().eq_ignore_ascii_case("https") {
                        *redirect = true;
                    } else {
                        self.warn(k, format!("a redirect to `{v}` is not supported: ignored"));
                    }
                }
                ("redirectscheme", _) => {}
                ("stripprefix", "prefixes") => {
                    for p in v.split(',').filter(|p| !p.trim().is_empty()) {
                        if let Some(p) = self.check(k, p, parse_path) {
                            o.strip_prefixes.push(p);
                        }
                    }
                }
                ("stripprefix", _) => {}
                ("basicauth", "users") => {
                    if let Some(users) = self.check(k, v, BasicAuth::parse_users) {
                        let realm = o
                            .basic_auth
                            .take()
                            .map_or_else(|| BasicAuth::DEFAULT_REALM.to_owned(), |a| a.realm);
                        o.basic_auth = Some(BasicAuth { realm, users });
                    }
                }
                ("basicauth", "realm") => match o.basic_auth.as_mut() {
                    Some(a) => a.realm = v.clone(),
                    None => {
                        o.basic_auth = Some(BasicAuth {
                            realm: v.clone(),
                            users: Vec::new(),
                        })
                    }
                },
                ("basicauth", "usersfile") => {
                    self.err(k, "a users file is not readable from labels: write the users in `basicauth.users`");
                }
                ("basicauth", _) => {}
                ("headers", r) => {
                    if let Some(h) = r.strip_prefix("customrequestheaders.") {
                        let name = k.rsplit('.').next().unwrap_or(h);
                        if let Some(n) = self.check(k, name, parse_header_name) {
                            o.request_headers.insert(n, v.clone());
                        }
                    } else if let Some(h) = r.strip_prefix("customresponseheaders.") {
                        let name = k.rsplit('.').next().unwrap_or(h);
                        if let Some(n) = self.check(k, name, parse_header_name) {
                            o.response_headers.insert(n, v.clone());
                        }
                    } else if r == "stsseconds" {
                        if let Some(s) = self.check(k, v, parse_seconds) {
                            o.hsts.get_or_insert_with(Hsts::default).max_age_secs = s;
                        }
                    } else if r == "stsincludesubdomains" {
                        o.hsts.get_or_insert_with(Hsts::default).include_subdomains =
                            truthy(v).unwrap_or(false);
                    } else if r == "stspreload" {
                        o.hsts.get_or_insert_with(Hsts::default).preload =
                            truthy(v).unwrap_or(false);
                    } else if r == "sslredirect" {
                        *redirect |= truthy(v).unwrap_or(false);
                    } else if r != "forcestsheader" {
                        self.warn(k, format!("header option `{r}` is not supported: ignored"));
                    }
                }
                ("ipallowlist" | "ipwhitelist" | "forwardauth" | "chain" | "digestauth", _) => {
                    self.err(k, format!("middleware `{base}` ({kind}) guards the route and Slipway has no equivalent yet: the router is not routed rather than opened"));
                    return;
                }
                _ => {
                    self.warn(
                        k,
                        format!("middleware `{base}` ({kind}) is not supported: ignored"),
                    );
                    return;
                }
            }
        }
        if let Some(a) = &o.basic_auth
            && a.users.is_empty()
        {
            self.err(
                key,
                format!("middleware `{base}` has a realm but no `basicauth.users`"),
            );
        }
    }

    /// Routers with one key are one route (see the module doc).
    fn combine(&mut self, routers: Vec<Router>) -> Vec<Route> {
        let mut by_key: BTreeMap<RouteKey, (Option<Router>, Option<Router>)> = BTreeMap::new();
        for r in routers {
            for key in &r.keys {
                let slot = by_key.entry(key.clone()).or_default();
                let place = if r.tls { &mut slot.1 } else { &mut slot.0 };
                if let Some(first) = place {
                    if first.options != r.options || first.set != r.set {
                        let d = Diagnostic::error(format!(
                            "routers `{}` and `{}` both route `{key}` differently: `{}` is used",
                            first.name, r.name, first.name
                        ))
                        .origin(self.w.origin())
                        .key(format!("traefik.http.routers.{}.rule", r.name));
                        self.diags.push(d);
                    }
                    continue;
                }
                *place = Some(Router {
                    name: r.name.clone(),
                    keys: Vec::new(),
                    tls: r.tls,
                    redirect: r.redirect,
                    options: r.options.clone(),
                    priority: r.priority,
                    set: r.set.clone(),
                });
            }
        }
        let mut out = Vec::new();
        for (key, (plain, secure)) in by_key {
            let route = match (plain, secure) {
                (Some(p), None) => {
                    let mut r = self.route(key, p.set, format!("router {}", p.name));
                    r.priority = p.priority;
                    r.options = p.options;
                    if p.redirect {
                        // A redirect to HTTPS means the host is served over HTTPS.
                        r.tls = Tls::Acme;
                        r.options.http = PlainHttp::Redirect;
                    }
                    r
                }
                (plain, Some(s)) => {
                    let origin = match &plain {
                        Some(p) => format!("routers {} and {}", p.name, s.name),
                        None => format!("router {}", s.name),
                    };
                    let mut r = self.route(key, s.set, origin);
                    r.priority = s.priority;
                    r.options = s.options;
                    r.tls = Tls::Acme;
                    r.options.http = match &plain {
                        Some(p) if !p.redirect => PlainHttp::Serve,
                        _ => PlainHttp::Redirect,
                    };
                    r
                }
                (None, None) => continue,
            };
            out.push(route);
        }
        out
    }

    // ---- Traefik v1 ----

    /// Traefik v1: the workload's own frontend, and one per segment
    /// (`traefik.SEGMENT.port`, `traefik.SEGMENT.frontend.*`, ...), which sees the
    /// workload's `traefik.enable`, `traefik.domain`, `traefik.alias` and
    /// `traefik.docker.network` too (so a segment without a rule gets the workload's host).
    fn traefik_v1(&mut self) -> Vec<Route> {
        let w = self.w;
        let segments = v1_segments(&w.labels);
        let mut main = BTreeMap::new();
        // Per segment: its labels as `traefik.ATTR`, and each one's key as written.
        let mut views: BTreeMap<String, (Labels, Labels)> = BTreeMap::new();
        for (k, v) in &w.labels {
            let lower = k.to_ascii_lowercase();
            let seg = segments
                .iter()
                .find(|s| lower.starts_with(&format!("traefik.{s}.")));
            match seg {
                Some(s) => {
                    let rest = &k["traefik.".len() + s.len() + 1..];
                    let (view, original) = views.entry(s.clone()).or_default();
                    view.insert(format!("traefik.{rest}"), v.clone());
                    original.insert(format!("traefik.{rest}"), k.clone());
                }
                None => {
                    main.insert(k.clone(), v.clone());
                }
            }
        }
        let mut out = Vec::new();
        // With segments, the workload's own frontend exists only if it names a port or a
        // rule of its own (its domain and alias are the segments' too).
        let own = main.keys().any(|k| {
            let l = k.to_ascii_lowercase();
            l == "traefik.port" || l.starts_with("traefik.frontend.")
        });
        if has_v1_in(&main) && (segments.is_empty() || own) {
            out.extend(self.traefik_v1_view(&main, None));
        }
        for (seg, (mut view, original)) in views {
            for shared in [
                "traefik.enable",
                "traefik.domain",
                "traefik.alias",
                "traefik.docker.network",
            ] {
                if let Some((k, v)) = main.iter().find(|(k, _)| k.eq_ignore_ascii_case(shared)) {
                    view.entry(k.clone()).or_insert_with(|| v.clone());
                }
            }
            let before = self.diags.len();
            for mut r in self.traefik_v1_view(&view, Some(&seg)) {
                r.origin = Some(format!("segment {seg}"));
                out.push(r);
            }
            // Diagnostics name the label as the user wrote it.
            for d in &mut self.diags[before..] {
                if let Some(k) = d.key.as_ref().and_then(|k| original.get(k)) {
                    d.key = Some(k.clone());
                }
            }
        }
        out
    }

    fn traefik_v1_view(
        &mut self,
        labels: &BTreeMap<String, String>,
        segment: Option<&str>,
    ) -> Vec<Route> {
        let w = self.w;
        let get = |k: &str| {
            labels
                .iter()
                .find(|(key, _)| key.eq_ignore_ascii_case(k))
                .map(|(key, v)| (key.clone(), v.clone()))
        };
        let before = self.diags.len();
        let (rule_key, rule_text) = match get("traefik.frontend.rule") {
            Some(kv) => kv,
            None => {
                let host = match (get("traefik.alias"), get("traefik.domain")) {
                    (Some((_, a)), Some((_, d))) => format!("{}.{}", a.trim(), d.trim()),
                    (None, Some((_, d))) => format!("{}.{}", normalize(&w.name), d.trim()),
                    (Some((k, a)), None) => {
                        self.warn(
                            &k,
                            "`traefik.alias` without `traefik.domain`: the alias is the host",
                        );
                        a.trim().to_owned()
                    }
                    (None, None) => normalize(&w.name),
                };
                ("traefik.domain".to_owned(), format!("Host:{host}"))
            }
        };
        let (rule, strip) = match rule::parse_v1(&rule_text) {
            Ok(r) => r,
            Err(e) => {
                let d = Diagnostic::error(format!("rule `{rule_text}` does not parse, {e}"))
                    .origin(w.origin())
                    .key(&rule_key)
                    .hint("a v1 rule reads like Host:a.example.com;PathPrefix:/api");
                self.diags.push(d);
                return Vec::new();
            }
        };
        let (keys, problems) = rule::to_targets(&rule);
        for p in problems {
            self.err(&rule_key, p);
        }
        let port = match get("traefik.port") {
            Some((k, v)) => self.port_of(&k, &v),
            None => self.default_port("traefik.port", "traefik.port=PORT"),
        };
        let weight = match get("traefik.weight") {
            Some((k, v)) => self.check(&k, &v, parse_weight).unwrap_or(1),
            None => 1,
        };
        let scheme = match get("traefik.protocol") {
            Some((_, v)) if v.trim() == "https" => Scheme::Https,
            Some((k, v)) if v.trim() != "http" => {
                self.err(&k, format!("protocol `{v}` is not served: http or https"));
                Scheme::Http
            }
            _ => Scheme::Http,
        };
        let mut set_name =
            get("traefik.backend").map_or_else(|| normalize(&w.name), |(_, v)| v.trim().to_owned());
        if let Some(seg) = segment {
            // Traefik v1 names a segment's backend after the container and the segment.
            set_name = format!("{set_name}-{seg}");
        }
        let mut o = RouteOptions::default();
        let mut tls = Tls::Off;
        let mut priority = 0;
        if strip {
            o.strip_prefixes = keys.iter().filter_map(|k| k.path.clone()).collect();
            o.strip_prefixes.dedup();
        }
        for (k, v) in labels {
            let l = k.to_ascii_lowercase();
            let Some(rest) = l.strip_prefix("traefik.") else {
                continue;
            };
            match rest {
                "enable"
                | "port"
                | "frontend.rule"
                | "weight"
                | "protocol"
                | "backend"
                | "domain"
                | "alias"
                | "docker.network"
                | "frontend.passhostheader" => {}
                "frontend.entrypoints" => {
                    if v.split(',').any(|e| {
                        ["https", "secure", "ssl", "tls", "443"]
                            .iter()
                            .any(|s| e.trim().to_ascii_lowercase().contains(s))
                    }) {
                        tls = Tls::Acme;
                    }
                }
                "frontend.redirect.entrypoint" => {
                    tls = Tls::Acme;
                    o.http = PlainHttp::Redirect;
                }
                "frontend.priority" => {
                    priority = self
                        .check(k, v, |t| {
                            t.trim()
                                .parse::<i64>()
                                .map_err(|_| format!("`{t}` is not a whole number"))
                        })
                        .unwrap_or(0)
                }
                "frontend.auth.basic" | "frontend.auth.basic.users" => {
                    if let Some(users) = self.check(k, v, BasicAuth::parse_users) {
                        o.basic_auth = Some(BasicAuth {
                            realm: BasicAuth::DEFAULT_REALM.to_owned(),
                            users,
                        });
                    }
                }
                "frontend.headers.customrequestheaders"
                | "frontend.headers.customresponseheaders" => {
                    for pair in v.split("||").filter(|p| !p.trim().is_empty()) {
                        let Some((name, value)) = pair.split_once(':') else {
                            self.err(
                                k,
                                format!("`{pair}` is not `Name:value` (pairs are joined by `||`)"),
                            );
                            continue;
                        };
                        if let Some(n) = self.check(k, name, parse_header_name) {
                            let map = if rest.ends_with("requestheaders") {
                                &mut o.request_headers
                            } else {
                                &mut o.response_headers
                            };
                            map.insert(n, value.trim().to_owned());
                        }
                    }
                }
                "frontend.headers.stsseconds" => {
                    if let Some(s) = self.check(k, v, parse_seconds) {
                        o.hsts.get_or_insert_with(Hsts::default).max_age_secs = s;
                    }
                }
                "frontend.headers.stsincludesubdomains" => {
                    o.hsts.get_or_insert_with(Hsts::default).include_subdomains =
                        truthy(v).unwrap_or(false)
                }
                "frontend.headers.stspreload" => {
                    o.hsts.get_or_insert_with(Hsts::default).preload = truthy(v).unwrap_or(false)
                }
                "frontend.headers.sslredirect" => {
                    if truthy(v) == Some(true) {
                        tls = Tls::Acme;
                        o.http = PlainHttp::Redirect;
                    }
                }
                "backend.loadbalancer.stickiness" | "backend.loadbalancer.sticky" => {
                    if truthy(v) == Some(true) {
                        o.sticky
                            .get_or_insert_with(|| StickyCookie::named(StickyCookie::DEFAULT_NAME));
                    }
                }
                "backend.loadbalancer.stickiness.cookiename" => {
                    if let Some(n) = self.check(k, v, parse_cookie_name) {
                        o.sticky
                            .get_or_insert_with(|| StickyCookie::named(StickyCookie::DEFAULT_NAME))
                            .name = n;
                    }
                }
                "backend.healthcheck.path" => {
                    if let Some(p) = self.check(k, v, parse_path) {
                        let mut h = o
                            .health_check
                            .take()
                            .unwrap_or_else(|| HealthCheck::http(p.clone()));
                        h.probe = HealthProbe::Http {
                            path: p,
                            status: None,
                        };
                        o.health_check = Some(h);
                    }
                }
                // After the loop: its path may come later in label order.
                "backend.healthcheck.interval" => {}
                r if r.starts_with("frontend.") || r.starts_with("backend.") => {
                    self.warn(k, "this Traefik v1 label is not supported: ignored");
                }
                r if r.starts_with("http.") || r.starts_with("tcp.") || r.starts_with("udp.") => {}
                _ => self.warn(k, "unknown Traefik v1 label: ignored"),
            }
        }
        if let Some((k, v)) = get("traefik.backend.healthcheck.interval") {
            match o.health_check.as_mut() {
                Some(h) => {
                    if let Some(d) = self.check(&k, &v, parse_duration) {
                        h.interval = d;
                    }
                }
                None => self.warn(
                    &k,
                    "an interval without `traefik.backend.healthcheck.path`: ignored",
                ),
            }
        }
        let Some(port) = port else { return Vec::new() };
        if self.diags[before..].iter().any(Diagnostic::is_error) {
            return Vec::new();
        }
        let Some(backends) = self.backends("traefik.port", port, scheme, weight) else {
            return Vec::new();
        };
        let set = BackendSet::single(set_name, backends);
        keys.into_iter()
            .map(|key| {
                let mut r = self.route(key, set.clone(), format!("{rule_key} label"));
                r.tls = tls.clone();
                r.priority = priority;
                r.options = o.clone();
                r
            })
            .collect()
    }

    // ---- nginx-proxy ----

    fn nginx_proxy(&mut self) -> Vec<Route> {
        let w = self.w;
        let env = |k: &str| {
            w.environment
                .get(k)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let Some(vhosts) = env("VIRTUAL_HOST") else {
            return Vec::new();
        };
        let before = self.diags.len();
        let mut hosts = Vec::new();
        for h in vhosts.split(',').map(str::trim).filter(|h| !h.is_empty()) {
            if h.starts_with('~') {
                self.err("VIRTUAL_HOST", format!("`{h}`: regular-expression hosts are not supported; list the hosts or use `*.domain`"));
                continue;
            }
            if let Some(host) = self.check("VIRTUAL_HOST", h, Host::parse) {
                hosts.push(host);
            }
        }
        let port = match env("VIRTUAL_PORT") {
            Some(p) => self.port_of("VIRTUAL_PORT", &p),
            // nginx-proxy: the single exposed port, else 80.
            None => Some(match w.ports().as_slice() {
                [p] => *p,
                _ => 80,
            }),
        };
        let path = env("VIRTUAL_PATH").and_then(|p| self.check("VIRTUAL_PATH", &p, parse_path));
        let scheme = match env("VIRTUAL_PROTO").as_deref() {
            None | Some("http") => Scheme::Http,
            Some("https") => Scheme::Https,
            Some(other) => {
                self.err(
                    "VIRTUAL_PROTO",
                    format!("`{other}` backends are not served: http or https"),
                );
                Scheme::Http
            }
        };
        let mut o = RouteOptions::default();
        match w.environment.get("VIRTUAL_DEST").map(|v| v.trim()) {
            None => {}
            Some("" | "/") => o.strip_prefixes = path.iter().cloned().collect(),
            Some(other) => self.err(
                "VIRTUAL_DEST",
                format!("rewriting to `{other}` is not supported: only `/` (strip VIRTUAL_PATH)"),
            ),
        }
        let acme_hosts: Vec<String> = env("LETSENCRYPT_HOST")
            .or_else(|| env("ACME_HOST"))
            .map(|v| {
                v.split(',')
                    .map(|h| h.trim().to_ascii_lowercase())
                    .filter(|h| !h.is_empty())
                    .collect()
            })
            .unwrap_or_default();
        for a in &acme_hosts {
            if !hosts.iter().any(|h| h.as_str() == a) {
                let key = if env("LETSENCRYPT_HOST").is_some() {
                    "LETSENCRYPT_HOST"
                } else {
                    "ACME_HOST"
                };
                self.warn(
                    key,
                    format!("`{a}` is not in VIRTUAL_HOST: no certificate is ordered for it"),
                );
            }
        }
        o.acme_email = env("LETSENCRYPT_EMAIL").or_else(|| env("ACME_EMAIL"));
        let cert = env("CERT_NAME");
        let method = env("HTTPS_METHOD").unwrap_or_else(|| "redirect".to_owned());
        let http = match method.as_str() {
            "redirect" => PlainHttp::Redirect,
            "noredirect" | "nohttps" => PlainHttp::Serve,
            "nohttp" => PlainHttp::Off,
            other => {
                self.err(
                    "HTTPS_METHOD",
                    format!("`{other}`: write redirect, noredirect, nohttp or nohttps"),
                );
                PlainHttp::Redirect
            }
        };
        let hsts = match env("HSTS").as_deref() {
            Some("off") => None,
            Some(v) => self.check("HSTS", v, parse_hsts_header),
            None => Some(Hsts {
                max_age_secs: 31_536_000,
                include_subdomains: false,
                preload: false,
            }),
        };
        let Some(port) = port else { return Vec::new() };
        if self.diags[before..].iter().any(Diagnostic::is_error) {
            return Vec::new();
        }
        let Some(backends) = self.backends("VIRTUAL_PORT", port, scheme, 1) else {
            return Vec::new();
        };
        let set = BackendSet::single("default", backends);
        let mut out = Vec::new();
        for h in hosts {
            let tls = if method == "nohttps" {
                Tls::Off
            } else if let Some(c) = &cert {
                Tls::Certificate(c.clone())
            } else if acme_hosts.iter().any(|a| a == h.as_str()) {
                if h.is_wildcard() {
                    self.err("LETSENCRYPT_HOST", format!("`{h}`: ACME cannot prove a wildcard by HTTP-01 or TLS-ALPN-01; upload a certificate (CERT_NAME)"));
                    continue;
                }
                Tls::Acme
            } else {
                Tls::Off
            };
            let mut r = self.route(
                RouteKey::new(h, path.clone()),
                set.clone(),
                "VIRTUAL_HOST".to_owned(),
            );
            r.options = o.clone();
            if tls.is_on() {
                r.options.http = http;
                if http == PlainHttp::Redirect {
                    r.options.hsts = hsts.clone();
                }
            }
            r.tls = tls;
            out.push(r);
        }
        out
    }
}

type Labels = BTreeMap<String, String>;

/// Whether labels hold a Traefik v1 frontend of the workload itself.
fn has_v1_in(labels: &BTreeMap<String, String>) -> bool {
    labels.keys().any(|k| {
        let l = k.to_ascii_lowercase();
        [
            "traefik.port",
            "traefik.frontend.",
            "traefik.backend",
            "traefik.weight",
            "traefik.domain",
            "traefik.alias",
            "traefik.protocol",
        ]
        .iter()
        .any(|p| l.starts_with(p))
    })
}

/// Traefik v1 segment names: `traefik.NAME.port`, `.protocol`, `.weight` or
/// `.frontend.*`, for a NAME that is not one of v1's or v2's own words.
fn v1_segments(labels: &BTreeMap<String, String>) -> BTreeSet<String> {
    const OWN: &[&str] = &[
        "enable", "port", "protocol", "weight", "backend", "frontend", "domain", "alias", "docker",
        "tags", "http", "tcp", "udp",
    ];
    labels
        .keys()
        .filter_map(|k| {
            let rest = strip_prefix_ci(k, "traefik.")?;
            let (name, attr) = rest.split_once('.')?;
            let attr = attr.to_ascii_lowercase();
            let segment_attr = attr.starts_with("frontend.")
                || matches!(attr.as_str(), "port" | "protocol" | "weight");
            (segment_attr && !OWN.contains(&name.to_ascii_lowercase().as_str()))
                .then(|| name.to_ascii_lowercase())
        })
        .collect()
}

/// nginx-proxy's `HSTS` value: `max-age=N[; includeSubDomains][; preload]`.
fn parse_hsts_header(v: &str) -> Result<Hsts, String> {
    let mut h = Hsts {
        max_age_secs: 0,
        include_subdomains: false,
        preload: false,
    };
    let mut seen_age = false;
    for part in v.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        if let Some(age) = part.strip_prefix("max-age=") {
            h.max_age_secs = age
                .trim_matches('"')
                .parse()
                .map_err(|_| format!("HSTS max-age `{age}` is not seconds"))?;
            seen_age = true;
        } else if part.eq_ignore_ascii_case("includesubdomains") {
            h.include_subdomains = true;
        } else if part.eq_ignore_ascii_case("preload") {
            h.preload = true;
        } else {
            return Err(format!(
                "HSTS part `{part}` is not max-age, includeSubDomains or preload"
            ));
        }
    }
    if !seen_age {
        return Err("HSTS needs `max-age=SECONDS` (or `off`)".to_owned());
    }
    Ok(h)
}

/// A label's whole number of seconds (Traefik's `stsSeconds`).
fn parse_seconds(text: &str) -> Result<u64, String> {
    text.trim()
        .parse::<u64>()
        .map_err(|_| format!("`{text}` is not seconds"))
}
