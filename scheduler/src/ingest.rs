//! The Redis-fronted API: reads `<prefix>:submissions` through the `scheduler` consumer group,
//! validates each entry, creates its run in MongoDB, and replies exactly once.
//!
//! An entry is acked only after its effects are in MongoDB (the ack and the reply are one Redis
//! script). A scheduler that dies in between leaves the entry pending: it re-reads its own
//! pending entries on start, and other replicas reclaim entries idle past `reclaim_after`.
//! Re-processing is safe because run creation is idempotent on `request_id` and rejections are
//! keyed by entry id.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;

use harmonia_shared::model::SubmissionRejection;
use harmonia_shared::queue::{Entry, Reply, ReplyTo};
use harmonia_shared::store::Store;
use harmonia_shared::submission::{self, FieldError, Refusal};
use mongodb::bson::DateTime;

use crate::context::Scheduler;
use crate::create::{Dispatch, create_run};
use crate::reader::GroupReader;

/// Consumer group of all scheduler replicas on the submissions stream.
pub const GROUP: &str = harmonia_shared::queue::SCHEDULER_GROUP;

/// Attempts to store a valid submission before it is rejected with the storage error (errors of
/// a MongoDB outage do not count: the submission waits for the database to come back).
const MAX_STORE_TRIES: u32 = 5;

/// Submissions handled at once.
const CONCURRENCY: usize = 32;

/// Runs until the scheduler shuts down. Errors talking to Redis or Mongo are logged and retried; no
/// submission is lost or acked without its effects.
pub async fn run(ctx: Arc<Scheduler>) {
    let stream = ctx.queue.keys().submissions();
    // Submissions a dead replica left pending are looked for at every idle read.
    let mut reader = GroupReader::new(stream, "submissions", 256, Duration::ZERO);
    let mut failures: HashMap<String, u32> = HashMap::new();
    while let Some(entries) = reader.next(&ctx).await {
        let redelivered = reader.redelivered();
        // Submissions are independent and their handling is idempotent (ids derive from the
        // request id), so a read's entries are handled concurrently: at a few journaled writes
        // each, one at a time would cap ingest at a few hundred runs per second.
        let results: Vec<(Entry, anyhow::Result<()>)> = futures::stream::iter(entries)
            .map(|entry| {
                let ctx = ctx.clone();
                async move {
                    let result = handle(&ctx, &entry, redelivered).await;
                    (entry, result)
                }
            })
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;
        let mut retry = false;
        for (entry, result) in results {
            match result {
                Ok(()) => {
                    failures.remove(&entry.id);
                }
                Err(e) => retry |= failed(&ctx, &entry, &e, &mut failures).await,
            }
        }
        if retry {
            // Shutdown is seen by the reader's next wait.
            ctx.pause(Duration::from_millis(500)).await;
            reader.retry_pending();
        }
    }
}

/// Counts a failed try at a submission; after [`MAX_STORE_TRIES`] that were not an outage, the
/// submission is answered with the error. True when it is left pending for another try.
async fn failed(
    ctx: &Scheduler,
    entry: &Entry,
    e: &anyhow::Error,
    failures: &mut HashMap<String, u32>,
) -> bool {
    let tries = failures.entry(entry.id.clone()).or_insert(0);
    // An outage is waited out, however long: the submission is not at fault.
    if !harmonia_shared::store::is_transient(e.as_ref()) {
        *tries += 1;
    }
    if *tries >= MAX_STORE_TRIES {
        // Don't let one submission block the stream forever: answer it.
        tracing::error!(entry = %entry.id, "giving up on a submission: {e:#}");
        match give_up(ctx, entry, e).await {
            Ok(()) => {
                failures.remove(&entry.id);
                return false;
            }
            Err(e2) => tracing::warn!(entry = %entry.id, "rejecting it failed too: {e2:#}"),
        }
        return true;
    }
    // Left pending; the backlog pass retries it.
    ctx.store.outage().report(
        &format!("submission {} not processed yet", entry.id),
        &format_args!("{e:#}"),
    );
    true
}

/// The entry's submission bytes, borrowed: a big submission is megabytes, and a copy of it
/// would stay alive until its run is stored.
fn payload(entry: &Entry) -> Option<&[u8]> {
    match entry.map.get("payload")? {
        redis::Value::BulkString(bytes) => Some(bytes),
        redis::Value::SimpleString(s) => Some(s.as_bytes()),
        _ => None,
    }
}

