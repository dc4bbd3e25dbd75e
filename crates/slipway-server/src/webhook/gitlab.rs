//! GitLab deliveries: `Push Hook`, `Tag Push Hook`, `Merge Request Hook`, and the same
//! three kinds inside a `System Hook` (read by `object_kind`).
//!
//! What is GitLab's own:
//! - the repository is `project.path_with_namespace`, the full group path
//!   (`group1/group2/group3/repo`), never `namespace` + name;
//! - the commit of a push is `checkout_sha`: for an annotated tag `after` is the tag
//!   object, not a commit (Drone reads `checkout_sha` too; Woodpecker reads `after`);
//! - commits carry no login, so the author's login is the pusher's (`user_username`);
//! - merge request actions are `open`, `reopen`, `update`, `close`, `merge`, `approved`, …;
//!   `update` means new commits only when it has `oldrev`, otherwise it is an edit of the
//!   title, description or labels and is ignored (as Woodpecker does; Drone would build the
//!   same commit again).

use serde_json::Value;
use slipway_spec::BuildEvent;

use super::{
    Hook, Parsed, Payload, Provider, RefKind, WebhookError, deleted_reason, first_nonempty,
    ignored_action, ignored_event, is_zero_sha, quote, ref_kind,
};

const BUILT: &str = "Push Hook, Tag Push Hook, Merge Request Hook";
const MR_BUILT: &str = "open, reopen, update with new commits";

pub(super) fn parse(event: &str, root: &Value) -> Result<Parsed, WebhookError> {
    let provider = Provider::GitLab;
    let kind = match event {
        "Push Hook" => "push",
        "Tag Push Hook" => "tag_push",
        "Merge Request Hook" => "merge_request",
        "System Hook" => root
            .get("object_kind")
            .or_else(|| root.get("event_name"))
            .and_then(Value::as_str)
            .unwrap_or_default(),
        other => return Ok(ignored_event(provider, other, BUILT)),
    };
    match kind {
        "push" => push(&Payload::new(provider, "push", root)),
        "tag_push" => push(&Payload::new(provider, "tag push", root)),
        "merge_request" => merge_request(&Payload::new(provider, "merge request", root)),
        other => Ok(Parsed::Ignored {
            reason: format!(
                "System Hook `{}` events are not built (built: push, tag_push, merge_request)",
                quote(other, 64)
            ),
        }),
    }
}

fn project_hook(p: &Payload<'_>, event: BuildEvent) -> Result<Hook, WebhookError> {
    let mut hook = Hook::new(p.provider, event);
    hook.repo = p
        .required_any(&[
            "project.path_with_namespace",
            "object_attributes.target.path_with_namespace",
        ])?
        .to_owned();
    hook.clone_url = p
        .required_any(&[
            "project.git_http_url",
            "object_attributes.target.git_http_url",
            "repository.git_http_url",
        ])?
        .to_owned();
    hook.repo_link = p.text(&[
        "project.web_url",
        "object_attributes.target.web_url",
        "repository.homepage",
    ]);
    hook.default_branch = p.text(&["project.default_branch"]);
    Ok(hook)
}

