//! Built-in test and benchmark executors.

use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use harmonia_shared::error::ExecError;
use mongodb::bson::{Document, doc};

use super::{Executor, TaskContext, output};

fn uint(params: &Document, key: &str) -> Option<u64> {
    match params.get(key)? {
        mongodb::bson::Bson::Int32(v) => u64::try_from(*v).ok(),
        mongodb::bson::Bson::Int64(v) => u64::try_from(*v).ok(),
        _ => None,
    }
}

/// `debug.noop`: succeeds at once.
pub struct Noop;

impl Executor for Noop {
    fn run<'a>(&'a self, _ctx: &'a TaskContext) -> BoxFuture<'a, Result<Document, ExecError>> {
        async { Ok(Document::new()) }.boxed()
    }
}

/// `debug.sleep {ms}`: sleeps, reporting progress, and stops at once when cancelled.
pub struct Sleep;

impl Executor for Sleep {
    fn run<'a>(&'a self, ctx: &'a TaskContext) -> BoxFuture<'a, Result<Document, ExecError>> {
        async move {
            let ms = uint(ctx.params(), "ms").unwrap_or(0);
            ctx.progress("sleeping", 0.0, Some(format!("{ms} ms")));
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(ms)) => {}
                () = ctx.cancel.cancelled() => return Err(ExecError::Cancelled),
            }
            ctx.progress("done", 100.0, None);
            Ok(doc! { "slept_ms": ms as i64 })
        }
        .boxed()
    }
}

/// `debug.fail {times?, permanent?}`: fails the first `times` attempts (every attempt when
/// `times` is absent), retryably unless `permanent` is true.
pub struct Fail;

impl Executor for Fail {
    fn run<'a>(&'a self, ctx: &'a TaskContext) -> BoxFuture<'a, Result<Document, ExecError>> {
        async move {
            let times = uint(ctx.params(), "times");
            // Counted over all attempts ever (a manual retry continues the count).
            let fails = times.is_none_or(|n| u64::from(ctx.task.attempt) <= n);
            if !fails {
                return Ok(doc! { "succeeded_on_attempt": i64::from(ctx.task.attempt) });
            }
            let message = format!("debug.fail: attempt {} fails on purpose", ctx.task.attempt);
            if ctx.params().get_bool("permanent").unwrap_or(false) {
                Err(ExecError::Permanent(message))
            } else {
                Err(ExecError::Retryable(message))
            }
        }
        .boxed()
    }
}

/// `debug.crash`: aborts the whole worker process (a poison task).
pub struct Crash;

impl Executor for Crash {
    fn run<'a>(&'a self, ctx: &'a TaskContext) -> BoxFuture<'a, Result<Document, ExecError>> {
        async move {
            tracing::error!(task = %ctx.task.id, "debug.crash: aborting the worker on purpose");
            std::process::abort()
        }
        .boxed()
    }
}

/// `debug.write {bytes}`: stores `bytes` bytes as the task's output `debug.bin` (in the bucket,
/// with its `artifacts` pointer), as a model task stores its outputs.
pub struct Write;

impl Executor for Write {
    fn run<'a>(&'a self, ctx: &'a TaskContext) -> BoxFuture<'a, Result<Document, ExecError>> {
        async move {
            let n = uint(ctx.params(), "bytes").unwrap_or(0);
            let n =
                usize::try_from(n).map_err(|_| ExecError::Permanent("bytes: too large".into()))?;
            // Content that differs per task, so a mixed-up object shows in its checksum.
            let seed = ctx.task.id.bytes();
            let bytes: Vec<u8> = (0..n).map(|i| seed[i % seed.len()] ^ (i as u8)).collect();
            ctx.progress("uploading", 0.0, Some(format!("{n} bytes")));
            let stored = output::put(
                ctx,
                output::Output {
                    name: "debug.bin",
                    artifact_type: "debug",
                    content_type: "application/octet-stream",
                    bytes: bytes::Bytes::from(bytes),
                    summary: doc! { "bytes": n as i64 },
                    lineage: Document::new(),
                },
            )
            .await?;
            Ok(doc! {
                "artifact_id": stored.id,
                "artifact_ids": [stored.id],
                "sha256": &stored.storage_ref.sha256,
            })
        }
        .boxed()
    }
}
