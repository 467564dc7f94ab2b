//! The Redis-fronted API: reads `<prefix>:submissions` through the `scheduler` consumer group,
//! validates each entry, creates its run in MongoDB, and replies exactly once.
//!
//! An entry is acked only after its effects are in MongoDB (the ack and the reply are one Redis
//! script). A scheduler that dies in between leaves the entry pending: it re-reads its own
//! pending entries on start, and other replicas reclaim entries idle past `reclaim_after`.
//! Re-processing is safe because run creation is idempotent on `request_id` and rejections are
//! keyed by entry id.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::sync::mpsc;

use harmonia_shared::model::SubmissionRejection;
use harmonia_shared::queue::{Entry, Reply, ReplyTo};
use harmonia_shared::store::Store;
use harmonia_shared::submission::{self, FieldError, Refusal};
use mongodb::bson::DateTime;

use crate::context::Scheduler;
use crate::create::{self, Created, Dispatch, Prior};
use crate::reader::{GroupReader, InHand};

/// Consumer group of all scheduler replicas on the submissions stream.
pub const GROUP: &str = harmonia_shared::queue::SCHEDULER_GROUP;

/// Attempts to store a valid submission before it is rejected with the storage error (errors of
/// a MongoDB outage do not count: the submission waits for the database to come back).
const MAX_STORE_TRIES: u32 = 5;

/// Submissions handled at once.
const CONCURRENCY: usize = 32;

/// How long a submission that could not be stored waits before its next try.
const RETRY_AFTER: Duration = Duration::from_millis(500);

/// A submission entry's handling: the entry and the result (`None`: the scheduler shut down
/// first, the entry is left pending).
type Handling = Pin<Box<dyn Future<Output = (Entry, Option<anyhow::Result<()>>)> + Send>>;

/// Runs until the scheduler shuts down. Errors talking to Redis or Mongo are logged and retried; no
/// submission is lost or acked without its effects.
pub async fn run(ctx: Arc<Scheduler>) {
    // Entries are read while others are handled: a submission that comes while earlier ones
    // are being stored is read at once, not after the slowest of them (at a steady rate, that
    // wait was most of a submission's way to its run).
    let in_hand = Arc::new(InHand::default());
    let (tx, mut rx) = mpsc::channel(1);
    let reader = tokio::spawn(read(ctx.clone(), in_hand.clone(), tx));
    let mut handling: FuturesUnordered<Handling> = FuturesUnordered::new();
    let mut waiting: VecDeque<(Entry, bool)> = VecDeque::new();
    let mut failures: HashMap<String, u32> = HashMap::new();
    let mut open = true;
    loop {
        if ctx.shutdown.is_cancelled() {
            // Left pending: this replica reads them again when it starts, others take them over.
            in_hand.finished(waiting.len());
            waiting.clear();
        }
        // Submissions are independent and their handling is idempotent (ids derive from the
        // request id), so they are handled concurrently: at a few journaled writes each, one at
        // a time would cap ingest at a few hundred runs per second.
        while handling.len() < CONCURRENCY {
            let Some((entry, redelivered)) = waiting.pop_front() else {
                break;
            };
            handling.push(attempt(ctx.clone(), entry, redelivered, Duration::ZERO));
        }
        if !open && handling.is_empty() {
            break;
        }
        tokio::select! {
            Some((entry, result)) = handling.next() => {
                let again = match result {
                    Some(Ok(())) => {
                        failures.remove(&entry.id);
                        false
                    }
                    Some(Err(e)) => failed(&ctx, &entry, &e, &mut failures).await,
                    None => false,
                };
                if again {
                    // Its first handling may have stopped half-way: it is redelivered.
                    handling.push(attempt(ctx.clone(), entry, true, RETRY_AFTER));
                } else {
                    in_hand.finished(1);
                }
            }
            // The next read's entries are taken once this one's have all started.
            batch = rx.recv(), if open && waiting.is_empty() => match batch {
                Some((entries, redelivered)) => {
                    waiting.extend(entries.into_iter().map(|e| (e, redelivered)));
                }
                None => open = false,
            },
        }
    }
    let _ = reader.await;
}

/// Reads submission entries for [`run`] until the scheduler shuts down, each read's with
/// whether they were delivered before.
async fn read(ctx: Arc<Scheduler>, in_hand: Arc<InHand>, tx: mpsc::Sender<(Vec<Entry>, bool)>) {
    let stream = ctx.queue.keys().submissions();
    // Submissions a dead replica left pending are looked for at every idle read.
    let mut reader =
        GroupReader::new(stream, "submissions", 256, Duration::ZERO).reading_on(in_hand.clone());
    while let Some(entries) = reader.next(&ctx).await {
        let n = entries.len();
        if tx.send((entries, reader.redelivered())).await.is_err() {
            in_hand.finished(n);
            return;
        }
    }
}

/// Handles `entry` after `delay` (a retry), unless the scheduler shuts down first.
fn attempt(ctx: Arc<Scheduler>, entry: Entry, redelivered: bool, delay: Duration) -> Handling {
    Box::pin(async move {
        if !delay.is_zero() && !ctx.pause(delay).await {
            return (entry, None);
        }
        let result = handle(&ctx, &entry, redelivered).await;
        (entry, Some(result))
    })
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
    // Left pending; tried again after RETRY_AFTER.
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
        Ok(sub) => accept(ctx, sub, redelivered).await?,
        Err(refused) => Err(refused),
    };
    let (to, reply): (Option<String>, Reply) = match parsed {
        Ok((sub, created)) => {
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

/// Creates the run of a valid submission, or refuses the submission when its workspace or
/// project is not open for runs. A resent submission whose run exists gets that run
/// (idempotency wins even if the workspace was archived since). The registry check and the
/// run's lookup are made at once: both are on every submission's way to its run.
async fn accept(
    ctx: &Scheduler,
    sub: submission::Submission,
    redelivered: bool,
) -> anyhow::Result<Result<(submission::Submission, Created), Refusal>> {
    let store = &ctx.store;
    let dispatch = Dispatch::Direct {
        queue: &ctx.queue,
        redelivered,
    };
    let (errors, prior) = tokio::try_join!(
        async { anyhow::Ok(crate::admit::check(store, &sub).await?) },
        async { anyhow::Ok(create::prior(store, &sub, dispatch).await?) },
    )?;
    let created = match prior {
        Prior::Existing(created) => created,
        Prior::New { .. } if !errors.is_empty() => {
            return Ok(Err(Refusal::Rejected {
                request_id: sub.request_id,
                errors,
            }));
        }
        Prior::New { epoch } => create::create_new(store, &sub, None, dispatch, epoch).await?,
    };
    Ok(Ok((sub, created)))
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