/// A push to a branch or a tag.
fn push(p: &Payload<'_>) -> Result<Parsed, WebhookError> {
    let reference = p.reference("ref")?;
    let after = p.sha("after")?;
    if is_zero_sha(after) {
        return Ok(Parsed::Ignored {
            reason: deleted_reason(reference),
        });
    }
    let commit = if p.at("checkout_sha").is_some() {
        p.sha("checkout_sha")?
    } else {
        after
    };
    let kind = match ref_kind(reference) {
        Ok(kind) => kind,
        Err(reason) => return Ok(Parsed::Ignored { reason }),
    };
    let mut hook = match kind {
        RefKind::Branch(branch) => {
            let mut hook = project_hook(p, BuildEvent::Push)?;
            hook.branch = Some(branch.to_owned());
            hook
        }
        RefKind::Tag(tag) => {
            let mut hook = project_hook(p, BuildEvent::Tag)?;
            hook.tag = Some(tag.to_owned());
            hook
        }
    };
    hook.reference = reference.to_owned();
    hook.commit = commit.to_owned();
    hook.before = p.text(&["before"]);
    if is_zero_sha(&hook.before) {
        hook.action = "created".to_owned();
    }

    let head = p
        .at("commits")
        .and_then(Value::as_array)
        .and_then(|commits| {
            commits
                .iter()
                .find(|c| c.get("id").and_then(Value::as_str) == Some(commit))
                .or_else(|| commits.last())
        })
        .unwrap_or(&Value::Null);
    let head = Payload::new(p.provider, p.event, head);
    // An annotated tag's own message when the tagged commit is not in the list.
    hook.message = first_nonempty([head.text(&["message"]), p.text(&["message"])]);
    hook.author = p.text(&["user_username"]);
    hook.author_name = first_nonempty([head.text(&["author.name"]), p.text(&["user_name"])]);
    hook.author_email = first_nonempty([head.text(&["author.email"]), p.text(&["user_email"])]);
    hook.author_avatar = p.text(&["user_avatar"]);
    hook.sender = hook.author.clone();
    hook.link = first_nonempty([head.text(&["url"]), hook.repo_link.clone()]);
    Ok(Parsed::Build(Box::new(hook)))
}

/// A merge request opened, reopened, or updated with new commits.
fn merge_request(p: &Payload<'_>) -> Result<Parsed, WebhookError> {
    let action = p.required("object_attributes.action")?;
    match action {
        "open" | "reopen" => {}
        "update"
            if p.str("object_attributes.oldrev")
                .is_some_and(|rev| !rev.is_empty()) => {}
        "update" => {
            return Ok(Parsed::Ignored {
                reason: "merge request action `update` without `oldrev`: the title, \
                         description or labels changed, no new commits to build"
                    .to_owned(),
            });
        }
        other => return Ok(ignored_action("merge request", other, MR_BUILT)),
    }
    let number = p.number(&["object_attributes.iid"])?;
    let commit = p.sha("object_attributes.last_commit.id")?;
    let source = p.required("object_attributes.source_branch")?;
    let target = p.required("object_attributes.target_branch")?;
    let mut hook = project_hook(p, BuildEvent::PullRequest)?;
    hook.action = action.to_owned();
    hook.reference = format!("refs/merge-requests/{number}/head");
    hook.commit = commit.to_owned();
    hook.before = p.text(&["object_attributes.oldrev"]);
    hook.branch = Some(target.to_owned());
    hook.source_branch = source.to_owned();
    hook.target_branch = target.to_owned();
    hook.pull_request = Some(number);
    hook.pull_request_title = p.text(&["object_attributes.title"]);
    hook.message = hook.pull_request_title.clone();
    hook.link = p.text(&["object_attributes.url"]);
    hook.author = p.text(&["user.username"]);
    hook.author_name = p.text(&["user.name"]);
    hook.author_email = [
        p.text(&["user.email"]),
        p.text(&["object_attributes.last_commit.author.email"]),
    ]
    .into_iter()
    .find(|email| !email.is_empty() && email != "[REDACTED]")
    .unwrap_or_default();
    hook.author_avatar = p.text(&["user.avatar_url"]);
    hook.sender = hook.author.clone();
    hook.source_repo = p.text(&["object_attributes.source.path_with_namespace"]);
    let source_id = p
        .at("object_attributes.source_project_id")
        .and_then(Value::as_u64);
    let target_id = p
        .at("object_attributes.target_project_id")
        .and_then(Value::as_u64);
    hook.from_fork = match (source_id, target_id) {
        (Some(source), Some(target)) => source != target,
        _ => !hook.source_repo.eq_ignore_ascii_case(&hook.repo),
    };
    Ok(Parsed::Build(Box::new(hook)))
}
