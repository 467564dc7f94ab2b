//! Where an attempt's claim stands. An attempt read fresh from the CPU stream (no model named,
//! so no twin entry another worker could read) starts on a **deferred claim**: nothing is
//! written to MongoDB before it runs; its outcome writes the claim and the outcome in one
//! fenced write. The claim is written on its own first when the attempt is about to store
//! something ([`Hold::write_claim`] from the executor's context) or has run for
//! `--claim-after-ms`. Until then its stream entry stays in this worker's pending list (the
//! heartbeat keeps it fresh), so a worker that dies leaves it to `XAUTOCLAIM`, whose
//! re-delivery claims at once: a task that kills its worker is counted like any other attempt.

use std::time::Duration;

use harmonia_shared::queue::{Queue, WORKERS_GROUP};
use harmonia_shared::store::{Store, StoreError, tasks::Deferred};
use mongodb::bson::oid::ObjectId;

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
#[derive(Debug)]
pub struct Hold {
    inner: tokio::sync::Mutex<Inner>,
    task_id: ObjectId,
    lease_token: String,
    store: Store,
    queue: Queue,
    lease: Duration,
}

impl Hold {
    pub fn new(
        state: State,
        task_id: ObjectId,
        lease_token: &str,
        worker: &crate::worker::Worker,
    ) -> Self {
        Self {
            inner: tokio::sync::Mutex::new(Inner {
                state,
                closed: false,
            }),
            task_id,
            lease_token: lease_token.to_owned(),
            store: worker.store.clone(),
            queue: worker.queue.clone(),
            lease: worker.options.lease,
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
        let tasks = self.store.tasks();
        let won = tasks
            .claim_deferred(
                self.task_id,
                &self.lease_token,
                &unwritten.claim,
                self.lease,
            )
            .await?;
        inner.state = if won { State::Leased } else { State::Lost };
        // MongoDB holds the lease now (or the entry was stale): the entry has done its job.
        let ids = [unwritten.entry_id];
        if let Err(e) = self
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
