//! The routes file (`--routes FILE`): YAML, one `routes:` list. Every key is documented
//! in the README; anything else is an error naming `FILE:LINE:COL`, with a "did you mean"
//! hint when a known key is close. A file with any error yields no routes at all (the
//! data plane keeps serving the previous ones), so a typo never half-applies.

use std::collections::BTreeMap;
use std::path::Path;

use slipway_yaml::{Node, Value};

use crate::auth::BasicAuth;
use crate::diagnostic::{Diagnostic, suggestion};
use crate::route::{
    Address, Backend, BackendSet, HealthCheck, HealthProbe, Host, Hsts, PlainHttp, Route, RouteKey,
    RouteOptions, RouteSet, RouteSource, Scheme, StickyCookie, Tls, parse_cookie_name,
    parse_duration, parse_header_name, parse_path, parse_status, parse_weight,
};

const ROUTE_KEYS: &[&str] = &[
    "host",
    "path",
    "priority",
    "backends",
    "backend_sets",
    "tls",
    "http",
    "hsts",
    "request_headers",
    "response_headers",
    "strip_prefix",
    "basic_auth",
    "sticky",
    "health_check",
    "acme_email",
];
const BACKEND_KEYS: &[&str] = &["address", "weight", "scheme"];
const SET_KEYS: &[&str] = &["name", "weight", "backends"];
const HSTS_KEYS: &[&str] = &["max_age", "include_subdomains", "preload"];
const AUTH_KEYS: &[&str] = &["realm", "users"];
const STICKY_KEYS: &[&str] = &["cookie", "secure", "http_only"];
const HEALTH_KEYS: &[&str] = &[
    "type",
    "path",
    "status",
    "interval",
    "timeout",
    "healthy_threshold",
    "unhealthy_threshold",
];

/// Reads and parses a routes file; an unreadable file is one diagnostic.
pub fn load(path: &Path) -> Result<RouteSet, Vec<Diagnostic>> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| {
        vec![
            Diagnostic::error(format!("cannot read the routes file: {e}"))
                .origin(&shown)
                .hint("check the path given to --routes"),
        ]
    })?;
    parse(&text, &shown)
}

/// Parses a routes file's text; `file` names it in diagnostics and in each route's source.
pub fn parse(text: &str, file: &str) -> Result<RouteSet, Vec<Diagnostic>> {
    let mut r = Reader {
        file,
        diags: Vec::new(),
    };
    let (docs, problems) = slipway_yaml::load(text);
    for p in problems {
        r.diags
            .push(Diagnostic::error(p.message).at(p.pos).origin(file));
    }
    if docs.len() > 1 {
        r.err(
            &docs[1].root,
            "a routes file is one YAML document".to_owned(),
        );
    }
    let mut routes: Vec<Route> = Vec::new();
    if let Some(doc) = docs.first() {
        routes = r.file(&doc.root);
    }
    if r.diags.is_empty() {
        Ok(RouteSet { routes })
    } else {
        Err(r.diags)
    }
}

struct Reader<'a> {
    file: &'a str,
    diags: Vec<Diagnostic>,
}

/// A route's settings while its keys are read.
#[derive(Default)]
struct Partial {
    priority: i64,
    tls: Tls,
    options: RouteOptions,
}

