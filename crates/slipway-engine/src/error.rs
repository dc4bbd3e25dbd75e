//! Errors of the engine itself. A step that exits non-zero is not one of these: it is a
//! `Failure` in the report. These describe what kept the engine from running something, and
//! their messages are written for the person who has to fix it.

/// Why the engine could not set up a build, a pipeline or a step.
///
/// `run` returns it only for problems that stop the whole build before anything ran (Docker
/// unreachable, an invalid plan, an unusable work directory); everything later ends up as the
/// `error` of a step or pipeline report, rendered with `Display`. Messages therefore carry the
/// underlying error inline rather than as a `source`.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(
        "cannot reach the Docker engine ({error}); is dockerd running? Start it \
         (`systemctl start docker`, or `dockerd &` as root) or point DOCKER_HOST at a running engine"
    )]
    DockerUnavailable { error: bollard::errors::Error },

    #[error("Docker engine error while {action}: {error}")]
    Docker {
        action: String,
        error: bollard::errors::Error,
    },

    #[error("image `{image}` is not available: {reason}; {hint}")]
    Image {
        image: String,
        reason: String,
        hint: &'static str,
    },

    /// A known plugin that is not native yet, whose image is not on the engine: pulling it
    /// is not attempted (it would hang on an offline runner).
    #[error(
        "plugin `{plugin}` is not available natively yet and its image cannot be pulled here \
         (`{image}` is not on this runner's Docker engine); load the image on the runner \
         (`docker pull {image}` or `docker load`), or turn native plugins off to pull plugin \
         images as usual"
    )]
    PluginUnavailable { plugin: String, image: String },

    #[error("cloning {repo} at `{commit}` failed: {stderr}")]
    Clone {
        repo: String,
        commit: String,
        stderr: String,
    },

    #[error("{action}: {error}")]
    Io {
        action: String,
        error: std::io::Error,
    },

    #[error("invalid plan: {0}")]
    InvalidPlan(String),

    #[error("pipeline type `{0}` cannot run locally (only `docker` and `exec` pipelines can)")]
    UnsupportedType(String),

    /// A dependency cache (`cache: {}` volume) could not be used.
    #[error("cache volume `{volume}` (Docker volume {docker_volume}): {reason}")]
    Cache {
        volume: String,
        docker_volume: String,
        reason: String,
    },

    /// The step asks for something this build may not do or this backend cannot do.
    #[error("step `{step}`: {reason}")]
    StepRefused { step: String, reason: String },
}

impl EngineError {
    pub(crate) fn docker(action: impl Into<String>, error: bollard::errors::Error) -> Self {
        EngineError::Docker {
            action: action.into(),
            error,
        }
    }

    pub(crate) fn io(action: impl Into<String>, error: std::io::Error) -> Self {
        EngineError::Io {
            action: action.into(),
            error,
        }
    }

    pub(crate) fn refused(step: &str, reason: impl Into<String>) -> Self {
        EngineError::StepRefused {
            step: step.to_string(),
            reason: reason.into(),
        }
    }
}
