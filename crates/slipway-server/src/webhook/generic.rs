//! Slipway's generic JSON trigger, for CI systems and scripts without a git host. The
//! format is documented in the [module documentation](super).
//!
//! Unlike the hosts' bodies, this one is written by people, so it is read strictly: an
//! unknown `event`, a field of the wrong type, a parameter name that cannot be an
//! environment variable are errors that name the field.

use serde_json::Value;
use slipway_spec::BuildEvent;

use super::{
    Hook, Parsed, Payload, Provider, RefKind, WebhookError, check_ref, is_zero_sha, kind, quote,
    ref_kind,
};

pub(super) fn parse(root: &Value) -> Result<Parsed, WebhookError> {
    let p = Payload::new(Provider::Generic, "", root);
    let repo = p.required("repo")?.trim();
    let given = p.required("ref")?.trim();
    let reference = if given.starts_with("refs/") {
        given.to_owned()
    } else {
        format!("refs/heads/{given}")
    };
    check_ref(&reference).map_err(|why| {
        p.malformed(format_args!(
            "has `ref` = `{}`, which is not a valid git ref: {why}",
            quote(given, 120)
        ))
    })?;
    let commit = p.sha("commit")?;
    if is_zero_sha(commit) {
        return Err(p.malformed("has `commit` all zeros, which names no commit"));
    }
    let event = match optional(&p, "event")?.as_str() {
        "" | "custom" => BuildEvent::Custom,
        "push" => BuildEvent::Push,
        "tag" => BuildEvent::Tag,
        other => {
            return Err(p.malformed(format_args!(
                "has `event` = `{}`: expected `custom`, `push` or `tag`",
                quote(other, 64)
            )));
        }
    };
    let kind = ref_kind(&reference).ok();
    match (event, &kind) {
        (BuildEvent::Push, Some(RefKind::Branch(_)))
        | (BuildEvent::Tag, Some(RefKind::Tag(_)))
        | (BuildEvent::Custom, _) => {}
        (BuildEvent::Tag, _) => {
            return Err(p.malformed(format_args!(
                "has `event` = `tag` but `ref` = `{}` is not a tag (`refs/tags/…`)",
                quote(&reference, 120)
            )));
        }
        _ => {
            return Err(p.malformed(format_args!(
                "has `event` = `push` but `ref` = `{}` is not a branch (`refs/heads/…`)",
                quote(&reference, 120)
            )));
        }
    }

    let mut hook = Hook::new(Provider::Generic, event);
    match kind {
        Some(RefKind::Branch(branch)) => hook.branch = Some(branch.to_owned()),
        Some(RefKind::Tag(tag)) => hook.tag = Some(tag.to_owned()),
        None => {}
    }
    hook.repo = repo.to_owned();
    hook.commit = commit.to_owned();
    hook.before = optional(&p, "before")?;
    if !hook.before.is_empty() {
        p.sha("before")?;
    }
    hook.reference = reference;
    hook.message = optional(&p, "message")?;
    hook.link = optional(&p, "link")?;
    hook.author = optional(&p, "author")?;
    hook.author_name = optional(&p, "author_name")?;
    hook.author_email = optional(&p, "author_email")?;
    hook.author_avatar = optional(&p, "author_avatar")?;
    hook.clone_url = optional(&p, "clone_url")?;
    hook.sender = hook.author.clone();
    hook.params = params(&p)?;
    Ok(Parsed::Build(Box::new(hook)))
}

/// An optional string field: "" when absent or null, an error for another type.
fn optional(p: &Payload<'_>, path: &str) -> Result<String, WebhookError> {
    match p.at(path) {
        None => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.trim().to_owned()),
        Some(other) => Err(p.malformed(format_args!(
            "has `{path}` as {}, expected a string",
            kind(other)
        ))),
    }
}

/// `params`: names that can be environment variables, values that are scalars.
fn params(p: &Payload<'_>) -> Result<std::collections::BTreeMap<String, String>, WebhookError> {
    let mut out = std::collections::BTreeMap::new();
    let Some(value) = p.at("params") else {
        return Ok(out);
    };
    let Some(map) = value.as_object() else {
        return Err(p.malformed(format_args!(
            "has `params` as {}, expected an object of names and values",
            kind(value)
        )));
    };
    for (name, value) in map {
        let valid_name = name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid_name {
            return Err(p.malformed(format_args!(
                "has a parameter named `{}`: names are letters, digits and `_`, not starting with a digit",
                quote(name, 64)
            )));
        }
        let text = match value {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            Value::Null => continue,
            other => {
                return Err(p.malformed(format_args!(
                    "has `params.{name}` as {}, expected a string, number or boolean",
                    kind(other)
                )));
            }
        };
        out.insert(name.clone(), text);
    }
    Ok(out)
}
