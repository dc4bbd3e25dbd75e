//! Deploy plugins, natively: `slipway/deploy` (a stack from the repository at the build's
//! commit) and `peloton/drone-rancher` (one service's image updated in a stack's current
//! revision), both asked of the server through [`crate::RunOptions::deployer`].
//!
//! Settings (`settings:` in 1.x files, inline keys in 0.8 files, or `PLUGIN_<KEY>`):
//! - `slipway/deploy`: `environment` (default `DRONE_DEPLOY_TO`; one of them is required),
//!   `stack` (default the repository's name, `DRONE_REPO_NAME`), `images` (a map or a list
//!   of `SERVICE=REF`; default the images this build pushed, each to the services whose
//!   image has the same repository: the server maps them), `strategy` (`rolling`,
//!   `blue-green`, `canary`: this rollout only), `wait` (default true).
//! - `peloton/drone-rancher`: `service` (`STACK/SERVICE`, required), `docker_image`
//!   (required), `batch_size` (rolling parallelism), `timeout` (seconds each new container
//!   has to become healthy), `start_first` (start-first, else stop-first), `confirm`
//!   (accepted: Slipway's rollouts finish by themselves), `environment` (default
//!   `DRONE_DEPLOY_TO`; needed only when several environments have the stack). `url`,
//!   `access_key` and `secret_key` are not needed and said so, never with their values
//!   (which are masked anyway). The step always follows the rollout.
//!
//! With `wait`, each rollout step is logged as it happens, and the step fails unless the
//! rollout succeeded (rolled back, paused or failed). Whether the build may deploy at all
//! is the server's decision (pull requests and untrusted repositories may not); its
//! refusal is the step's failure.

use std::collections::BTreeMap;
use std::sync::Mutex;

use super::settings::Settings;
use super::{NativeLog, PluginError};
use crate::backend::StepSpec;
use crate::deployer::{DeployCall, DeployProgress, Deployer, PushedImage};
use crate::log::StepLog;

/// Which deploy plugin a step is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DeployPlugin {
    Slipway,
    Rancher,
}

impl DeployPlugin {
    fn image(self) -> &'static str {
        match self {
            DeployPlugin::Slipway => "slipway/deploy",
            DeployPlugin::Rancher => "peloton/drone-rancher",
        }
    }
}

