//! The engine's [`Deployer`] for a leased stage: its deploy steps ask the server that
//! leased it (`POST /api/runner/stages/{stage}/deploy`, with the runner's credential and
//! the stage's attempt, see [`crate::protocol::StageDeploy`]) and log the NDJSON progress
//! the answer streams.

use bytes::{Buf, BytesMut};
use slipway_engine::deployer::{DeployCall, DeployFuture, DeployProgress, Deployer};

use crate::client::{CallError, Client};
use crate::protocol::{DEPLOY_REFUSED, StageDeploy};

/// Deploys on behalf of one attempt of one stage.
pub(crate) struct StageDeployer {
    pub client: Client,
    pub runner_id: i64,
    pub stage_id: i64,
    pub attempt: u32,
}

impl std::fmt::Debug for StageDeployer {
    // The client holds the runner's credential.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StageDeployer")
            .field("stage_id", &self.stage_id)
            .field("attempt", &self.attempt)
            .finish_non_exhaustive()
    }
}

impl Deployer for StageDeployer {
    fn deploy<'a>(
        &'a self,
        call: DeployCall,
        progress: &'a (dyn Fn(DeployProgress) + Send + Sync),
    ) -> DeployFuture<'a> {
        Box::pin(async move {
            let body = serde_json::to_vec(&StageDeploy {
                runner_id: self.runner_id,
                attempt: self.attempt,
                call,
            })
            .map_err(|e| format!("cannot encode the deploy request: {e}"))?;
            let path = format!("/api/runner/stages/{}/deploy", self.stage_id);
            let mut response = self
                .client
                .post_streamed(&path, body.into())
                .await
                .map_err(|e| match &e {
                    CallError::Status {
                        code: Some(code),
                        message,
                        ..
                    } if code == DEPLOY_REFUSED => {
                        format!("the server refused to deploy: {message}")
                    }
                    CallError::Status { message, .. } => format!("the deploy failed: {message}"),
                    other => other.to_string(),
                })?;
            let url = self.client.url(&path);
            let mut buffer = BytesMut::new();
            loop {
                let chunk = response
                    .chunk()
                    .await
                    .map_err(|e| format!("{url}: the answer broke off: {e}"))?;
                let end = chunk.is_none();
                if let Some(chunk) = chunk {
                    buffer.extend_from_slice(&chunk);
                } else if !buffer.is_empty() {
                    buffer.extend_from_slice(b"\n");
                }
                while let Some(newline) = buffer.iter().position(|b| *b == b'\n') {
                    let line = buffer.split_to(newline);
                    buffer.advance(1);
                    if line.iter().all(u8::is_ascii_whitespace) {
                        continue;
                    }
                    match serde_json::from_slice::<DeployProgress>(&line) {
                        Ok(event) => progress(event),
                        Err(e) => tracing::warn!("{url}: an unreadable progress line: {e}"),
                    }
                }
                if end {
                    return Ok(());
                }
            }
        })
    }
}
