//! Reading the YAML tree into the [`crate::model`], for both Drone formats.
//!
//! The reader never stops at the first problem: it records a [`Diagnostic`] and goes on,
//! so `slipway lint` shows everything at once. Errors mean the file cannot run as written;
//! warnings (unknown keys, keys Slipway ignores) mean it runs but maybe not as the author
//! thinks.

use crate::diagnostic::Diagnostic;
use crate::glob;
use crate::model::*;
use crate::plan::{PipelineType, PullPolicy, SecretEnv};
use crate::yaml::{self, Node, Pos, Value};

/// Parses an already-substituted pipeline file.
pub fn parse(text: &str) -> (Config, Vec<Diagnostic>) {
    let (documents, problems) = yaml::load(text);
    let mut reader = Reader::default();
    for p in problems {
        if p.fatal {
            reader.diags.push(Diagnostic::error(p.pos, p.message));
        } else {
            reader.diags.push(Diagnostic::warning(p.pos, p.message));
        }
    }
    let mut config = Config::default();
    let is_legacy = documents.len() == 1
        && documents
            .first()
            .is_some_and(|d| d.root.get("pipeline").is_some() && d.root.get("kind").is_none());
    if is_legacy {
        config.format = Format::Legacy;
        if let Some(doc) = documents.first() {
            let (pipeline, matrix) = reader.legacy(&doc.root);
            config.matrix = matrix;
            config
                .documents
                .push(ConfigDocument::Pipeline(Box::new(pipeline)));
        }
    } else {
        for doc in &documents {
            if let Some(d) = reader.document(doc) {
                config.documents.push(d);
            }
        }
        if documents.is_empty() && !reader.diags.iter().any(Diagnostic::is_error) {
            reader.diags.push(Diagnostic::error(
                Pos { line: 1, col: 1 },
                "the file has no pipeline",
            ));
        }
    }
    (config, reader.diags)
}

#[derive(Default)]
struct Reader {
    diags: Vec<Diagnostic>,
}

const PIPELINE_KEYS: &[&str] = &[
    "kind",
    "type",
    "name",
    "platform",
    "node",
    "workspace",
    "clone",
    "environment",
    "steps",
    "services",
    "volumes",
    "trigger",
    "depends_on",
    "timeout",
];
/// Drone keys Slipway accepts but does not act on (other runner types, hosted features).
const PIPELINE_KEYS_IGNORED: &[&str] = &[
    "concurrency",
    "image_pull_secrets",
    "pool",
    "server",
    "version",
    "metadata",
    "spec",
];

const STEP_KEYS: &[&str] = &[
    "name",
    "image",
    "commands",
    "entrypoint",
    "command",
    "environment",
    "settings",
    "when",
    "depends_on",
    "detach",
    "privileged",
    "volumes",
    "pull",
    "failure",
    "user",
    "timeout",
];
const STEP_KEYS_IGNORED: &[&str] = &[
    "ports",
    "network_mode",
    "shm_size",
    "dns",
    "dns_search",
    "extra_hosts",
    "resources",
    "devices",
    "mem_limit",
    "cpu_limit",
    "working_dir",
    "group",
];

/// Keys of a pipeline volume: its name and one kind (`cache` is a Slipway addition).
const VOLUME_KEYS: &[&str] = &["name", "temp", "host", "cache"];

const CONDITION_KEYS: &[&str] = &[
    "branch", "event", "ref", "repo", "status", "target", "instance", "cron", "action", "paths",
];

/// Legacy (0.8) container keys Slipway ignores; any other unknown key is a plugin setting.
const LEGACY_STEP_KEYS_IGNORED: &[&str] = &[
    "network_mode",
    "networks",
    "shm_size",
    "dns",
    "dns_search",
    "extra_hosts",
    "devices",
    "mem_limit",
    "memswap_limit",
    "cpu_quota",
    "cpu_shares",
    "cpuset",
    "tmpfs",
    "labels",
    "ports",
    "working_dir",
    "oom_kill_disable",
    "isolation",
];
const LEGACY_TOP_KEYS: &[&str] = &[
    "pipeline",
    "services",
    "clone",
    "workspace",
    "branches",
    "matrix",
    "platform",
    "labels",
    "depends_on",
];

