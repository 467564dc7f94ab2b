//! One log line when a backing service stops answering and one when it answers again, however
//! many calls failed in between; and how long it has been answering, for decisions that must
//! not be taken on a stale view (a lease that could not be renewed while MongoDB was stalled
//! has not been abandoned).

use std::fmt::Display;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Connects to a service with `connect`, waiting for as long as it takes while `transient` says
/// the failure may pass (containers start in any order; a service may be restarting): one log
/// line when the wait begins, one when it ends, retries with backoff up to 5 s apart. Any other
/// error (a bad URI, a standalone mongod) is returned at once.
pub async fn connect<T, E, F, Fut>(
    service: &'static str,
    connect: F,
    transient: fn(&E) -> bool,
) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
    E: Display,
{
    use backon::{ExponentialBuilder, Retryable};
    let outage = Outage::new(service);
    let backoff = ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(5))
        .with_jitter()
        .without_max_times();
    let connected = connect
        .retry(backoff)
        .sleep(tokio::time::sleep)
        .when(transient)
        .notify(|e, _| {
            outage.failed(e);
        })
        .await;
    if connected.is_ok() {
        outage.answered();
    }
    connected
}

#[derive(Debug)]
pub struct Outage {
    service: &'static str,
    /// Mirrors `state.down_since.is_some()`, so the every-call `answered` takes no lock while
    /// the service answers.
    down: AtomicBool,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// When the current outage began; `None` while the service answers.
    down_since: Option<Instant>,
    /// Failed calls in the current outage.
    failures: u64,
    /// When the service last came back (or when this tracker was made).
    up_since: Instant,
}

impl Outage {
    /// A tracker for `service` ("MongoDB", "S3"), taken to be answering.
    pub fn new(service: &'static str) -> Self {
        Self {
            service,
            down: AtomicBool::new(false),
            state: Mutex::new(State {
                down_since: None,
                failures: 0,
                up_since: Instant::now(),
            }),
        }
    }

    /// Records a failed call (or the driver's view that the service is gone). The first one of
    /// an outage logs a warning; the rest are counted. True when this call began the outage.
    pub fn failed(&self, detail: &dyn Display) -> bool {
        let mut state = self.lock();
        state.failures += 1;
        if state.down_since.is_some() {
            tracing::debug!(service = self.service, "still unreachable: {detail}");
            return false;
        }
        state.down_since = Some(Instant::now());
        self.down.store(true, Ordering::Release);
        tracing::warn!(
            service = self.service,
            "{} unreachable, retrying with backoff until it answers: {detail}",
            self.service
        );
        true
    }

    /// Records a call that succeeded; logs the end of an outage, if one was under way.
    pub fn answered(&self) {
        if !self.down.load(Ordering::Acquire) {
            return;
        }
        let mut state = self.lock();
        let Some(since) = state.down_since.take() else {
            return;
        };
        self.down.store(false, Ordering::Release);
        let failures = std::mem::take(&mut state.failures);
        state.up_since = Instant::now();
        tracing::info!(
            service = self.service,
            down_s = since.elapsed().as_secs_f64(),
            failures,
            "{} answers again after {:.1} s",
            self.service,
            since.elapsed().as_secs_f64()
        );
    }

    /// Logs a failed call that needed the service: a warning, or only a debug line while an
    /// outage is known (its one warning has been written).
    pub fn report(&self, what: &str, err: &dyn Display) {
        if self.is_down() {
            tracing::debug!(service = self.service, "{what}: {err}");
        } else {
            tracing::warn!("{what}: {err}");
        }
    }

    pub fn is_down(&self) -> bool {
        self.down.load(Ordering::Acquire)
    }

    /// How long the service has answered since its last outage ended (or since this tracker
    /// was made); `None` during an outage.
    pub fn up_for(&self) -> Option<Duration> {
        let state = self.lock();
        state.down_since.is_none().then(|| state.up_since.elapsed())
    }

    /// Starts the "answering" clock again without logging: for a stall noticed only afterwards
    /// (a call that took far too long), which means the same as a short outage.
    pub fn stalled(&self) {
        let mut state = self.lock();
        if state.down_since.is_none() {
            state.up_since = Instant::now();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state stays consistent at every await-free step, so a poisoned lock is usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::Outage;

    #[test]
    fn an_outage_begins_once_and_resets_the_answering_clock_when_it_ends() {
        let outage = Outage::new("S3");
        assert!(!outage.is_down());
        assert!(outage.failed(&"connection refused"));
        assert!(!outage.failed(&"connection refused"), "one outage, not two");
        assert!(outage.is_down());
        assert_eq!(outage.up_for(), None);
        outage.answered();
        assert!(!outage.is_down());
        assert!(outage.up_for().unwrap() < std::time::Duration::from_secs(1));
        assert!(outage.failed(&"again"), "a later failure is a new outage");
    }

    #[test]
    fn a_stall_restarts_the_answering_clock_without_an_outage() {
        let outage = Outage::new("MongoDB");
        std::thread::sleep(std::time::Duration::from_millis(20));
        let before = outage.up_for().unwrap();
        outage.stalled();
        assert!(outage.up_for().unwrap() < before);
        assert!(!outage.is_down());
    }
}
