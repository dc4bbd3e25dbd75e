//! Compose and stack files, read for what the label readers need: each service's name,
//! labels (list or map form, `deploy.labels` over the service's own), environment,
//! `expose` and `ports`. Values are interpolated as Compose does (`$VAR`, `${VAR}`,
//! `${VAR:-default}`, `${VAR-default}`, `${VAR:?message}`, `${VAR?message}`,
//! `${VAR:+alt}`, `${VAR+alt}`, `$$` for `$`) from the variables given; anchors and `<<`
//! merge keys are resolved by `slipway-yaml`. Nothing else of the file is read here (the
//! deployer has its own reader): this is for `slipway proxy routes-from`.

use std::collections::BTreeMap;

use serde::Serialize;
use slipway_yaml::{Node, Value};

use crate::diagnostic::Diagnostic;
use crate::labels::{PublishedPort, Workload, WorkloadKind, read_all};
use crate::route::Route;
use crate::table::{Conflict, RouteTable};

/// What `slipway proxy routes-from` prints.
#[derive(Debug, Clone, Serialize)]
pub struct RoutesReport {
    pub routes: Vec<Route>,
    pub conflicts: Vec<Conflict>,
    pub diagnostics: Vec<Diagnostic>,
}

/// The routes a compose file's labels and environments say, merged as the table would.
pub fn routes_from(text: &str, file: &str, vars: &BTreeMap<String, String>) -> RoutesReport {
    let (workloads, mut diagnostics) = workloads(text, file, vars);
    let (set, mut more) = read_all(&workloads);
    diagnostics.append(&mut more);
    let table = RouteTable::build([set]);
    RoutesReport {
        routes: table.routes().to_vec(),
        conflicts: table.conflicts().to_vec(),
        diagnostics,
    }
}

/// The services of a compose file as workloads.
pub fn workloads(
    text: &str,
    file: &str,
    vars: &BTreeMap<String, String>,
) -> (Vec<Workload>, Vec<Diagnostic>) {
    let mut r = Reader {
        file,
        vars,
        diags: Vec::new(),
    };
    let (docs, problems) = slipway_yaml::load(text);
    for p in problems {
        let d = if p.fatal {
            Diagnostic::error(p.message)
        } else {
            Diagnostic::warning(p.message)
        };
        r.diags.push(d.at(p.pos).origin(file));
    }
    let mut out = Vec::new();
    let Some(root) = docs.first().map(|d| &d.root) else {
        return (out, r.diags);
    };
    let Some(services) = root.get("services") else {
        if !root.is_null() {
            let d = Diagnostic::error("no `services:` in this file")
                .at(root.pos)
                .origin(file)
                .hint("a compose file of format 1 (services at the top) is not read: put them under `services:`");
            r.diags.push(d);
        }
        return (out, r.diags);
    };
    let Some(entries) = services.as_map() else {
        if !services.is_null() {
            r.err(services, "`services` must be a mapping of name: service");
        }
        return (out, r.diags);
    };
    for (k, svc) in entries {
        let Some(name) = k.as_str() else { continue };
        if svc.as_map().is_none() {
            if !svc.is_null() {
                r.err(svc, &format!("service `{name}` must be a mapping"));
            }
            continue;
        }
        out.push(r.service(name, svc));
    }
    (out, r.diags)
}

struct Reader<'a> {
    file: &'a str,
    vars: &'a BTreeMap<String, String>,
    diags: Vec<Diagnostic>,
}