impl Reader {
    fn error(&mut self, pos: Pos, msg: impl Into<String>) {
        self.diags.push(Diagnostic::error(pos, msg));
    }

    fn warn(&mut self, pos: Pos, msg: impl Into<String>) {
        self.diags.push(Diagnostic::warning(pos, msg));
    }

    fn map<'a>(&mut self, node: &'a Node, what: &str) -> &'a [(Node, Node)] {
        match &node.value {
            Value::Map(entries) => entries,
            Value::Null => &[],
            _ => {
                self.error(
                    node.pos,
                    format!("{what} must be a mapping, found {}", node.kind_name()),
                );
                &[]
            }
        }
    }

    fn key<'a>(&mut self, key: &'a Node) -> Option<&'a str> {
        match key.as_str() {
            Some(k) => Some(k),
            None => {
                self.warn(
                    key.pos,
                    format!("a key must be text, found {}", key.kind_name()),
                );
                None
            }
        }
    }

    fn string(&mut self, node: &Node, what: &str) -> Option<String> {
        match &node.value {
            Value::Scalar { text, .. } => Some(text.clone()),
            Value::Null => None,
            _ => {
                self.error(
                    node.pos,
                    format!("{what} must be text, found {}", node.kind_name()),
                );
                None
            }
        }
    }

    fn boolean(&mut self, node: &Node, what: &str) -> bool {
        match node.as_str() {
            Some("true" | "True" | "TRUE" | "yes" | "on") => true,
            Some("false" | "False" | "FALSE" | "no" | "off") => false,
            _ if node.is_null() => false,
            _ => {
                self.error(node.pos, format!("{what} must be true or false"));
                false
            }
        }
    }

    /// A scalar or a list of scalars.
    fn string_list(&mut self, node: &Node, what: &str) -> Vec<String> {
        match &node.value {
            Value::Null => Vec::new(),
            Value::Scalar { text, .. } => vec![text.clone()],
            Value::Seq(items) => items
                .iter()
                .filter_map(|item| match &item.value {
                    Value::Scalar { text, .. } => Some(text.clone()),
                    Value::Null => None,
                    _ => {
                        self.error(
                            item.pos,
                            format!("{what} must be a list of text, found {}", item.kind_name()),
                        );
                        None
                    }
                })
                .collect(),
            Value::Map(_) => {
                self.error(node.pos, format!("{what} must be text or a list of text"));
                Vec::new()
            }
        }
    }

    fn named_list(&mut self, node: &Node, what: &str) -> Vec<Named> {
        match &node.value {
            Value::Scalar { text, .. } => vec![Named {
                name: text.clone(),
                pos: node.pos,
            }],
            Value::Seq(items) => items
                .iter()
                .filter_map(|item| {
                    self.string(item, what).map(|name| Named {
                        name,
                        pos: item.pos,
                    })
                })
                .collect(),
            Value::Null => Vec::new(),
            Value::Map(_) => {
                self.error(node.pos, format!("{what} must be a list of names"));
                Vec::new()
            }
        }
    }

    fn duration(&mut self, node: &Node, what: &str) -> Option<u64> {
        let text = self.string(node, what)?;
        match parse_duration(&text) {
            Some(secs) => Some(secs),
            None => {
                self.error(
                    node.pos,
                    format!(
                        "{what}: `{text}` is not a duration (use e.g. `90`, `30s`, `10m`, `1h30m`)"
                    ),
                );
                None
            }
        }
    }

    fn environment(&mut self, node: &Node) -> Vec<(String, EnvValue)> {
        let mut env = Vec::new();
        match &node.value {
            // Legacy `- KEY=value` list.
            Value::Seq(items) => {
                for item in items {
                    if let Some(text) = self.string(item, "an environment entry") {
                        match text.split_once('=') {
                            Some((k, v)) => env.push((k.to_owned(), EnvValue::Plain(v.to_owned()))),
                            None => self.error(
                                item.pos,
                                format!("environment entry `{text}` must be KEY=value"),
                            ),
                        }
                    }
                }
            }
            _ => {
                for (k, v) in self.map(node, "environment") {
                    let Some(name) = self.key(k) else { continue };
                    if let Some(value) = self.env_value(v, name) {
                        env.push((name.to_owned(), value));
                    }
                }
            }
        }
        env
    }

    fn env_value(&mut self, node: &Node, name: &str) -> Option<EnvValue> {
        match &node.value {
            Value::Null => Some(EnvValue::Plain(String::new())),
            Value::Scalar { text, .. } => Some(EnvValue::Plain(text.clone())),
            Value::Map(_) => match node.get("from_secret") {
                Some(secret) => self.string(secret, "from_secret").map(EnvValue::Secret),
                None => {
                    self.error(
                        node.pos,
                        format!("environment `{name}` must be text or `from_secret: NAME`"),
                    );
                    None
                }
            },
            Value::Seq(_) => {
                self.error(
                    node.pos,
                    format!("environment `{name}` must be text, found a list"),
                );
                None
            }
        }
    }

    fn setting(&mut self, node: &Node) -> Option<SettingValue> {
        if let Some(secret) = node.get("from_secret")
            && node.as_map().is_some_and(|m| m.len() == 1)
        {
            return self.string(secret, "from_secret").map(SettingValue::Secret);
        }
        Some(SettingValue::Plain(node.to_json()))
    }

    fn condition(&mut self, node: &Node, key: &str) -> Condition {
        let mut cond = Condition::default();
        match &node.value {
            Value::Map(entries) => {
                for (k, v) in entries {
                    match k.as_str() {
                        Some("include") => cond.include = self.string_list(v, key),
                        Some("exclude") => cond.exclude = self.string_list(v, key),
                        _ => self.warn(
                            k.pos,
                            format!("unknown key `{}` in condition `{key}` (expected include or exclude)", k.as_str().unwrap_or("?")),
                        ),
                    }
                }
            }
            _ => cond.include = self.string_list(node, key),
        }
        for (pattern, pos) in cond
            .include
            .iter()
            .chain(cond.exclude.iter())
            .map(|p| (p.clone(), node.pos))
            .collect::<Vec<_>>()
        {
            if let Err(msg) = glob::check_glob(&pattern) {
                self.error(
                    pos,
                    format!("condition `{key}`: bad pattern `{pattern}`: {msg}"),
                );
            }
        }
        if key == "event" {
            for ev in cond.include.iter().chain(&cond.exclude) {
                if !KNOWN_EVENTS.contains(&ev.as_str()) {
                    self.warn(
                        node.pos,
                        format!("unknown event `{ev}` (known: {})", KNOWN_EVENTS.join(", ")),
                    );
                }
            }
        }
        if key == "status" {
            // Drone 0.8's `changed` (status differs from the previous build) needs build
            // history; run on both outcomes rather than silently never.
            let mut changed = false;
            for list in [&mut cond.include, &mut cond.exclude] {
                let before = list.len();
                list.retain(|st| st != "changed");
                if list.len() != before {
                    changed = true;
                }
            }
            if changed {
                self.warn(
                    node.pos,
                    "status `changed` is not supported: the step runs on success and on failure",
                );
                cond.include.push("success".to_owned());
                cond.include.push("failure".to_owned());
            }
            for st in cond.include.iter().chain(&cond.exclude) {
                if st != "success" && st != "failure" {
                    self.error(
                        node.pos,
                        format!("status must be `success` or `failure`, not `{st}`"),
                    );
                }
            }
        }
        cond
    }

    fn conditions(&mut self, node: &Node, what: &str, legacy: bool) -> Conditions {
        let mut c = Conditions::default();
        for (k, v) in self.map(node, what) {
            let Some(key) = self.key(k) else { continue };
            match key {
                "branch" => c.branch = self.condition(v, key),
                "event" => {
                    c.event = self.condition(v, key);
                    // Drone 0.8 called promotion `deployment`.
                    for e in c.event.include.iter_mut().chain(c.event.exclude.iter_mut()) {
                        if e == "deployment" {
                            *e = "promote".to_owned();
                        }
                    }
                }
                "ref" => c.reference = self.condition(v, key),
                "repo" => c.repo = self.condition(v, key),
                "status" => c.status = self.condition(v, key),
                "target" => c.target = self.condition(v, key),
                "environment" if legacy => c.target = self.condition(v, key),
                "instance" => c.instance = self.condition(v, key),
                "cron" => c.cron = self.condition(v, key),
                "action" => c.action = self.condition(v, key),
                "paths" => c.paths = self.condition(v, key),
                "matrix" => {
                    for (mk, mv) in self.map(v, "matrix condition") {
                        if let (Some(mk), Some(mv)) = (mk.as_str(), mv.as_str()) {
                            c.matrix.push((mk.to_owned(), mv.to_owned()));
                        }
                    }
                }
                "platform" | "local" if legacy => {}
                _ => self.warn(
                    k.pos,
                    format!(
                        "unknown condition `{key}` in {what} (known: {})",
                        CONDITION_KEYS.join(", ")
                    ),
                ),
            }
        }
        c
    }

    fn pull(&mut self, node: &Node) -> PullPolicy {
        match node.as_str() {
            Some("always" | "true") => PullPolicy::Always,
            Some("never") => PullPolicy::Never,
            Some("if-not-exists" | "default" | "false") => PullPolicy::IfNotExists,
            _ => {
                self.error(
                    node.pos,
                    "pull must be `always`, `never` or `if-not-exists`",
                );
                PullPolicy::IfNotExists
            }
        }
    }

    fn command_list(&mut self, node: &Node, what: &str) -> Vec<String> {
        match &node.value {
            Value::Seq(items) => items
                .iter()
                .filter_map(|item| match &item.value {
                    Value::Scalar { text, .. } => Some(text.clone()),
                    Value::Null => None,
                    // `- echo a: b` is a mapping to YAML; say how to fix it.
                    Value::Map(_) => {
                        self.error(item.pos, format!("{what}: this entry is a mapping to YAML (a `: ` inside it?); quote the whole command"));
                        None
                    }
                    Value::Seq(_) => {
                        self.error(item.pos, format!("{what}: entries must be text"));
                        None
                    }
                })
                .collect(),
            _ => self.string_list(node, what),
        }
    }

    // ---- Drone 1.x ----

    fn document(&mut self, doc: &yaml::Document) -> Option<ConfigDocument> {
        let root = &doc.root;
        if root.is_null() {
            return None;
        }
        if root.as_map().is_none() {
            self.error(
                doc.pos,
                format!("a document must be a mapping, found {}", root.kind_name()),
            );
            return None;
        }
        let kind = match root.get("kind").and_then(Node::as_str) {
            Some(kind) => kind.to_owned(),
            None => {
                self.error(
                    root.pos,
                    "document has no `kind` (expected `kind: pipeline`)",
                );
                return None;
            }
        };
        if kind != "pipeline" {
            return Some(ConfigDocument::Other {
                kind,
                pos: root.pos,
                node: root.clone(),
            });
        }
        Some(ConfigDocument::Pipeline(Box::new(self.pipeline(root))))
    }

    fn pipeline(&mut self, root: &Node) -> Pipeline {
        let mut p = empty_pipeline(root.pos);
        for (k, v) in self.map(root, "a pipeline") {
            let Some(key) = self.key(k) else { continue };
            match key {
                "kind" => {}
                "type" => {
                    p.kind = match self.string(v, "type").as_deref() {
                        Some("docker") | None => PipelineType::Docker,
                        Some("exec") => PipelineType::Exec,
                        Some(other) => PipelineType::Other(other.to_owned()),
                    }
                }
                "name" => {
                    if let Some(name) = self.string(v, "name") {
                        p.name = name;
                        p.name_implicit = false;
                    }
                }
                "platform" => p.platform = self.string_map(v, "platform"),
                "node" => p.node = self.string_map(v, "node"),
                "workspace" => p.workspace = self.workspace(v),
                "clone" => {
                    for (ck, cv) in self.map(v, "clone") {
                        match ck.as_str() {
                            Some("disable") => p.clone_disable = self.boolean(cv, "clone.disable"),
                            Some("depth") => p.clone_depth = self.number(cv, "clone.depth"),
                            Some("retries" | "skip_verify" | "trace") => {}
                            _ => self.warn(
                                ck.pos,
                                format!("unknown key `{}` in clone", ck.as_str().unwrap_or("?")),
                            ),
                        }
                    }
                }
                "environment" => p.environment = self.environment(v),
                "steps" => p.steps = self.steps(v, "steps"),
                "services" => p.services = self.steps(v, "services"),
                "volumes" => p.volumes = self.volumes(v),
                "trigger" => p.trigger = self.conditions(v, "trigger", false),
                "depends_on" => p.depends_on = self.named_list(v, "depends_on"),
                "timeout" => p.timeout_secs = self.duration(v, "timeout"),
                _ if PIPELINE_KEYS_IGNORED.contains(&key) => {}
                _ => self.warn(
                    k.pos,
                    format!(
                        "unknown key `{key}` in pipeline `{}`{}",
                        p.name,
                        suggest(key, PIPELINE_KEYS)
                    ),
                ),
            }
        }
        if p.steps.is_empty() && root.get("steps").is_none() {
            self.error(root.pos, format!("pipeline `{}` has no `steps`", p.name));
        }
        p
    }

    fn number(&mut self, node: &Node, what: &str) -> Option<u32> {
        let text = self.string(node, what)?;
        match text.parse() {
            Ok(n) => Some(n),
            Err(_) => {
                self.error(
                    node.pos,
                    format!("{what} must be a whole number, not `{text}`"),
                );
                None
            }
        }
    }

    fn string_map(&mut self, node: &Node, what: &str) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (k, v) in self.map(node, what) {
            if let (Some(k), Some(v)) = (k.as_str(), self.string(v, what)) {
                out.push((k.to_owned(), v));
            }
        }
        out
    }

    fn workspace(&mut self, node: &Node) -> Option<String> {
        let base = node.get("base").and_then(Node::as_str);
        let path = node.get("path").and_then(Node::as_str);
        for (k, _) in self.map(node, "workspace") {
            if !matches!(k.as_str(), Some("base" | "path")) {
                self.warn(
                    k.pos,
                    format!("unknown key `{}` in workspace", k.as_str().unwrap_or("?")),
                );
            }
        }
        match (base, path) {
            (Some(base), Some(path)) if !path.starts_with('/') => {
                Some(format!("{}/{}", base.trim_end_matches('/'), path))
            }
            (_, Some(path)) if path.starts_with('/') => Some(path.to_owned()),
            (None, Some(path)) => Some(format!("/drone/src/{path}")),
            (Some(base), None) => Some(base.to_owned()),
            _ => None,
        }
    }

    fn volumes(&mut self, node: &Node) -> Vec<Volume> {
        let mut out = Vec::new();
        let Some(items) = node.as_seq() else {
            if !node.is_null() {
                self.error(node.pos, "volumes must be a list");
            }
            return out;
        };
        for item in items {
            let name = item.get("name").and_then(Node::as_str);
            let Some(name) = name else {
                self.error(item.pos, "a volume needs a `name`");
                continue;
            };
            let mut vol = Volume {
                pos: item.pos,
                name: name.to_owned(),
                kind: VolumeKind::Temp,
            };
            let mut kinds = 0;
            for (k, v) in self.map(item, "a volume") {
                match k.as_str() {
                    Some("name") => {}
                    Some("temp") => kinds += 1,
                    Some("host") => {
                        kinds += 1;
                        let path = v.get("path").and_then(Node::as_str).map(str::to_owned);
                        if path.is_none() {
                            self.error(v.pos, format!("host volume `{name}` needs `path`"));
                        }
                        vol.kind = VolumeKind::Host(path);
                    }
                    Some("cache") => {
                        kinds += 1;
                        vol.kind = VolumeKind::Cache {
                            key: self.cache_key(v, name),
                        };
                    }
                    Some("claim" | "config_map" | "secret") => {
                        kinds += 1;
                        self.warn(
                            k.pos,
                            format!(
                                "volume `{name}`: `{}` is for Kubernetes; treated as a temp volume",
                                k.as_str().unwrap_or("?")
                            ),
                        );
                    }
                    _ => self.warn(
                        k.pos,
                        format!(
                            "unknown key `{}` in volume `{name}`{}",
                            k.as_str().unwrap_or("?"),
                            suggest(k.as_str().unwrap_or(""), VOLUME_KEYS)
                        ),
                    ),
                }
            }
            if kinds != 1 {
                self.error(
                    item.pos,
                    format!("volume `{name}` must have exactly one of `temp`, `host` or `cache`"),
                );
            }
            out.push(vol);
        }
        out
    }

    /// The body of a `cache:` volume: `{}` (or nothing), or `{key: TEXT}`. An empty key (a
    /// `${VAR}` that was empty) is no key.
    fn cache_key(&mut self, node: &Node, name: &str) -> Option<String> {
        let mut key = None;
        for (k, v) in self.map(node, &format!("cache of volume `{name}`")) {
            match k.as_str() {
                Some("key") => key = self.string(v, &format!("cache key of volume `{name}`")),
                other => {
                    let other = other.unwrap_or("?");
                    let hint = match suggest(other, &["key"]) {
                        hint if hint.is_empty() => " (the only key is `key`)".to_owned(),
                        hint => hint,
                    };
                    self.warn(
                        k.pos,
                        format!("unknown key `{other}` in cache of volume `{name}`{hint}"),
                    );
                }
            }
        }
        key.filter(|k| !k.is_empty())
    }

    fn steps(&mut self, node: &Node, what: &str) -> Vec<Step> {
        let Some(items) = node.as_seq() else {
            if !node.is_null() {
                self.error(
                    node.pos,
                    format!("{what} must be a list of steps, found {}", node.kind_name()),
                );
            }
            return Vec::new();
        };
        items.iter().map(|item| self.step(item, what)).collect()
    }

    fn step(&mut self, node: &Node, what: &str) -> Step {
        let mut s = empty_step(node.pos);
        match node.get("name").map(|n| self.string(n, "name")) {
            Some(Some(name)) => s.name = name,
            _ => self.error(node.pos, format!("a step in `{what}` has no `name`")),
        }
        for (k, v) in self.map(node, "a step") {
            let Some(key) = self.key(k) else { continue };
            match key {
                "name" => {}
                "settings" => {
                    for (sk, sv) in self.map(v, "settings") {
                        let Some(sk) = self.key(sk) else { continue };
                        if let Some(value) = self.setting(sv) {
                            s.settings.push((sk.to_owned(), value));
                        }
                    }
                }
                "depends_on" => s.depends_on = Some(self.named_list(v, "depends_on")),
                _ if self.common_step_key(&mut s, key, v) => {}
                _ if STEP_KEYS_IGNORED.contains(&key) => {
                    self.warn(
                        k.pos,
                        format!(
                            "`{key}` in step `{}` is not supported by Slipway and is ignored",
                            s.name
                        ),
                    );
                }
                _ => self.warn(
                    k.pos,
                    format!(
                        "unknown key `{key}` in step `{}`{}",
                        s.name,
                        suggest(key, STEP_KEYS)
                    ),
                ),
            }
        }
        s
    }

    /// Keys with the same meaning in both formats. Returns false for other keys.
    fn common_step_key(&mut self, s: &mut Step, key: &str, v: &Node) -> bool {
        match key {
            "image" => s.image = self.string(v, "image"),
            "commands" => s.commands = self.command_list(v, "commands"),
            "entrypoint" => s.entrypoint = Some(self.string_list(v, "entrypoint")),
            "command" => s.command = Some(self.string_list(v, "command")),
            "environment" => s.environment = self.environment(v),
            "when" => s.when = self.conditions(v, &format!("when of step `{}`", s.name), false),
            "detach" => s.detach = self.boolean(v, "detach"),
            "privileged" => s.privileged = self.boolean(v, "privileged"),
            "pull" => s.pull = self.pull(v),
            "user" => s.user = self.string(v, "user"),
            "timeout" => s.timeout_secs = self.duration(v, "timeout"),
            "failure" => match v.as_str() {
                Some("ignore") => s.failure_ignore = true,
                Some("fail" | "always") => {}
                _ => self.error(v.pos, "failure must be `ignore` or `fail`"),
            },
            "volumes" => s.volumes = self.mounts(v),
            _ => return false,
        }
        true
    }

    fn mounts(&mut self, node: &Node) -> Vec<Mount> {
        let mut out = Vec::new();
        let Some(items) = node.as_seq() else {
            if !node.is_null() {
                self.error(node.pos, "volumes must be a list");
            }
            return out;
        };
        for item in items {
            match &item.value {
                // Legacy `- /host/path:/container/path[:ro]`.
                Value::Scalar { text, .. } => {
                    let mut parts = text.splitn(3, ':');
                    match (parts.next(), parts.next()) {
                        (Some(host), Some(path)) if !host.is_empty() && !path.is_empty() => out
                            .push(Mount {
                                pos: item.pos,
                                name: host.to_owned(),
                                path: path.to_owned(),
                                host_path: Some(host.to_owned()),
                            }),
                        // `- /tmp`: an anonymous volume for this step, a temp volume to us.
                        (Some(path), None) if path.starts_with('/') => out.push(Mount {
                            pos: item.pos,
                            name: format!("anonymous{}", path.replace('/', "-")),
                            path: path.to_owned(),
                            host_path: None,
                        }),
                        _ => {
                            self.error(item.pos, format!("volume `{text}` must be HOST:CONTAINER"))
                        }
                    }
                }
                Value::Map(_) => {
                    let name = item.get("name").and_then(Node::as_str);
                    let path = item.get("path").and_then(Node::as_str);
                    match (name, path) {
                        (Some(name), Some(path)) => out.push(Mount {
                            pos: item.pos,
                            name: name.to_owned(),
                            path: path.to_owned(),
                            host_path: None,
                        }),
                        _ => self.error(item.pos, "a step volume needs `name` and `path`"),
                    }
                }
                _ => self.error(item.pos, "a step volume must be `{name, path}`"),
            }
        }
        out
    }

    // ---- Drone 0.8 (legacy) ----

    fn legacy(&mut self, root: &Node) -> (Pipeline, Vec<MatrixAxis>) {
        let mut p = empty_pipeline(root.pos);
        let mut matrix = Vec::new();
        for (k, v) in self.map(root, "the file") {
            let Some(key) = self.key(k) else { continue };
            match key {
                "pipeline" => p.steps = self.legacy_steps(v, "pipeline"),
                "services" => p.services = self.legacy_steps(v, "services"),
                "workspace" => p.workspace = self.workspace(v),
                "branches" => p.trigger.branch = self.condition(v, "branches"),
                "platform" => {
                    if let Some(platform) = self.string(v, "platform") {
                        let (os, arch) = platform.split_once('/').unwrap_or((&platform, ""));
                        p.platform.push(("os".to_owned(), os.to_owned()));
                        if !arch.is_empty() {
                            p.platform.push(("arch".to_owned(), arch.to_owned()));
                        }
                    }
                }
                "labels" => p.node = self.string_map(v, "labels"),
                "depends_on" => p.depends_on = self.named_list(v, "depends_on"),
                "clone" => {
                    for (ck, cv) in self.map(v, "clone") {
                        let Some(name) = self.key(ck) else { continue };
                        p.clone_steps.push(name.to_owned());
                        if let Some(depth) = cv.get("depth") {
                            p.clone_depth = self.number(depth, "clone depth");
                        }
                        if cv
                            .get("disable")
                            .is_some_and(|d| d.as_str() == Some("true"))
                        {
                            p.clone_disable = true;
                        }
                    }
                }
                "matrix" => matrix = self.matrix(v),
                _ => self.warn(
                    k.pos,
                    format!(
                        "unknown top-level key `{key}`{}",
                        suggest(key, LEGACY_TOP_KEYS)
                    ),
                ),
            }
        }
        (p, matrix)
    }

    fn matrix(&mut self, node: &Node) -> Vec<MatrixAxis> {
        if node.get("include").is_some() {
            self.warn(
                node.pos,
                "matrix `include` is not supported; the matrix is ignored",
            );
            return Vec::new();
        }
        let mut axes = Vec::new();
        for (k, v) in self.map(node, "matrix") {
            let Some(name) = self.key(k) else { continue };
            // Values stay as written: `1.10` is a Go version, not the float 1.1.
            let values = self.string_list(v, "matrix values");
            axes.push(MatrixAxis {
                name: name.to_owned(),
                values,
            });
        }
        axes
    }

    fn legacy_steps(&mut self, node: &Node, what: &str) -> Vec<Step> {
        let mut steps = Vec::new();
        for (k, v) in self.map(node, what) {
            let Some(name) = self.key(k) else { continue };
            let mut s = empty_step(k.pos);
            s.name = name.to_owned();
            for (sk, sv) in self.map(v, "a step") {
                let Some(key) = self.key(sk) else { continue };
                match key {
                    "secrets" => s.secrets = self.legacy_secrets(sv),
                    "group" => s.group = self.string(sv, "group"),
                    "depends_on" => s.depends_on = Some(self.named_list(sv, "depends_on")),
                    "when" => s.when = self.conditions(sv, &format!("when of step `{name}`"), true),
                    _ if self.common_step_key(&mut s, key, sv) => {}
                    _ if LEGACY_STEP_KEYS_IGNORED.contains(&key) => {
                        self.warn(sk.pos, format!("`{key}` in step `{name}` is not supported by Slipway and is ignored"));
                    }
                    // Drone 0.8: every other key is a plugin setting.
                    _ => {
                        if let Some(value) = self.setting(sv) {
                            s.settings.push((key.to_owned(), value));
                        }
                    }
                }
            }
            steps.push(s);
        }
        steps
    }

    fn legacy_secrets(&mut self, node: &Node) -> Vec<SecretEnv> {
        let mut out = Vec::new();
        for item in node.as_seq().unwrap_or_default() {
            match &item.value {
                Value::Scalar { text, .. } => out.push(SecretEnv {
                    env: text.to_uppercase(),
                    secret: text.clone(),
                }),
                Value::Map(_) => {
                    let source = item.get("source").and_then(Node::as_str);
                    let target = item.get("target").and_then(Node::as_str);
                    match (source, target) {
                        (Some(source), target) => out.push(SecretEnv {
                            env: target.unwrap_or(source).to_uppercase(),
                            secret: source.to_owned(),
                        }),
                        _ => self.error(
                            item.pos,
                            "a secret needs `source` (and optionally `target`)",
                        ),
                    }
                }
                _ => self.error(item.pos, "secrets must be names or `{source, target}`"),
            }
        }
        if node.as_seq().is_none() && !node.is_null() {
            self.error(node.pos, "secrets must be a list");
        }
        out
    }
}

