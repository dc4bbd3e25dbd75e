//! The compose reader: a `slipway-yaml` tree into [`Compose`], with problems.

use std::collections::{BTreeMap, BTreeSet};

use slipway_yaml::{Node, Pos, Value};

use super::{
    CanaryStep, Command, Compose, Condition, Dependency, Deploy, EnvVar, FailureAction, FileRef,
    HealthTest, Healthcheck, Link, Mode, Network, Order, Port, PortRange, Problem, Read,
    ReadOptions, ResourceSpec, Resources, RestartPolicy, SecretDef, Service, ServiceNetwork,
    ServiceVolume, Severity, Strategy, UpdateConfig, Volume, VolumeKind, XLogs, XRoute, XSlipway,
    parse_duration,
};

/// Service keys Slipway reads.
const SERVICE_KEYS: &[&str] = &[
    "image",
    "build",
    "command",
    "entrypoint",
    "environment",
    "env_file",
    "ports",
    "expose",
    "labels",
    "volumes",
    "networks",
    "depends_on",
    "links",
    "healthcheck",
    "restart",
    "stop_grace_period",
    "stop_signal",
    "user",
    "working_dir",
    "deploy",
    "secrets",
    "configs",
    "profiles",
    "container_name",
];

/// Compose-spec service keys Slipway does not act on: a warning says they are ignored.
const IGNORED_SERVICE_KEYS: &[&str] = &[
    "annotations",
    "attach",
    "blkio_config",
    "cap_add",
    "cap_drop",
    "cgroup",
    "cgroup_parent",
    "cpu_count",
    "cpu_percent",
    "cpu_period",
    "cpu_quota",
    "cpu_rt_period",
    "cpu_rt_runtime",
    "cpu_shares",
    "cpus",
    "cpuset",
    "credential_spec",
    "develop",
    "device_cgroup_rules",
    "devices",
    "dns",
    "dns_opt",
    "dns_search",
    "domainname",
    "external_links",
    "extends",
    "extra_hosts",
    "group_add",
    "hostname",
    "init",
    "ipc",
    "isolation",
    "logging",
    "mac_address",
    "mem_limit",
    "mem_reservation",
    "mem_swappiness",
    "memswap_limit",
    "network_mode",
    "oom_kill_disable",
    "oom_score_adj",
    "pid",
    "pids_limit",
    "platform",
    "privileged",
    "pull_policy",
    "read_only",
    "runtime",
    "scale",
    "security_opt",
    "shm_size",
    "stdin_open",
    "storage_opt",
    "sysctls",
    "tmpfs",
    "tty",
    "ulimits",
    "userns_mode",
    "uts",
    "volumes_from",
];

const TOP_KEYS: &[&str] = &[
    "version", "name", "services", "networks", "volumes", "secrets", "configs", "include",
];

const DEPLOY_KEYS: &[&str] = &[
    "mode",
    "replicas",
    "labels",
    "update_config",
    "rollback_config",
    "resources",
    "restart_policy",
    "placement",
    "endpoint_mode",
];

/// Ports that are not plain HTTP, for messages and the plan's domain route.
pub(crate) const NOT_HTTP_PORTS: &[u16] = &[
    21, 22, 23, 25, 53, 110, 143, 389, 443, 465, 587, 636, 993, 995, 1433, 1521, 2181, 3306, 5432,
    5672, 6379, 9042, 9092, 9229, 11211, 27017,
];

/// Reads a compose file's text. `file` is the name problems carry.
pub fn read(text: &str, file: &str, opts: &ReadOptions) -> Read {
    let mut r = Reader::new(text, file, opts);
    let mut compose = Compose {
        file: file.to_owned(),
        ..Compose::default()
    };
    let (docs, problems) = slipway_yaml::load(text);
    for p in problems {
        let sev = if p.fatal {
            Severity::Error
        } else {
            Severity::Warning
        };
        r.push(sev, p.pos, p.message);
    }
    if docs.len() > 1 {
        r.warn(
            docs[1].pos,
            "only the first YAML document of a stack file is read",
        );
    }
    let Some(root) = docs.first().map(|d| &d.root) else {
        return Read {
            compose,
            problems: r.problems,
        };
    };
    let mut exprs = BTreeSet::new();
    collect_interpolations(root, &mut exprs);
    compose.interpolations = exprs.into_iter().collect();
    let Some(entries) = root.as_map() else {
        if !root.is_null() {
            r.err(
                root.pos,
                "a compose file must be a mapping (`services:` and more)",
            );
        }
        return Read {
            compose,
            problems: r.problems,
        };
    };
    let has_services = root.get("services").is_some();
    let format_1 = !has_services
        && root.get("version").is_none()
        && entries
            .iter()
            .any(|(k, v)| !is_ext(k) && (v.get("image").is_some() || v.get("build").is_some()));
    if format_1 {
        compose.format_1 = true;
        r.warn(
            root.pos,
            "compose format 1: services are read from the top level (put them under `services:`)",
        );
        for (k, v) in entries {
            let Some(name) = k.as_str() else { continue };
            if is_ext(k) {
                compose.extensions.insert(name.to_owned(), v.to_json());
                continue;
            }
            if let Some(s) = r.service(name, k, v) {
                compose.services.push(s);
            }
        }
    } else {
        for (k, v) in entries {
            let Some(key) = k.as_str() else {
                r.err(k.pos, "a top-level key must be a string");
                continue;
            };
            match key {
                "version" => {
                    compose.version = r.text(v);
                    r.warn(
                        k.pos,
                        "`version` is obsolete and ignored (the compose specification reads every version alike)",
                    );
                }
                "name" => {
                    r.text(v);
                    r.warn(
                        k.pos,
                        "`name` is ignored: the stack's name is the one it is deployed as",
                    );
                }
                "services" => {
                    let Some(svcs) = v.as_map() else {
                        if !v.is_null() {
                            r.err(v.pos, "`services` must be a mapping of name: service");
                        }
                        continue;
                    };
                    for (sk, sv) in svcs {
                        let Some(name) = sk.as_str() else {
                            r.err(sk.pos, "a service's name must be a string");
                            continue;
                        };
                        if let Some(s) = r.service(name, sk, sv) {
                            compose.services.push(s);
                        }
                    }
                }
                "networks" => compose.networks = r.top_networks(v),
                "volumes" => compose.volumes = r.top_volumes(v),
                "secrets" => compose.secrets = r.top_secrets(v, "secret"),
                "configs" => compose.configs = r.top_secrets(v, "config"),
                "include" => r.warn(k.pos, "`include` is not supported: ignored"),
                _ if is_ext(k) => {
                    compose.extensions.insert(key.to_owned(), v.to_json());
                }
                _ => r.unknown(k, TOP_KEYS, "at the top level"),
            }
        }
        if !has_services {
            r.err(root.pos, "no `services:` in this file");
        }
    }
    r.check_references(&compose);
    Read {
        compose,
        problems: r.problems,
    }
}

fn is_ext(k: &Node) -> bool {
    k.as_str().is_some_and(|s| s.starts_with("x-"))
}

