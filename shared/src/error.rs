//! The error an executor returns: its variant is the retry policy.

/// Why a task attempt did not succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExecError {
    /// Worth another attempt (network blips, timeouts, a lost worker): retried with backoff
    /// while attempts remain.
    #[error("{0}")]
    Retryable(String),
    /// Will fail the same way again (bad parameters, checksum mismatch): fails the task now.
    #[error("{0}")]
    Permanent(String),
    /// The attempt stopped because cancellation was requested.
    #[error("cancelled")]
    Cancelled,
}

impl ExecError {
    pub fn retryable(&self) -> bool {
        matches!(self, Self::Retryable(_))
    }
}

/// Delay before retry attempt `n + 1` after `n` failed attempts (1-based): `base * 2^(n-1)`,
/// capped at 10 minutes.
pub fn backoff(base: std::time::Duration, attempt: u32) -> std::time::Duration {
    let factor = 2u32.saturating_pow(attempt.saturating_sub(1).min(20));
    base.saturating_mul(factor)
        .min(std::time::Duration::from_secs(600))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    #[test]
    fn backoff_doubles_and_is_capped() {
        let base = Duration::from_millis(100);
        assert_eq!(super::backoff(base, 1), Duration::from_millis(100));
        assert_eq!(super::backoff(base, 3), Duration::from_millis(400));
        assert_eq!(super::backoff(base, 40), Duration::from_secs(600));
    }
}
