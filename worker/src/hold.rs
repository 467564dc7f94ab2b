//! Where an attempt's claim stands. An attempt read fresh from the CPU stream (no model named,
//! so no twin entry another worker could read) starts on a **deferred claim**: nothing is
//! written to MongoDB before it runs; its outcome writes the claim and the outcome in one
//! fenced write. The claim is written on its own first when the attempt is about to store
//! something ([`Hold::write_claim`] from the executor's context) or has run for
//! `--claim-after-ms`. Until then its stream entry stays in this worker's pending list (the
//! heartbeat keeps it fresh), so a worker that dies leaves it to the scheduler, which takes it
//! over once it sat idle a worker timeout and counts the attempt: a task that kills its worker
//! costs an attempt like any other.

use std::collections::HashMap;
use std::sync::Arc;

use harmonia_shared::queue::WORKERS_GROUP;
use harmonia_shared::store::{StoreError, tasks::Deferred};
use mongodb::bson::oid::ObjectId;

use crate::worker::Worker;

/// A deferred claim: what it will record, and the stream entry that holds the task meanwhile.
#[derive(Debug, Clone)]
pub struct Unwritten {
    pub claim: Deferred,
    /// The class stream's key and the entry's id, acked once the claim or the outcome is written.
    pub stream: String,
    pub entry_id: String,
}

/// What [`Hold::write_claim`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// MongoDB holds the claim.
    Held,
    /// The task moved on (cancelled, claimed elsewhere): the attempt must stop.
    MovedOn,
    /// The attempt has run: its outcome writes the claim, nothing else may.
    Closed,
}

/// The claim's state.
#[derive(Debug, Clone)]
pub enum State {
    /// Written: MongoDB holds the lease.
    Leased,
    Deferred(Unwritten),
    /// The task moved on before the deferred claim was written (cancelled, claimed elsewhere).
    Lost,
}

#[derive(Debug)]
struct Inner {
    state: State,
    /// Set once the attempt has run: its outcome writes whatever claim is left, nothing else may.
    closed: bool,
}

/// An attempt's claim, shared by the attempt, its executor's context and the heartbeat.
pub struct Hold {
    inner: tokio::sync::Mutex<Inner>,
    task_id: ObjectId,
    lease_token: String,
    /// For the claim's write and its entry's ack (no handles cloned per attempt).
    worker: Arc<Worker>,
}

impl std::fmt::Debug for Hold {
    // Not the worker: its in-flight attempts hold this.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hold")
            .field("task_id", &self.task_id)
            .field("lease_token", &self.lease_token)
            .finish_non_exhaustive()
    }
}

impl Hold {
    pub fn new(state: State, task_id: ObjectId, lease_token: &str, worker: &Arc<Worker>) -> Self {
        Self {
            inner: tokio::sync::Mutex::new(Inner {
                state,
                closed: false,
            }),
            task_id,
            lease_token: lease_token.to_owned(),
            worker: worker.clone(),
        }
    }

    /// Makes sure MongoDB holds the claim (writing a deferred one, then acking its entry).
    /// An error leaves it deferred.
    pub async fn write_claim(&self) -> Result<Written, StoreError> {
        let mut inner = self.inner.lock().await;
        let unwritten = match &inner.state {
            State::Leased => return Ok(Written::Held),
            State::Lost => return Ok(Written::MovedOn),
            State::Deferred(_) if inner.closed => return Ok(Written::Closed),
            State::Deferred(unwritten) => unwritten.clone(),
        };
        let (tasks, lease) = (self.worker.store.tasks(), self.worker.options.lease);
        let won = tasks
            .claim_deferred(self.task_id, &self.lease_token, &unwritten.claim, lease)
            .await?;
        inner.state = if won { State::Leased } else { State::Lost };
        // MongoDB holds the lease now (or the entry was stale): the entry has done its job.
        let ids = [unwritten.entry_id];
        if let Err(e) = self
            .worker
            .queue
            .ack_delete(&unwritten.stream, WORKERS_GROUP, &ids)
            .await
        {
            tracing::warn!("acking a task entry: {e:#}");
        }
        Ok(if won { Written::Held } else { Written::MovedOn })
    }

    /// The state for the outcome, once the attempt has run; a claim write in flight is waited
    /// for, and none starts after.
    pub async fn close(&self) -> State {
        let mut inner = self.inner.lock().await;
        inner.closed = true;
        inner.state.clone()
    }

    /// The state now, unless a claim is being written (`None`: look again next time).
    pub fn peek(&self) -> Option<State> {
        self.inner.try_lock().ok().map(|inner| inner.state.clone())
    }
}

/// The stream entries of `unwritten` claims by stream key (to ack or touch them per stream).
pub fn entries_by_stream<'a>(
    unwritten: impl IntoIterator<Item = &'a Unwritten>,
) -> Vec<(String, Vec<String>)> {
    let mut by_stream: HashMap<&str, Vec<String>> = HashMap::new();
    for u in unwritten {
        let ids = by_stream.entry(u.stream.as_str()).or_default();
        ids.push(u.entry_id.clone());
    }
    by_stream
        .into_iter()
        .map(|(stream, ids)| (stream.to_owned(), ids))
        .collect()
}