/// Every distinct `${…}` of the tree's scalar values (not keys), as written.
fn collect_interpolations(node: &Node, out: &mut BTreeSet<String>) {
    match &node.value {
        Value::Scalar { text, .. } => {
            let b = text.as_bytes();
            let mut i = 0;
            while i + 1 < b.len() {
                if b[i] == b'$' && b[i + 1] == b'$' {
                    i += 2;
                    continue;
                }
                if b[i] == b'$' && b[i + 1] == b'{' {
                    let mut depth = 0;
                    let mut j = i + 1;
                    while j < b.len() {
                        match b[j] {
                            b'{' => depth += 1,
                            b'}' => {
                                depth -= 1;
                                if depth == 0 {
                                    break;
                                }
                            }
                            _ => {}
                        }
                        j += 1;
                    }
                    if j < b.len()
                        && let Some(s) = text.get(i..=j)
                    {
                        out.insert(s.to_owned());
                    }
                    i = j + 1;
                    continue;
                }
                i += 1;
            }
        }
        Value::Seq(items) => items.iter().for_each(|n| collect_interpolations(n, out)),
        Value::Map(entries) => entries
            .iter()
            .for_each(|(_, v)| collect_interpolations(v, out)),
        Value::Null => {}
    }
}

/// Names of the variables an expression refers to (`$A`, `${B:-$C}`).
fn referenced_vars(text: &str) -> Vec<String> {
    let b: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == '$' {
            if b.get(i + 1) == Some(&'$') {
                i += 2;
                continue;
            }
            let start = if b.get(i + 1) == Some(&'{') {
                i + 2
            } else {
                i + 1
            };
            let mut j = start;
            while j < b.len() && (b[j].is_ascii_alphanumeric() || b[j] == '_') {
                j += 1;
            }
            if j > start && !b[start].is_ascii_digit() {
                let name: String = b[start..j].iter().collect();
                if !out.contains(&name) {
                    out.push(name);
                }
            }
            i = j.max(i + 1);
            continue;
        }
        i += 1;
    }
    out
}

