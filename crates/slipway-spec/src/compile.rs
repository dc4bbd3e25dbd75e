//! From file text and a build to a [`Plan`], and the checks `slipway lint` runs.
//!
//! Order matters and follows Drone: the raw text is substituted first (so `${...}` can
//! stand anywhere, even in keys), then parsed, then validated, then compiled. A value
//! holding a newline is substituted as a quoted string so the YAML stays valid and line
//! numbers stay those of the file the user wrote.

use std::collections::{BTreeMap, HashMap};

use crate::context::BuildContext;
use crate::diagnostic::{self, Diagnostic};
use crate::envsubst;
use crate::model::{Config, EnvValue, Named, Pipeline, SettingValue, Step, VolumeKind};
use crate::parse::parse;
use crate::plan::{
    ClonePlan, PipelinePlan, PipelineType, Plan, SecretEnv, StepPlan, VolumeMount, VolumePlan,
    VolumeSource,
};
use crate::yaml::Pos;

/// Where containers see the workspace unless the file says otherwise (Drone's path).
pub const DEFAULT_WORKSPACE: &str = "/drone/src";

/// A compiled plan with the warnings met on the way.
#[derive(Debug, Clone)]
pub struct Compiled {
    pub plan: Plan,
    pub warnings: Vec<Diagnostic>,
}

/// Checks a pipeline file without a build: substitution syntax, YAML, the model, names
/// and dependency graphs. Sorted by position.
pub fn lint(text: &str) -> Vec<Diagnostic> {
    let mut diags = Vec::new();
    if let Err(e) = envsubst::check(text) {
        diags.push(Diagnostic::error(
            diagnostic::pos_of_offset(text, e.offset),
            e.message,
        ));
    }
    let (config, parse_diags) = parse(text);
    diags.extend(parse_diags);
    diags.extend(validate(&config));
    diagnostic::sort(&mut diags);
    diags.dedup();
    diags
}

/// Substitutes `${...}` with the build's variables, Drone style.
pub fn substitute(text: &str, vars: &BTreeMap<String, String>) -> Result<String, Diagnostic> {
    envsubst::substitute(text, |name| {
        vars.get(name).map(|v| {
            if v.contains('\n') {
                // A JSON string is a valid YAML double-quoted scalar.
                serde_json::Value::String(v.clone()).to_string()
            } else {
                v.clone()
            }
        })
    })
    .map_err(|e| Diagnostic::error(diagnostic::pos_of_offset(text, e.offset), e.message))
}

/// Compiles the file for one build. Errors (substitution, YAML, model, graph) come back
/// together; warnings ride along with the plan.
pub fn compile(text: &str, ctx: &BuildContext) -> Result<Compiled, Vec<Diagnostic>> {
    let vars = ctx.variables();
    let combos = matrix_combinations(text)?;
    let mut plan = Plan {
        pipelines: Vec::new(),
    };
    let mut warnings = Vec::new();
    for (index, combo) in combos.iter().enumerate() {
        let mut vars = vars.clone();
        vars.extend(combo.iter().cloned());
        let substituted = substitute(text, &vars).map_err(|d| vec![d])?;
        let (config, mut diags) = parse(&substituted);
        diags.extend(validate(&config));
        diagnostic::sort(&mut diags);
        diags.dedup();
        if diags.iter().any(Diagnostic::is_error) {
            return Err(diags);
        }
        if index == 0 {
            warnings = diags;
        }
        let number_base = plan.pipelines.len();
        for (i, pipeline) in config.pipelines().enumerate() {
            let mut p = compile_pipeline(pipeline, ctx, &vars, combo, number_base + i + 1);
            // The combination's values are in the stage's environment; they are not in its
            // labels, which only say which runners may take it.
            if !combo.is_empty() {
                p.name = format!("matrix-{}", index + 1);
            }
            plan.pipelines.push(p);
        }
    }
    Ok(Compiled { plan, warnings })
}