/// Processes one submission entry: effects in MongoDB (and its ready tasks on their streams)
/// first, then ack + reply. `redelivered`: it was delivered before (see
/// [`crate::reader::GroupReader::redelivered`]).
async fn handle(ctx: &Scheduler, entry: &Entry, redelivered: bool) -> anyhow::Result<()> {
    let (queue, store, options) = (&ctx.queue, &ctx.store, &ctx.options);
    let raw = payload(entry);
    let parsed = match raw {
        Some(raw) => submission::parse(raw, options.max_submission_bytes),
        None => Err(Refusal::Anonymous(vec![FieldError {
            path: "$".into(),
            message: "the entry has no 'payload' field".into(),
        }])),
    };
    let raw = raw.unwrap_or_default();
    // `None`: the shared rejections stream (no request id to reply to).
    let parsed = match parsed {
        Ok(sub) => admit(store, sub).await?,
        refused => refused,
    };
    let (to, reply): (Option<String>, Reply) = match parsed {
        Ok(sub) => {
            let dispatch = Dispatch::Direct { queue, redelivered };
            let created = create_run(store, &sub, None, dispatch).await?;
            if redelivered {
                // An existing run's tasks may have been made due again.
                ctx.publish.notify_one();
            }
            tracing::info!(request_id = %sub.request_id, run_id = %created.run_id,
                tasks = sub.tasks.len(), new = created.new, "submission accepted");
            (
                Some(sub.request_id.clone()),
                Reply::Accepted {
                    run_id: created.run_id.to_hex(),
                },
            )
        }
        Err(Refusal::Rejected { request_id, errors }) => {
            // Same request id as an accepted submission: idempotency wins, same run.
            if let Some(run) = store.runs().by_request_id(&request_id).await? {
                (
                    Some(request_id),
                    Reply::Accepted {
                        run_id: run.id.to_hex(),
                    },
                )
            } else {
                record(store, entry, Some(&request_id), &errors, raw).await?;
                tracing::info!(%request_id, errors = errors.len(), "submission rejected");
                (
                    Some(request_id.clone()),
                    Reply::Rejected {
                        request_id: Some(request_id),
                        entry_id: None,
                        errors,
                    },
                )
            }
        }
        Err(Refusal::Anonymous(errors)) => {
            record(store, entry, None, &errors, raw).await?;
            tracing::info!(entry = %entry.id, "submission without request id rejected");
            (
                None,
                Reply::Rejected {
                    request_id: None,
                    entry_id: Some(entry.id.clone()),
                    errors,
                },
            )
        }
    };
    let to = to.as_deref().map_or(ReplyTo::Rejections, ReplyTo::Request);
    queue
        .ack_and_reply(GROUP, &entry.id, to, &reply, options.reply_ttl_s)
        .await?;
    Ok(())
}

/// A valid submission, or its rejection when its workspace or project is not open for runs.
/// A resent submission whose run exists is let through (idempotency wins even if the workspace
/// was archived since).
async fn admit(
    store: &Store,
    sub: submission::Submission,
) -> anyhow::Result<Result<submission::Submission, Refusal>> {
    let errors = crate::admit::check(store, &sub).await?;
    // Only a refused submission pays for the lookup (create_run makes it anyway).
    if errors.is_empty() || store.runs().by_request_id(&sub.request_id).await?.is_some() {
        Ok(Ok(sub))
    } else {
        Ok(Err(Refusal::Rejected {
            request_id: sub.request_id,
            errors,
        }))
    }
}

/// Rejects a submission that could not be stored after [`MAX_STORE_TRIES`].
async fn give_up(ctx: &Scheduler, entry: &Entry, err: &anyhow::Error) -> anyhow::Result<()> {
    let raw = payload(entry).unwrap_or_default();
    let request_id = match submission::parse(raw, ctx.options.max_submission_bytes) {
        Ok(sub) => Some(sub.request_id),
        Err(Refusal::Rejected { request_id, .. }) => Some(request_id),
        Err(Refusal::Anonymous(_)) => None,
    };
    let errors = vec![FieldError {
        path: "$".into(),
        message: format!("the scheduler could not store this submission: {err:#}"),
    }];
    record(&ctx.store, entry, request_id.as_deref(), &errors, raw).await?;
    let to = request_id
        .as_deref()
        .map_or(ReplyTo::Rejections, ReplyTo::Request);
    let reply = Reply::Rejected {
        request_id: request_id.clone(),
        entry_id: request_id.is_none().then(|| entry.id.clone()),
        errors,
    };
    ctx.queue
        .ack_and_reply(GROUP, &entry.id, to, &reply, ctx.options.reply_ttl_s)
        .await?;
    Ok(())
}

async fn record(
    store: &Store,
    entry: &Entry,
    request_id: Option<&str>,
    errors: &[FieldError],
    raw: &[u8],
) -> anyhow::Result<()> {
    let head = String::from_utf8_lossy(&raw[..raw.len().min(1024)]).into_owned();
    store
        .rejections()
        .record(&SubmissionRejection {
            entry_id: entry.id.clone(),
            request_id: request_id.map(str::to_owned),
            errors: errors.to_vec(),
            payload_head: head,
            payload_bytes: raw.len() as u64,
            received_at: DateTime::now(),
        })
        .await?;
    Ok(())
}
