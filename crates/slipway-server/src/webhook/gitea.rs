//! Gitea, Forgejo and Gogs deliveries: `push` (branches and tags) and `pull_request`.
//!
//! The bodies have GitHub's shape and are read by [`super::github`]'s functions. What is
//! Gitea's own:
//! - the PR action for new commits is `synchronized` (`synchronize` is accepted too);
//! - a new tag comes as a `create` *and* a `push` to `refs/tags/…`: the push builds and the
//!   create is ignored, as Drone does (Woodpecker does the opposite; building both would
//!   build the tag twice);
//! - trimmed bodies (Woodpecker's fixtures, older Gitea) may lack `pull_request.number`
//!   (the top-level `number` is read first), `head_commit` (the `commits` list is read) and
//!   `pull_request.head.repo` (then the PR counts as from a fork).

use serde_json::Value;

use super::{Parsed, Payload, Provider, WebhookError, github, ignored_event};

const BUILT: &str = "push, pull_request";
const PR_ACTIONS: &[&str] = &["opened", "synchronized", "synchronize", "reopened"];

pub(super) fn parse(event: &str, root: &Value) -> Result<Parsed, WebhookError> {
    let provider = Provider::Gitea;
    match event {
        "push" => github::push(&Payload::new(provider, "push", root)),
        "pull_request" => {
            github::pull_request(&Payload::new(provider, "pull_request", root), PR_ACTIONS)
        }
        "create" => Ok(github::created(&Payload::new(provider, "create", root))),
        "delete" => Ok(Parsed::Ignored {
            reason: "delete: nothing to build".to_owned(),
        }),
        other => Ok(ignored_event(provider, other, BUILT)),
    }
}
