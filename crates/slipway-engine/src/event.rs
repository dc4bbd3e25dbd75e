//! What the engine tells the outside world: events while a build runs, a report at the end.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize, Serializer};

/// The state of a step, a pipeline or a whole build.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pending,
    Running,
    Success,
    Failure,
    Skipped,
    /// Cancelled, or stopped because a time limit (step, pipeline or build) expired.
    Killed,
    /// The engine could not run it at all (missing image, refused mount, Docker error, ...).
    Error,
}

impl Status {
    /// Whether this outcome counts as "the build is failing" for `run_on` / `status` conditions.
    pub fn is_failed(self) -> bool {
        matches!(self, Status::Failure | Status::Killed | Status::Error)
    }

    /// Reads [`Status::as_str`]'s names.
    pub fn parse(text: &str) -> Option<Status> {
        Some(match text {
            "pending" => Status::Pending,
            "running" => Status::Running,
            "success" => Status::Success,
            "failure" => Status::Failure,
            "skipped" => Status::Skipped,
            "killed" => Status::Killed,
            "error" => Status::Error,
            _ => return None,
        })
    }

    /// Whether nothing more will happen to it.
    pub fn is_done(self) -> bool {
        !matches!(self, Status::Pending | Status::Running)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Running => "running",
            Status::Success => "success",
            Status::Failure => "failure",
            Status::Skipped => "skipped",
            Status::Killed => "killed",
            Status::Error => "error",
        }
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One thing that happened during a build, in the order it happened.
///
/// Every pipeline that is not skipped gets `PipelineStarted` .. `PipelineFinished`; every
/// step, service and the `clone` pseudo-step that starts gets `StepStarted` .. `StepFinished`
/// with its `Log` lines in between. Skipped steps and pipelines only get their `*Finished`
/// event (status `Skipped`), so a consumer learns about every entry of the plan. A native
/// `plugins/docker` step that pushed also sends one `Artifact` per pushed image, between its
/// last `Log` and its `StepFinished`.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    PipelineStarted {
        pipeline: String,
    },
    StepStarted {
        pipeline: String,
        step: String,
    },
    /// One line of output, already masked, without its line terminator.
    Log {
        pipeline: String,
        step: String,
        #[serde(serialize_with = "unix_millis")]
        time: SystemTime,
        line: String,
    },
    StepFinished {
        pipeline: String,
        step: String,
        status: Status,
        exit_code: Option<i64>,
        #[serde(serialize_with = "millis")]
        duration: Duration,
    },
    PipelineFinished {
        pipeline: String,
        status: Status,
    },
    /// A native `plugins/docker` step pushed an image: `image` is the repository as pushed
    /// (`127.0.0.1:5000/team/app`), `tags` every tag pushed for it, `digest` the manifest
    /// digest the registry accepted (`sha256:...`), so `image@digest` pulls exactly it.
    Artifact {
        pipeline: String,
        step: String,
        image: String,
        tags: Vec<String>,
        digest: String,
    },
}

/// Receives the events of a build. Called from the engine's tasks, so it must not block for
/// long: a slow sink slows log streaming down.
pub trait EventSink: Send + Sync {
    fn event(&self, event: Event);
}

impl<F: Fn(Event) + Send + Sync> EventSink for F {
    fn event(&self, event: Event) {
        self(event)
    }
}

/// The outcome of [`crate::run`].
#[derive(Debug, Clone, Serialize)]
pub struct BuildReport {
    pub status: Status,
    pub pipelines: Vec<PipelineReport>,
    /// The random id that labels every Docker resource of this build (`io.slipway.build`).
    pub build_id: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct PipelineReport {
    pub name: String,
    pub status: Status,
    /// `clone` first (when it ran), then services, then steps in plan order.
    pub steps: Vec<StepReport>,
    /// Why the pipeline could not run at all (unsupported type, network creation failed, ...).
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct StepReport {
    pub name: String,
    pub status: Status,
    pub exit_code: Option<i64>,
    #[serde(serialize_with = "millis")]
    pub duration: Duration,
    /// Why the step could not run (as opposed to: it ran and exited non-zero).
    pub error: Option<String>,
}

impl StepReport {
    pub(crate) fn skipped(name: &str) -> StepReport {
        StepReport {
            name: name.to_string(),
            status: Status::Skipped,
            exit_code: None,
            duration: Duration::ZERO,
            error: None,
        }
    }
}

fn unix_millis<S: Serializer>(time: &SystemTime, serializer: S) -> Result<S::Ok, S::Error> {
    let millis = time
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    serializer.serialize_u64(u64::try_from(millis).unwrap_or(u64::MAX))
}

fn millis<S: Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_u64(u64::try_from(duration.as_millis()).unwrap_or(u64::MAX))
}
