//! Rancher 1.x `rancher-compose.yml`: per service `scale`, `health_check` and
//! `upgrade_strategy`, merged into the compose file's services.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;
use slipway_yaml::{Node, Pos};

use super::read::Reader;
use super::{
    Compose, HttpProbe, Order, Probe, Problem, ReadOptions, Severity, UpdateConfig,
    serialize_opt_duration,
};

/// One service of a `rancher-compose.yml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct RancherService {
    /// The Rancher file it was read from, for messages.
    #[serde(skip)]
    pub file: String,
    #[serde(skip)]
    pub pos: Pos,
    pub scale: Option<u32>,
    pub health_check: Option<RancherHealthCheck>,
    pub upgrade_strategy: Option<RancherUpgrade>,
}

/// Rancher's `health_check`; times in milliseconds as Rancher writes them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct RancherHealthCheck {
    pub port: Option<u16>,
    /// `GET /health HTTP/1.0`; none: a TCP check.
    pub request_line: Option<String>,
    #[serde(serialize_with = "serialize_opt_duration")]
    pub interval: Option<Duration>,
    #[serde(serialize_with = "serialize_opt_duration")]
    pub response_timeout: Option<Duration>,
    pub healthy_threshold: Option<u32>,
    pub unhealthy_threshold: Option<u32>,
    pub strategy: Option<String>,
    #[serde(serialize_with = "serialize_opt_duration")]
    pub initializing_timeout: Option<Duration>,
    #[serde(serialize_with = "serialize_opt_duration")]
    pub reinitializing_timeout: Option<Duration>,
}

/// Rancher's `upgrade_strategy`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct RancherUpgrade {
    pub start_first: Option<bool>,
    pub batch_size: Option<u32>,
    #[serde(serialize_with = "serialize_opt_duration")]
    pub interval: Option<Duration>,
}

const KEYS: &[&str] = &["scale", "health_check", "upgrade_strategy"];
const IGNORED: &[&str] = &[
    "default_cert",
    "certs",
    "load_balancer_config",
    "lb_config",
    "retain_ip",
    "metadata",
    "start_on_create",
    "drain_timeout_ms",
];

/// Reads a `rancher-compose.yml` (services at the top level, or under `services:`).
pub fn read_rancher(
    text: &str,
    file: &str,
    opts: &ReadOptions,
) -> (BTreeMap<String, RancherService>, Vec<Problem>) {
    let mut r = Reader::new(text, file, opts);
    let mut out = BTreeMap::new();
    let (docs, problems) = slipway_yaml::load(text);
    for p in problems {
        let sev = if p.fatal {
            Severity::Error
        } else {
            Severity::Warning
        };
        r.push(sev, p.pos, p.message);
    }
    let Some(root) = docs.first().map(|d| &d.root) else {
        return (out, r.problems);
    };
    let services = root.get("services").unwrap_or(root);
    for (k, v) in services.as_map().unwrap_or_default() {
        let Some(name) = k.as_str() else { continue };
        if name == "version" || name.starts_with("x-") {
            continue;
        }
        let Some(entries) = v.as_map() else {
            if !v.is_null() {
                r.err(v.pos, format!("service `{name}` must be a mapping"));
            }
            continue;
        };
        let mut s = RancherService {
            file: file.to_owned(),
            pos: k.pos,
            ..RancherService::default()
        };
        for (sk, sv) in entries {
            match sk.as_str().unwrap_or("") {
                "scale" => s.scale = r.uint(sv, "scale"),
                "health_check" => s.health_check = health_check(&mut r, sv),
                "upgrade_strategy" => s.upgrade_strategy = upgrade(&mut r, sv),
                key if IGNORED.contains(&key) => r.warn(
                    sk.pos,
                    format!("`{key}` of Rancher is not supported: ignored"),
                ),
                _ => r.unknown(sk, KEYS, &format!("in Rancher service `{name}`")),
            }
        }
        out.insert(name.to_owned(), s);
    }
    (out, r.problems)
}

fn millis(r: &mut Reader<'_>, n: &Node, what: &str) -> Option<Duration> {
    r.uint(n, &format!("{what} (milliseconds)"))
        .map(|ms| Duration::from_millis(u64::from(ms)))
}

