//! Group commit of the runners' stage ends on SQLite.
//!
//! SQLite has one writer and the store one connection, and every commit waits for an fsync
//! (`synchronous = FULL`), which costs milliseconds on a virtual disk: one commit per stage
//! end would cap a server at a few hundred stages a second however many runners it has.
//! So [`Store::end_leased_stage`] hands its end to one task that takes every end waiting
//! and applies them in one transaction: one fsync for all of them, and each caller is
//! answered only after that commit. An end that waits is one that arrived while the
//! previous commit ran, so nothing is delayed on purpose.
//!
//! Invariants:
//! - An end is answered after the commit that holds it, never before.
//! - Each end is applied exactly as alone ([`end_in`]): a refused one writes nothing, and
//!   the others of its batch do not see a difference.
//! - A batch that fails is rolled back whole and its ends are applied again one at a time,
//!   so one bad end costs only itself.
//!
//! PostgreSQL needs none of this: its connections commit side by side and it groups their
//! WAL flushes itself.

use tokio::sync::{mpsc, oneshot};

use super::queue::end_in;
use super::{EndedStage, LeasedEnd, Result, Store};

/// At most this many ends share one commit.
const MAX_BATCH: usize = 64;

/// Where [`Store::end_leased_stage`] sends its ends on SQLite.
pub(super) type EndSender = mpsc::UnboundedSender<EndRequest>;

/// An end on its way to the committing task, with where its answer goes.
pub(super) struct EndRequest {
    end: LeasedEnd,
    reply: oneshot::Sender<Result<Option<EndedStage>>>,
}

/// Starts the committing task of `store` (a store without a sender of its own, so the
/// task ends when the last store that sends to it is dropped).
pub(super) fn start(store: Store) -> EndSender {
    let (sender, receiver) = mpsc::unbounded_channel();
    tokio::spawn(commit_ends(store, receiver));
    sender
}

/// Sends `end` to the committing task and waits for its commit. `Err(end)` when the task
/// is gone (it panicked): the caller then applies the end itself. A task that stops while
/// it holds the end answers with an error, and the runner's resent `/done` comes back
/// here: applied then, or refused as a resend if that commit went through after all.
pub(super) async fn send(
    sender: &EndSender,
    end: LeasedEnd,
) -> std::result::Result<Result<Option<EndedStage>>, LeasedEnd> {
    let (reply, answer) = oneshot::channel();
    sender
        .send(EndRequest { end, reply })
        .map_err(|refused| refused.0.end)?;
    Ok(answer
        .await
        .unwrap_or_else(|_| Err(sqlx::Error::WorkerCrashed.into())))
}

async fn commit_ends(store: Store, mut receiver: mpsc::UnboundedReceiver<EndRequest>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while receiver.recv_many(&mut batch, MAX_BATCH).await > 0 {
        match apply(&store, &batch).await {
            Ok(results) => {
                for (request, result) in batch.drain(..).zip(results) {
                    // A caller that went away (its runner hung up) is answered by nobody:
                    // its end is committed all the same, and a resent `/done` finds it.
                    let _ = request.reply.send(Ok(result));
                }
            }
            Err(error) if batch.len() == 1 => {
                if let Some(request) = batch.pop() {
                    let _ = request.reply.send(Err(error));
                }
            }
            Err(error) => {
                tracing::warn!(
                    "committing {} stage ends together failed ({error}); applying them one at a time",
                    batch.len()
                );
                for request in batch.drain(..) {
                    let result = apply(&store, std::slice::from_ref(&request))
                        .await
                        .map(|mut one| one.pop().flatten());
                    let _ = request.reply.send(result);
                }
            }
        }
    }
}

/// Applies `requests` in one transaction; what each did, in order.
async fn apply(store: &Store, requests: &[EndRequest]) -> Result<Vec<Option<EndedStage>>> {
    let mut conn = store.conn().await?;
    let mut tx = store.begin(&mut conn).await?;
    let mut results = Vec::with_capacity(requests.len());
    for request in requests {
        results.push(end_in(&mut tx, store.backend, &request.end).await?);
    }
    tx.commit().await?;
    Ok(results)
}
