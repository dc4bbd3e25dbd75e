//! Reading a plugin step's settings the way Drone plugins see them.
//!
//! A setting is looked up first in [`StepPlan::settings`] (the values as written, so lists
//! stay lists and booleans stay booleans), then in the step's environment as `PLUGIN_<KEY>`:
//! that is where `from_secret` settings arrive (the plan only names the secret), and where a
//! user may have put a value with `environment:`. Values are never logged here.
//!
//! [`StepPlan::settings`]: slipway_spec::plan::StepPlan::settings

use std::collections::BTreeMap;

use serde_json::Value;
use slipway_spec::compile::{plugin_var, setting_text};

use super::PluginError;

/// The settings of one plugin step.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Settings<'a> {
    plan: &'a BTreeMap<String, Value>,
    env: &'a BTreeMap<String, String>,
}

impl<'a> Settings<'a> {
    pub(crate) fn new(
        plan: &'a BTreeMap<String, Value>,
        env: &'a BTreeMap<String, String>,
    ) -> Settings<'a> {
        Settings { plan, env }
    }

    /// The value of `key` as written, else its `PLUGIN_<KEY>` variable as text; null and
    /// empty values count as absent.
    fn raw(&self, key: &str) -> Option<Value> {
        match self.plan.get(key) {
            Some(Value::Null) => None,
            Some(Value::String(s)) if s.is_empty() => None,
            Some(value) => Some(value.clone()),
            None => self
                .env
                .get(&plugin_var(key))
                .filter(|v| !v.is_empty())
                .map(|v| Value::String(v.clone())),
        }
    }

    /// Whether any of `keys` is set.
    pub(crate) fn has(&self, key: &str) -> bool {
        self.raw(key).is_some()
    }

    /// The first of `keys` that is set, as text (lists comma-joined).
    pub(crate) fn text(&self, keys: &[&str]) -> Option<String> {
        keys.iter()
            .find_map(|key| self.raw(key))
            .map(|value| setting_text(&value).trim().to_string())
            .filter(|text| !text.is_empty())
    }

    /// Like [`Settings::text`], then the plain variable `env` (the `DOCKER_PASSWORD` style
    /// secrets of Drone 0.8 files).
    pub(crate) fn text_or_env(&self, key: &str, env: &str) -> Option<String> {
        self.text(&[key]).or_else(|| {
            self.env
                .get(env)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        })
    }

    /// The first of `keys` that is set, as a list: a YAML list item by item, a text split at
    /// commas (how Drone passes lists through `PLUGIN_*`); items trimmed, empty ones dropped.
    pub(crate) fn list(&self, keys: &[&str]) -> Option<Vec<String>> {
        let value = keys.iter().find_map(|key| self.raw(key))?;
        let items: Vec<String> = match value {
            Value::Array(items) => items.iter().map(setting_text).collect(),
            other => setting_text(&other)
                .split(',')
                .map(str::to_string)
                .collect(),
        };
        Some(
            items
                .into_iter()
                .map(|item| item.trim().to_string())
                .filter(|item| !item.is_empty())
                .collect(),
        )
    }

    /// Like [`Settings::list`] for `key`, then the plain variable `env` split at commas.
    pub(crate) fn list_or_env(&self, key: &str, env: &str) -> Option<Vec<String>> {
        self.list(&[key])
            .filter(|items| !items.is_empty())
            .or_else(|| {
                self.text_or_env(key, env).map(|text| {
                    text.split(',')
                        .map(|item| item.trim().to_string())
                        .filter(|item| !item.is_empty())
                        .collect()
                })
            })
    }

    /// `true`/`false` (also `1`/`0`, `yes`/`no`, `on`/`off`); `None` when not set.
    pub(crate) fn flag(&self, key: &str) -> Result<Option<bool>, PluginError> {
        let Some(value) = self.raw(key) else {
            return Ok(None);
        };
        let parsed = match &value {
            Value::Bool(b) => Some(*b),
            other => match setting_text(other).trim().to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" | "on" => Some(true),
                "false" | "0" | "no" | "off" => Some(false),
                _ => None,
            },
        };
        parsed.map(Some).ok_or_else(|| PluginError::Setting {
            setting: key.to_string(),
            reason: format!(
                "`{}` is not a boolean (use true or false)",
                setting_text(&value)
            ),
        })
    }

    /// `KEY=value` pairs: a map, a list of `KEY=value` items or a comma-separated text of
    /// them. An item without `=` is an error naming the setting.
    pub(crate) fn pairs(&self, key: &str) -> Result<Vec<(String, String)>, PluginError> {
        if let Some(Value::Object(map)) = self.raw(key) {
            return Ok(map
                .iter()
                .map(|(k, v)| (k.clone(), setting_text(v)))
                .collect());
        }
        let mut pairs = Vec::new();
        for item in self.list(&[key]).unwrap_or_default() {
            match item.split_once('=') {
                Some((k, v)) if !k.trim().is_empty() => {
                    pairs.push((k.trim().to_string(), v.to_string()))
                }
                _ => {
                    return Err(PluginError::Setting {
                        setting: key.to_string(),
                        reason: format!("`{item}` is not of the form KEY=value"),
                    });
                }
            }
        }
        Ok(pairs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn settings(
        plan: Value,
        env: &[(&str, &str)],
    ) -> (BTreeMap<String, Value>, BTreeMap<String, String>) {
        let plan = match plan {
            Value::Object(map) => map.into_iter().collect(),
            _ => BTreeMap::new(),
        };
        let env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        (plan, env)
    }

    #[test]
    fn lists_from_yaml_lists_and_comma_text() {
        let (plan, env) = settings(
            json!({"tags": ["a", " b ", ""]}),
            &[("PLUGIN_TAG", "x, y,")],
        );
        let s = Settings::new(&plan, &env);
        assert_eq!(s.list(&["tags"]), Some(vec!["a".into(), "b".into()]));
        assert_eq!(s.list(&["tag"]), Some(vec!["x".into(), "y".into()]));
        assert_eq!(s.list(&["nothing"]), None);
    }

    #[test]
    fn secrets_come_from_the_environment() {
        let (plan, env) = settings(
            json!({}),
            &[("PLUGIN_PASSWORD", "pw"), ("DOCKER_USERNAME", "u")],
        );
        let s = Settings::new(&plan, &env);
        assert_eq!(s.text(&["password"]).as_deref(), Some("pw"));
        assert_eq!(
            s.text_or_env("username", "DOCKER_USERNAME").as_deref(),
            Some("u")
        );
    }

    #[test]
    fn flags_and_pairs() {
        let (plan, env) = settings(
            json!({"dry_run": true, "no_cache": "yes", "insecure": "maybe",
                   "build_args": ["A=1", "B=x=y"], "labels": {"k": "v"}, "bad": ["novalue"]}),
            &[],
        );
        let s = Settings::new(&plan, &env);
        assert_eq!(s.flag("dry_run").ok(), Some(Some(true)));
        assert_eq!(s.flag("no_cache").ok(), Some(Some(true)));
        assert_eq!(s.flag("missing").ok(), Some(None));
        let err = s
            .flag("insecure")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("`insecure`") && err.contains("maybe"), "{err}");
        assert_eq!(
            s.pairs("build_args").ok(),
            Some(vec![("A".into(), "1".into()), ("B".into(), "x=y".into())])
        );
        assert_eq!(s.pairs("labels").ok(), Some(vec![("k".into(), "v".into())]));
        assert!(s.pairs("bad").is_err());
    }
}
