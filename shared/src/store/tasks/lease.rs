//! The transitions a worker makes, each fenced: a claim must see the attempt the stream entry
//! was published with, and every later change must present the claim's lease token. A worker
//! that lost its lease (it was presumed dead and the task re-queued) can change nothing.

use mongodb::ClientSession;
use mongodb::bson::oid::ObjectId;
use mongodb::bson::{Bson, DateTime, Document, doc};
use mongodb::options::ReturnDocument;

use super::TaskRepo;
use crate::model::task::ATTEMPTS_KEPT;
use crate::model::{Progress, RunTask, TaskError, TaskStatus};
use crate::store::StoreError;

/// A won claim.
#[derive(Debug, Clone)]
pub struct Claim {
    pub task: RunTask,
    pub lease_token: String,
}

/// How an attempt ended.
#[derive(Debug, Clone)]
pub enum Outcome {
    Succeeded {
        outputs: Document,
    },
    /// `retry_at: Some` re-queues the task after its backoff; `None` fails it for good.
    Failed {
        error: TaskError,
        retry_at: Option<DateTime>,
    },
    Cancelled,
    /// Not run (worker shutting down): re-queued at once, and the attempt is not counted.
    HandedBack,
}

impl Outcome {
    /// The status the task has after this outcome.
    pub fn status(&self) -> TaskStatus {
        match self {
            Self::Succeeded { .. } => TaskStatus::Succeeded,
            Self::Failed {
                retry_at: Some(_), ..
            }
            | Self::HandedBack => TaskStatus::Queued,
            Self::Failed { retry_at: None, .. } => TaskStatus::Failed,
            Self::Cancelled => TaskStatus::Cancelled,
        }
    }
}

fn finished(status: TaskStatus) -> Document {
    doc! {
        "status": status.as_str(),
        "finished_at": "$$NOW",
        "duration_ms": { "$subtract": ["$$NOW", "$started_at"] },
        "lease_token": null,
        "lease_expires_at": null,
    }
}

fn requeued(publish_due: mongodb::bson::Bson) -> Document {
    doc! {
        "status": "queued",
        "publish_due": publish_due,
        "lease_token": null,
        "lease_expires_at": null,
        "worker_id": null,
        "gpu_indices": [],
    }
}

/// A value as a pipeline constant: a string inside it that starts with `$` (an error message
/// can) is not read as a field path.
fn literal<T: serde::Serialize>(value: &T) -> Result<Document, StoreError> {
    Ok(doc! { "$literal": mongodb::bson::to_bson(value)? })
}

/// The expression that appends the ending attempt to `attempts`, keeping the last
/// [`ATTEMPTS_KEPT`].
fn attempt_record(outcome: &Outcome, holder: bool) -> Result<Document, StoreError> {
    let (name, error) = label(outcome);
    record_expr(name, error, holder)
}

/// The record's `outcome` name and error.
fn label(outcome: &Outcome) -> (&'static str, Option<&TaskError>) {
    match outcome {
        Outcome::Succeeded { .. } => ("succeeded", None),
        Outcome::Failed {
            error,
            retry_at: Some(_),
        } => ("retrying", Some(error)),
        Outcome::Failed {
            error,
            retry_at: None,
        } => ("failed", Some(error)),
        Outcome::Cancelled => ("cancelled", None),
        Outcome::HandedBack => ("handed_back", None),
    }
}

fn record_expr(
    name: &str,
    error: Option<&TaskError>,
    holder: bool,
) -> Result<Document, StoreError> {
    let error = match error {
        Some(e) => mongodb::bson::Bson::Document(literal(e)?),
        None => mongodb::bson::Bson::Null,
    };
    let record = doc! {
        "attempt": "$attempt",
        "outcome": name,
        "worker_id": "$worker_id",
        "gpu_indices": "$gpu_indices",
        "started_at": "$started_at",
        "finished_at": "$$NOW",
        "error": error,
        // Written by the attempt itself: which claim this was (the fence matched it), how a
        // batched write that was retried knows it had landed. Null when the scheduler ended
        // the attempt (lease expiry), so the late attempt does not mistake it for its own.
        "lease": if holder { mongodb::bson::Bson::String("$lease_token".into()) } else { mongodb::bson::Bson::Null },
    };
    Ok(doc! { "$slice": [
        { "$concatArrays": [{ "$ifNull": ["$attempts", []] }, [record]] },
        -ATTEMPTS_KEPT,
    ] })
}

/// A stream entry a worker wants to claim: the task, the attempt the entry was published with,
/// and the GPUs the worker set aside for it.
#[derive(Debug, Clone)]
pub struct ClaimRequest {
    pub id: ObjectId,
    pub attempt: u32,
    pub gpu_indices: Vec<u32>,
}

