//! GitHub deliveries: `push` (branches and tags) and `pull_request`.
//!
//! Gitea's bodies have GitHub's shape, so [`push`] and [`pull_request`] read both; where
//! the two differ (Gitea has no `created`/`deleted`/`forced` flags, names the compare view
//! `compare_url`, may omit `head_commit`, and gives its pusher a `login`) the alternatives
//! are read in turn.

use serde_json::Value;
use slipway_spec::BuildEvent;

use super::{
    Hook, Parsed, Payload, Provider, RefKind, WebhookError, deleted_reason, first_nonempty,
    ignored_action, ignored_event, is_zero_sha, quote, ref_kind,
};

const BUILT: &str = "push, pull_request";
const PR_ACTIONS: &[&str] = &["opened", "synchronize", "reopened"];

pub(super) fn parse(event: &str, root: &Value) -> Result<Parsed, WebhookError> {
    let provider = Provider::GitHub;
    match event {
        "push" => push(&Payload::new(provider, "push", root)),
        "pull_request" => pull_request(&Payload::new(provider, "pull_request", root), PR_ACTIONS),
        "create" => Ok(created(&Payload::new(provider, "create", root))),
        "delete" => Ok(Parsed::Ignored {
            reason: "delete: nothing to build".to_owned(),
        }),
        other => Ok(ignored_event(provider, other, BUILT)),
    }
}

/// `create` (a new branch or tag): the host also sends a push for the ref, which is what
/// builds, with the commit that `create` does not name.
pub(super) fn created(p: &Payload<'_>) -> Parsed {
    let name = quote(p.str("ref").unwrap_or_default(), 120);
    let reason = match p.str("ref_type") {
        Some("tag") => format!(
            "create: the tag `{name}` is built from {}'s push to `refs/tags/{name}`",
            p.provider
        ),
        Some("branch") => format!(
            "create: the branch `{name}` is built from {}'s push to `refs/heads/{name}`",
            p.provider
        ),
        _ => "create: nothing to build".to_owned(),
    };
    Parsed::Ignored { reason }
}

/// The repository fields shared by GitHub's and Gitea's bodies.
fn repo_hook(p: &Payload<'_>, event: BuildEvent) -> Result<Hook, WebhookError> {
    let mut hook = Hook::new(p.provider, event);
    hook.repo = p.required("repository.full_name")?.to_owned();
    hook.clone_url = p.required("repository.clone_url")?.to_owned();
    hook.repo_link = p.text(&["repository.html_url"]);
    hook.default_branch = p.text(&["repository.default_branch", "repository.master_branch"]);
    Ok(hook)
}

/// A push to a branch or a tag (GitHub's and Gitea's `push`).
pub(super) fn push(p: &Payload<'_>) -> Result<Parsed, WebhookError> {
    let reference = p.reference("ref")?;
    let after = p.sha("after")?;
    if p.flag("deleted") || is_zero_sha(after) {
        return Ok(Parsed::Ignored {
            reason: deleted_reason(reference),
        });
    }
    let kind = match ref_kind(reference) {
        Ok(kind) => kind,
        Err(reason) => return Ok(Parsed::Ignored { reason }),
    };
    let event = match kind {
        RefKind::Branch(_) => BuildEvent::Push,
        RefKind::Tag(_) => BuildEvent::Tag,
    };
    let mut hook = repo_hook(p, event)?;
    match kind {
        RefKind::Branch(branch) => hook.branch = Some(branch.to_owned()),
        RefKind::Tag(tag) => {
            hook.tag = Some(tag.to_owned());
            hook.branch = p
                .str("base_ref")
                .and_then(|base| base.strip_prefix("refs/heads/"))
                .filter(|branch| !branch.is_empty())
                .map(str::to_owned);
        }
    }
    hook.reference = reference.to_owned();
    hook.commit = after.to_owned();
    hook.before = p.text(&["before"]);
    if p.flag("created") || is_zero_sha(&hook.before) {
        hook.action = "created".to_owned();
    }
    hook.forced = p.flag("forced");

    let head = head_commit(p, after);
    let head = Payload::new(p.provider, p.event, head.unwrap_or(&Value::Null));
    hook.message = head.text(&["message"]);
    hook.author = first_nonempty([
        head.text(&["author.username"]),
        p.text(&[
            "pusher.login",
            "pusher.username",
            "pusher.name",
            "sender.login",
        ]),
    ]);
    hook.author_name = first_nonempty([
        head.text(&["author.name"]),
        p.text(&["pusher.full_name", "pusher.name"]),
    ]);
    hook.author_email = first_nonempty([head.text(&["author.email"]), p.text(&["pusher.email"])]);
    hook.author_avatar = p.text(&["sender.avatar_url", "pusher.avatar_url"]);
    hook.sender = p.text(&["sender.login", "pusher.login", "pusher.name"]);
    hook.link = first_nonempty([
        p.text(&["compare", "compare_url"]),
        head.text(&["url"]),
        hook.repo_link.clone(),
    ]);
    Ok(Parsed::Build(Box::new(hook)))
}

/// `head_commit`, else the entry of `commits` whose id is `after`, else the first entry
/// (Gitea lists the newest first).
fn head_commit<'a>(p: &Payload<'a>, after: &str) -> Option<&'a Value> {
    if let Some(head) = p.at("head_commit").filter(|head| head.is_object()) {
        return Some(head);
    }
    let commits = p.at("commits")?.as_array()?;
    commits
        .iter()
        .find(|commit| commit.get("id").and_then(Value::as_str) == Some(after))
        .or_else(|| commits.first())
        .filter(|commit| commit.is_object())
}

/// A pull request opened, updated with commits or reopened (GitHub's and Gitea's
/// `pull_request`); other actions are ignored.
pub(super) fn pull_request(p: &Payload<'_>, actions: &[&str]) -> Result<Parsed, WebhookError> {
    let action = p.required("action")?;
    if !actions.contains(&action) {
        return Ok(ignored_action("pull_request", action, &actions.join(", ")));
    }
    let number = p.number(&["number", "pull_request.number"])?;
    let commit = p.sha("pull_request.head.sha")?;
    let source = p.required("pull_request.head.ref")?;
    let target = p.required("pull_request.base.ref")?;
    let mut hook = repo_hook(p, BuildEvent::PullRequest)?;
    hook.action = action.to_owned();
    hook.reference = format!("refs/pull/{number}/head");
    hook.commit = commit.to_owned();
    hook.before = p.text(&["pull_request.base.sha"]);
    hook.branch = Some(target.to_owned());
    hook.source_branch = source.to_owned();
    hook.target_branch = target.to_owned();
    hook.pull_request = Some(number);
    hook.pull_request_title = p.text(&["pull_request.title"]);
    hook.message = hook.pull_request_title.clone();
    hook.link = p.text(&["pull_request.html_url"]);
    hook.author = p.text(&[
        "pull_request.user.login",
        "pull_request.user.username",
        "sender.login",
    ]);
    hook.author_name = p.text(&["pull_request.user.full_name", "pull_request.user.name"]);
    hook.author_email = p.text(&["pull_request.user.email"]);
    hook.author_avatar = p.text(&["pull_request.user.avatar_url", "sender.avatar_url"]);
    hook.sender = p.text(&["sender.login", "pull_request.user.login"]);
    hook.source_repo = p.text(&["pull_request.head.repo.full_name"]);
    hook.from_fork = !hook.source_repo.eq_ignore_ascii_case(&hook.repo);
    Ok(Parsed::Build(Box::new(hook)))
}
