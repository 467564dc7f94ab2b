//! The scheduler's operations on the task graph: publishing, promotion, skipping, cancel, retry
//! and lease expiry. Each is idempotent, so a redelivered event or a second scheduler replica
//! doing the same work changes nothing.

use std::collections::{HashMap, HashSet};

use futures::TryStreamExt;
use mongodb::bson::oid::ObjectId;
use mongodb::bson::{Bson, DateTime, Document, doc};

use super::TaskRepo;
use crate::model::{RunTask, TaskStatus};
use crate::store::StoreError;

/// The strings of array field `k` of `d` (none when it is missing).
fn strings(d: &Document, k: &str) -> Vec<String> {
    d.get_array(k)
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// The `status` of a projected task document.
fn status_of(d: &Document) -> Result<TaskStatus, StoreError> {
    mongodb::bson::from_bson(d.get("status").cloned().unwrap_or(Bson::Null))
        .map_err(|e| StoreError::Mongo(e.into()))
}

/// Queued tasks whose stream entries were written in another Redis epoch than `epoch` and
/// that are not due already.
fn stale(epoch: &str) -> Document {
    doc! { "status": "queued", "publish_due": null, "published_epoch": { "$ne": epoch } }
}

/// Pending tasks the repair pass reads at a time.
const REPAIR_PAGE: usize = 1000;

/// How many ready tasks of one creation or promotion travel whole ([`Published::task`]): a
/// worker free for them starts them without reading MongoDB. More at once are a backlog that
/// waits for workers anyway; their entries stay small, and their reads too.
pub const WHOLE_READY_TASKS: usize = 64;

/// A queued task due to be appended to its stream: a task document read with
/// [`published_fields`] as its projection, or the whole task.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
pub struct Published {
    #[serde(rename = "_id")]
    pub id: ObjectId,
    pub class: String,
    pub attempt: u32,
    /// The model repository it works on, if known (for model affinity).
    #[serde(default)]
    pub model: Option<String>,
    /// The task as it was queued, for its stream entry to carry a copy (`TaskEntry::spec`),
    /// when whoever queued it has it at hand.
    #[serde(skip)]
    pub task: Option<Box<RunTask>>,
}

impl Published {
    /// A queued task, carried whole.
    pub fn whole(task: RunTask) -> Self {
        Self {
            id: task.id,
            class: task.class.clone(),
            attempt: task.attempt,
            model: task.model.clone(),
            task: Some(Box::new(task)),
        }
    }
}

/// The projection a [`Published`] is read with.
fn published_fields() -> Document {
    doc! { "class": 1, "attempt": 1, "model": 1 }
}

/// One node's place in the graph, for graph walks.
#[derive(Debug, Clone)]
pub struct NodeState {
    pub status: TaskStatus,
    pub upstream: Vec<String>,
    pub downstream: Vec<String>,
    pub waiting_on: Vec<String>,
}

impl TaskRepo {
    /// Queued tasks whose `publish_due` has passed, oldest first.
    pub async fn due_for_publish(&self, limit: i64) -> Result<Vec<Published>, StoreError> {
        Ok(self
            .coll
            .clone_with_type::<Published>()
            .find(doc! {
                "publish_due": { "$type": "date", "$lte": DateTime::now() },
                "status": "queued",
            })
            .projection(published_fields())
            .sort(doc! { "publish_due": 1 })
            .limit(limit)
            .await?
            .try_collect()
            .await?)
    }

    /// Marks tasks as on their stream, in Redis epoch `epoch` (what [`crate::queue::Queue::publish`]
    /// returned). Fenced on the attempt each was published with, so a task that was claimed and
    /// re-queued meanwhile keeps its own `publish_due`. One `_id $in` update per attempt value
    /// (usually one), hinted to the `_id` index: an `$or` of pairs made the planner scan every
    /// queued task.
    pub async fn mark_published(
        &self,
        published: &[Published],
        epoch: Option<&str>,
    ) -> Result<(), StoreError> {
        let mut by_attempt: HashMap<u32, Vec<ObjectId>> = HashMap::new();
        for p in published {
            by_attempt.entry(p.attempt).or_default().push(p.id);
        }
        for (attempt, ids) in by_attempt {
            self.coll
                .update_many(
                    doc! { "_id": { "$in": ids }, "attempt": i64::from(attempt), "status": "queued" },
                    doc! { "$set": { "publish_due": null, "published_epoch": epoch } },
                )
                .hint(mongodb::options::Hint::Keys(doc! { "_id": 1 }))
                .await?;
        }
        Ok(())
    }

    /// After `nodes` succeeded: drops them from their downstream tasks' waiting lists (the
    /// union of those tasks is `downstream`) and queues the ones left waiting on nothing, as
    /// published in Redis epoch `epoch`: the caller appends them to their streams next. Returns
    /// every queued task among `downstream` that is not due, i.e. those just queued and those an
    /// earlier handling of the same events queued but may have died before appending (a
    /// redelivered event publishes them again; a duplicate entry is harmless), whole when
    /// there are at most [`WHOLE_READY_TASKS`] downstream tasks. One write and a read however
    /// many nodes.
    pub async fn release_downstream(
        &self,
        run_id: ObjectId,
        nodes: &[String],
        downstream: &[String],
        epoch: Option<&str>,
    ) -> Result<Vec<Published>, StoreError> {
        if downstream.is_empty() || nodes.is_empty() {
            return Ok(Vec::new());
        }
        let scope = doc! { "run_id": run_id, "node_id": { "$in": downstream } };
        let mut pending = scope.clone();
        pending.insert("status", "pending");
        // One write per task: an update pipeline drops `nodes` from the waiting list, then
        // queues the task if the list it just wrote is empty (a `$pull` and a second update
        // for the queuing took two journaled writes in a row on every promotion).
        let left = doc! { "$filter": {
            "input": "$waiting_on",
            "cond": { "$not": [{ "$in": ["$$this", { "$literal": nodes }] }] },
        } };
        let ready = doc! { "$eq": [{ "$size": "$waiting_on" }, 0] };
        let queue = |value: Bson, otherwise: &str| {
            Bson::from(doc! { "$cond": [ready.clone(), value, otherwise] })
        };
        let promote = vec![
            doc! { "$set": { "waiting_on": left } },
            doc! { "$set": {
                "status": queue(Bson::from("queued"), "$status"),
                "queued_at": queue(Bson::from(DateTime::now()), "$queued_at"),
                "published_epoch": queue(
                    Bson::from(doc! { "$literal": epoch }),
                    "$published_epoch",
                ),
            } },
        ];
        self.coll.update_many(pending, promote).await?;
        let mut queued = scope;
        queued.insert("status", "queued");
        queued.insert("publish_due", Bson::Null);
        if downstream.len() <= WHOLE_READY_TASKS {
            let found = self.coll.find(queued).await?;
            return Ok(found.map_ok(Published::whole).try_collect().await?);
        }
        Ok(self
            .coll
            .clone_with_type::<Published>()
            .find(queued)
            .projection(published_fields())
            .await?
            .try_collect()
            .await?)
    }

    /// Queues every pending task of the run that waits on nothing (after creation, repair).
    pub async fn queue_ready_in(&self, run_id: ObjectId) -> Result<u64, StoreError> {
        self.queue_ready(doc! { "run_id": run_id }).await
    }

    /// Queues the pending tasks matched by `scope` whose waiting list is empty, due for the
    /// publisher now (`publish_due`).
    async fn queue_ready(&self, mut scope: Document) -> Result<u64, StoreError> {
        scope.insert("status", "pending");
        scope.insert("waiting_on", doc! { "$size": 0 });
        let now = DateTime::now();
        let set = doc! { "status": "queued", "queued_at": now, "publish_due": now };
        let done = self.coll.update_many(scope, doc! { "$set": set }).await?;
        Ok(done.modified_count)
    }

    /// Marks every pending task downstream of `from` (transitively) as `status` (skipped after
    /// a failure, cancelled after a cancel). Returns how many changed.
    pub async fn close_downstream(
        &self,
        run_id: ObjectId,
        from: &[String],
        status: TaskStatus,
    ) -> Result<u64, StoreError> {
        let nodes = self.pending_downstream(run_id, from).await?;
        self.close(run_id, &nodes, status).await
    }

    /// The pending tasks downstream of `from`, transitively (through pending tasks only).
    pub async fn pending_downstream(
        &self,
        run_id: ObjectId,
        from: &[String],
    ) -> Result<Vec<String>, StoreError> {
        // Breadth first, one query per level: what is read is the part of the run being
        // closed, never the whole run.
        let mut seen: HashSet<String> = HashSet::new();
        let mut level: Vec<String> = self
            .edges(run_id, from, false)
            .await?
            .into_iter()
            .flat_map(|(_, below)| below)
            .collect();
        while !level.is_empty() {
            let mut next = Vec::new();
            for (node, below) in self.edges(run_id, &level, true).await? {
                if seen.insert(node) {
                    next.extend(below);
                }
            }
            next.retain(|n| !seen.contains(n));
            next.sort_unstable();
            next.dedup();
            level = next;
        }
        Ok(seen.into_iter().collect())
    }

    /// Marks those of `nodes` still pending as `status`. Returns how many changed.
    pub async fn close(
        &self,
        run_id: ObjectId,
        nodes: &[String],
        status: TaskStatus,
    ) -> Result<u64, StoreError> {
        if nodes.is_empty() {
            return Ok(0);
        }
        let done = self
            .coll
            .update_many(
                among(run_id, nodes, TaskStatus::Pending),
                doc! { "$set": { "status": status.as_str(), "finished_at": DateTime::now() } },
            )
            .await?;
        Ok(done.modified_count)
    }

    /// How many of `nodes` are `status` now.
    pub async fn count_in_status(
        &self,
        run_id: ObjectId,
        nodes: &[String],
        status: TaskStatus,
    ) -> Result<u64, StoreError> {
        if nodes.is_empty() {
            return Ok(0);
        }
        let filter = among(run_id, nodes, status);
        Ok(self.coll.count_documents(filter).await?)
    }

    /// `nodes` (only the pending ones when `pending`) with their downstream nodes.
    async fn edges(
        &self,
        run_id: ObjectId,
        nodes: &[String],
        pending: bool,
    ) -> Result<Vec<(String, Vec<String>)>, StoreError> {
        let mut filter = doc! { "run_id": run_id, "node_id": { "$in": nodes } };
        if pending {
            filter.insert("status", "pending");
        }
        let mut cursor = self
            .raw()
            .find(filter)
            .projection(doc! { "node_id": 1, "downstream_node_ids": 1 })
            .await?;
        let mut edges = Vec::new();
        while let Some(d) = cursor.try_next().await? {
            let node = d.get_str("node_id").unwrap_or_default().to_owned();
            edges.push((node, strings(&d, "downstream_node_ids")));
        }
        Ok(edges)
    }

    /// Every node of a run with its status and edges (a projection: no params or outputs).
    pub async fn graph(&self, run_id: ObjectId) -> Result<HashMap<String, NodeState>, StoreError> {
        let mut cursor = self
            .raw()
            .find(doc! { "run_id": run_id })
            .projection(doc! {
                "node_id": 1, "status": 1, "upstream_node_ids": 1,
                "downstream_node_ids": 1, "waiting_on": 1,
            })
            .await?;
        let mut graph = HashMap::new();
        while let Some(d) = cursor.try_next().await? {
            let status = status_of(&d)?;
            graph.insert(
                d.get_str("node_id").unwrap_or_default().to_owned(),
                NodeState {
                    status,
                    upstream: strings(&d, "upstream_node_ids"),
                    downstream: strings(&d, "downstream_node_ids"),
                    waiting_on: strings(&d, "waiting_on"),
                },
            );
        }
        Ok(graph)
    }

    /// Repairs what lost events would have done: drops succeeded upstreams from waiting lists,
    /// queues what is ready, skips what can never run. Returns (queued, skipped). Reads the
    /// run's pending tasks a page at a time, with the status of just the nodes that page names,
    /// so a 100,000-task run is never in memory at once.
    pub async fn repair_run(&self, run_id: ObjectId) -> Result<(u64, u64), StoreError> {
        let cursor = self
            .raw()
            .find(doc! { "run_id": run_id, "status": "pending" })
            .projection(doc! { "node_id": 1, "upstream_node_ids": 1, "waiting_on": 1 })
            .batch_size(REPAIR_PAGE as u32)
            .await?;
        let mut pages = cursor.try_chunks(REPAIR_PAGE);
        let mut doomed = Vec::new();
        while let Some(page) = pages.try_next().await.map_err(|e| e.1)? {
            doomed.extend(self.repair_page(run_id, &page).await?);
        }
        let skipped = if doomed.is_empty() {
            0
        } else {
            let n = self.close(run_id, &doomed, TaskStatus::Skipped).await?;
            n + self
                .close_downstream(run_id, &doomed, TaskStatus::Skipped)
                .await?
        };
        let queued = self.queue_ready(doc! { "run_id": run_id }).await?;
        Ok((queued, skipped))
    }

    /// One page of [`Self::repair_run`]: drops the succeeded nodes from each pending task's
    /// waiting list; returns the tasks that can never run (an upstream failed, was skipped or
    /// cancelled).
    async fn repair_page(
        &self,
        run_id: ObjectId,
        page: &[Document],
    ) -> Result<Vec<String>, StoreError> {
        let pending: Vec<(String, Vec<String>, Vec<String>)> = page
            .iter()
            .map(|d| {
                let node = d.get_str("node_id").unwrap_or_default().to_owned();
                (
                    node,
                    strings(d, "upstream_node_ids"),
                    strings(d, "waiting_on"),
                )
            })
            .collect();
        let named: HashSet<&str> = pending
            .iter()
            .flat_map(|(_, up, waiting)| up.iter().chain(waiting).map(String::as_str))
            .collect();
        let finished = self.finished_among(run_id, named).await?;
        let mut doomed = Vec::new();
        for (node, upstream, waiting_on) in &pending {
            let done: Vec<&String> = waiting_on
                .iter()
                .filter(|n| finished.get(n.as_str()) == Some(&TaskStatus::Succeeded))
                .collect();
            if !done.is_empty() {
                self.coll
                    .update_one(
                        doc! { "run_id": run_id, "node_id": node, "status": "pending" },
                        doc! { "$pull": { "waiting_on": { "$in": done } } },
                    )
                    .await?;
            }
            let failed = upstream.iter().any(|n| {
                finished
                    .get(n.as_str())
                    .is_some_and(|&s| s != TaskStatus::Succeeded)
            });
            if failed {
                doomed.push(node.clone());
            }
        }
        Ok(doomed)
    }

    /// The finished nodes among `nodes`, with how each ended.
    async fn finished_among(
        &self,
        run_id: ObjectId,
        nodes: HashSet<&str>,
    ) -> Result<HashMap<String, TaskStatus>, StoreError> {
        if nodes.is_empty() {
            return Ok(HashMap::new());
        }
        let terminal = [
            TaskStatus::Succeeded,
            TaskStatus::Failed,
            TaskStatus::Skipped,
            TaskStatus::Cancelled,
        ]
        .map(TaskStatus::as_str);
        let mut cursor = self
            .raw()
            .find(doc! {
                "run_id": run_id,
                "node_id": { "$in": nodes.into_iter().collect::<Vec<_>>() },
                "status": { "$in": terminal.to_vec() },
            })
            .projection(doc! { "node_id": 1, "status": 1 })
            .await?;
        let mut finished = HashMap::new();
        while let Some(d) = cursor.try_next().await? {
            let status = status_of(&d)?;
            finished.insert(d.get_str("node_id").unwrap_or_default().to_owned(), status);
        }
        Ok(finished)
    }

    /// Running tasks whose lease has expired (their worker is presumed dead).
    pub async fn expired_leases(&self, limit: i64) -> Result<Vec<RunTask>, StoreError> {
        Ok(self
            .coll
            .find(doc! { "status": "running", "lease_expires_at": { "$lt": DateTime::now() } })
            .limit(limit)
            .await?
            .try_collect()
            .await?)
    }

    /// Runs with queued tasks marked as published in another Redis epoch than `epoch` (their
    /// entries were lost with Redis's data), a page at a time: see
    /// [`crate::store::Store::republish_stale`].
    pub async fn stale_runs(
        &self,
        epoch: &str,
    ) -> Result<impl futures::Stream<Item = Result<ObjectId, StoreError>>, StoreError> {
        let cursor = self
            .raw()
            .aggregate([
                doc! { "$match": stale(epoch) },
                doc! { "$group": { "_id": "$run_id" } },
            ])
            .await?;
        Ok(cursor
            .map_err(StoreError::from)
            .and_then(|d| async move { d.get_object_id("_id").map_err(bson_err) }))
    }

    /// Makes the stale tasks (see [`Self::stale_runs`]) of `runs` due again. This also catches
    /// a mark that landed after the flush it belonged before. Returns how many.
    pub async fn republish_stale(&self, epoch: &str, runs: &[ObjectId]) -> Result<u64, StoreError> {
        let mut scope = stale(epoch);
        scope.insert("run_id", doc! { "$in": runs });
        let done = self
            .coll
            .update_many(scope, doc! { "$set": { "publish_due": DateTime::now() } })
            .await?;
        Ok(done.modified_count)
    }

    /// Makes every queued task of the run that is not due already due again: the scheduler
    /// that created the run died (or failed) before appending them to their streams, and its
    /// submission was delivered again. Entries that did get written are duplicated, which is
    /// harmless: claims are fenced on the attempt. Returns how many.
    pub async fn republish_queued_in(&self, run_id: ObjectId) -> Result<u64, StoreError> {
        let done = self
            .coll
            .update_many(
                doc! { "run_id": run_id, "status": "queued", "publish_due": null },
                doc! { "$set": { "publish_due": DateTime::now() } },
            )
            .await?;
        Ok(done.modified_count)
    }

    /// Cancels the given nodes of a run (all of them when `nodes` is `None`): pending and queued
    /// tasks become `cancelled` at once; running ones get `cancel_requested`, which their worker
    /// honours. Returns (cancelled now, running tasks signalled by id).
    pub async fn cancel(
        &self,
        run_id: ObjectId,
        nodes: Option<&[String]>,
    ) -> Result<(u64, Vec<ObjectId>), StoreError> {
        let mut scope = doc! { "run_id": run_id };
        if let Some(nodes) = nodes {
            scope.insert("node_id", doc! { "$in": nodes });
        }
        let mut now = scope.clone();
        now.insert("status", doc! { "$in": ["pending", "queued"] });
        let cancelled = self
            .coll
            .update_many(
                now,
                doc! { "$set": {
                    "status": "cancelled", "finished_at": DateTime::now(), "publish_due": null,
                } },
            )
            .await?
            .modified_count;
        // The running ones are read first, then marked: read after, one whose worker saw the
        // mark and stopped at once would be missing from what this cancel says it stopped.
        let mut running = scope;
        running.insert("status", "running");
        let mut cursor = self
            .raw()
            .find(running)
            .projection(doc! { "_id": 1 })
            .await?;
        let mut ids = Vec::new();
        while let Some(d) = cursor.try_next().await? {
            ids.push(d.get_object_id("_id").map_err(bson_err)?);
        }
        if !ids.is_empty() {
            self.coll
                .update_many(
                    doc! { "_id": { "$in": &ids }, "status": "running" },
                    doc! { "$set": { "cancel_requested": true } },
                )
                .await?;
        }
        Ok((cancelled, ids))
    }

    /// Resets `nodes` for another round: back to pending (waiting on every upstream that has not
    /// succeeded), execution fields cleared, `attempt` bumped for the nodes named in `bump`.
    pub async fn reset(
        &self,
        run_id: ObjectId,
        nodes: &[String],
        bump: &[String],
    ) -> Result<(), StoreError> {
        let graph = self.graph(run_id).await?;
        for node in nodes {
            let Some(state) = graph.get(node) else {
                continue;
            };
            let waiting: Vec<&String> = state
                .upstream
                .iter()
                .filter(|u| {
                    nodes.contains(u)
                        || graph.get(*u).map(|s| s.status) != Some(TaskStatus::Succeeded)
                })
                .collect();
            let inc = i64::from(bump.contains(node));
            self.coll
                .update_one(
                    doc! { "run_id": run_id, "node_id": node },
                    vec![doc! { "$set": {
                        "status": "pending",
                        "waiting_on": { "$literal": waiting },
                        "attempt": { "$add": ["$attempt", inc] },
                        "attempt_base": { "$add": ["$attempt", inc] },
                        "error": null, "outputs": null, "output_artifact_ids": [],
                        "log_tail": [], "progress": null, "worker_id": null, "gpu_indices": [],
                        "lease_token": null, "lease_expires_at": null, "publish_due": null,
                        "cancel_requested": false, "wait_reason": null, "queued_at": null,
                        "started_at": null, "finished_at": null, "duration_ms": null,
                    } }],
                )
                .await?;
        }
        let scope = doc! { "run_id": run_id, "node_id": { "$in": nodes } };
        self.queue_ready(scope).await?;
        Ok(())
    }

    /// Sets (or clears, with `None`) the wait reason of every queued task of a class.
    pub async fn set_wait_reason(
        &self,
        class: &str,
        reason: Option<&str>,
    ) -> Result<(), StoreError> {
        let filter = match reason {
            Some(r) => doc! { "status": "queued", "class": class, "wait_reason": { "$ne": r } },
            None => doc! { "status": "queued", "class": class, "wait_reason": { "$ne": null } },
        };
        self.coll
            .update_many(filter, doc! { "$set": { "wait_reason": reason } })
            .await?;
        Ok(())
    }
}

fn bson_err(e: mongodb::bson::document::ValueAccessError) -> StoreError {
    StoreError::Mongo(mongodb::error::Error::custom(e.to_string()))
}

/// The tasks of run `run_id` among `nodes` that are `status`.
fn among(run_id: ObjectId, nodes: &[String], status: TaskStatus) -> Document {
    doc! { "run_id": run_id, "node_id": { "$in": nodes }, "status": status.as_str() }
}
