//! Nested kill switches: the build, each pipeline. Firing one stops everything below it and
//! records why, so the steps it kills can say so in their log.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone)]
pub(crate) struct Abort {
    token: CancellationToken,
    reason: Arc<OnceLock<String>>,
    parent: Option<Box<Abort>>,
}

impl Abort {
    /// The build's scope: fires when the caller cancels (reason "build cancelled") or when
    /// [`Abort::abort`] is called on it (build timeout).
    pub(crate) fn root(cancel: &CancellationToken) -> Abort {
        Abort {
            token: cancel.child_token(),
            reason: Arc::default(),
            parent: None,
        }
    }

    pub(crate) fn child(&self) -> Abort {
        Abort {
            token: self.token.child_token(),
            reason: Arc::default(),
            parent: Some(Box::new(self.clone())),
        }
    }

    pub(crate) fn abort(&self, reason: String) {
        // The first reason wins: later ones are consequences of the first.
        let _ = self.reason.set(reason);
        self.token.cancel();
    }

    pub(crate) fn is_aborted(&self) -> bool {
        self.token.is_cancelled()
    }

    pub(crate) fn token(&self) -> &CancellationToken {
        &self.token
    }

    pub(crate) async fn aborted(&self) {
        self.token.cancelled().await
    }

    /// Why this scope was aborted: its own reason, else its parent's, else a cancellation.
    pub(crate) fn reason(&self) -> String {
        if let Some(reason) = self.reason.get() {
            return reason.clone();
        }
        match &self.parent {
            Some(parent) if parent.is_aborted() => parent.reason(),
            _ => "build cancelled".to_string(),
        }
    }

    /// Runs `work` to completion; if `limit` expires first, aborts this scope with
    /// "`what` timed out after …" and still waits for `work`, which then winds down quickly
    /// (and cleans up after itself) because it watches this scope.
    pub(crate) async fn with_timeout<T>(
        &self,
        what: &str,
        limit: Option<Duration>,
        work: impl Future<Output = T>,
    ) -> T {
        let Some(limit) = limit else {
            return work.await;
        };
        let mut work = std::pin::pin!(work);
        tokio::select! {
            out = &mut work => out,
            () = tokio::time::sleep(limit) => {
                self.abort(format!("{what} timed out after {}", human(limit)));
                work.await
            }
        }
    }
}

/// `5s`, `1m30s`, `1.5s`: how limits appear in messages.
pub(crate) fn human(d: Duration) -> String {
    if d.subsec_nanos() != 0 {
        return format!("{:?}", d);
    }
    let secs = d.as_secs();
    match (secs / 3600, secs / 60 % 60, secs % 60) {
        (0, 0, s) => format!("{s}s"),
        (0, m, 0) => format!("{m}m"),
        (0, m, s) => format!("{m}m{s}s"),
        (h, m, s) => format!("{h}h{m}m{s}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_durations() {
        assert_eq!(human(Duration::from_secs(5)), "5s");
        assert_eq!(human(Duration::from_secs(90)), "1m30s");
        assert_eq!(human(Duration::from_secs(120)), "2m");
        assert_eq!(human(Duration::from_secs(3601)), "1h0m1s");
        assert_eq!(human(Duration::from_millis(1500)), "1.5s");
    }

    #[test]
    fn reason_comes_from_the_scope_that_fired() {
        let cancel = CancellationToken::new();
        let root = Abort::root(&cancel);
        let pipeline = root.child();
        assert!(!pipeline.is_aborted());
        pipeline.abort("pipeline timed out after 1s".into());
        assert!(pipeline.is_aborted() && !root.is_aborted());
        assert_eq!(pipeline.reason(), "pipeline timed out after 1s");

        let other = root.child();
        cancel.cancel();
        assert!(other.is_aborted());
        assert_eq!(other.reason(), "build cancelled");
    }
}
