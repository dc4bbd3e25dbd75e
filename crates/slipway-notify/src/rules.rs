//! Events and the rules that pick them: which [`Event`]s a finished build or a deployment
//! raises, and whether a [`Rule`] (repository, branch, environment, events) wants one.
//! Pure: the server feeds it what its event bus says and sends what matches.

use std::fmt;
use std::str::FromStr;

use crate::template::Context;

/// What happened, by the names rules use (`--on build.failure`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Event {
    BuildSuccess,
    BuildFailure,
    BuildError,
    /// A success after a failure (or error) on the same branch.
    BuildFixed,
    /// A failure (or error) after a success on the same branch.
    BuildBroken,
    BuildKilled,
    DeployStarted,
    DeploySucceeded,
    DeployFailed,
    DeployRolledBack,
}

impl Event {
    pub const ALL: [Event; 10] = [
        Event::BuildSuccess,
        Event::BuildFailure,
        Event::BuildError,
        Event::BuildFixed,
        Event::BuildBroken,
        Event::BuildKilled,
        Event::DeployStarted,
        Event::DeploySucceeded,
        Event::DeployFailed,
        Event::DeployRolledBack,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Event::BuildSuccess => "build.success",
            Event::BuildFailure => "build.failure",
            Event::BuildError => "build.error",
            Event::BuildFixed => "build.fixed",
            Event::BuildBroken => "build.broken",
            Event::BuildKilled => "build.killed",
            Event::DeployStarted => "deploy.started",
            Event::DeploySucceeded => "deploy.succeeded",
            Event::DeployFailed => "deploy.failed",
            Event::DeployRolledBack => "deploy.rolled_back",
        }
    }

    /// The events a finished build raises: its status, plus `build.fixed` or
    /// `build.broken` when it changes the outcome of `previous`, the status of the last
    /// finished build of the same branch (killed and unknown builds do not count as an
    /// outcome). Anything but `success`, `failure`, `error`, `killed` raises nothing.
    pub fn for_build(status: &str, previous: Option<&str>) -> Vec<Event> {
        let bad = |s: &str| matches!(s, "failure" | "error");
        let mut events = match status {
            "success" => vec![Event::BuildSuccess],
            "failure" => vec![Event::BuildFailure],
            "error" => vec![Event::BuildError],
            "killed" => vec![Event::BuildKilled],
            _ => Vec::new(),
        };
        match previous {
            Some(previous) if status == "success" && bad(previous) => {
                events.push(Event::BuildFixed)
            }
            Some("success") if bad(status) => events.push(Event::BuildBroken),
            _ => {}
        }
        events
    }

    /// The deployer's state as an event (`started`, `succeeded`, `failed`, `rolled_back`).
    pub fn for_deploy(status: &str) -> Option<Event> {
        match status {
            "started" => Some(Event::DeployStarted),
            "succeeded" => Some(Event::DeploySucceeded),
            "failed" => Some(Event::DeployFailed),
            "rolled_back" => Some(Event::DeployRolledBack),
            _ => None,
        }
    }

    pub fn is_deploy(self) -> bool {
        self.as_str().starts_with("deploy.")
    }
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An event name that is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown event `{0}` (known: build.success, build.failure, build.error, build.fixed, build.broken, build.killed, deploy.started, deploy.succeeded, deploy.failed, deploy.rolled_back; `build.*` and `deploy.*` for all of a kind)"
)]
pub struct UnknownEvent(pub String);

impl FromStr for Event {
    type Err = UnknownEvent;

    fn from_str(s: &str) -> Result<Event, UnknownEvent> {
        Event::ALL
            .into_iter()
            .find(|e| e.as_str() == s)
            .ok_or_else(|| UnknownEvent(s.to_string()))
    }
}

/// Events as rules write them: names, or `build.*` / `deploy.*`.
pub fn parse_events(names: &[String]) -> Result<Vec<Event>, UnknownEvent> {
    let mut events = Vec::new();
    for name in names {
        let name = name.trim();
        let found: Vec<Event> = match name {
            "build.*" => Event::ALL.into_iter().filter(|e| !e.is_deploy()).collect(),
            "deploy.*" => Event::ALL.into_iter().filter(|e| e.is_deploy()).collect(),
            _ => vec![name.parse()?],
        };
        for event in found {
            if !events.contains(&event) {
                events.push(event);
            }
        }
    }
    Ok(events)
}

/// Which events a channel wants. Patterns are globs (`*` any text, `?` one character);
/// an absent pattern matches everything. No events: every event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rule {
    /// `owner/name` pattern (`acme/*`).
    pub repo: Option<String>,
    pub branch: Option<String>,
    /// The deploy environment pattern; a rule with one matches deploy events only.
    pub environment: Option<String>,
    pub events: Vec<Event>,
}

impl Rule {
    pub fn matches(&self, event: Event, context: &Context) -> bool {
        if !self.events.is_empty() && !self.events.contains(&event) {
            return false;
        }
        let repo = if context.repo.full_name.is_empty() {
            &context.repo.name
        } else {
            &context.repo.full_name
        };
        if let Some(pattern) = &self.repo
            && !glob(pattern, repo)
        {
            return false;
        }
        if let Some(pattern) = &self.branch
            && !glob(pattern, &context.build.branch)
        {
            return false;
        }
        if let Some(pattern) = &self.environment {
            let Some(deploy) = &context.deploy else {
                return false;
            };
            if !glob(pattern, &deploy.environment) {
                return false;
            }
        }
        true
    }
}

/// `*` matches any text (`/` included), `?` one character; everything else itself.
pub fn glob(pattern: &str, text: &str) -> bool {
    let pattern: Vec<char> = pattern.chars().collect();
    let text: Vec<char> = text.chars().collect();
    // Iterative matching with backtracking to the last `*`: linear in practice, never
    // exponential.
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && (pattern[p] == '?' || pattern[p] == text[t]) {
            p += 1;
            t += 1;
        } else if p < pattern.len() && pattern[p] == '*' {
            star = Some((p, t));
            p += 1;
        } else if let Some((star_p, star_t)) = star {
            p = star_p + 1;
            t = star_t + 1;
            star = Some((star_p, star_t + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|c| *c == '*')
}