pub(crate) struct Reader<'a> {
    file: &'a str,
    lines: Vec<&'a str>,
    vars: BTreeMap<String, String>,
    mode: Mode,
    base_dir: Option<std::path::PathBuf>,
    pub(crate) problems: Vec<Problem>,
    /// Variables already reported unset, so each is reported once.
    reported: BTreeSet<String>,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(text: &'a str, file: &'a str, opts: &ReadOptions) -> Self {
        Reader {
            file,
            lines: text.lines().collect(),
            vars: opts.vars.clone(),
            mode: opts.mode,
            base_dir: opts.base_dir.clone(),
            problems: Vec::new(),
            reported: BTreeSet::new(),
        }
    }

    pub(crate) fn push(&mut self, severity: Severity, pos: Pos, message: impl Into<String>) {
        self.problems.push(Problem {
            file: self.file.to_owned(),
            line: pos.line,
            col: pos.col,
            severity,
            message: message.into(),
        });
    }

    pub(crate) fn err(&mut self, pos: Pos, message: impl Into<String>) {
        self.push(Severity::Error, pos, message);
    }

    pub(crate) fn warn(&mut self, pos: Pos, message: impl Into<String>) {
        self.push(Severity::Warning, pos, message);
    }

    pub(crate) fn unknown(&mut self, k: &Node, known: &[&str], place: &str) {
        let key = k.as_str().unwrap_or("?");
        let hint = slipway_proxy::diagnostic::did_you_mean(key, known)
            .map(|s| format!(" (did you mean `{s}`?)"))
            .unwrap_or_default();
        self.warn(k.pos, format!("unknown key `{key}` {place}: ignored{hint}"));
    }

    /// Where `${NAME` stands in the source, from the scalar's position on.
    fn expr_pos(&self, node: &Node, name: &str) -> Pos {
        let needle = format!("${{{name}");
        for (i, line) in self
            .lines
            .iter()
            .enumerate()
            .skip(node.pos.line.saturating_sub(1))
            .take(50)
        {
            let from = if i + 1 == node.pos.line {
                line.char_indices()
                    .nth(node.pos.col.saturating_sub(1))
                    .map_or(line.len(), |(b, _)| b)
            } else {
                0
            };
            if let Some(off) = line.get(from..).and_then(|l| l.find(&needle)) {
                let col = line[..from + off].chars().count() + 1;
                return Pos { line: i + 1, col };
            }
        }
        node.pos
    }

    /// Interpolates a scalar's text; returns it with the variables it refers to.
    fn interpolate(&mut self, node: &Node, text: &str) -> (String, Vec<String>) {
        let refs = referenced_vars(text);
        if !text.contains('$') {
            return (text.to_owned(), refs);
        }
        for _ in 0..32 {
            match slipway_proxy::compose::interpolate(text, &self.vars) {
                Ok((s, unset)) => {
                    for v in unset {
                        if self.reported.insert(v.clone()) {
                            let pos = self.expr_pos(node, &v);
                            self.warn(
                                pos,
                                format!("variable `{v}` is not set: it reads as an empty string"),
                            );
                        }
                    }
                    return (s, refs);
                }
                Err(e) => {
                    let required = e
                        .strip_prefix("required variable `")
                        .and_then(|r| r.split_once("`: "));
                    match required {
                        Some((name, msg)) => {
                            let pos = self.expr_pos(node, name);
                            if self.mode == Mode::Strict {
                                self.err(
                                    pos,
                                    format!("required variable `{name}` is not set: {msg}"),
                                );
                            } else if self.reported.insert(name.to_owned()) {
                                self.warn(
                                    pos,
                                    format!(
                                        "required variable `{name}` is not set: {msg} (a deploy fails without it; lint reads it as `{}`)",
                                        placeholder(name)
                                    ),
                                );
                            }
                            // Read on as if set, so one missing variable is one problem.
                            self.vars.insert(name.to_owned(), placeholder(name));
                        }
                        None => {
                            self.err(node.pos, e);
                            return (text.to_owned(), refs);
                        }
                    }
                }
            }
        }
        (text.to_owned(), refs)
    }

    /// A scalar's text, interpolated; an error for anything else.
    pub(crate) fn text(&mut self, node: &Node) -> Option<String> {
        self.text_refs(node).map(|(s, _)| s)
    }

    fn text_refs(&mut self, node: &Node) -> Option<(String, Vec<String>)> {
        match &node.value {
            Value::Scalar { text, .. } => Some(self.interpolate(node, text)),
            Value::Null => Some((String::new(), Vec::new())),
            _ => {
                self.err(
                    node.pos,
                    format!("expected a string, found {}", node.kind_name()),
                );
                None
            }
        }
    }

    pub(crate) fn uint(&mut self, node: &Node, what: &str) -> Option<u32> {
        let t = self.text(node)?;
        match t.trim().parse::<u32>() {
            Ok(n) => Some(n),
            Err(_) => {
                self.err(
                    node.pos,
                    format!("`{what}` must be a whole number, not `{t}`"),
                );
                None
            }
        }
    }

    fn float(&mut self, node: &Node, what: &str) -> Option<f64> {
        let t = self.text(node)?;
        match t.trim().parse::<f64>() {
            Ok(n) if n.is_finite() && n >= 0.0 => Some(n),
            _ => {
                self.err(node.pos, format!("`{what}` must be a number, not `{t}`"));
                None
            }
        }
    }

    fn boolean(&mut self, node: &Node, what: &str) -> Option<bool> {
        let t = self.text(node)?;
        match t.trim() {
            "true" | "True" | "TRUE" | "yes" | "on" => Some(true),
            "false" | "False" | "FALSE" | "no" | "off" => Some(false),
            _ => {
                self.err(
                    node.pos,
                    format!("`{what}` must be true or false, not `{t}`"),
                );
                None
            }
        }
    }

    pub(crate) fn duration(&mut self, node: &Node, what: &str) -> Option<std::time::Duration> {
        let t = self.text(node)?;
        match parse_duration(&t) {
            Ok(d) => Some(d),
            Err(e) => {
                self.err(node.pos, format!("`{what}`: {e}"));
                None
            }
        }
    }

    /// A list of strings, or one string as a list of one.
    fn strings(&mut self, node: &Node, what: &str) -> Vec<String> {
        match &node.value {
            Value::Seq(items) => items.iter().filter_map(|i| self.text(i)).collect(),
            Value::Scalar { .. } => self.text(node).into_iter().collect(),
            Value::Null => Vec::new(),
            Value::Map(_) => {
                self.err(node.pos, format!("`{what}` must be a list of strings"));
                Vec::new()
            }
        }
    }

    fn command(&mut self, node: &Node, what: &str) -> Option<Command> {
        match &node.value {
            Value::Seq(items) => Some(Command::Exec(
                items.iter().filter_map(|i| self.text(i)).collect(),
            )),
            Value::Scalar { .. } => self.text(node).map(Command::Shell),
            Value::Null => None,
            Value::Map(_) => {
                self.err(
                    node.pos,
                    format!("`{what}` must be a string or a list of strings"),
                );
                None
            }
        }
    }

    /// `labels` (or `driver_opts`) in list (`K=V`) or map form.
    fn pairs(&mut self, node: &Node, what: &str) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        match &node.value {
            Value::Seq(items) => {
                for item in items {
                    let Some(t) = self.text(item) else { continue };
                    match t.split_once('=') {
                        Some((k, v)) => out.insert(k.trim().to_owned(), v.to_owned()),
                        None => out.insert(t.trim().to_owned(), String::new()),
                    };
                }
            }
            Value::Map(entries) => {
                for (k, v) in entries {
                    let Some(key) = k.as_str() else { continue };
                    if let Some(val) = self.text(v) {
                        out.insert(key.to_owned(), val);
                    }
                }
            }
            Value::Null => {}
            Value::Scalar { .. } => {
                self.err(node.pos, format!("`{what}` must be a list or a mapping"));
            }
        }
        out
    }

    fn environment(&mut self, node: &Node, out: &mut Vec<EnvVar>) {
        let set = |out: &mut Vec<EnvVar>, v: EnvVar| {
            out.retain(|e| e.name != v.name);
            out.push(v);
        };
        match &node.value {
            Value::Seq(items) => {
                for item in items {
                    let Some((t, refs)) = self.text_refs(item) else {
                        continue;
                    };
                    match t.split_once('=') {
                        Some((k, v)) => set(
                            out,
                            EnvVar {
                                name: k.trim().to_owned(),
                                value: Some(v.to_owned()),
                                from_vars: refs,
                            },
                        ),
                        None => {
                            let name = t.trim().to_owned();
                            set(out, self.taken_from_vars(name));
                        }
                    }
                }
            }
            Value::Map(entries) => {
                for (k, v) in entries {
                    let Some(key) = k.as_str() else { continue };
                    if v.is_null() {
                        set(out, self.taken_from_vars(key.to_owned()));
                        continue;
                    }
                    if let Some((val, refs)) = self.text_refs(v) {
                        set(
                            out,
                            EnvVar {
                                name: key.to_owned(),
                                value: Some(val),
                                from_vars: refs,
                            },
                        );
                    }
                }
            }
            Value::Null => {}
            Value::Scalar { .. } => self.err(node.pos, "`environment` must be a list or a mapping"),
        }
    }

    /// `- KEY` alone: the variable of that name, or unset.
    fn taken_from_vars(&self, name: String) -> EnvVar {
        EnvVar {
            value: self.vars.get(&name).cloned(),
            from_vars: vec![name.clone()],
            name,
        }
    }

    fn env_files(&mut self, node: &Node, svc: &mut Service) {
        let items: Vec<&Node> = match &node.value {
            Value::Seq(items) => items.iter().collect(),
            Value::Null => Vec::new(),
            _ => vec![node],
        };
        for item in items {
            let (path_node, required) = match item.as_map() {
                Some(_) => {
                    let req = match item.get("required") {
                        Some(n) => self.boolean(n, "env_file.required").unwrap_or(true),
                        None => true,
                    };
                    match item.get("path") {
                        Some(p) => (p, req),
                        None => {
                            self.err(item.pos, "a long-form `env_file` entry needs `path`");
                            continue;
                        }
                    }
                }
                None => (item, true),
            };
            let Some(path) = self.text(path_node) else {
                continue;
            };
            svc.env_files.push(path.clone());
            let Some(dir) = self.base_dir.clone() else {
                self.warn(
                    path_node.pos,
                    format!("env_file `{path}` is not read (no stack directory given)"),
                );
                continue;
            };
            let full = dir.join(&path);
            match std::fs::read_to_string(&full) {
                Ok(text) => {
                    let shown = full.display().to_string();
                    let (vars, diags) = slipway_proxy::compose::parse_env_file(&text, &shown);
                    for d in diags {
                        self.problems.push(Problem {
                            file: shown.clone(),
                            line: d.line.unwrap_or(1),
                            col: d.col.unwrap_or(1),
                            severity: Severity::Warning,
                            message: d.message,
                        });
                    }
                    for (k, v) in vars {
                        svc.environment.retain(|e| e.name != k);
                        svc.environment.push(EnvVar {
                            name: k,
                            value: Some(v),
                            from_vars: Vec::new(),
                        });
                    }
                }
                Err(e) => {
                    let msg = format!("env_file `{path}` cannot be read ({}): {e}", full.display());
                    if required && self.mode == Mode::Strict {
                        self.err(path_node.pos, msg);
                    } else {
                        self.warn(path_node.pos, format!("{msg}; its variables are not set"));
                    }
                }
            }
        }
    }

    fn service(&mut self, name: &str, key: &Node, node: &Node) -> Option<Service> {
        let Some(entries) = node.as_map() else {
            self.err(
                node.pos,
                format!(
                    "service `{name}` must be a mapping, found {}",
                    node.kind_name()
                ),
            );
            return None;
        };
        let mut s = Service {
            name: name.to_owned(),
            pos: key.pos,
            ..Service::default()
        };
        // env_file first: `environment` wins over it, wherever it is written.
        if let Some(ef) = node.get("env_file") {
            self.env_files(ef, &mut s);
        }
        let place = format!("in service `{name}`");
        for (k, v) in entries {
            let Some(key) = k.as_str() else { continue };
            match key {
                "image" => s.image = self.text(v).filter(|i| !i.is_empty()),
                "build" => {
                    s.build = match v.as_map() {
                        Some(_) => v.get("context").and_then(|c| self.text(c)),
                        None => self.text(v),
                    }
                }
                "command" => s.command = self.command(v, "command"),
                "entrypoint" => s.entrypoint = self.command(v, "entrypoint"),
                "environment" => {
                    let mut env = std::mem::take(&mut s.environment);
                    self.environment(v, &mut env);
                    s.environment = env;
                }
                "env_file" => {}
                "ports" => {
                    for item in v.as_seq().unwrap_or_default() {
                        if let Some(p) = self.port(item) {
                            s.ports.push(p);
                        }
                    }
                    if !v.is_null() && v.as_seq().is_none() {
                        self.err(v.pos, "`ports` must be a list");
                    }
                }
                "expose" => {
                    for item in v.as_seq().unwrap_or_default() {
                        let Some(t) = self.text(item) else { continue };
                        let spec = t.split('/').next().unwrap_or(&t);
                        match port_range(spec) {
                            Ok(r) => s.expose.push(r),
                            Err(e) => self.err(item.pos, format!("expose `{t}`: {e}")),
                        }
                    }
                }
                "labels" => s.labels = self.pairs(v, "labels"),
                "volumes" => {
                    for item in v.as_seq().unwrap_or_default() {
                        if let Some(vol) = self.service_volume(item) {
                            s.volumes.push(vol);
                        }
                    }
                }
                "networks" => s.networks = self.service_networks(v),
                "depends_on" => {
                    s.depends_on_long = v.as_map().is_some();
                    s.depends_on = self.depends_on(v);
                }
                "links" => {
                    self.warn(
                        k.pos,
                        "`links` is legacy: each link becomes an alias of the linked service on the stack's network",
                    );
                    for t in self.strings(v, "links") {
                        let (svc, alias) = t.split_once(':').unwrap_or((&t, &t));
                        s.links.push(Link {
                            service: svc.to_owned(),
                            alias: alias.to_owned(),
                        });
                    }
                }
                "healthcheck" => s.healthcheck = self.healthcheck(v),
                "restart" => {
                    s.restart = self.text(v);
                    if let Some(r) = &s.restart {
                        let base = r.split(':').next().unwrap_or(r);
                        if !["no", "always", "on-failure", "unless-stopped"].contains(&base) {
                            self.err(
                                v.pos,
                                format!("restart `{r}`: write `no`, `always`, `on-failure[:N]` or `unless-stopped`"),
                            );
                        }
                    }
                }
                "stop_grace_period" => s.stop_grace_period = self.duration(v, "stop_grace_period"),
                "stop_signal" => s.stop_signal = self.text(v),
                "user" => s.user = self.text(v),
                "working_dir" => s.working_dir = self.text(v),
                "deploy" => s.deploy = self.deploy(v),
                "secrets" => s.secrets = self.file_refs(v, "secrets"),
                "configs" => s.configs = self.file_refs(v, "configs"),
                "profiles" => s.profiles = self.strings(v, "profiles"),
                "container_name" => {
                    s.container_name = self.text(v);
                    self.warn(
                        k.pos,
                        "`container_name` is ignored: containers are named by stack, service, revision and replica",
                    );
                }
                "x-slipway" => s.slipway = self.x_slipway(v),
                _ if key.starts_with("x-") => {
                    s.extensions.insert(key.to_owned(), v.to_json());
                }
                _ if IGNORED_SERVICE_KEYS.contains(&key) => {
                    self.warn(k.pos, format!("`{key}` is not supported {place}: ignored"));
                }
                _ => self.unknown(k, SERVICE_KEYS, &place),
            }
        }
        if let Some(b) = &s.build {
            let pos = node.get_key_pos("build").unwrap_or(key.pos);
            if s.image.is_some() {
                self.warn(
                    pos,
                    format!("service `{name}`: `build` is ignored: images come from pipelines; `image` is deployed"),
                );
            } else {
                // Lint reads any compose file (it is valid Compose); a deploy refuses it.
                let message = format!(
                    "service `{name}`: `build: {b}` is refused: images come from pipelines; build and push the image in a pipeline and name it in `image:`"
                );
                if self.mode == Mode::Strict {
                    self.err(pos, message);
                } else {
                    self.warn(pos, message);
                }
            }
        } else if s.image.is_none() {
            self.err(key.pos, format!("service `{name}` has no `image`"));
        }
        Some(s)
    }

    fn port(&mut self, item: &Node) -> Option<Port> {
        if item.as_map().is_some() {
            let mut p = Port {
                target: PortRange::single(0),
                published: None,
                protocol: "tcp".to_owned(),
                host_ip: None,
                mode: None,
                raw: String::new(),
            };
            let mut has_target = false;
            for (k, v) in item.as_map().unwrap_or_default() {
                match k.as_str().unwrap_or("") {
                    "target" => {
                        let t = self.text(v)?;
                        match port_range(&t) {
                            Ok(r) => {
                                p.target = r;
                                has_target = true;
                            }
                            Err(e) => {
                                self.err(v.pos, format!("port target `{t}`: {e}"));
                                return None;
                            }
                        }
                    }
                    "published" => {
                        let t = self.text(v)?;
                        match port_range(&t) {
                            Ok(r) => p.published = Some(r),
                            Err(e) => {
                                self.err(v.pos, format!("published port `{t}`: {e}"));
                                return None;
                            }
                        }
                    }
                    "protocol" => p.protocol = self.protocol(v)?,
                    "host_ip" => p.host_ip = self.text(v),
                    "mode" => {
                        let m = self.text(v)?;
                        if m != "host" && m != "ingress" {
                            self.err(v.pos, format!("port mode `{m}`: write `host` or `ingress`"));
                        }
                        p.mode = Some(m);
                    }
                    "name" | "app_protocol" => {}
                    _ => self.unknown(
                        k,
                        &[
                            "target",
                            "published",
                            "protocol",
                            "host_ip",
                            "mode",
                            "name",
                            "app_protocol",
                        ],
                        "in a port",
                    ),
                }
            }
            if !has_target {
                self.err(item.pos, "a long-form port needs `target`");
                return None;
            }
            p.raw = match (&p.host_ip, &p.published) {
                (Some(ip), Some(pb)) => format!("{ip}:{pb}:{}", p.target),
                (None, Some(pb)) => format!("{pb}:{}", p.target),
                _ => p.target.to_string(),
            };
            if p.protocol != "tcp" {
                p.raw = format!("{}/{}", p.raw, p.protocol);
            }
            return Some(p);
        }
        let t = self.text(item)?;
        let bad = |e: String| {
            format!(
                "port `{t}`: {e} (write `[HOST_IP:][PUBLISHED:]TARGET[/PROTOCOL]`, e.g. `8080:80`)"
            )
        };
        let (spec, proto) = match t.split_once('/') {
            Some((s, p)) => (s, p),
            None => (t.as_str(), "tcp"),
        };
        if !["tcp", "udp", "sctp"].contains(&proto) {
            self.err(item.pos, bad(format!("unknown protocol `{proto}`")));
            return None;
        }
        let (host_ip, rest) = if let Some(r) = spec.strip_prefix('[') {
            match r.split_once("]:") {
                Some((ip, rest)) => (Some(ip.to_owned()), rest.to_owned()),
                None => {
                    self.err(item.pos, bad("`[` without `]:`".to_owned()));
                    return None;
                }
            }
        } else {
            let parts: Vec<&str> = spec.split(':').collect();
            match parts.len() {
                1 | 2 => (None, spec.to_owned()),
                3 => (
                    Some(parts[0].to_owned()),
                    format!("{}:{}", parts[1], parts[2]),
                ),
                _ => {
                    self.err(item.pos, bad("too many `:`".to_owned()));
                    return None;
                }
            }
        };
        let (published, target) = match rest.split_once(':') {
            Some((p, t)) => (Some(p), t),
            None => (None, rest.as_str()),
        };
        let target = match port_range(target) {
            Ok(r) => r,
            Err(e) => {
                self.err(item.pos, bad(e));
                return None;
            }
        };
        let published = match published.filter(|p| !p.is_empty()) {
            None => None,
            Some(p) => match port_range(p) {
                Ok(r) => {
                    if r.len() != target.len() && r.len() != 1 {
                        self.err(
                            item.pos,
                            bad("the published range and the target range differ in size"
                                .to_owned()),
                        );
                        return None;
                    }
                    Some(r)
                }
                Err(e) => {
                    self.err(item.pos, bad(e));
                    return None;
                }
            },
        };
        Some(Port {
            target,
            published,
            protocol: proto.to_owned(),
            host_ip,
            mode: None,
            raw: t.clone(),
        })
    }

    fn protocol(&mut self, v: &Node) -> Option<String> {
        let p = self.text(v)?;
        if !["tcp", "udp", "sctp"].contains(&p.as_str()) {
            self.err(v.pos, format!("protocol `{p}`: write `tcp` or `udp`"));
            return None;
        }
        Some(p)
    }

    fn service_volume(&mut self, item: &Node) -> Option<ServiceVolume> {
        if item.as_map().is_some() {
            let kind = match item.get("type") {
                Some(n) => {
                    let t = self.text(n)?;
                    match t.as_str() {
                        "volume" => VolumeKind::Volume,
                        "bind" => VolumeKind::Bind,
                        "tmpfs" => VolumeKind::Tmpfs,
                        "npipe" => VolumeKind::Npipe,
                        "image" => VolumeKind::Image,
                        "cluster" => VolumeKind::Cluster,
                        _ => {
                            self.err(
                                n.pos,
                                format!("volume type `{t}`: write `volume`, `bind` or `tmpfs`"),
                            );
                            return None;
                        }
                    }
                }
                None => VolumeKind::Volume,
            };
            let Some(target) = item.get("target").and_then(|n| self.text(n)) else {
                self.err(item.pos, "a long-form volume needs `target`");
                return None;
            };
            let source = item
                .get("source")
                .and_then(|n| self.text(n))
                .filter(|s| !s.is_empty());
            let read_only = match item.get("read_only") {
                Some(n) => self.boolean(n, "read_only").unwrap_or(false),
                None => false,
            };
            let mut opts = Vec::new();
            for (k, v) in item.as_map().unwrap_or_default() {
                match k.as_str().unwrap_or("") {
                    "type" | "source" | "target" | "read_only" => {}
                    "bind" | "volume" | "tmpfs" | "consistency" | "image" => {
                        opts.push(format!("{}={}", k.as_str().unwrap_or(""), v.to_json()))
                    }
                    _ => self.unknown(
                        k,
                        &[
                            "type",
                            "source",
                            "target",
                            "read_only",
                            "bind",
                            "volume",
                            "tmpfs",
                            "consistency",
                        ],
                        "in a volume",
                    ),
                }
            }
            if kind == VolumeKind::Bind && source.is_none() {
                self.err(item.pos, "a bind mount needs `source`");
            }
            return Some(ServiceVolume {
                kind,
                source,
                target,
                read_only,
                options: (!opts.is_empty()).then(|| opts.join(",")),
            });
        }
        let t = self.text(item)?;
        let parts: Vec<&str> = t.split(':').collect();
        let (source, target, mode) = match parts.as_slice() {
            [target] => (None, *target, None),
            [source, target] => (Some(*source), *target, None),
            [source, target, mode] => (Some(*source), *target, Some(*mode)),
            _ => {
                self.err(
                    item.pos,
                    format!("volume `{t}`: write `[SOURCE:]TARGET[:MODE]`"),
                );
                return None;
            }
        };
        if !target.starts_with('/') {
            self.err(
                item.pos,
                format!(
                    "volume `{t}`: the target `{target}` must be an absolute path in the container"
                ),
            );
            return None;
        }
        let kind = match source {
            Some(s) if s.starts_with('/') || s.starts_with('.') || s.starts_with('~') => {
                VolumeKind::Bind
            }
            _ => VolumeKind::Volume,
        };
        let modes: Vec<&str> = mode.map(|m| m.split(',').collect()).unwrap_or_default();
        let read_only = modes.contains(&"ro");
        let rest: Vec<&str> = modes
            .into_iter()
            .filter(|m| *m != "ro" && *m != "rw")
            .collect();
        Some(ServiceVolume {
            kind,
            source: source.map(str::to_owned),
            target: target.to_owned(),
            read_only,
            options: (!rest.is_empty()).then(|| rest.join(",")),
        })
    }

    fn service_networks(&mut self, v: &Node) -> Vec<ServiceNetwork> {
        let mut out = Vec::new();
        match &v.value {
            Value::Seq(items) => {
                for i in items {
                    if let Some(name) = self.text(i) {
                        out.push(ServiceNetwork {
                            name,
                            aliases: Vec::new(),
                            ipv4_address: None,
                        });
                    }
                }
            }
            Value::Map(entries) => {
                for (k, n) in entries {
                    let Some(name) = k.as_str() else { continue };
                    let mut sn = ServiceNetwork {
                        name: name.to_owned(),
                        aliases: Vec::new(),
                        ipv4_address: None,
                    };
                    for (nk, nv) in n.as_map().unwrap_or_default() {
                        match nk.as_str().unwrap_or("") {
                            "aliases" => sn.aliases = self.strings(nv, "aliases"),
                            "ipv4_address" => sn.ipv4_address = self.text(nv),
                            "ipv6_address" | "priority" | "link_local_ips" | "mac_address"
                            | "driver_opts" | "gw_priority" => self.warn(
                                nk.pos,
                                format!(
                                    "`{}` of a service's network is not supported: ignored",
                                    nk.as_str().unwrap_or("")
                                ),
                            ),
                            _ => self.unknown(
                                nk,
                                &["aliases", "ipv4_address"],
                                "in a service's network",
                            ),
                        }
                    }
                    out.push(sn);
                }
            }
            Value::Null => {}
            Value::Scalar { .. } => self.err(v.pos, "`networks` must be a list or a mapping"),
        }
        out
    }

    fn depends_on(&mut self, v: &Node) -> Vec<Dependency> {
        let mut out = Vec::new();
        match &v.value {
            Value::Seq(items) => {
                for i in items {
                    if let Some(service) = self.text(i) {
                        out.push(Dependency {
                            service,
                            condition: Condition::ServiceStarted,
                            required: true,
                        });
                    }
                }
            }
            Value::Map(entries) => {
                for (k, n) in entries {
                    let Some(service) = k.as_str() else { continue };
                    let mut d = Dependency {
                        service: service.to_owned(),
                        condition: Condition::ServiceStarted,
                        required: true,
                    };
                    for (dk, dv) in n.as_map().unwrap_or_default() {
                        match dk.as_str().unwrap_or("") {
                            "condition" => match self.text(dv).as_deref() {
                                Some("service_started") => d.condition = Condition::ServiceStarted,
                                Some("service_healthy") => d.condition = Condition::ServiceHealthy,
                                Some("service_completed_successfully") => {
                                    d.condition = Condition::ServiceCompletedSuccessfully
                                }
                                Some(c) => self.err(dv.pos, format!("condition `{c}`: write `service_started`, `service_healthy` or `service_completed_successfully`")),
                                None => {}
                            },
                            "required" => d.required = self.boolean(dv, "required").unwrap_or(true),
                            "restart" => {}
                            _ => self.unknown(dk, &["condition", "required", "restart"], "in `depends_on`"),
                        }
                    }
                    out.push(d);
                }
            }
            Value::Null => {}
            Value::Scalar { .. } => self.err(v.pos, "`depends_on` must be a list or a mapping"),
        }
        out
    }

    fn healthcheck(&mut self, v: &Node) -> Option<Healthcheck> {
        let Some(entries) = v.as_map() else {
            self.err(v.pos, "`healthcheck` must be a mapping");
            return None;
        };
        let mut h = Healthcheck::default();
        for (k, n) in entries {
            match k.as_str().unwrap_or("") {
                "test" => {
                    h.test = match &n.value {
                        Value::Seq(items) => {
                            let words: Vec<String> =
                                items.iter().filter_map(|i| self.text(i)).collect();
                            match words.first().map(String::as_str) {
                                Some("NONE") => None,
                                Some("CMD") => Some(HealthTest::Cmd(words[1..].to_vec())),
                                Some("CMD-SHELL") => {
                                    Some(HealthTest::CmdShell(words[1..].join(" ")))
                                }
                                _ => {
                                    self.err(
                                        n.pos,
                                        "a list `test` starts with `CMD`, `CMD-SHELL` or `NONE`",
                                    );
                                    None
                                }
                            }
                        }
                        _ => self.text(n).map(HealthTest::CmdShell),
                    }
                }
                "interval" => h.interval = self.duration(n, "healthcheck.interval"),
                "timeout" => h.timeout = self.duration(n, "healthcheck.timeout"),
                "start_period" => h.start_period = self.duration(n, "healthcheck.start_period"),
                "start_interval" => {
                    h.start_interval = self.duration(n, "healthcheck.start_interval")
                }
                "retries" => h.retries = self.uint(n, "healthcheck.retries"),
                "disable" => h.disable = self.boolean(n, "healthcheck.disable").unwrap_or(false),
                _ => self.unknown(
                    k,
                    &[
                        "test",
                        "interval",
                        "timeout",
                        "retries",
                        "start_period",
                        "start_interval",
                        "disable",
                    ],
                    "in `healthcheck`",
                ),
            }
        }
        if h.disable {
            h.test = None;
        }
        Some(h)
    }

    fn update_config(&mut self, v: &Node, what: &str) -> Option<UpdateConfig> {
        let Some(entries) = v.as_map() else {
            self.err(v.pos, format!("`{what}` must be a mapping"));
            return None;
        };
        let mut u = UpdateConfig::default();
        for (k, n) in entries {
            match k.as_str().unwrap_or("") {
                "parallelism" => u.parallelism = self.uint(n, "parallelism"),
                "delay" => u.delay = self.duration(n, &format!("{what}.delay")),
                "monitor" => u.monitor = self.duration(n, &format!("{what}.monitor")),
                "order" => {
                    u.order = match self.text(n).as_deref() {
                        Some("start-first") => Some(Order::StartFirst),
                        Some("stop-first") => Some(Order::StopFirst),
                        Some(o) => {
                            self.err(
                                n.pos,
                                format!("order `{o}`: write `start-first` or `stop-first`"),
                            );
                            None
                        }
                        None => None,
                    }
                }
                "failure_action" => {
                    u.failure_action = match self.text(n).as_deref() {
                        Some("rollback") => Some(FailureAction::Rollback),
                        Some("pause") => Some(FailureAction::Pause),
                        Some("continue") => Some(FailureAction::Continue),
                        Some(o) => {
                            self.err(
                                n.pos,
                                format!(
                                    "failure_action `{o}`: write `rollback`, `pause` or `continue`"
                                ),
                            );
                            None
                        }
                        None => None,
                    }
                }
                "max_failure_ratio" => {
                    u.max_failure_ratio = self.float(n, "max_failure_ratio");
                    if u.max_failure_ratio.is_some_and(|r| r > 1.0) {
                        self.err(n.pos, "`max_failure_ratio` is a ratio from 0 to 1");
                    }
                }
                _ => self.unknown(
                    k,
                    &[
                        "parallelism",
                        "delay",
                        "order",
                        "failure_action",
                        "monitor",
                        "max_failure_ratio",
                    ],
                    &format!("in `{what}`"),
                ),
            }
        }
        Some(u)
    }

    fn resource_spec(&mut self, v: &Node) -> Option<ResourceSpec> {
        let mut r = ResourceSpec::default();
        for (k, n) in v.as_map()? {
            match k.as_str().unwrap_or("") {
                "cpus" => r.cpus = self.float(n, "cpus"),
                "memory" => {
                    let t = self.text(n)?;
                    match parse_bytes(&t) {
                        Some(b) => r.memory = Some(b),
                        None => self.err(n.pos, format!("memory `{t}`: write e.g. `512M`, `1G`")),
                    }
                }
                "pids" => r.pids = self.uint(n, "pids").map(i64::from),
                "devices" | "generic_resources" => self.warn(
                    k.pos,
                    format!(
                        "`{}` of `deploy.resources` is not supported: ignored",
                        k.as_str().unwrap_or("")
                    ),
                ),
                _ => self.unknown(k, &["cpus", "memory", "pids"], "in `deploy.resources`"),
            }
        }
        Some(r)
    }

    fn deploy(&mut self, v: &Node) -> Deploy {
        let mut d = Deploy::default();
        let Some(entries) = v.as_map() else {
            if !v.is_null() {
                self.err(v.pos, "`deploy` must be a mapping");
            }
            return d;
        };
        for (k, n) in entries {
            match k.as_str().unwrap_or("") {
                "mode" => {
                    d.mode = self.text(n);
                    if let Some(m) = &d.mode
                        && !["replicated", "global", "replicated-job", "global-job"]
                            .contains(&m.as_str())
                    {
                        self.err(
                            n.pos,
                            format!("deploy mode `{m}`: write `replicated` or `global`"),
                        );
                    }
                }
                "replicas" => d.replicas = self.uint(n, "replicas"),
                "labels" => d.labels = self.pairs(n, "deploy.labels"),
                "update_config" => d.update_config = self.update_config(n, "update_config"),
                "rollback_config" => d.rollback_config = self.update_config(n, "rollback_config"),
                "resources" => {
                    let mut res = Resources::default();
                    for (rk, rv) in n.as_map().unwrap_or_default() {
                        match rk.as_str().unwrap_or("") {
                            "limits" => res.limits = self.resource_spec(rv),
                            "reservations" => res.reservations = self.resource_spec(rv),
                            _ => self.unknown(
                                rk,
                                &["limits", "reservations"],
                                "in `deploy.resources`",
                            ),
                        }
                    }
                    d.resources = Some(res);
                }
                "restart_policy" => {
                    let mut rp = RestartPolicy::default();
                    for (rk, rv) in n.as_map().unwrap_or_default() {
                        match rk.as_str().unwrap_or("") {
                            "condition" => {
                                rp.condition = self.text(rv);
                                if let Some(c) = &rp.condition
                                    && !["none", "on-failure", "any"].contains(&c.as_str())
                                {
                                    self.err(rv.pos, format!("restart condition `{c}`: write `none`, `on-failure` or `any`"));
                                }
                            }
                            "delay" => rp.delay = self.duration(rv, "restart_policy.delay"),
                            "window" => rp.window = self.duration(rv, "restart_policy.window"),
                            "max_attempts" => rp.max_attempts = self.uint(rv, "max_attempts"),
                            _ => self.unknown(
                                rk,
                                &["condition", "delay", "max_attempts", "window"],
                                "in `restart_policy`",
                            ),
                        }
                    }
                    d.restart_policy = Some(rp);
                }
                "placement" => {
                    // Kept for Swarm; interpolated like any value.
                    d.placement = Some(self.json(n));
                }
                "endpoint_mode" => d.endpoint_mode = self.text(n),
                _ => self.unknown(k, DEPLOY_KEYS, "in `deploy`"),
            }
        }
        d
    }

    /// A subtree as JSON with its strings interpolated.
    fn json(&mut self, n: &Node) -> serde_json::Value {
        match &n.value {
            Value::Scalar { text, quoted } if text.contains('$') => {
                let (s, _) = self.interpolate(n, text);
                let node = Node {
                    pos: n.pos,
                    value: Value::Scalar {
                        text: s,
                        quoted: *quoted,
                    },
                };
                node.to_json()
            }
            Value::Seq(items) => {
                serde_json::Value::Array(items.iter().map(|i| self.json(i)).collect())
            }
            Value::Map(entries) => {
                let mut m = serde_json::Map::new();
                for (k, v) in entries {
                    let key = k.as_str().unwrap_or("").to_owned();
                    let val = self.json(v);
                    m.entry(key).or_insert(val);
                }
                serde_json::Value::Object(m)
            }
            _ => n.to_json(),
        }
    }

    fn file_refs(&mut self, v: &Node, what: &str) -> Vec<FileRef> {
        let mut out = Vec::new();
        let Some(items) = v.as_seq() else {
            if !v.is_null() {
                self.err(v.pos, format!("`{what}` must be a list"));
            }
            return out;
        };
        for i in items {
            if i.as_map().is_some() {
                let Some(source) = i.get("source").and_then(|n| self.text(n)) else {
                    self.err(
                        i.pos,
                        format!("a long-form entry of `{what}` needs `source`"),
                    );
                    continue;
                };
                let mut r = FileRef {
                    source,
                    target: None,
                    uid: None,
                    gid: None,
                    mode: None,
                };
                for (k, n) in i.as_map().unwrap_or_default() {
                    match k.as_str().unwrap_or("") {
                        "source" => {}
                        "target" => r.target = self.text(n),
                        "uid" => r.uid = self.text(n),
                        "gid" => r.gid = self.text(n),
                        "mode" => {
                            let t = self.text(n).unwrap_or_default();
                            let parsed = match t
                                .strip_prefix("0o")
                                .or_else(|| t.strip_prefix('0').filter(|s| !s.is_empty()))
                            {
                                Some(oct) => u32::from_str_radix(oct, 8).ok(),
                                None => t.parse().ok(),
                            };
                            match parsed {
                                Some(m) => r.mode = Some(m),
                                None => self.err(
                                    n.pos,
                                    format!("mode `{t}` is not a file mode (e.g. 0440)"),
                                ),
                            }
                        }
                        _ => self.unknown(
                            k,
                            &["source", "target", "uid", "gid", "mode"],
                            &format!("in `{what}`"),
                        ),
                    }
                }
                out.push(r);
            } else if let Some(source) = self.text(i) {
                out.push(FileRef {
                    source,
                    target: None,
                    uid: None,
                    gid: None,
                    mode: None,
                });
            }
        }
        out
    }

    fn top_networks(&mut self, v: &Node) -> Vec<Network> {
        let mut out = Vec::new();
        for (k, n) in v.as_map().unwrap_or_default() {
            let Some(name) = k.as_str() else { continue };
            let mut net = Network {
                name: name.to_owned(),
                ..Network::default()
            };
            for (nk, nv) in n.as_map().unwrap_or_default() {
                match nk.as_str().unwrap_or("") {
                    "driver" => net.driver = self.text(nv),
                    "driver_opts" => net.driver_opts = self.pairs(nv, "driver_opts"),
                    "external" => net.external = self.external(nv, &mut net.engine_name),
                    "name" => net.engine_name = self.text(nv),
                    "attachable" => {
                        net.attachable = self.boolean(nv, "attachable").unwrap_or(false)
                    }
                    "internal" => net.internal = self.boolean(nv, "internal").unwrap_or(false),
                    "labels" => net.labels = self.pairs(nv, "labels"),
                    "ipam" | "enable_ipv6" | "enable_ipv4" => self.warn(
                        nk.pos,
                        format!(
                            "`{}` of a network is not supported: ignored",
                            nk.as_str().unwrap_or("")
                        ),
                    ),
                    k2 if k2.starts_with("x-") => {}
                    _ => self.unknown(
                        nk,
                        &[
                            "driver",
                            "driver_opts",
                            "external",
                            "name",
                            "attachable",
                            "internal",
                            "labels",
                        ],
                        &format!("in network `{name}`"),
                    ),
                }
            }
            out.push(net);
        }
        out
    }

    /// `external: true`, or the legacy `external: {name: N}`.
    fn external(&mut self, v: &Node, name: &mut Option<String>) -> bool {
        if v.as_map().is_some() {
            if let Some(n) = v.get("name") {
                *name = self.text(n);
            }
            return true;
        }
        self.boolean(v, "external").unwrap_or(false)
    }

    fn top_volumes(&mut self, v: &Node) -> Vec<Volume> {
        let mut out = Vec::new();
        for (k, n) in v.as_map().unwrap_or_default() {
            let Some(name) = k.as_str() else { continue };
            let mut vol = Volume {
                name: name.to_owned(),
                ..Volume::default()
            };
            for (vk, vv) in n.as_map().unwrap_or_default() {
                match vk.as_str().unwrap_or("") {
                    "driver" => vol.driver = self.text(vv),
                    "driver_opts" => vol.driver_opts = self.pairs(vv, "driver_opts"),
                    "external" => vol.external = self.external(vv, &mut vol.engine_name),
                    "name" => vol.engine_name = self.text(vv),
                    "labels" => vol.labels = self.pairs(vv, "labels"),
                    k2 if k2.starts_with("x-") => {}
                    _ => self.unknown(
                        vk,
                        &["driver", "driver_opts", "external", "name", "labels"],
                        &format!("in volume `{name}`"),
                    ),
                }
            }
            out.push(vol);
        }
        out
    }

    fn top_secrets(&mut self, v: &Node, what: &str) -> Vec<SecretDef> {
        let mut out = Vec::new();
        for (k, n) in v.as_map().unwrap_or_default() {
            let Some(name) = k.as_str() else { continue };
            let mut s = SecretDef {
                name: name.to_owned(),
                ..SecretDef::default()
            };
            let mut sources = 0;
            for (sk, sv) in n.as_map().unwrap_or_default() {
                match sk.as_str().unwrap_or("") {
                    "file" => {
                        s.file = self.text(sv);
                        sources += 1;
                    }
                    "environment" => {
                        s.environment = self.text(sv);
                        sources += 1;
                    }
                    "content" if what == "config" => {
                        s.content = self.text(sv);
                        sources += 1;
                    }
                    "external" => {
                        s.external = self.external(sv, &mut s.engine_name);
                        if s.external {
                            sources += 1;
                        }
                    }
                    "name" => s.engine_name = self.text(sv),
                    "labels" | "driver" | "driver_opts" | "template_driver" => {}
                    k2 if k2.starts_with("x-") => {}
                    _ => self.unknown(
                        sk,
                        &["file", "environment", "external", "name"],
                        &format!("in {what} `{name}`"),
                    ),
                }
            }
            if sources != 1 {
                self.err(
                    k.pos,
                    format!("{what} `{name}` needs exactly one of `file`, `environment` or `external: true`"),
                );
            }
            out.push(s);
        }
        out
    }

    fn x_slipway(&mut self, v: &Node) -> Option<XSlipway> {
        let Some(entries) = v.as_map() else {
            self.err(v.pos, "`x-slipway` must be a mapping");
            return None;
        };
        let mut x = XSlipway::default();
        for (k, n) in entries {
            match k.as_str().unwrap_or("") {
                "strategy" => {
                    x.strategy = match self.text(n).as_deref() {
                        Some("rolling") => Some(Strategy::Rolling),
                        Some("blue-green") => Some(Strategy::BlueGreen),
                        Some("canary") => Some(Strategy::Canary),
                        Some(s) => {
                            self.err(
                                n.pos,
                                format!(
                                    "strategy `{s}`: write `rolling`, `blue-green` or `canary`"
                                ),
                            );
                            None
                        }
                        None => None,
                    }
                }
                "steps" => {
                    for step in n.as_seq().unwrap_or_default() {
                        let Some(w) = step.get("weight") else {
                            self.err(
                                step.pos,
                                "a canary step needs `weight` (percent of requests)",
                            );
                            continue;
                        };
                        let Some(weight) = self.uint(w, "weight") else {
                            continue;
                        };
                        if weight == 0 || weight > 100 {
                            self.err(w.pos, "`weight` is a percentage from 1 to 100");
                            continue;
                        }
                        let pause = step.get("pause").and_then(|p| self.duration(p, "pause"));
                        for (sk, _) in step.as_map().unwrap_or_default() {
                            if !matches!(sk.as_str(), Some("weight" | "pause")) {
                                self.unknown(sk, &["weight", "pause"], "in a canary step");
                            }
                        }
                        x.steps.push(CanaryStep { weight, pause });
                    }
                }
                "bake" => x.bake = self.duration(n, "bake"),
                "keep_old" => x.keep_old = self.duration(n, "keep_old"),
                "logs" => x.logs = Some(self.x_logs(n)),
                "max_error_rate" => {
                    x.max_error_rate = self.float(n, "max_error_rate");
                    if x.max_error_rate.is_some_and(|r| r > 1.0) {
                        self.err(
                            n.pos,
                            "`max_error_rate` is a ratio from 0 to 1 (0.05 is 5%)",
                        );
                    }
                }
                "route" => {
                    let mut r = XRoute::default();
                    for (rk, rv) in rv_map(n) {
                        match rk.as_str().unwrap_or("") {
                            "host" => r.host = self.text(rv),
                            "path" => r.path = self.text(rv),
                            "port" => {
                                r.port = self.uint(rv, "port").and_then(|p| {
                                    let p = u16::try_from(p).ok().filter(|p| *p > 0);
                                    if p.is_none() {
                                        self.err(rv.pos, "`port` must be from 1 to 65535");
                                    }
                                    p
                                })
                            }
                            "tls" => {
                                r.tls = match self.text(rv).as_deref() {
                                    Some("acme") => Some(true),
                                    Some("none") => Some(false),
                                    Some(t) => {
                                        self.err(
                                            rv.pos,
                                            format!("tls `{t}`: write `acme` or `none`"),
                                        );
                                        None
                                    }
                                    None => None,
                                }
                            }
                            _ => self.unknown(
                                rk,
                                &["host", "path", "port", "tls"],
                                "in `x-slipway.route`",
                            ),
                        }
                    }
                    x.route = Some(r);
                }
                _ => self.unknown(
                    k,
                    &[
                        "strategy",
                        "steps",
                        "bake",
                        "max_error_rate",
                        "route",
                        "keep_old",
                        "logs",
                    ],
                    "in `x-slipway`",
                ),
            }
        }
        if x.strategy != Some(Strategy::Canary) && !x.steps.is_empty() {
            self.warn(v.pos, "`steps` are for `strategy: canary`: ignored");
        }
        Some(x)
    }

    fn x_logs(&mut self, v: &Node) -> XLogs {
        let mut logs = XLogs::default();
        if v.as_map().is_none() {
            self.err(v.pos, "`x-slipway.logs` must be a mapping");
            return logs;
        }
        for (k, n) in rv_map(v) {
            match k.as_str().unwrap_or("") {
                "multiline" => {
                    logs.multiline = self.text(n);
                    if let Some(Err(e)) = logs.multiline.as_deref().map(regex::Regex::new) {
                        self.err(
                            n.pos,
                            format!("`multiline` is not a regular expression: {e}"),
                        );
                        logs.multiline = None;
                    }
                }
                "multiline_timeout" => {
                    logs.multiline_timeout = self.duration(n, "multiline_timeout")
                }
                "json" => logs.json = self.boolean(n, "json").unwrap_or(false),
                _ => self.unknown(
                    k,
                    &["multiline", "multiline_timeout", "json"],
                    "in `x-slipway.logs`",
                ),
            }
        }
        logs
    }

    /// References between parts of the file: networks, volumes, secrets, dependencies.
    fn check_references(&mut self, c: &Compose) {
        let names: BTreeSet<&str> = c.services.iter().map(|s| s.name.as_str()).collect();
        for s in &c.services {
            for d in &s.depends_on {
                if !names.contains(d.service.as_str()) {
                    self.err(
                        s.pos,
                        format!(
                            "service `{}` depends on `{}`, which is not a service of this file",
                            s.name, d.service
                        ),
                    );
                }
            }
            for n in &s.networks {
                if n.name != "default" && !c.networks.iter().any(|t| t.name == n.name) {
                    self.err(s.pos, format!("service `{}` uses network `{}`, which is not declared under the top-level `networks:`", s.name, n.name));
                }
            }
            for v in &s.volumes {
                if v.kind == VolumeKind::Volume
                    && let Some(src) = &v.source
                    && !c.volumes.iter().any(|t| &t.name == src)
                {
                    self.err(s.pos, format!("service `{}` mounts volume `{src}`, which is not declared under the top-level `volumes:`", s.name));
                }
            }
            for r in &s.secrets {
                if !c.secrets.iter().any(|t| t.name == r.source) {
                    self.err(s.pos, format!("service `{}` uses secret `{}`, which is not declared under the top-level `secrets:`", s.name, r.source));
                }
            }
            for r in &s.configs {
                if !c.configs.iter().any(|t| t.name == r.source) {
                    self.err(s.pos, format!("service `{}` uses config `{}`, which is not declared under the top-level `configs:`", s.name, r.source));
                }
            }
            if s.container_name.is_some() && s.deploy.replicas.is_some_and(|r| r > 1) {
                self.warn(s.pos, format!("service `{}`: `container_name` with {} replicas would clash in Compose; Slipway names containers itself", s.name, s.deploy.replicas.unwrap_or(0)));
            }
        }
    }
}

