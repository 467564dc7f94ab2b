//! Built-in test and benchmark executors.

use std::time::Duration;

use harmonia_shared::error::ExecError;
use harmonia_shared::model::task_params::{FailParams, SleepParams, WriteParams};
use mongodb::bson::{Document, doc};

use super::{TaskContext, output};

/// `debug.noop`: succeeds at once, saying when it ran and when its task became ready (its
/// entry's stamp; both wall clocks, microseconds since the Unix epoch) so a benchmark on the
/// same host can time submit -> started and ready -> started finer than MongoDB's millisecond
/// dates.
pub fn noop(ctx: &TaskContext) -> Document {
    let mut out = doc! { "started_unix_us": harmonia_shared::queue::unix_us() };
    if let Some(ready) = ctx.ready_us {
        out.insert("ready_unix_us", ready);
    }
    out
}

/// `debug.sleep`: sleeps, reporting its progress four times a second (like a long download
/// would), and stops at once when cancelled.
pub async fn sleep(ctx: &TaskContext, p: &SleepParams) -> Result<Document, ExecError> {
    let total = Duration::from_millis(p.ms);
    let start = tokio::time::Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        let elapsed = start.elapsed().min(total);
        let pct = if total.is_zero() {
            100.0
        } else {
            elapsed.as_secs_f32() * 100.0 / total.as_secs_f32()
        };
        ctx.progress(
            "sleeping",
            pct,
            Some(format!("{} of {} ms", elapsed.as_millis(), p.ms)),
        );
        if elapsed >= total {
            break;
        }
        tokio::select! {
            _ = tick.tick() => {}
            () = tokio::time::sleep(total - elapsed) => {}
            () = ctx.cancel.cancelled() => return Err(ExecError::Cancelled),
        }
    }
    ctx.progress("done", 100.0, None);
    Ok(doc! { "slept_ms": p.ms as i64 })
}

/// `debug.fail`: fails the first `times` attempts (every attempt when `times` is absent),
/// retryably unless `permanent`.
pub fn fail(ctx: &TaskContext, p: &FailParams) -> Result<Document, ExecError> {
    // Counted over all attempts ever (a manual retry continues the count).
    let fails = p.times.is_none_or(|n| u64::from(ctx.task.attempt) <= n);
    if !fails {
        return Ok(doc! { "succeeded_on_attempt": i64::from(ctx.task.attempt) });
    }
    let message = format!("debug.fail: attempt {} fails on purpose", ctx.task.attempt);
    if p.permanent {
        Err(ExecError::permanent(message))
    } else {
        Err(ExecError::retryable(message))
    }
}

/// `debug.crash`: aborts the whole worker process (a poison task).
pub fn crash(ctx: &TaskContext) -> ! {
    tracing::error!(task = %ctx.task.id, "debug.crash: aborting the worker on purpose");
    std::process::abort()
}

/// `debug.write`: works for `after_ms`, then stores `bytes` bytes as the task's output
/// `debug.bin` (in the bucket, with its `artifacts` pointer), as a model task stores its outputs.
pub async fn write(ctx: &TaskContext, p: &WriteParams) -> Result<Document, ExecError> {
    let n = usize::try_from(p.bytes).map_err(|_| ExecError::permanent("bytes: too large"))?;
    if p.after_ms > 0 {
        sleep(ctx, &SleepParams { ms: p.after_ms }).await?;
    }
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