/// Legacy `matrix:` axes expanded into every combination, in Drone's order (the last axis
/// varies fastest). A file without a matrix has one empty combination.
fn matrix_combinations(text: &str) -> Result<Vec<Vec<(String, String)>>, Vec<Diagnostic>> {
    // Cheap pre-check: only legacy files with a top-level `matrix:` pay for a second parse.
    if !text.lines().any(|l| l.starts_with("matrix:")) {
        return Ok(vec![Vec::new()]);
    }
    let (config, diags) = parse(text);
    if diags.iter().any(Diagnostic::is_error) {
        return Err(diags);
    }
    let mut combos: Vec<Vec<(String, String)>> = vec![Vec::new()];
    for axis in &config.matrix {
        let mut next = Vec::new();
        for combo in &combos {
            for value in &axis.values {
                let mut c = combo.clone();
                c.push((axis.name.clone(), value.clone()));
                next.push(c);
            }
        }
        combos = next;
    }
    Ok(combos)
}

/// Name, graph and reference checks over the whole file.
pub fn validate(config: &Config) -> Vec<Diagnostic> {
    let mut diags = Vec::new();
    let pipelines: Vec<&Pipeline> = config.pipelines().collect();
    let mut seen: HashMap<&str, Pos> = HashMap::new();
    for p in &pipelines {
        if let Some(first) = seen.insert(&p.name, p.pos) {
            diags.push(Diagnostic::error(
                p.pos,
                format!(
                    "duplicate pipeline name `{}` (first at line {})",
                    p.name, first.line
                ),
            ));
        }
    }
    let names: Vec<&str> = pipelines.iter().map(|p| p.name.as_str()).collect();
    let edges: Vec<Vec<(usize, Pos)>> = pipelines
        .iter()
        .map(|p| resolve_deps(&p.depends_on, &names, &p.name, "pipeline", &mut diags))
        .collect();
    if let Some(cycle) = find_cycle(&edges) {
        let first = cycle[0];
        diags.push(Diagnostic::error(
            pipelines[first].pos,
            format!(
                "pipelines depend on each other in a cycle: {}",
                cycle_text(&cycle, &names)
            ),
        ));
    }
    for p in &pipelines {
        validate_pipeline(p, &mut diags);
    }
    diags
}

fn validate_pipeline(p: &Pipeline, diags: &mut Vec<Diagnostic>) {
    let mut seen: HashMap<&str, Pos> = HashMap::new();
    for s in p.services.iter().chain(&p.steps) {
        if s.name.is_empty() {
            continue;
        }
        if let Some(first) = seen.insert(&s.name, s.pos) {
            diags.push(Diagnostic::error(
                s.pos,
                format!(
                    "duplicate step name `{}` in pipeline `{}` (first at line {})",
                    s.name, p.name, first.line
                ),
            ));
        }
    }
    if p.kind == PipelineType::Exec {
        for v in &p.volumes {
            if matches!(v.kind, VolumeKind::Cache { .. }) {
                diags.push(Diagnostic::error(
                    v.pos,
                    format!(
                        "volume `{}`: cache volumes need a docker pipeline (pipeline `{}` is `type: exec`, whose steps run on the host)",
                        v.name, p.name
                    ),
                ));
            }
        }
    }
    let needs_image = matches!(p.kind, PipelineType::Docker);
    for s in p.services.iter().chain(&p.steps) {
        if needs_image && s.image.as_deref().is_none_or(str::is_empty) {
            diags.push(Diagnostic::error(
                s.pos,
                format!("step `{}` has no `image`", s.name),
            ));
        }
        if !needs_image && s.commands.is_empty() && !matches!(p.kind, PipelineType::Other(_)) {
            diags.push(Diagnostic::error(
                s.pos,
                format!(
                    "step `{}` has no `commands` (an exec pipeline runs commands on the host)",
                    s.name
                ),
            ));
        }
        for m in &s.volumes {
            if m.host_path.is_none()
                && !m.name.starts_with("anonymous-")
                && !p.volumes.iter().any(|v| v.name == m.name)
            {
                diags.push(Diagnostic::warning(
                    m.pos,
                    format!(
                        "step `{}` mounts volume `{}`, which pipeline `{}` does not declare under `volumes`: the step will fail to start",
                        s.name, m.name, p.name
                    ),
                ));
            }
        }
    }
    let names: Vec<&str> = p.steps.iter().map(|s| s.name.as_str()).collect();
    let edges: Vec<Vec<(usize, Pos)>> = p
        .steps
        .iter()
        .map(|s| match &s.depends_on {
            Some(deps) => resolve_deps(deps, &names, &s.name, "step", diags),
            None => Vec::new(),
        })
        .collect();
    if let Some(cycle) = find_cycle(&edges) {
        diags.push(Diagnostic::error(
            p.steps[cycle[0]].pos,
            format!(
                "steps of pipeline `{}` depend on each other in a cycle: {}",
                p.name,
                cycle_text(&cycle, &names)
            ),
        ));
    }
}