fn rv_map(n: &Node) -> &[(Node, Node)] {
    n.as_map().unwrap_or_default()
}

/// The value a missing required variable reads as in lint: its name in lower case.
fn placeholder(name: &str) -> String {
    name.to_ascii_lowercase().replace('_', "-")
}

/// `80` or `8000-8002`.
pub(crate) fn port_range(t: &str) -> Result<PortRange, String> {
    let t = t.trim();
    let one = |s: &str| match s.trim().parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(format!("`{s}` is not a port (1-65535)")),
    };
    match t.split_once('-') {
        None => Ok(PortRange::single(one(t)?)),
        Some((a, b)) => {
            let (start, end) = (one(a)?, one(b)?);
            if end < start {
                return Err(format!("`{t}` is not a range (the end is below the start)"));
            }
            Ok(PortRange { start, end })
        }
    }
}

/// `512M`, `1g`, `1.5GB`, `1024` (bytes).
fn parse_bytes(t: &str) -> Option<u64> {
    let t = t.trim().to_ascii_lowercase();
    let num_len = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let n: f64 = t[..num_len].parse().ok()?;
    let unit = t[num_len..].trim().trim_end_matches('b');
    let scale: f64 = match unit {
        "" => 1.0,
        "k" => 1024.0,
        "m" => 1024.0 * 1024.0,
        "g" => 1024.0 * 1024.0 * 1024.0,
        "t" => 1024f64.powi(4),
        _ => return None,
    };
    let v = n * scale;
    (v.is_finite() && (0.0..1.8e19).contains(&v)).then_some(v as u64)
}

/// Positions of keys, for messages about a key.
trait KeyPos {
    fn get_key_pos(&self, key: &str) -> Option<Pos>;
}

impl KeyPos for Node {
    fn get_key_pos(&self, key: &str) -> Option<Pos> {
        self.as_map()?
            .iter()
            .find(|(k, _)| k.as_str() == Some(key))
            .map(|(k, _)| k.pos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn referenced_vars_sees_nested_defaults() {
        assert_eq!(referenced_vars("a${B:-$C}$$D$E"), ["B", "C", "E"]);
    }

    #[test]
    fn bytes() {
        assert_eq!(parse_bytes("512M"), Some(512 * 1024 * 1024));
        assert_eq!(parse_bytes("1gb"), Some(1024 * 1024 * 1024));
        assert_eq!(parse_bytes("x"), None);
    }
}