impl Reader<'_> {
    fn err(&mut self, node: &Node, message: &str) {
        self.diags
            .push(Diagnostic::error(message).at(node.pos).origin(self.file));
    }

    /// A scalar's text, interpolated.
    fn text(&mut self, node: &Node) -> Option<String> {
        match &node.value {
            Value::Scalar { text, .. } => match interpolate(text, self.vars) {
                Ok((s, unset)) => {
                    for v in unset {
                        let d = Diagnostic::warning(format!(
                            "variable `{v}` is not set: it is an empty string"
                        ))
                        .at(node.pos)
                        .origin(self.file)
                        .hint(format!(
                            "set {v} in the environment or pass --env {v}=VALUE"
                        ));
                        self.diags.push(d);
                    }
                    Some(s)
                }
                Err(e) => {
                    self.err(node, &e);
                    None
                }
            },
            Value::Null => Some(String::new()),
            _ => None,
        }
    }

    fn service(&mut self, name: &str, svc: &Node) -> Workload {
        // The service's name, not `container_name`: routes are shown per service, and the
        // name is the one a compose network resolves.
        let mut w = Workload {
            name: name.to_owned(),
            kind: WorkloadKind::Service,
            ..Workload::default()
        };
        if let Some(l) = svc.get("labels") {
            w.labels = self.pairs(l, "labels", false);
        }
        if let Some(l) = svc.get("deploy").and_then(|d| d.get("labels")) {
            for (k, v) in self.pairs(l, "deploy.labels", false) {
                w.labels.insert(k, v);
            }
        }
        if let Some(e) = svc.get("environment") {
            w.environment = self.pairs(e, "environment", true);
        }
        if let Some(items) = svc.get("expose").and_then(Node::as_seq) {
            for item in items {
                if let Some(t) = self.text(item) {
                    match port_range(t.split('/').next().unwrap_or(&t)) {
                        Ok(ports) => w.exposed_ports.extend(ports),
                        Err(e) => self.err(item, &format!("expose `{t}`: {e}")),
                    }
                }
            }
        }
        if let Some(items) = svc.get("ports").and_then(Node::as_seq) {
            for item in items {
                self.port(item, &mut w);
            }
        }
        w
    }

    /// `labels`/`environment` in list (`K=V`) or map form.
    fn pairs(&mut self, node: &Node, what: &str, env: bool) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        match &node.value {
            Value::Seq(items) => {
                for item in items {
                    let Some(t) = self.text(item) else {
                        self.err(item, &format!("an entry of `{what}` must be `KEY=VALUE`"));
                        continue;
                    };
                    match t.split_once('=') {
                        Some((k, v)) => {
                            out.insert(k.trim().to_owned(), v.to_owned());
                        }
                        // `- KEY` alone: from the environment (or an empty label).
                        None if env => {
                            if let Some(v) = self.vars.get(t.trim()) {
                                out.insert(t.trim().to_owned(), v.clone());
                            }
                        }
                        None => {
                            out.insert(t.trim().to_owned(), String::new());
                        }
                    }
                }
            }
            Value::Map(entries) => {
                for (k, v) in entries {
                    let Some(key) = k.as_str() else { continue };
                    if env && v.is_null() {
                        if let Some(val) = self.vars.get(key) {
                            out.insert(key.to_owned(), val.clone());
                        }
                        continue;
                    }
                    match self.text(v) {
                        Some(val) => {
                            out.insert(key.to_owned(), val);
                        }
                        None => self.err(v, &format!("`{what}.{key}` must be a value")),
                    }
                }
            }
            Value::Null => {}
            Value::Scalar { .. } => {
                self.err(node, &format!("`{what}` must be a list or a mapping"))
            }
        }
        out
    }

    fn port(&mut self, item: &Node, w: &mut Workload) {
        if item.as_map().is_some() {
            let target = item.get("target").and_then(|n| self.text(n));
            let Some(target) = target.and_then(|t| t.parse::<u16>().ok()) else {
                self.err(item, "a long-form port needs a numeric `target`");
                return;
            };
            if item.get("protocol").and_then(|n| self.text(n)).as_deref() == Some("udp") {
                return;
            }
            w.exposed_ports.push(target);
            let published = item.get("published").and_then(|n| self.text(n));
            if let Some(p) = published.and_then(|p| p.parse::<u16>().ok()) {
                w.published_ports.push(PublishedPort {
                    target,
                    published: p,
                    host_ip: item.get("host_ip").and_then(|n| self.text(n)),
                });
            }
            return;
        }
        let Some(t) = self.text(item) else {
            self.err(item, "a port is `[HOST_IP:][PUBLISHED:]TARGET[/PROTOCOL]`");
            return;
        };
        let (spec, proto) = t.split_once('/').unwrap_or((&t, "tcp"));
        if proto == "udp" {
            return;
        }
        // `[::1]:8080:80`, `127.0.0.1:8080:80`, `8080:80`, `80`, `127.0.0.1::80`.
        let (host_ip, rest) = if let Some(r) = spec.strip_prefix('[') {
            match r.split_once("]:") {
                Some((ip, rest)) => (Some(ip.to_owned()), rest.to_owned()),
                None => {
                    self.err(item, &format!("port `{t}`: `[` without `]:`"));
                    return;
                }
            }
        } else {
            let parts: Vec<&str> = spec.split(':').collect();
            if parts.len() == 3 {
                (
                    Some(parts[0].to_owned()),
                    format!("{}:{}", parts[1], parts[2]),
                )
            } else {
                (None, spec.to_owned())
            }
        };
        let (published, target) = match rest.split_once(':') {
            Some((p, t)) => (Some(p), t),
            None => (None, rest.as_str()),
        };
        let targets = match port_range(target) {
            Ok(t) => t,
            Err(e) => {
                self.err(item, &format!("port `{t}`: {e}"));
                return;
            }
        };
        let published = match published.filter(|p| !p.is_empty()) {
            None => Vec::new(),
            Some(p) => match port_range(p) {
                Ok(p) => p,
                Err(e) => {
                    self.err(item, &format!("port `{t}`: {e}"));
                    return;
                }
            },
        };
        for (i, target) in targets.iter().enumerate() {
            w.exposed_ports.push(*target);
            // A range maps one to one; a single published port with a target range is
            // Docker's "any of these", not routable: skipped.
            if published.len() == targets.len() {
                w.published_ports.push(PublishedPort {
                    target: *target,
                    published: published[i],
                    host_ip: host_ip.clone(),
                });
            }
        }
    }
}