fn resolve_deps(
    deps: &[Named],
    names: &[&str],
    owner: &str,
    what: &str,
    diags: &mut Vec<Diagnostic>,
) -> Vec<(usize, Pos)> {
    let mut out = Vec::new();
    for dep in deps {
        // Drone names its clone step `clone`; it always runs first here.
        if what == "step" && dep.name == "clone" {
            continue;
        }
        if dep.name == owner {
            diags.push(Diagnostic::error(
                dep.pos,
                format!("{what} `{owner}` depends on itself"),
            ));
        } else if let Some(i) = names.iter().position(|n| *n == dep.name) {
            out.push((i, dep.pos));
        } else {
            diags.push(Diagnostic::error(
                dep.pos,
                format!("{what} `{owner}` depends on unknown {what} `{}`", dep.name),
            ));
        }
    }
    out
}

/// A cycle in the graph (node → its dependencies), as a list of node indexes.
fn find_cycle(edges: &[Vec<(usize, Pos)>]) -> Option<Vec<usize>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Active,
        Done,
    }
    let mut marks = vec![Mark::New; edges.len()];
    for start in 0..edges.len() {
        if marks[start] != Mark::New {
            continue;
        }
        // Iterative DFS: a pipeline of thousands of steps must not overflow the stack.
        let mut stack: Vec<(usize, usize)> = vec![(start, 0)];
        marks[start] = Mark::Active;
        while let Some(&mut (node, ref mut next)) = stack.last_mut() {
            if let Some(&(dep, _)) = edges[node].get(*next) {
                *next += 1;
                match marks[dep] {
                    Mark::New => {
                        marks[dep] = Mark::Active;
                        stack.push((dep, 0));
                    }
                    Mark::Active => {
                        let from = stack.iter().position(|(n, _)| *n == dep).unwrap_or(0);
                        return Some(stack[from..].iter().map(|(n, _)| *n).collect());
                    }
                    Mark::Done => {}
                }
            } else {
                marks[node] = Mark::Done;
                stack.pop();
            }
        }
    }
    None
}

fn cycle_text(cycle: &[usize], names: &[&str]) -> String {
    let mut parts: Vec<String> = cycle.iter().map(|&i| format!("`{}`", names[i])).collect();
    if let Some(first) = parts.first().cloned() {
        parts.push(first);
    }
    parts.join(" → ")
}