/// An ending attempt, for [`TaskRepo::finish_many`](super::TaskRepo::finish_many).
#[derive(Debug, Clone, Copy)]
pub struct Ending<'a> {
    pub id: ObjectId,
    pub lease_token: &'a str,
    pub outcome: &'a Outcome,
    /// `Some`: the attempt ran on a deferred claim, never written; its outcome writes the claim
    /// too, fenced like a claim (the task still queued as of the entry's attempt).
    pub deferred: Option<&'a Deferred>,
}

/// A claim an attempt started on before writing it (see [`TaskRepo::claim_deferred`]): what
/// the claim will record once it is written, by the outcome or by an attempt that runs long
/// or is about to store something. Only CPU attempts defer their claim.
///
/// [`TaskRepo::claim_deferred`]: super::TaskRepo::claim_deferred
#[derive(Debug, Clone)]
pub struct Deferred {
    /// The task's `attempt` when its entry was published (the claim's fence).
    pub attempt: u32,
    pub worker_id: String,
    /// When the attempt started (the task's `started_at`).
    pub started_at: DateTime,
}

/// The claim update (a pipeline, for one task or many): the task runs under a lease token
/// derived from `batch` and its id (see [`lease_token`]), its attempt counted.
pub(super) fn claim_pipeline(
    batch: &str,
    worker_id: &str,
    gpu_indices: &[u32],
    now: DateTime,
    expires: DateTime,
) -> Vec<Document> {
    let token = doc! { "$concat": [batch, ":", { "$toString": "$_id" }] };
    let worker = doc! { "$literal": worker_id };
    let set = claim_set(
        token.into(),
        worker.into(),
        gpu_indices,
        now.into(),
        expires.into(),
    );
    vec![doc! { "$set": set }]
}

/// What a claim sets, given expressions for the lease token, the worker, the start and the
/// lease's expiry (constants for one task, per-document lookups for a ranged update of many).
pub(super) fn claim_set(
    token: Bson,
    worker_id: Bson,
    gpu_indices: &[u32],
    started: Bson,
    expires: Bson,
) -> Document {
    let gpus: Vec<i64> = gpu_indices.iter().map(|i| i64::from(*i)).collect();
    doc! {
        "status": "running",
        "publish_due": null,
        "lease_token": token,
        "lease_expires_at": expires,
        "worker_id": worker_id,
        "gpu_indices": { "$literal": gpus },
        "started_at": started,
        "finished_at": null,
        "duration_ms": null,
        "wait_reason": null,
        "progress": null,
        "attempt": { "$add": ["$attempt", 1] },
    }
}

/// The deferred claim of `lease_token` as one pipeline stage (the lease's expiry given: a
/// claim written on its own; `None`: an outcome's, whose next stage clears the lease).
pub(super) fn deferred_claim_stage(
    lease_token: &str,
    deferred: &Deferred,
    expires: Option<DateTime>,
) -> Document {
    let set = claim_set(
        doc! { "$literal": lease_token }.into(),
        doc! { "$literal": &deferred.worker_id }.into(),
        &[],
        deferred.started_at.into(),
        expires.map_or(Bson::Null, Bson::DateTime),
    );
    doc! { "$set": set }
}

/// The lease token [`claim_pipeline`] gives task `id` in claim batch `batch`: unique per claim,
/// since every batch has a new `batch`.
pub fn lease_token(batch: &str, id: ObjectId) -> String {
    format!("{batch}:{}", id.to_hex())
}

/// What a success sets, given expressions for its outputs and its artifact ids (constants for
/// one task, per-document lookups for a ranged update of many).
pub(super) fn succeeded_set(
    outputs: mongodb::bson::Bson,
    artifact_ids: mongodb::bson::Bson,
    holder: bool,
) -> Result<Document, StoreError> {
    let mut set = finished(TaskStatus::Succeeded);
    set.insert("outputs", outputs);
    // Executors that store outputs list their `artifacts` pointers in `artifact_ids`; without
    // it, the ids the attempt added as it stored them stay.
    set.insert(
        "output_artifact_ids",
        doc! { "$ifNull": [artifact_ids, "$output_artifact_ids"] },
    );
    set.insert("error", null_bson());
    set.insert("attempts", record_expr("succeeded", None, holder)?);
    Ok(set)
}

