//! Built-in test and benchmark executors.

use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use harmonia_shared::error::ExecError;
use mongodb::bson::{Document, doc};

use super::{Executor, TaskContext};

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