/// A Compose `.env` file: `KEY=VALUE` lines, `#` comments, values optionally in single
/// (literal) or double quotes; a line that is none of these is a diagnostic.
pub fn parse_env_file(text: &str, file: &str) -> (BTreeMap<String, String>, Vec<Diagnostic>) {
    let mut vars = BTreeMap::new();
    let mut diags = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let t = line.trim();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        let t = t.strip_prefix("export ").unwrap_or(t);
        let Some((k, v)) = t.split_once('=') else {
            diags.push(
                Diagnostic::warning(format!("`{t}` is not KEY=VALUE: ignored"))
                    .at(slipway_yaml::Pos {
                        line: i + 1,
                        col: 1,
                    })
                    .origin(file),
            );
            continue;
        };
        let v = v.trim();
        let v = if let Some(inner) = v.strip_prefix('"').and_then(|r| r.strip_suffix('"')) {
            inner.replace("\\n", "\n").replace("\\\"", "\"")
        } else if let Some(inner) = v.strip_prefix('\'').and_then(|r| r.strip_suffix('\'')) {
            inner.to_owned()
        } else {
            // An unquoted value ends at ` #`, as Compose reads it.
            v.split(" #").next().unwrap_or(v).trim_end().to_owned()
        };
        vars.insert(k.trim().to_owned(), v);
    }
    (vars, diags)
}

/// `80` or `8000-8002`; at most 1,000 ports.
fn port_range(t: &str) -> Result<Vec<u16>, String> {
    let t = t.trim();
    let one = |s: &str| match s.trim().parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(format!("`{s}` is not a port")),
    };
    match t.split_once('-') {
        None => Ok(vec![one(t)?]),
        Some((a, b)) => {
            let (a, b) = (one(a)?, one(b)?);
            if b < a || b - a >= 1000 {
                return Err(format!("`{t}` is not a range of at most 1,000 ports"));
            }
            Ok((a..=b).collect())
        }
    }
}