/// The fenced update pipeline that ends the attempt holding the lease with `outcome`.
/// `holder`: the attempt holding the lease writes it (not the scheduler expiring the lease).
pub(super) fn finish_pipeline(
    outcome: &Outcome,
    holder: bool,
) -> Result<Vec<Document>, StoreError> {
    let mut set = match outcome {
        Outcome::Succeeded { outputs } => {
            let ids = outputs
                .get_array("artifact_ids")
                .map_or(null_bson(), |ids| doc! { "$literal": ids.clone() }.into());
            return Ok(vec![doc! { "$set": succeeded_set(
                doc! { "$literal": outputs }.into(),
                ids,
                holder,
            )? }]);
        }
        Outcome::Failed {
            error,
            retry_at: Some(at),
        } => {
            let mut set = requeued((*at).into());
            set.insert("error", literal(error)?);
            set
        }
        Outcome::Failed {
            error,
            retry_at: None,
        } => {
            let mut set = finished(TaskStatus::Failed);
            set.insert("error", literal(error)?);
            set
        }
        Outcome::Cancelled => {
            let mut set = finished(TaskStatus::Cancelled);
            set.insert("error", doc! { "message": "cancelled", "retryable": false });
            set
        }
        Outcome::HandedBack => {
            let mut set = requeued("$$NOW".into());
            set.insert("attempt_base", doc! { "$add": ["$attempt_base", 1] });
            set
        }
    };
    // Within one `$set` stage every expression reads the document as it was before the
    // stage, so the record sees the attempt's worker and GPUs before `set` clears them.
    set.insert("attempts", attempt_record(outcome, holder)?);
    Ok(vec![doc! { "$set": set }])
}

/// The filter of a fenced change: the attempt holding `lease_token` still holds the task.
pub(super) fn fence(id: Option<ObjectId>, lease_token: &str) -> Document {
    let mut filter = doc! { "lease_token": lease_token, "status": "running" };
    if let Some(id) = id {
        filter.insert("_id", id);
    }
    filter
}

impl TaskRepo {
    /// Ends the attempt holding `lease_token` on the scheduler's behalf (its lease lapsed).
    /// `None`: the attempt ended meanwhile and nothing was changed.
    pub async fn finish(
        &self,
        lease_token: &str,
        outcome: &Outcome,
    ) -> Result<Option<RunTask>, StoreError> {
        Ok(self
            .coll
            .find_one_and_update(fence(None, lease_token), finish_pipeline(outcome, false)?)
            .return_document(ReturnDocument::After)
            .await?)
    }

    /// Whether the attempt holding `lease_token` still holds task `id` (a fenced read: an
    /// attempt that lost its lease is told before it stores anything).
    pub async fn holds_lease(&self, id: ObjectId, lease_token: &str) -> Result<bool, StoreError> {
        Ok(self
            .raw()
            .find_one(doc! { "_id": id, "lease_token": lease_token, "status": "running" })
            .projection(doc! { "_id": 1 })
            .await?
            .is_some())
    }

    /// Inside `session`'s transaction, lists `artifact_id` among the task's outputs if the
    /// attempt holding `lease_token` still holds it. The write is the fence: a concurrent
    /// re-queue of the task conflicts with it, so one of the two transactions retries and
    /// sees the other. `false`: the lease is gone.
    pub async fn add_output_in(
        &self,
        session: &mut ClientSession,
        id: ObjectId,
        lease_token: &str,
        artifact_id: ObjectId,
    ) -> Result<bool, StoreError> {
        let updated = self
            .coll
            .update_one(
                doc! { "_id": id, "lease_token": lease_token, "status": "running" },
                doc! { "$addToSet": { "output_artifact_ids": artifact_id } },
            )
            .session(session)
            .await?;
        Ok(updated.matched_count == 1)
    }

    /// Extends the leases of a worker's in-flight attempts. Returns the tokens whose attempt
    /// must stop: cancellation was requested, or the lease is no longer theirs.
    pub async fn extend_leases(
        &self,
        tokens: &[String],
        until: DateTime,
    ) -> Result<Vec<String>, StoreError> {
        if tokens.is_empty() {
            return Ok(Vec::new());
        }
        self.coll
            .update_many(
                // `$type` makes the query imply the partial index's filter: without it the
                // planner cannot use the index for `$in` and scans the collection.
                doc! { "lease_token": { "$in": tokens, "$type": "string" }, "status": "running" },
                doc! { "$set": { "lease_expires_at": until } },
            )
            .await?;
        let mut live = self
            .raw()
            .find(doc! {
                "lease_token": { "$in": tokens, "$type": "string" },
                "status": "running",
                "cancel_requested": false,
            })
            .projection(doc! { "lease_token": 1 })
            .await?;
        let mut keep = std::collections::HashSet::new();
        while live.advance().await? {
            if let Ok(token) = live.deserialize_current()?.get_str("lease_token") {
                keep.insert(token.to_owned());
            }
        }
        Ok(tokens
            .iter()
            .filter(|t| !keep.contains(*t))
            .cloned()
            .collect())
    }

    /// Progress of a running attempt (fenced; a stale report is dropped).
    pub async fn report_progress(
        &self,
        lease_token: &str,
        progress: &Progress,
    ) -> Result<(), StoreError> {
        self.coll
            .update_one(
                doc! { "lease_token": lease_token, "status": "running" },
                doc! { "$set": { "progress": mongodb::bson::to_bson(progress)? } },
            )
            .await?;
        Ok(())
    }
}

fn null_bson() -> mongodb::bson::Bson {
    mongodb::bson::Bson::Null
}