pub(crate) const KNOWN_EVENTS: &[&str] = &[
    "push",
    "pull_request",
    "tag",
    "promote",
    "rollback",
    "cron",
    "custom",
];

fn empty_pipeline(pos: Pos) -> Pipeline {
    Pipeline {
        pos,
        name: "default".to_owned(),
        name_implicit: true,
        kind: PipelineType::Docker,
        platform: Vec::new(),
        node: Vec::new(),
        workspace: None,
        clone_disable: false,
        clone_depth: None,
        clone_steps: Vec::new(),
        environment: Vec::new(),
        steps: Vec::new(),
        services: Vec::new(),
        volumes: Vec::new(),
        trigger: Conditions::default(),
        depends_on: Vec::new(),
        timeout_secs: None,
    }
}

fn empty_step(pos: Pos) -> Step {
    Step {
        pos,
        name: String::new(),
        image: None,
        commands: Vec::new(),
        entrypoint: None,
        command: None,
        environment: Vec::new(),
        settings: Vec::new(),
        secrets: Vec::new(),
        when: Conditions::default(),
        depends_on: None,
        group: None,
        detach: false,
        privileged: false,
        failure_ignore: false,
        volumes: Vec::new(),
        pull: PullPolicy::IfNotExists,
        user: None,
        timeout_secs: None,
    }
}

/// ` (did you mean `x`?)` when a known key is one or two edits away.
fn suggest(key: &str, known: &[&str]) -> String {
    known
        .iter()
        .map(|k| (edit_distance(key, k), k))
        .filter(|(d, _)| *d <= 2)
        .min()
        .map(|(_, k)| format!(" (did you mean `{k}`?)"))
        .unwrap_or_default()
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev.last().copied().unwrap_or(0)
}

/// `90`, `30s`, `10m`, `1h30m` → seconds.
pub fn parse_duration(text: &str) -> Option<u64> {
    let text = text.trim();
    if let Ok(secs) = text.parse::<u64>() {
        return Some(secs);
    }
    let mut total: u64 = 0;
    let mut number = String::new();
    let mut any = false;
    for c in text.chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let n: u64 = number.parse().ok()?;
        number.clear();
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            _ => return None,
        };
        total = total.checked_add(n.checked_mul(unit)?)?;
        any = true;
    }
    (number.is_empty() && any).then_some(total)
}