fn compile_pipeline(
    p: &Pipeline,
    ctx: &BuildContext,
    vars: &BTreeMap<String, String>,
    matrix: &[(String, String)],
    number: usize,
) -> PipelinePlan {
    let workspace = p
        .workspace
        .clone()
        .unwrap_or_else(|| DEFAULT_WORKSPACE.to_owned());
    let (ws_base, ws_path) = match workspace.rsplit_once('/') {
        Some((base, path)) if !base.is_empty() => (base.to_owned(), path.to_owned()),
        _ => (workspace.clone(), String::new()),
    };
    let os = lookup(&p.platform, "os").unwrap_or("linux");
    let arch = lookup(&p.platform, "arch").unwrap_or("amd64");
    let depends: Vec<String> = p.depends_on.iter().map(|d| d.name.clone()).collect();

    let mut stage_env = vars.clone();
    for (k, v) in [
        ("DRONE_STAGE_NAME", p.name.as_str()),
        ("DRONE_STAGE_KIND", "pipeline"),
        ("DRONE_STAGE_TYPE", p.kind.as_str()),
        ("DRONE_STAGE_NUMBER", &number.to_string()),
        ("DRONE_STAGE_OS", os),
        ("DRONE_STAGE_ARCH", arch),
        (
            "DRONE_STAGE_VARIANT",
            lookup(&p.platform, "variant").unwrap_or(""),
        ),
        ("DRONE_STAGE_DEPENDS_ON", &depends.join(",")),
        ("DRONE_STAGE_STATUS", "success"),
        ("DRONE_STAGE_MACHINE", &ctx.instance),
        ("DRONE_WORKSPACE", &workspace),
        ("DRONE_WORKSPACE_BASE", &ws_base),
        ("DRONE_WORKSPACE_PATH", &ws_path),
        ("CI_WORKSPACE", &workspace),
        ("CI_WORKSPACE_BASE", &ws_base),
        ("CI_WORKSPACE_PATH", &ws_path),
        ("CI_PIPELINE_NAME", &p.name),
    ] {
        stage_env.insert(k.to_owned(), v.to_owned());
    }
    for (k, v) in matrix {
        stage_env.insert(k.clone(), v.clone());
    }
    let mut stage_secrets = Vec::new();
    for (k, v) in &p.environment {
        match v {
            EnvValue::Plain(text) => {
                stage_env.insert(k.clone(), text.clone());
            }
            EnvValue::Secret(name) => stage_secrets.push(SecretEnv {
                env: k.clone(),
                secret: name.clone(),
            }),
        }
    }

    let mut labels = BTreeMap::new();
    labels.insert("os".to_owned(), os.to_owned());
    labels.insert("arch".to_owned(), arch.to_owned());
    for (k, v) in &p.node {
        labels.insert(k.clone(), v.clone());
    }

    let services = p
        .services
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let mut plan = compile_step(s, i + 1, &stage_env, &stage_secrets, ctx, matrix);
            plan.detach = true;
            plan
        })
        .collect();
    let mut steps: Vec<StepPlan> = p
        .steps
        .iter()
        .enumerate()
        .map(|(i, s)| compile_step(s, i + 1, &stage_env, &stage_secrets, ctx, matrix))
        .collect();
    assign_step_dependencies(&p.steps, &mut steps);

    let mut volumes: Vec<VolumePlan> = p
        .volumes
        .iter()
        .map(|v| VolumePlan {
            name: v.name.clone(),
            source: match &v.kind {
                VolumeKind::Host(Some(path)) => VolumeSource::Host { path: path.clone() },
                // A host volume without a path was an error; it never gets here.
                VolumeKind::Temp | VolumeKind::Host(None) => VolumeSource::Temp,
                VolumeKind::Cache { key } => VolumeSource::Cache { key: key.clone() },
            },
        })
        .collect();
    // Legacy inline mounts: `- /host:/container` becomes a host volume of the pipeline,
    // `- /path` a temp one.
    for s in p.services.iter().chain(&p.steps) {
        for m in &s.volumes {
            let source = match &m.host_path {
                Some(host) => VolumeSource::Host { path: host.clone() },
                None if m.name.starts_with("anonymous-") => VolumeSource::Temp,
                None => continue,
            };
            if !volumes.iter().any(|v| v.name == m.name) {
                volumes.push(VolumePlan {
                    name: m.name.clone(),
                    source,
                });
            }
        }
    }

    PipelinePlan {
        name: p.name.clone(),
        kind: p.kind.clone(),
        skipped: !p.trigger.matches(ctx, matrix),
        depends_on: depends,
        run_on: p.trigger.run_on(),
        clone: ClonePlan {
            disable: p.clone_disable,
            depth: p.clone_depth,
        },
        workspace,
        timeout_secs: p.timeout_secs,
        labels,
        volumes,
        services,
        steps,
    }
}

fn lookup<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

