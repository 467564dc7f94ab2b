//! The transitions a worker makes, each fenced: a claim must see the attempt the stream entry
//! was published with, and every later change must present the claim's lease token. A worker
//! that lost its lease (it was presumed dead and the task re-queued) can change nothing.

use mongodb::ClientSession;
use mongodb::bson::oid::ObjectId;
use mongodb::bson::{DateTime, Document, doc};
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
fn attempt_record(outcome: &Outcome) -> Result<Document, StoreError> {
    let (name, error) = match outcome {
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
    };
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
    };
    Ok(doc! { "$slice": [
        { "$concatArrays": [{ "$ifNull": ["$attempts", []] }, [record]] },
        -ATTEMPTS_KEPT,
    ] })
}

impl TaskRepo {
    /// Claims task `id` if it is still queued as of `attempt` and not cancelled. `None` means the
    /// stream entry was stale (claimed elsewhere, cancelled, or re-published since).
    pub async fn claim(
        &self,
        id: ObjectId,
        attempt: u32,
        worker_id: &str,
        gpu_indices: &[u32],
        lease: std::time::Duration,
    ) -> Result<Option<Claim>, StoreError> {
        let token = ObjectId::new().to_hex();
        let now = DateTime::now();
        let expires = DateTime::from_millis(now.timestamp_millis() + lease.as_millis() as i64);
        let task = self
            .coll
            .find_one_and_update(
                // The attempt alone fences stale entries: every re-queue publishes a new
                // attempt value. (`publish_due` may still be set: a worker can read the entry
                // before the publisher has recorded publishing it.)
                doc! {
                    "_id": id,
                    "status": "queued",
                    "attempt": attempt,
                    "cancel_requested": false,
                },
                doc! {
                    "$set": {
                        "status": "running",
                        "publish_due": null,
                        "lease_token": &token,
                        "lease_expires_at": expires,
                        "worker_id": worker_id,
                        "gpu_indices": gpu_indices.iter().map(|i| i64::from(*i)).collect::<Vec<_>>(),
                        "started_at": now,
                        "finished_at": null,
                        "duration_ms": null,
                        "wait_reason": null,
                        "progress": null,
                    },
                    "$inc": { "attempt": 1 },
                },
            )
            .return_document(ReturnDocument::After)
            .await?;
        Ok(task.map(|task| Claim {
            task,
            lease_token: token,
        }))
    }

    /// Records how the attempt holding `lease_token` ended. `None`: the lease was lost and
    /// nothing was changed.
    pub async fn finish(
        &self,
        lease_token: &str,
        outcome: &Outcome,
    ) -> Result<Option<RunTask>, StoreError> {
        let set = match outcome {
            Outcome::Succeeded { outputs } => {
                let mut set = finished(TaskStatus::Succeeded);
                set.insert("outputs", doc! { "$literal": outputs });
                // Executors that store outputs list their `artifacts` pointers here.
                if let Ok(ids) = outputs.get_array("artifact_ids") {
                    set.insert("output_artifact_ids", doc! { "$literal": ids.clone() });
                }
                set.insert("error", null_bson());
                set
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
        let mut set = set;
        // Within one `$set` stage every expression reads the document as it was before the
        // stage, so the record sees the attempt's worker and GPUs before `set` clears them.
        set.insert("attempts", attempt_record(outcome)?);
        Ok(self
            .coll
            .find_one_and_update(
                doc! { "lease_token": lease_token, "status": "running" },
                vec![doc! { "$set": set }],
            )
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
                doc! { "lease_token": { "$in": tokens }, "status": "running" },
                doc! { "$set": { "lease_expires_at": until } },
            )
            .await?;
        let mut live = self
            .raw()
            .find(doc! {
                "lease_token": { "$in": tokens },
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