impl Reader<'_> {
    fn err(&mut self, node: &Node, message: String) {
        self.diags
            .push(Diagnostic::error(message).at(node.pos).origin(self.file));
    }

    fn err_hint(&mut self, node: &Node, message: String, hint: Option<String>) {
        self.diags.push(
            Diagnostic::error(message)
                .at(node.pos)
                .origin(self.file)
                .with_hint(hint),
        );
    }

    /// The entries of a mapping, with unknown keys reported.
    fn map<'n>(&mut self, node: &'n Node, what: &str, known: &[&str]) -> Vec<(&'n str, &'n Node)> {
        let Some(entries) = node.as_map() else {
            self.err(
                node,
                format!("{what} must be a mapping, not {}", node.kind_name()),
            );
            return Vec::new();
        };
        let mut out = Vec::new();
        for (k, v) in entries {
            match k.as_str() {
                Some(name) if known.contains(&name) => out.push((name, v)),
                Some(name) => self.err_hint(
                    k,
                    format!("unknown key `{name}` in {what}"),
                    suggestion(name, known)
                        .or_else(|| Some(format!("known keys: {}", known.join(", ")))),
                ),
                None => self.err(k, format!("{what} has a key that is not a word")),
            }
        }
        out
    }

    fn scalar(&mut self, node: &Node, what: &str) -> Option<String> {
        match &node.value {
            Value::Scalar { text, .. } => Some(text.clone()),
            _ => {
                self.err(
                    node,
                    format!("{what} must be a value, not {}", node.kind_name()),
                );
                None
            }
        }
    }

    fn check<T>(
        &mut self,
        node: &Node,
        what: &str,
        f: impl FnOnce(&str) -> Result<T, String>,
    ) -> Option<T> {
        let text = self.scalar(node, what)?;
        match f(&text) {
            Ok(v) => Some(v),
            Err(e) => {
                self.err(node, e);
                None
            }
        }
    }

    fn boolean(&mut self, node: &Node, what: &str) -> Option<bool> {
        self.check(node, what, |t| match t {
            "true" | "True" | "TRUE" | "yes" => Ok(true),
            "false" | "False" | "FALSE" | "no" => Ok(false),
            _ => Err(format!("{what} must be true or false, not `{t}`")),
        })
    }

    fn number(&mut self, node: &Node, what: &str) -> Option<u32> {
        self.check(node, what, |t| {
            t.parse::<u32>()
                .map_err(|_| format!("{what} must be a whole number, not `{t}`"))
        })
    }

    fn file(&mut self, root: &Node) -> Vec<Route> {
        if root.is_null() {
            return Vec::new();
        }
        let mut routes = Vec::new();
        for (key, value) in self.map(root, "the routes file", &["routes"]) {
            if key != "routes" || value.is_null() {
                continue;
            }
            let Some(items) = value.as_seq() else {
                self.err(value, "`routes` must be a list of routes".to_owned());
                continue;
            };
            let mut seen: BTreeMap<RouteKey, slipway_yaml::Pos> = BTreeMap::new();
            for item in items {
                let Some(route) = self.route(item) else {
                    continue;
                };
                if let Some(first) = seen.get(&route.key) {
                    self.err_hint(
                        item,
                        format!(
                            "duplicate route `{}`: line {} has it already",
                            route.key, first.line
                        ),
                        Some("two backends for one host go in one route's `backends`".to_owned()),
                    );
                    continue;
                }
                seen.insert(route.key.clone(), item.pos);
                routes.push(route);
            }
        }
        routes
    }

    fn route(&mut self, node: &Node) -> Option<Route> {
        let before = self.diags.len();
        let entries = self.map(node, "a route", ROUTE_KEYS);
        node.as_map()?;
        let mut host = None;
        let mut path = None;
        let mut sets: Option<Vec<BackendSet>> = None;
        // Everything but the key and backends, which are checked once all keys are read.
        let mut route = Partial::default();
        let mut tls_node = None;
        for (key, v) in &entries {
            let v: &Node = v;
            match *key {
                "host" => host = self.check(v, "host", Host::parse),
                "path" => path = self.check(v, "path", parse_path),
                "priority" => {
                    if let Some(p) = self.check(v, "priority", |t| {
                        t.parse::<i64>()
                            .map_err(|_| format!("priority must be a whole number, not `{t}`"))
                    }) {
                        route.priority = p;
                    }
                }
                "backends" => {
                    if sets.is_some() {
                        self.err(
                            v,
                            "a route has `backends` or `backend_sets`, not both".to_owned(),
                        );
                    }
                    sets = Some(vec![BackendSet::single("default", self.backends(v))]);
                }
                "backend_sets" => {
                    if sets.is_some() {
                        self.err(
                            v,
                            "a route has `backends` or `backend_sets`, not both".to_owned(),
                        );
                    }
                    sets = Some(self.backend_sets(v));
                }
                "tls" => {
                    tls_node = Some(v);
                    if let Some(t) = self.check(v, "tls", Tls::parse) {
                        route.tls = t;
                    }
                }
                "http" => {
                    if let Some(h) = self.check(v, "http", PlainHttp::parse) {
                        route.options.http = h;
                    }
                }
                "hsts" => route.options.hsts = self.hsts(v),
                "request_headers" => {
                    route.options.request_headers = self.headers(v, "request_headers")
                }
                "response_headers" => {
                    route.options.response_headers = self.headers(v, "response_headers")
                }
                "strip_prefix" => {
                    route.options.strip_prefixes = self.strip_prefix(v, path.as_deref())
                }
                "basic_auth" => route.options.basic_auth = self.basic_auth(v),
                "sticky" => route.options.sticky = self.sticky(v),
                "health_check" => route.options.health_check = self.health(v),
                "acme_email" => {
                    route.options.acme_email = self.check(v, "acme_email", |t| {
                        if t.contains('@') && !t.contains(char::is_whitespace) {
                            Ok(t.to_owned())
                        } else {
                            Err(format!("acme_email `{t}` is not an e-mail address"))
                        }
                    })
                }
                _ => {}
            }
        }
        // `strip_prefix: true` means the route's path, which may come after it.
        if let Some((_, v)) = entries.iter().find(|(k, _)| *k == "strip_prefix")
            && v.as_str() == Some("true")
        {
            route.options.strip_prefixes = self.strip_prefix(v, path.as_deref());
        }
        let Some(host) = host else {
            if !entries.iter().any(|(k, _)| *k == "host") {
                self.err_hint(
                    node,
                    "a route needs a `host`".to_owned(),
                    Some("`host: app.example.com` or `host: \"*.example.com\"`".to_owned()),
                );
            }
            return None;
        };
        let Some(sets) = sets else {
            self.err_hint(
                node,
                format!("route `{host}` has no `backends`"),
                Some("`backends: [\"127.0.0.1:9000\"]`".to_owned()),
            );
            return None;
        };
        if let (true, Some(tn)) = (host.is_wildcard() && route.tls == Tls::Acme, tls_node) {
            self.err_hint(
                tn,
                format!("`{host}`: ACME certificates are ordered by HTTP-01 or TLS-ALPN-01, which cannot prove a wildcard"),
                Some("upload a wildcard certificate and name it in `tls`, or list the hosts".to_owned()),
            );
        }
        if route.options.http != PlainHttp::Serve
            && !route.tls.is_on()
            && let Some((_, v)) = entries.iter().find(|(k, _)| *k == "http")
        {
            {
                self.err_hint(
                    v,
                    "`http: redirect` or `off` needs TLS on the route".to_owned(),
                    Some("add `tls: acme` or a certificate's name".to_owned()),
                );
            }
        }
        if self.diags.len() != before {
            return None;
        }
        let mut r = Route::new(
            RouteKey::new(host, path),
            sets,
            RouteSource::File {
                path: self.file.to_owned(),
            },
        );
        r.priority = route.priority;
        r.tls = route.tls;
        r.options = route.options;
        r.origin = Some(format!("{}:{}", self.file, node.pos));
        Some(r)
    }

    fn backends(&mut self, node: &Node) -> Vec<Backend> {
        let Some(items) = node.as_seq() else {
            self.err(node, "`backends` must be a list".to_owned());
            return Vec::new();
        };
        if items.is_empty() {
            self.err(
                node,
                "`backends` is empty: a route needs at least one".to_owned(),
            );
        }
        let mut out: Vec<Backend> = Vec::new();
        for item in items {
            let backend = if item.as_map().is_some() {
                let mut address = None;
                let mut weight = 1;
                let mut scheme = None;
                for (k, v) in self.map(item, "a backend", BACKEND_KEYS) {
                    match k {
                        "address" => address = self.check(v, "address", parse_backend_address),
                        "weight" => weight = self.check(v, "weight", parse_weight).unwrap_or(1),
                        "scheme" => {
                            scheme = self.check(v, "scheme", |t| match t {
                                "http" => Ok(Scheme::Http),
                                "https" => Ok(Scheme::Https),
                                _ => Err(format!("scheme must be http or https, not `{t}`")),
                            })
                        }
                        _ => {}
                    }
                }
                if address.is_none()
                    && !item
                        .as_map()
                        .is_some_and(|m| m.iter().any(|(k, _)| k.as_str() == Some("address")))
                {
                    self.err(item, "a backend needs an `address`".to_owned());
                }
                address.map(|(s, a)| Backend {
                    address: a,
                    weight,
                    scheme: scheme.unwrap_or(s),
                })
            } else {
                self.check(item, "a backend", parse_backend_address)
                    .map(|(scheme, address)| Backend {
                        address,
                        weight: 1,
                        scheme,
                    })
            };
            if let Some(b) = backend {
                if out.iter().any(|o| o.address == b.address) {
                    self.err(item, format!("backend `{}` is listed twice", b.address));
                    continue;
                }
                out.push(b);
            }
        }
        out
    }

    fn backend_sets(&mut self, node: &Node) -> Vec<BackendSet> {
        let Some(items) = node.as_seq() else {
            self.err(node, "`backend_sets` must be a list".to_owned());
            return Vec::new();
        };
        let mut out: Vec<BackendSet> = Vec::new();
        for item in items {
            let mut name = None;
            let mut weight = 1;
            let mut backends = None;
            for (k, v) in self.map(item, "a backend set", SET_KEYS) {
                match k {
                    "name" => name = self.scalar(v, "name"),
                    "weight" => weight = self.check(v, "weight", parse_weight).unwrap_or(1),
                    "backends" => backends = Some(self.backends(v)),
                    _ => {}
                }
            }
            let Some(name) = name else {
                self.err(item, "a backend set needs a `name`".to_owned());
                continue;
            };
            if out.iter().any(|s| s.name == name) {
                self.err(item, format!("backend set `{name}` is listed twice"));
                continue;
            }
            let Some(backends) = backends else {
                self.err(item, format!("backend set `{name}` has no `backends`"));
                continue;
            };
            out.push(BackendSet {
                name,
                weight,
                backends,
            });
        }
        if out.is_empty() && self.diags.is_empty() {
            self.err(node, "`backend_sets` is empty".to_owned());
        } else if !out.is_empty() && out.iter().all(|s| s.weight == 0) {
            self.err_hint(
                node,
                "every backend set has weight 0: the route would get no traffic".to_owned(),
                Some("give at least one set a weight above 0".to_owned()),
            );
        }
        out
    }

    fn hsts(&mut self, node: &Node) -> Option<Hsts> {
        if node.as_map().is_none() {
            return self
                .check(node, "hsts", |t| {
                    t.parse::<u64>().map_err(|_| {
                        format!("hsts is the max-age in seconds or a mapping, not `{t}`")
                    })
                })
                .map(|max_age_secs| Hsts {
                    max_age_secs,
                    include_subdomains: false,
                    preload: false,
                });
        }
        let mut h = Hsts {
            max_age_secs: 31_536_000,
            include_subdomains: false,
            preload: false,
        };
        for (k, v) in self.map(node, "hsts", HSTS_KEYS) {
            match k {
                "max_age" => {
                    h.max_age_secs = self
                        .check(v, "max_age", |t| {
                            t.parse::<u64>()
                                .map_err(|_| format!("max_age must be seconds, not `{t}`"))
                        })
                        .unwrap_or(h.max_age_secs)
                }
                "include_subdomains" => h.include_subdomains = self.boolean(v, k).unwrap_or(false),
                "preload" => h.preload = self.boolean(v, k).unwrap_or(false),
                _ => {}
            }
        }
        Some(h)
    }

    fn headers(&mut self, node: &Node, what: &str) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        let Some(entries) = node.as_map() else {
            self.err(node, format!("`{what}` must be a mapping of header: value"));
            return out;
        };
        for (k, v) in entries {
            let Some(name) = self.check(k, "a header name", parse_header_name) else {
                continue;
            };
            let value = if v.is_null() {
                Some(String::new())
            } else {
                self.check(v, "a header value", |t| {
                    if t.contains(['\r', '\n']) {
                        Err(format!("header `{name}`'s value holds a line break"))
                    } else {
                        Ok(t.to_owned())
                    }
                })
            };
            if let Some(value) = value {
                out.insert(name, value);
            }
        }
        out
    }

    fn strip_prefix(&mut self, node: &Node, path: Option<&str>) -> Vec<String> {
        if let Some(items) = node.as_seq() {
            return items
                .iter()
                .filter_map(|i| self.check(i, "strip_prefix", parse_path))
                .collect();
        }
        match node.as_str() {
            Some("true") => path.map(|p| vec![p.to_owned()]).unwrap_or_default(),
            Some("false") => Vec::new(),
            _ => self
                .check(node, "strip_prefix", parse_path)
                .into_iter()
                .collect(),
        }
    }

    fn basic_auth(&mut self, node: &Node) -> Option<BasicAuth> {
        let mut realm = BasicAuth::DEFAULT_REALM.to_owned();
        let users_node = if node.as_map().is_some() {
            let mut users = None;
            for (k, v) in self.map(node, "basic_auth", AUTH_KEYS) {
                match k {
                    "realm" => realm = self.scalar(v, "realm").unwrap_or(realm),
                    "users" => users = Some(v),
                    _ => {}
                }
            }
            let Some(users) = users else {
                self.err(node, "basic_auth needs `users`".to_owned());
                return None;
            };
            users
        } else {
            node
        };
        let items: Vec<&Node> = match users_node.as_seq() {
            Some(items) => items.iter().collect(),
            None => vec![users_node],
        };
        let mut users = Vec::new();
        for item in items {
            if let Some(mut u) = self.check(item, "a user", BasicAuth::parse_users) {
                users.append(&mut u);
            }
        }
        (!users.is_empty()).then_some(BasicAuth { realm, users })
    }

    fn sticky(&mut self, node: &Node) -> Option<StickyCookie> {
        if node.as_map().is_none() {
            let t = self.scalar(node, "sticky")?;
            return match t.as_str() {
                "true" => Some(StickyCookie::named(StickyCookie::DEFAULT_NAME)),
                "false" => None,
                _ => self
                    .check(node, "sticky", parse_cookie_name)
                    .map(StickyCookie::named),
            };
        }
        let mut c = StickyCookie::named(StickyCookie::DEFAULT_NAME);
        for (k, v) in self.map(node, "sticky", STICKY_KEYS) {
            match k {
                "cookie" => {
                    if let Some(n) = self.check(v, "cookie", parse_cookie_name) {
                        c.name = n;
                    }
                }
                "secure" => c.secure = self.boolean(v, k).unwrap_or(false),
                "http_only" => c.http_only = self.boolean(v, k).unwrap_or(true),
                _ => {}
            }
        }
        Some(c)
    }

    fn health(&mut self, node: &Node) -> Option<HealthCheck> {
        let entries = self.map(node, "health_check", HEALTH_KEYS);
        let mut kind = None;
        let mut path = None;
        let mut status = None;
        let mut h = HealthCheck::tcp();
        for (k, v) in entries {
            match k {
                "type" => {
                    kind = self.check(v, "type", |t| match t {
                        "http" | "tcp" => Ok(t.to_owned()),
                        _ => Err(format!("health_check type must be http or tcp, not `{t}`")),
                    })
                }
                "path" => path = self.check(v, "path", parse_path),
                "status" => status = self.check(v, "status", parse_status),
                "interval" => h.interval = self.check(v, k, parse_duration).unwrap_or(h.interval),
                "timeout" => h.timeout = self.check(v, k, parse_duration).unwrap_or(h.timeout),
                "healthy_threshold" => {
                    h.healthy_threshold = self.threshold(v, k).unwrap_or(h.healthy_threshold)
                }
                "unhealthy_threshold" => {
                    h.unhealthy_threshold = self.threshold(v, k).unwrap_or(h.unhealthy_threshold)
                }
                _ => {}
            }
        }
        let http = match kind.as_deref() {
            Some("tcp") => {
                if path.is_some() || status.is_some() {
                    self.err(
                        node,
                        "a tcp health check has no `path` or `status`".to_owned(),
                    );
                }
                false
            }
            Some(_) => true,
            None if path.is_none() => {
                self.err_hint(
                    node,
                    "a health check needs a `path` (HTTP) or `type: tcp`".to_owned(),
                    Some("`health_check: {path: /healthz}`".to_owned()),
                );
                return None;
            }
            None => true,
        };
        if http {
            let Some(path) = path else {
                self.err_hint(
                    node,
                    "an http health check needs a `path`".to_owned(),
                    Some("`path: /healthz`, or `type: tcp`".to_owned()),
                );
                return None;
            };
            h.probe = HealthProbe::Http { path, status };
        }
        if h.timeout > h.interval {
            self.err(
                node,
                "the health check's timeout is longer than its interval".to_owned(),
            );
        }
        Some(h)
    }

    fn threshold(&mut self, node: &Node, what: &str) -> Option<u32> {
        let n = self.number(node, what)?;
        if n == 0 {
            self.err(node, format!("{what} must be at least 1"));
            return None;
        }
        Some(n)
    }
}

/// `HOST:PORT`, or `http://HOST:PORT` / `https://HOST:PORT` to name the backend's scheme.
pub fn parse_backend_address(text: &str) -> Result<(Scheme, Address), String> {
    let t = text.trim();
    let (scheme, rest) = if let Some(r) = t.strip_prefix("https://") {
        (Scheme::Https, r)
    } else if let Some(r) = t.strip_prefix("http://") {
        (Scheme::Http, r)
    } else if t.contains("://") {
        return Err(format!(
            "backend `{t}`: only http:// and https:// backends are served"
        ));
    } else {
        (Scheme::Http, t)
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.contains('/') {
        return Err(format!(
            "backend `{t}` holds a path: a backend is HOST:PORT"
        ));
    }
    Ok((scheme, Address::parse(rest)?))
}
