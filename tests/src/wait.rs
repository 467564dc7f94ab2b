//! Waiting on conditions with a deadline: the harness's only way to synchronise with servers,
//! schedulers and workers (never a bare sleep).

use std::future::Future;
use std::time::{Duration, Instant};

/// Polls `probe` until it yields `Some`, with backoff from 5 ms to 100 ms, failing after
/// `timeout` with `what` and the probe's last error, if any.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = Instant::now() + timeout;
    let mut delay = Duration::from_millis(5);
    let mut last_err = None;
    loop {
        match probe().await {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => {}
            Err(e) => last_err = Some(e),
        }
        if Instant::now() >= deadline {
            let why = last_err
                .map(|e| format!(": last error: {e:#}"))
                .unwrap_or_default();
            anyhow::bail!("timed out after {timeout:?} waiting for {what}{why}");
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_millis(100));
    }
}
