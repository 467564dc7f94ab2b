//! Reading a stream through the scheduler replicas' consumer group, for ingest and events
//! alike: this replica's own pending entries first (what it was given before a restart or a
//! failed pass), then new ones; entries a dead replica left pending are taken over; a group
//! Redis lost with its data (a flush, an empty restart) is created again.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

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
    /// Set when entries are handled while the reader reads on (see [`InHand`]).
    in_hand: Option<Arc<InHand>>,
}

/// How many entries a [`GroupReader`] returned are still being handled, for a consumer that
/// reads on while it handles them. Entries in hand are pending too: the reader re-reads its
/// pending list only when none is in hand, so no entry is handed out twice, and none is
/// handed out again after it was acked.
#[derive(Debug, Default)]
pub struct InHand {
    count: AtomicUsize,
    none: Notify,
}

impl InHand {
    /// `n` entries are done with: acked, or left pending for a later read.
    pub fn finished(&self, n: usize) {
        if n > 0 && self.count.fetch_sub(n, Ordering::AcqRel) == n {
            self.none.notify_waiters();
        }
    }

    async fn wait_for_none(&self) {
        loop {
            let none = self.none.notified();
            if self.count.load(Ordering::Acquire) == 0 {
                return;
            }
            none.await;
        }
    }
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
            in_hand: None,
        }
    }

    /// A reader whose entries are handled while it reads on; `in_hand` counts them.
    pub fn reading_on(mut self, in_hand: Arc<InHand>) -> Self {
        self.in_hand = Some(in_hand);
        self
    }

    /// Whether the entries [`Self::next`] returned last were delivered before: read from the
    /// pending list of this replica (it restarted, or a read failed) or taken over from a dead
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
                Ok(entries) if !entries.is_empty() => {
                    if let Some(in_hand) = &self.in_hand {
                        in_hand.count.fetch_add(entries.len(), Ordering::AcqRel);
                    }
                    return Some(entries);
                }
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
        if let (true, Some(in_hand)) = (self.backlog, &self.in_hand) {
            in_hand.wait_for_none().await;
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
