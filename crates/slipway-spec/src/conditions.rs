//! Matching `when:` and `trigger:` against a build.
//!
//! Every condition but `status` is decided before the build runs; `status` becomes a
//! [`RunOn`] that the engine checks as the pipeline goes. An empty condition matches
//! everything; exclude patterns win over include patterns.

use crate::context::BuildContext;
use crate::glob::glob_match;
use crate::model::{Condition, Conditions};
use crate::plan::RunOn;

impl Condition {
    /// Whether `value` passes this condition.
    pub fn matches(&self, value: &str) -> bool {
        if self.exclude.iter().any(|p| glob_match(p, value)) {
            return false;
        }
        self.include.is_empty() || self.include.iter().any(|p| glob_match(p, value))
    }

    /// `paths`: included when any changed file matches an include pattern; excluded when
    /// every changed file matches an exclude pattern. Unknown changes always match, so a
    /// build without a diff (a manual run, a first push) is never silently skipped.
    pub fn matches_paths(&self, files: Option<&[String]>) -> bool {
        let Some(files) = files else { return true };
        if self.is_empty() || files.is_empty() {
            return true;
        }
        if !self.exclude.is_empty()
            && files
                .iter()
                .all(|f| self.exclude.iter().any(|p| glob_match(p, f)))
        {
            return false;
        }
        self.include.is_empty()
            || files
                .iter()
                .any(|f| self.include.iter().any(|p| glob_match(p, f)))
    }
}

/// The git ref of a build: the one given, else derived from the tag or branch.
pub fn effective_ref(ctx: &BuildContext) -> String {
    if !ctx.reference.is_empty() {
        return ctx.reference.clone();
    }
    match (&ctx.tag, ctx.pull_request) {
        (Some(tag), _) if !tag.is_empty() => format!("refs/tags/{tag}"),
        (_, Some(pr)) => format!("refs/pull/{pr}/head"),
        _ => format!("refs/heads/{}", ctx.branch),
    }
}

impl Conditions {
    /// Whether every condition except `status` matches this build. `matrix` is the axis
    /// values of the pipeline being compiled (legacy matrix builds).
    pub fn matches(&self, ctx: &BuildContext, matrix: &[(String, String)]) -> bool {
        // A tag build has no branch unless one is given: a `branch` include list then
        // does not match, as in Drone.
        self.branch.matches(&ctx.branch)
            && self.event.matches(ctx.event.as_str())
            && self.reference.matches(&effective_ref(ctx))
            && self.repo.matches(&ctx.repo)
            && self.target.matches(&ctx.target)
            && self.instance.matches(&ctx.instance)
            && self.cron.matches(&ctx.cron)
            && self.action.matches(&ctx.action)
            && self.paths.matches_paths(ctx.changed_files.as_deref())
            && self.matrix.iter().all(|(k, v)| {
                matrix
                    .iter()
                    .find(|(mk, _)| mk == k)
                    .is_none_or(|(_, mv)| mv == v)
            })
    }

    /// When the step or pipeline runs, from `status`.
    pub fn run_on(&self) -> RunOn {
        if self.status.is_empty() {
            RunOn::default()
        } else {
            RunOn {
                success: self.status.matches("success"),
                failure: self.status.matches("failure"),
            }
        }
    }
}