/// Compose's interpolation; also returns the variables used but not set (no default).
pub fn interpolate(
    text: &str,
    vars: &BTreeMap<String, String>,
) -> Result<(String, Vec<String>), String> {
    let mut out = String::new();
    let mut unset = Vec::new();
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        if chars[i] != '$' {
            out.push(chars[i]);
            i += 1;
            continue;
        }
        match chars.get(i + 1) {
            Some('$') => {
                out.push('$');
                i += 2;
            }
            Some('{') => {
                // The matching `}`, counting nested `${`.
                let mut depth = 1;
                let mut j = i + 2;
                while j < chars.len() {
                    match chars[j] {
                        '{' if chars.get(j.wrapping_sub(1)) == Some(&'$') => depth += 1,
                        '}' => {
                            depth -= 1;
                            if depth == 0 {
                                break;
                            }
                        }
                        _ => {}
                    }
                    j += 1;
                }
                if j >= chars.len() {
                    return Err(format!("`${{` without `}}` in `{text}`"));
                }
                let inner: String = chars[i + 2..j].iter().collect();
                let name_len = inner
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(inner.len());
                let (name, op) = inner.split_at(name_len);
                if name.is_empty() {
                    return Err(format!("`${{{inner}}}` names no variable"));
                }
                let value = vars.get(name);
                let empty = value.is_none_or(|v| v.is_empty());
                let sub = |s: &str, unset: &mut Vec<String>| -> Result<String, String> {
                    let (v, mut u) = interpolate(s, vars)?;
                    unset.append(&mut u);
                    Ok(v)
                };
                // Operators are ASCII; `get` keeps a multi-byte character from being cut.
                let (op2, arg) = match (op.get(..2), op.get(..1)) {
                    (Some(o @ (":-" | ":?" | ":+")), _) => (o, &op[2..]),
                    (_, Some(o @ ("-" | "?" | "+"))) => (o, &op[1..]),
                    _ if op.is_empty() => ("", ""),
                    _ => return Err(format!("`${{{inner}}}`: unknown operator in `{op}`")),
                };
                let result = match op2 {
                    "" => match value {
                        Some(v) => v.clone(),
                        None => {
                            unset.push(name.to_owned());
                            String::new()
                        }
                    },
                    ":-" => {
                        if empty {
                            sub(arg, &mut unset)?
                        } else {
                            value.cloned().unwrap_or_default()
                        }
                    }
                    "-" => match value {
                        Some(v) => v.clone(),
                        None => sub(arg, &mut unset)?,
                    },
                    ":?" | "?" => {
                        let missing = if op2 == ":?" { empty } else { value.is_none() };
                        if missing {
                            let msg = if arg.is_empty() {
                                "is not set".to_owned()
                            } else {
                                arg.to_owned()
                            };
                            return Err(format!("required variable `{name}`: {msg}"));
                        }
                        value.cloned().unwrap_or_default()
                    }
                    ":+" => {
                        if empty {
                            String::new()
                        } else {
                            sub(arg, &mut unset)?
                        }
                    }
                    "+" => {
                        if value.is_none() {
                            String::new()
                        } else {
                            sub(arg, &mut unset)?
                        }
                    }
                    _ => return Err(format!("`${{{inner}}}`: unknown operator in `{op}`")),
                };
                out.push_str(&result);
                i = j + 1;
            }
            Some(c) if c.is_ascii_alphabetic() || *c == '_' => {
                let mut j = i + 1;
                while j < chars.len() && (chars[j].is_ascii_alphanumeric() || chars[j] == '_') {
                    j += 1;
                }
                let name: String = chars[i + 1..j].iter().collect();
                match vars.get(&name) {
                    Some(v) => out.push_str(v),
                    None => unset.push(name),
                }
                i = j;
            }
            _ => {
                out.push('$');
                i += 1;
            }
        }
    }
    Ok((out, unset))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interpolation_as_compose_does_it() {
        let vars: BTreeMap<String, String> = [
            ("D".to_owned(), "ex.com".to_owned()),
            ("E".to_owned(), String::new()),
        ]
        .into();
        let i = |t: &str| interpolate(t, &vars);
        assert_eq!(i("a.${D}").expect("ok").0, "a.ex.com");
        assert_eq!(i("$D/$$D").expect("ok").0, "ex.com/$D");
        assert_eq!(i("${E:-x}${E-y}").expect("ok").0, "x");
        assert_eq!(i("${N:-${D}}").expect("ok").0, "ex.com");
        assert_eq!(i("${D:+on}${N:+on}").expect("ok").0, "on");
        let e = i("${N?Variable N not set}").expect_err("required");
        assert!(e.contains("Variable N not set"), "{e}");
        assert_eq!(i("${N}").expect("ok").1, ["N"]);
        assert!(i("${D").is_err());
    }

    #[test]
    fn env_files_as_compose_reads_them() {
        let (v, d) = parse_env_file(
            "# c\nA=1\nexport B = two words # note\nC=\"q \\\"x\\\"\"\nD='$lit'\nbad line\n",
            ".env",
        );
        assert_eq!(v["A"], "1");
        assert_eq!(v["B"], "two words");
        assert_eq!(v["C"], "q \"x\"");
        assert_eq!(v["D"], "$lit");
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].line, Some(6));
    }
}
