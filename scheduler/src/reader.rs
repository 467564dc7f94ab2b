//! Reading a stream through the scheduler replicas' consumer group, for ingest and events
//! alike: this replica's own pending entries first (what it was given before a restart or a
//! failed pass), then new ones; entries a dead replica left pending are taken over; a group
//! Redis lost with its data (a flush, an empty restart) is created again.

use std::time::{Duration, Instant};

use harmonia_shared::queue::{Entry, SCHEDULER_GROUP};

use crate::context::Scheduler;

#[derive(Debug)]
pub struct GroupReader {
    stream: String,
    /// Names the entries in the log ("submissions", "task events").
    what: &'static str,
    count: usize,
    /// How often to look for entries a dead replica left pending (zero: at every idle read).
    take_over_every: Duration,
    backlog: bool,
    /// Whether the last batch was read from the pending list (delivered before).
    redelivered: bool,
    grouped: bool,
    taken_over_at: Instant,
}

impl GroupReader {
    pub fn new(
        stream: String,
        what: &'static str,
        count: usize,
        take_over_every: Duration,
    ) -> Self {
        Self {
            stream,
            what,
            count,
            take_over_every,
            backlog: true,
            redelivered: false,
            grouped: false,
            taken_over_at: Instant::now(),
        }
    }

    /// Reads this replica's pending entries again next: some of the last batch were left
    /// unacked for another try.
    pub fn retry_pending(&mut self) {
        self.backlog = true;
    }

    /// Whether the entries [`Self::next`] returned last were delivered before: read from the
    /// pending list of this replica (it restarted, or a pass failed) or taken over from a dead
    /// one. Their first handling may have stopped half-way.
    pub fn redelivered(&self) -> bool {
        self.redelivered
    }

    /// The next non-empty batch; `None` once the scheduler shuts down. Redis errors are logged
    /// and retried every 500 ms.
    pub async fn next(&mut self, ctx: &Scheduler) -> Option<Vec<Entry>> {
        loop {
            let read = self.read(ctx);
            let read = tokio::select! {
                read = read => read,
                () = ctx.shutdown.cancelled() => return None,
            };
            match read {
                Ok(entries) if !entries.is_empty() => return Some(entries),
                Ok(_) => {
                    self.backlog = false;
                    if self.taken_over_at.elapsed() >= self.take_over_every {
                        self.backlog = ctx.take_over(&self.stream, self.what, self.count).await;
                        self.taken_over_at = Instant::now();
                    }
                }
                Err(e) => {
                    ctx.report(&format!("reading {}", self.what), &e);
                    // Redis may have lost the group with its data (NOGROUP): create it again
                    // before the next read, or every later read fails the same way.
                    self.grouped = false;
                    self.backlog = true;
                    if !ctx.pause(Duration::from_millis(500)).await {
                        return None;
                    }
                }
            }
        }
    }

    async fn read(&mut self, ctx: &Scheduler) -> anyhow::Result<Vec<Entry>> {
        if !self.grouped {
            ctx.queue
                .ensure_group(&self.stream, SCHEDULER_GROUP)
                .await?;
            self.grouped = true;
        }
        let consumer = &ctx.options.consumer;
        let (stream, backlog, count) = (&self.stream, self.backlog, self.count);
        self.redelivered = backlog;
        Ok(ctx
            .queue
            .read_group(stream, SCHEDULER_GROUP, consumer, backlog, count)
            .await?)
    }
}