fn health_check(r: &mut Reader<'_>, v: &Node) -> Option<RancherHealthCheck> {
    let Some(entries) = v.as_map() else {
        r.err(v.pos, "`health_check` must be a mapping");
        return None;
    };
    let mut h = RancherHealthCheck::default();
    for (k, n) in entries {
        match k.as_str().unwrap_or("") {
            "port" => {
                h.port = r.uint(n, "port").and_then(|p| {
                    let p = u16::try_from(p).ok().filter(|p| *p > 0);
                    if p.is_none() {
                        r.err(n.pos, "`port` must be from 1 to 65535");
                    }
                    p
                })
            }
            "request_line" => {
                h.request_line = r.text(n);
                if let Some(l) = &h.request_line
                    && parse_request_line(l).is_none()
                {
                    r.err(n.pos, format!("request_line `{l}`: write `METHOD /path [HTTP/1.x]`, e.g. `GET /health HTTP/1.0`"));
                }
            }
            "interval" => h.interval = millis(r, n, "interval"),
            "response_timeout" => h.response_timeout = millis(r, n, "response_timeout"),
            "initializing_timeout" => h.initializing_timeout = millis(r, n, "initializing_timeout"),
            "reinitializing_timeout" => {
                h.reinitializing_timeout = millis(r, n, "reinitializing_timeout")
            }
            "healthy_threshold" => h.healthy_threshold = r.uint(n, "healthy_threshold"),
            "unhealthy_threshold" => h.unhealthy_threshold = r.uint(n, "unhealthy_threshold"),
            "strategy" => h.strategy = r.text(n),
            "recreate_on_quorum_strategy_config" => r.warn(
                k.pos,
                "`recreate_on_quorum_strategy_config` is not supported: ignored",
            ),
            _ => r.unknown(
                k,
                &[
                    "port",
                    "request_line",
                    "interval",
                    "response_timeout",
                    "healthy_threshold",
                    "unhealthy_threshold",
                    "strategy",
                    "initializing_timeout",
                    "reinitializing_timeout",
                ],
                "in `health_check`",
            ),
        }
    }
    if h.port.is_none() {
        r.err(v.pos, "`health_check` needs `port`");
    }
    Some(h)
}

fn upgrade(r: &mut Reader<'_>, v: &Node) -> Option<RancherUpgrade> {
    let Some(entries) = v.as_map() else {
        r.err(v.pos, "`upgrade_strategy` must be a mapping");
        return None;
    };
    let mut u = RancherUpgrade::default();
    for (k, n) in entries {
        match k.as_str().unwrap_or("") {
            "start_first" => {
                u.start_first = match r.text(n).as_deref() {
                    Some("true") => Some(true),
                    Some("false") => Some(false),
                    Some(t) => {
                        r.err(
                            n.pos,
                            format!("`start_first` must be true or false, not `{t}`"),
                        );
                        None
                    }
                    None => None,
                }
            }
            "batch_size" => u.batch_size = r.uint(n, "batch_size"),
            "interval_millis" => u.interval = millis(r, n, "interval_millis"),
            _ => r.unknown(
                k,
                &["start_first", "batch_size", "interval_millis"],
                "in `upgrade_strategy`",
            ),
        }
    }
    Some(u)
}

/// `GET /health HTTP/1.0` → (method, path, version).
fn parse_request_line(l: &str) -> Option<HttpProbe> {
    let mut words = l.split_whitespace();
    let method = words.next()?;
    let path = words.next()?;
    let version = words.next();
    if words.next().is_some()
        || !method.chars().all(|c| c.is_ascii_uppercase())
        || !path.starts_with('/')
        || version.is_some_and(|v| !v.starts_with("HTTP/"))
    {
        return None;
    }
    Some(HttpProbe {
        method: method.to_owned(),
        path: path.to_owned(),
        version: version.map(str::to_owned),
    })
}

/// Folds Rancher's settings into the services: `scale` → `deploy.replicas`,
/// `upgrade_strategy` → `deploy.update_config` (`batch_size` → parallelism,
/// `interval_millis` → delay, `start_first` → order), `health_check` → the service's
/// [`Probe`]. A Rancher service the compose file lacks is a warning.
pub fn merge_rancher(
    compose: &mut Compose,
    rancher: &BTreeMap<String, RancherService>,
    problems: &mut Vec<Problem>,
) {
    let mut names: Vec<(&String, &RancherService)> = rancher.iter().collect();
    names.sort_by_key(|(_, s)| s.pos);
    for (name, rs) in names {
        let Some(svc) = compose.services.iter_mut().find(|s| &s.name == name) else {
            problems.push(Problem {
                file: rs.file.clone(),
                line: rs.pos.line,
                col: rs.pos.col,
                severity: Severity::Warning,
                message: format!(
                    "Rancher service `{name}` is not a service of {}: ignored",
                    compose.file
                ),
            });
            continue;
        };
        if let Some(scale) = rs.scale {
            svc.deploy.replicas = Some(scale);
        }
        if let Some(u) = &rs.upgrade_strategy {
            let uc = svc
                .deploy
                .update_config
                .get_or_insert_with(UpdateConfig::default);
            if let Some(b) = u.batch_size {
                uc.parallelism = Some(b);
            }
            if let Some(i) = u.interval {
                uc.delay = Some(i);
            }
            if let Some(sf) = u.start_first {
                uc.order = Some(if sf {
                    Order::StartFirst
                } else {
                    Order::StopFirst
                });
            }
        }
        if let Some(h) = &rs.health_check
            && let Some(port) = h.port
        {
            svc.probe = Some(Probe {
                http: h.request_line.as_deref().and_then(parse_request_line),
                port,
                // Rancher's defaults.
                interval: h.interval.unwrap_or(Duration::from_secs(2)),
                timeout: h.response_timeout.unwrap_or(Duration::from_secs(2)),
                healthy_threshold: h.healthy_threshold.unwrap_or(2),
                unhealthy_threshold: h.unhealthy_threshold.unwrap_or(3),
                initializing_timeout: h.initializing_timeout,
                strategy: h.strategy.clone(),
            });
        }
    }
}