/// Runs a deploy step. `Err` is the failure's message, masked.
pub(crate) async fn run(
    plugin: DeployPlugin,
    spec: &StepSpec<'_>,
    log: &StepLog,
    deployer: Option<&dyn Deployer>,
    pushed: Vec<PushedImage>,
) -> Result<(), String> {
    let settings = Settings::new(&spec.plan.settings, &spec.env);
    let credentials: Vec<String> = ["access_key", "secret_key", "url"]
        .iter()
        .filter_map(|key| settings.text(&[key]))
        .collect();
    let log = NativeLog::new(
        log.clone(),
        &credentials.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    log.line(&format!(
        "{} runs natively: no plugin container; Slipway's deployer rolls it out",
        plugin.image()
    ));
    let call = match plugin {
        DeployPlugin::Slipway => slipway_call(&settings, &spec.env),
        DeployPlugin::Rancher => rancher_call(&settings, &spec.env, &log),
    }
    .map_err(|e| log.mask(&e.to_string()))?;
    let call = DeployCall { pushed, ..call };
    let Some(deployer) = deployer else {
        return Err(format!(
            "{} needs a Slipway server to deploy through: this build runs without one (`slipway exec`); run it on a server's runner",
            plugin.image()
        ));
    };
    let target = match (&call.environment, &call.service) {
        (Some(env), Some(service)) => format!("{env}/{}, service {service}", call.stack),
        (None, Some(service)) => format!("stack {}, service {service}", call.stack),
        (Some(env), None) => format!("{env}/{}", call.stack),
        (None, None) => call.stack.clone(),
    };
    log.line(&format!("deploying {target}"));
    let wait = call.wait;
    let finished: Mutex<Option<(String, Option<String>)>> = Mutex::new(None);
    let progress = |event: DeployProgress| match event {
        DeployProgress::Started {
            environment,
            stack,
            revision,
        } => log.line(&format!(
            "{environment}/{stack}: revision {revision} recorded, rollout started"
        )),
        DeployProgress::Step { line } => log.line(&line),
        DeployProgress::Finished { status, message } => {
            log.line(&format!(
                "rollout {}{}",
                status.replace('_', " "),
                message
                    .as_deref()
                    .map(|m| format!(": {m}"))
                    .unwrap_or_default()
            ));
            *finished.lock().unwrap_or_else(|e| e.into_inner()) = Some((status, message));
        }
    };
    deployer
        .deploy(call, &progress)
        .await
        .map_err(|e| log.mask(&e))?;
    let finished = finished.lock().unwrap_or_else(|e| e.into_inner()).take();
    match finished {
        Some((status, _)) if status == "succeeded" => Ok(()),
        Some((status, message)) => Err(log.mask(&format!(
            "the rollout {}{}",
            status.replace('_', " "),
            message.map(|m| format!(": {m}")).unwrap_or_default()
        ))),
        None if !wait => {
            log.line("not waiting for the rollout (`wait: false`)");
            Ok(())
        }
        None => Err("the server's answer ended before the rollout did".to_owned()),
    }
}

fn env_text(env: &BTreeMap<String, String>, name: &str) -> Option<String> {
    env.get(name)
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

fn slipway_call(
    settings: &Settings<'_>,
    env: &BTreeMap<String, String>,
) -> Result<DeployCall, PluginError> {
    let environment = settings
        .text(&["environment"])
        .or_else(|| env_text(env, "DRONE_DEPLOY_TO"))
        .ok_or_else(|| {
            PluginError::setting(
                "environment",
                "is required (or promote the build to an environment: DRONE_DEPLOY_TO is empty)",
            )
        })?;
    let stack = settings
        .text(&["stack"])
        .or_else(|| env_text(env, "DRONE_REPO_NAME"))
        .ok_or_else(|| PluginError::setting("stack", "is required (DRONE_REPO_NAME is empty)"))?;
    let images = settings
        .pairs("images")?
        .into_iter()
        .map(|(service, image)| (service, image.trim().to_owned()))
        .collect();
    let strategy = match settings.text(&["strategy"]) {
        Some(text) => Some(strategy(&text)?),
        None => None,
    };
    Ok(DeployCall {
        plugin: DeployPlugin::Slipway.image().to_owned(),
        environment: Some(environment),
        stack,
        images,
        strategy,
        wait: settings.flag("wait")?.unwrap_or(true),
        ..DeployCall::default()
    })
}

fn strategy(text: &str) -> Result<String, PluginError> {
    let name = text.trim().to_ascii_lowercase().replace('_', "-");
    match name.as_str() {
        "rolling" | "canary" => Ok(name),
        "blue-green" | "bluegreen" => Ok("blue-green".to_owned()),
        _ => Err(PluginError::setting(
            "strategy",
            format!("`{text}` is not rolling, blue-green or canary"),
        )),
    }
}

fn number<T: std::str::FromStr>(
    settings: &Settings<'_>,
    key: &str,
) -> Result<Option<T>, PluginError> {
    match settings.text(&[key]) {
        Some(text) => text
            .parse()
            .map(Some)
            .map_err(|_| PluginError::setting(key, format!("`{text}` is not a whole number"))),
        None => Ok(None),
    }
}

fn rancher_call(
    settings: &Settings<'_>,
    env: &BTreeMap<String, String>,
    log: &NativeLog,
) -> Result<DeployCall, PluginError> {
    let target = settings
        .text(&["service"])
        .ok_or_else(|| PluginError::setting("service", "is required (STACK/SERVICE)"))?;
    let (stack, service) = match target.split_once('/') {
        Some((stack, service)) if !stack.trim().is_empty() && !service.trim().is_empty() => {
            (stack.trim().to_owned(), service.trim().to_owned())
        }
        _ => {
            return Err(PluginError::setting(
                "service",
                format!("`{target}` is not STACK/SERVICE"),
            ));
        }
    };
    let image = settings
        .text(&["docker_image"])
        .ok_or_else(|| PluginError::setting("docker_image", "is required"))?;
    for key in ["url", "access_key", "secret_key"] {
        if settings.has(key) {
            log.line(&format!(
                "`{key}` is not needed: Slipway deploys itself, no Rancher server is called"
            ));
        }
    }
    if settings.has("confirm") {
        log.line("`confirm` accepted: Slipway's rollouts finish (or roll back) by themselves");
    }
    let timeout_secs = number::<u64>(settings, "timeout")?;
    Ok(DeployCall {
        plugin: DeployPlugin::Rancher.image().to_owned(),
        environment: settings
            .text(&["environment"])
            .or_else(|| env_text(env, "DRONE_DEPLOY_TO")),
        stack,
        images: BTreeMap::from([(service.clone(), image)]),
        service: Some(service),
        parallelism: number::<u32>(settings, "batch_size")?,
        start_first: settings.flag("start_first")?,
        timeout_secs,
        wait: true,
        ..DeployCall::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn plan(value: Value) -> BTreeMap<String, Value> {
        match value {
            Value::Object(map) => map.into_iter().collect(),
            _ => BTreeMap::new(),
        }
    }

    fn vars(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[derive(Default)]
    struct Collect(Mutex<Vec<String>>);

    impl crate::EventSink for Collect {
        fn event(&self, event: crate::Event) {
            if let crate::Event::Log { line, .. } = event {
                self.0.lock().unwrap_or_else(|e| e.into_inner()).push(line);
            }
        }
    }

    #[test]
    fn slipway_deploy_defaults_and_settings() {
        let (p, e) = (
            plan(json!({})),
            vars(&[("DRONE_DEPLOY_TO", "staging"), ("DRONE_REPO_NAME", "shop")]),
        );
        let call = slipway_call(&Settings::new(&p, &e), &e).expect("call");
        assert_eq!(call.environment.as_deref(), Some("staging"));
        assert_eq!(call.stack, "shop");
        assert!(call.images.is_empty() && call.wait && call.service.is_none());

        let p = plan(json!({
            "environment": "prod", "stack": "web", "images": ["app=r/app:2"],
            "strategy": "Blue_Green", "wait": false
        }));
        let call = slipway_call(&Settings::new(&p, &e), &e).expect("call");
        assert_eq!(call.environment.as_deref(), Some("prod"));
        assert_eq!(call.images.get("app").map(String::as_str), Some("r/app:2"));
        assert_eq!(call.strategy.as_deref(), Some("blue-green"));
        assert!(!call.wait);

        let p = plan(json!({"images": {"app": "r/app:3"}, "strategy": "sideways"}));
        let err = slipway_call(&Settings::new(&p, &e), &e).expect_err("bad strategy");
        assert!(err.to_string().contains("`sideways`"), "{err}");

        let (p, e) = (plan(json!({})), vars(&[("DRONE_REPO_NAME", "shop")]));
        let err = slipway_call(&Settings::new(&p, &e), &e).expect_err("no environment");
        assert!(err.to_string().contains("environment"), "{err}");
    }

    #[test]
    fn rancher_settings_map_to_an_image_update() {
        let p = plan(json!({
            "service": "rancher_stack/rancher_service",
            "docker_image": "reg/test:dev",
            "batch_size": 1, "timeout": 600, "start_first": false, "confirm": true,
            "url": "http://rancher", "access_key": "AK", "secret_key": "SK"
        }));
        let e = vars(&[]);
        let sink = std::sync::Arc::new(Collect::default());
        let step_log = StepLog::new(
            "p",
            "s",
            sink.clone(),
            std::sync::Arc::new(crate::Masker::new(Vec::<String>::new())),
        );
        let log = NativeLog::new(step_log, &["AK", "SK"]);
        let call = rancher_call(&Settings::new(&p, &e), &e, &log).expect("call");
        assert_eq!(call.stack, "rancher_stack");
        assert_eq!(call.service.as_deref(), Some("rancher_service"));
        assert_eq!(
            call.images.get("rancher_service").map(String::as_str),
            Some("reg/test:dev")
        );
        assert_eq!(
            (call.parallelism, call.timeout_secs, call.start_first),
            (Some(1), Some(600), Some(false))
        );
        assert!(call.environment.is_none() && call.wait);
        let lines = sink.0.lock().unwrap_or_else(|e| e.into_inner()).clone();
        for key in ["url", "access_key", "secret_key"] {
            assert!(
                lines
                    .iter()
                    .any(|l| l.contains(&format!("`{key}` is not needed"))),
                "{lines:?}"
            );
        }
        assert!(!lines.iter().any(|l| l.contains("AK") || l.contains("SK")));

        let p = plan(json!({"service": "only-a-stack", "docker_image": "x"}));
        let err = rancher_call(&Settings::new(&p, &e), &e, &log).expect_err("bad service");
        assert!(err.to_string().contains("STACK/SERVICE"), "{err}");
    }
}