fn compile_step(
    s: &Step,
    number: usize,
    stage_env: &BTreeMap<String, String>,
    stage_secrets: &[SecretEnv],
    ctx: &BuildContext,
    matrix: &[(String, String)],
) -> StepPlan {
    let mut env = stage_env.clone();
    env.insert("DRONE_STEP_NAME".to_owned(), s.name.clone());
    env.insert("DRONE_STEP_NUMBER".to_owned(), number.to_string());
    env.insert("CI_STEP_NAME".to_owned(), s.name.clone());
    env.insert("CI_STEP_NUMBER".to_owned(), number.to_string());
    let mut secrets: Vec<SecretEnv> = stage_secrets.to_vec();
    // A later definition of the same variable wins, whether plain or secret.
    fn add_secret(
        secret: SecretEnv,
        env: &mut BTreeMap<String, String>,
        secrets: &mut Vec<SecretEnv>,
    ) {
        env.remove(&secret.env);
        secrets.retain(|s| s.env != secret.env);
        secrets.push(secret);
    }
    for (k, v) in &s.environment {
        match v {
            EnvValue::Plain(text) => {
                secrets.retain(|s| &s.env != k);
                env.insert(k.clone(), text.clone());
            }
            EnvValue::Secret(name) => add_secret(
                SecretEnv {
                    env: k.clone(),
                    secret: name.clone(),
                },
                &mut env,
                &mut secrets,
            ),
        }
    }
    let mut settings = BTreeMap::new();
    for (k, v) in &s.settings {
        let var = plugin_var(k);
        match v {
            SettingValue::Plain(value) => {
                env.insert(var, setting_text(value));
                settings.insert(k.clone(), value.clone());
            }
            SettingValue::Secret(name) => add_secret(
                SecretEnv {
                    env: var,
                    secret: name.clone(),
                },
                &mut env,
                &mut secrets,
            ),
        }
    }
    for secret in &s.secrets {
        add_secret(secret.clone(), &mut env, &mut secrets);
    }
    StepPlan {
        name: s.name.clone(),
        image: s.image.clone().unwrap_or_default(),
        commands: s.commands.clone(),
        entrypoint: s.entrypoint.clone(),
        command: s.command.clone(),
        environment: env,
        secrets,
        depends_on: Vec::new(),
        skipped: !s.when.matches(ctx, matrix),
        run_on: s.when.run_on(),
        detach: s.detach,
        privileged: s.privileged,
        failure_ignore: s.failure_ignore,
        volumes: s
            .volumes
            .iter()
            .map(|m| VolumeMount {
                name: m.name.clone(),
                path: m.path.clone(),
            })
            .collect(),
        pull: s.pull,
        user: s.user.clone(),
        timeout_secs: s.timeout_secs,
        settings,
    }
}

/// `PLUGIN_<KEY>`: upper case, anything but letters and digits as `_`.
pub fn plugin_var(key: &str) -> String {
    let mut out = String::from("PLUGIN_");
    out.extend(key.chars().map(|c| {
        if c.is_ascii_alphanumeric() {
            c.to_ascii_uppercase()
        } else {
            '_'
        }
    }));
    out
}

/// How a setting reaches a plugin: scalars as text, lists of scalars comma-joined, maps
/// and lists of maps as JSON (what Drone's plugins parse).
pub fn setting_text(value: &serde_json::Value) -> String {
    use serde_json::Value;
    match value {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        Value::Bool(_) | Value::Number(_) => value.to_string(),
        Value::Array(items) if items.iter().all(|i| !i.is_object() && !i.is_array()) => {
            items.iter().map(setting_text).collect::<Vec<_>>().join(",")
        }
        Value::Array(_) | Value::Object(_) => value.to_string(),
    }
}

/// Makes every step's dependencies explicit. With `depends_on` anywhere in the pipeline it
/// is a DAG (steps without it start at once); legacy `group`s run together after the
/// previous group; otherwise steps run one after another in file order.
fn assign_step_dependencies(steps: &[Step], plans: &mut [StepPlan]) {
    let dag = steps.iter().any(|s| s.depends_on.is_some());
    if dag {
        for (s, plan) in steps.iter().zip(plans.iter_mut()) {
            plan.depends_on = s
                .depends_on
                .iter()
                .flatten()
                .filter(|d| d.name != "clone")
                .map(|d| d.name.clone())
                .collect();
        }
        return;
    }
    let mut previous_block: Vec<String> = Vec::new();
    let mut i = 0;
    while i < steps.len() {
        let mut end = i + 1;
        if let Some(group) = &steps[i].group {
            while end < steps.len() && steps[end].group.as_ref() == Some(group) {
                end += 1;
            }
        }
        for plan in plans.iter_mut().take(end).skip(i) {
            plan.depends_on = previous_block.clone();
        }
        previous_block = steps[i..end].iter().map(|s| s.name.clone()).collect();
        i = end;
    }
}
