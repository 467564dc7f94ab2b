//! The queues page's last hour: the gateway samples every stream's length, pending and lag on a
//! timer and keeps an hour of samples in memory. Each replica keeps its own (they agree within
//! a sample, since they all read the same Redis); a restarted gateway starts an empty hour.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use harmonia_shared::queue::Queue;
use harmonia_shared::queue::stats::StreamStats;

const WINDOW: Duration = Duration::from_secs(3600);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    pub at: SystemTime,
    pub length: u64,
    pub pending: u64,
    pub lag: u64,
}

#[derive(Debug, Default)]
pub struct QueueHistory {
    streams: Mutex<BTreeMap<String, VecDeque<Sample>>>,
}

impl QueueHistory {
    pub fn record(&self, at: SystemTime, stats: &[StreamStats]) {
        let mut streams = self.streams.lock().unwrap_or_else(|p| p.into_inner());
        for s in stats {
            let samples = streams.entry(s.stream.clone()).or_default();
            samples.push_back(Sample {
                at,
                length: s.length,
                pending: s.pending,
                lag: s.lag.unwrap_or(0),
            });
            while samples
                .front()
                .is_some_and(|f| at.duration_since(f.at).unwrap_or_default() > WINDOW)
            {
                samples.pop_front();
            }
        }
    }

    /// The samples of `stream` in the last hour, oldest first.
    pub fn of(&self, stream: &str) -> Vec<Sample> {
        let streams = self.streams.lock().unwrap_or_else(|p| p.into_inner());
        streams
            .get(stream)
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default()
    }
}

/// Samples every `every` until the process is told to stop. A failed sample is skipped (the
/// queues page says Redis is unreachable on its own).
pub async fn run(queue: Queue, history: std::sync::Arc<QueueHistory>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
        match crate::cli::queues::collect(&queue).await {
            Ok(stats) => history.record(SystemTime::now(), &stats),
            Err(e) => tracing::debug!("sampling the queues: {e}"),
        }
    }
}

/// An inline SVG polyline of `values` scaled into `width` x `height`, with `top` at the top (pass
/// the same `top` to lines drawn in one chart).
pub fn sparkline(values: &[u64], top: u64, width: u32, height: u32) -> String {
    if values.is_empty() {
        return String::new();
    }
    let max = top.max(1) as f64;
    let step = if values.len() > 1 {
        f64::from(width) / (values.len() - 1) as f64
    } else {
        0.0
    };
    values
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            let x = i as f64 * step;
            let y = f64::from(height) - v as f64 / max * f64::from(height);
            format!("{x:.1},{y:.1}")
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(stream: &str, length: u64) -> StreamStats {
        StreamStats {
            stream: stream.into(),
            group: None,
            length,
            pending: 0,
            lag: None,
            consumers: 0,
            oldest_pending_age_ms: None,
            oldest_entry_age_ms: None,
        }
    }

    #[test]
    fn samples_older_than_an_hour_are_dropped() {
        let h = QueueHistory::default();
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        for minute in 0..90u64 {
            h.record(t0 + Duration::from_secs(minute * 60), &[stats("s", minute)]);
        }
        let kept = h.of("s");
        assert_eq!(kept.len(), 61, "the last hour, both ends included");
        assert_eq!(kept[0].length, 29);
        assert_eq!(kept.last().map(|s| s.length), Some(89));
        assert!(h.of("other").is_empty());
    }

    #[test]
    fn a_sparkline_spans_the_box_with_the_shared_top_at_the_top() {
        assert_eq!(
            sparkline(&[0, 5, 10], 10, 100, 20),
            "0.0,20.0 50.0,10.0 100.0,0.0"
        );
        assert_eq!(sparkline(&[0, 5], 20, 100, 20), "0.0,20.0 100.0,15.0");
        assert_eq!(sparkline(&[], 10, 100, 20), "");
        assert_eq!(sparkline(&[0, 0], 0, 10, 20), "0.0,20.0 10.0,20.0");
    }
}
