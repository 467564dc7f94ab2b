//! Model affinity, the worker's half: read the hint streams of the models this worker holds
//! before anything else, and give a worker that holds a task's model a head start of at most
//! `wait` on a fresh entry this one does not hold the model for.
//!
//! Affinity is a preference, never a requirement: the class copy of every entry is read by
//! any fitting worker; a task whose holders are all busy (none read its hint stream within
//! [`harmonia_shared::queue::hints::LOOKING`]) is taken at once; and a worker whose hint
//! entries came more than `patience` after the oldest entry of its class streams reads those
//! alone, in arrival order, until it is taken: no task is passed over for work that came more
//! than `patience` after it.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant, SystemTime};

use harmonia_shared::queue::{Entry, TaskEntry, TaskStream};
use harmonia_shared::resources::ResourceClass;

use crate::worker::Worker;

/// How long an answer about holders is reused.
const LOOKING_TTL: Duration = Duration::from_millis(500);

/// Settings (`--model-affinity`, `--affinity-wait-ms`, `--affinity-patience-ms`).
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub on: bool,
    pub wait: Duration,
    pub patience: Duration,
}

/// The claim loop's affinity state.
#[derive(Debug)]
pub struct Affinity {
    pub settings: Settings,
    /// Model repositories in this worker's cache.
    held: Vec<String>,
    /// Hint streams entries were ever appended to (a held model without one has no tasks).
    existing: HashSet<String>,
    looking: HashMap<(ResourceClass, String), (bool, Instant)>,
    /// The Redis time (ms) of the newest hint entry this worker was given.
    served_ms: u64,
}

impl Affinity {
    pub fn new(settings: Settings) -> Self {
        Self {
            settings,
            held: Vec::new(),
            existing: HashSet::new(),
            looking: HashMap::new(),
            served_ms: 0,
        }
    }

    /// Re-reads which models this worker holds (its cache directory) and which hint streams
    /// exist.
    pub async fn refresh(&mut self, worker: &Worker) {
        if !self.settings.on {
            return;
        }
        self.held = worker.env.models.hub.cached_repos();
        match worker.queue.hint_streams().await {
            Ok(streams) => self.existing = streams.into_iter().collect(),
            Err(e) => tracing::debug!("listing hint streams: {e:#}"),
        }
    }

    /// The hint streams to read first: each held model's, in each fitting class, where tasks
    /// were ever published to it.
    pub fn hint_streams(&self, worker: &Worker, fitting: &[ResourceClass]) -> Vec<TaskStream> {
        fitting
            .iter()
            .flat_map(|c| self.held.iter().map(|m| TaskStream::hint(*c, m)))
            .filter(|s| self.existing.contains(&s.key(worker.queue.keys())))
            .collect()
    }

    /// Whether hints go first this round: not while an entry of the class streams `classes`
    /// was published more than `patience` before the newest hint entry this worker was given
    /// (it would be passed over by work that came later than that: the class streams alone are
    /// read, in arrival order, until it is taken).
    pub async fn hints_first(&self, worker: &Worker, classes: &[TaskStream]) -> bool {
        let classes: Vec<ResourceClass> = classes.iter().map(|s| s.class).collect();
        match worker.queue.oldest_entry_ms(&classes).await {
            Ok(Some(oldest)) => !passed_over(oldest, self.served_ms, self.settings.patience),
            Ok(None) => true,
            Err(e) => {
                tracing::debug!("reading the oldest task entry: {e:#}");
                true
            }
        }
    }

    /// Notes the hint entries a read returned (see [`Affinity::hints_first`]).
    pub fn served(&mut self, entries: &[(TaskStream, Vec<Entry>)]) {
        let newest = entries
            .iter()
            .flat_map(|(_, e)| e)
            .map(|e| entry_ms(&e.id))
            .max();
        self.served_ms = self.served_ms.max(newest.unwrap_or(0));
    }

    /// How long to hold an entry of `class` before claiming it: the rest of `wait` when it
    /// names a model this worker does not hold and a holder is looking for work.
    pub async fn defer(
        &mut self,
        worker: &Worker,
        class: ResourceClass,
        entry: &Entry,
    ) -> Duration {
        let Some(model) = TaskEntry::of(entry).and_then(|t| t.model) else {
            return Duration::ZERO;
        };
        if !self.settings.on || self.held.contains(&model) {
            return Duration::ZERO;
        }
        let Some(left) = self
            .settings
            .wait
            .checked_sub(age(entry_ms(&entry.id)))
            .filter(|d| !d.is_zero())
        else {
            return Duration::ZERO;
        };
        if self.holder_looking(worker, class, model).await {
            left
        } else {
            Duration::ZERO
        }
    }

    async fn holder_looking(
        &mut self,
        worker: &Worker,
        class: ResourceClass,
        model: String,
    ) -> bool {
        let key = (class, model);
        if let Some((looking, at)) = self.looking.get(&key)
            && at.elapsed() < LOOKING_TTL
        {
            return *looking;
        }
        let looking = worker
            .queue
            .holder_looking(class, &key.1)
            .await
            .unwrap_or_else(|e| {
                tracing::debug!("asking for holders of {}: {e:#}", key.1);
                false
            });
        self.looking.insert(key, (looking, Instant::now()));
        looking
    }
}

/// Whether an entry of Redis time `oldest` (ms) is passed over by hint entries as new as
/// `served` (ms) for longer than `patience`.
fn passed_over(oldest: u64, served: u64, patience: Duration) -> bool {
    let patience = u64::try_from(patience.as_millis()).unwrap_or(u64::MAX);
    oldest.saturating_add(patience) < served
}

/// The milliseconds an entry id starts with (Redis's clock when it was appended).
fn entry_ms(id: &str) -> u64 {
    id.split('-')
        .next()
        .and_then(|ms| ms.parse().ok())
        .unwrap_or(0)
}

/// How long ago a Redis time in ms was, by this host's clock (zero if it is ahead).
fn age(ms: u64) -> Duration {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    now.saturating_sub(Duration::from_millis(ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_is_passed_over_only_by_work_newer_than_the_patience() {
        let patience = Duration::from_secs(10);
        assert!(!passed_over(1_000, 11_000, patience));
        assert!(passed_over(1_000, 11_001, patience));
        assert!(!passed_over(5_000, 0, patience), "nothing served yet");
        // A patience too large for u64 milliseconds never overflows into "passed over".
        assert!(!passed_over(u64::MAX - 5, u64::MAX, Duration::MAX));
        assert!(!passed_over(
            u64::MAX - 5,
            u64::MAX,
            Duration::from_millis(u64::MAX)
        ));
    }

    #[test]
    fn an_entry_id_gives_its_age() {
        assert_eq!(entry_ms("1733500000123-7"), 1_733_500_000_123);
        assert_eq!(entry_ms("garbage"), 0);
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        assert!(age(now + 60_000).is_zero(), "a clock ahead gives no age");
        assert!(age(now - 5_000) >= Duration::from_secs(5));
    }
}
