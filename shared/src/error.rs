//! The error an executor returns: its variant is the retry policy, and it keeps the error that
//! caused it (its `source`), so the message recorded on the task names the whole chain.

use crate::storage::StorageError;
use crate::store::StoreError;

/// The error that caused an [`ExecError`].
pub type Cause = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why a task attempt did not succeed. `context` says what the attempt was doing; it is empty
/// when the cause says it all. `Display` gives the context (or the cause), [`ExecError::message`]
/// the whole chain.
#[derive(Debug)]
pub enum ExecError {
    /// Worth another attempt (network blips, timeouts, a lost worker): retried with backoff
    /// while attempts remain.
    Retryable {
        context: String,
        source: Option<Cause>,
    },
    /// Will fail the same way again (bad parameters, checksum mismatch): fails the task now.
    Permanent {
        context: String,
        source: Option<Cause>,
    },
    /// The attempt stopped because cancellation was requested.
    Cancelled,
}

impl std::fmt::Display for ExecError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Retryable { context, source } | Self::Permanent { context, source } => {
                match source {
                    Some(cause) if context.is_empty() => write!(f, "{cause}"),
                    _ => f.write_str(context),
                }
            }
            Self::Cancelled => f.write_str("cancelled"),
        }
    }
}

impl std::error::Error for ExecError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Retryable { source, .. } | Self::Permanent { source, .. } => source
                .as_deref()
                .map(|e| e as &(dyn std::error::Error + 'static)),
            Self::Cancelled => None,
        }
    }
}

impl ExecError {
    pub fn retryable(context: impl Into<String>) -> Self {
        Self::Retryable {
            context: context.into(),
            source: None,
        }
    }

    pub fn permanent(context: impl Into<String>) -> Self {
        Self::Permanent {
            context: context.into(),
            source: None,
        }
    }

    /// A retryable error `context` caused by `source`.
    pub fn retryable_from(context: impl Into<String>, source: impl Into<Cause>) -> Self {
        Self::Retryable {
            context: context.into(),
            source: Some(source.into()),
        }
    }

    /// A permanent error `context` caused by `source`.
    pub fn permanent_from(context: impl Into<String>, source: impl Into<Cause>) -> Self {
        Self::Permanent {
            context: context.into(),
            source: Some(source.into()),
        }
    }

    /// Retryable, and `cause` says it all (its message becomes the task's).
    pub fn retryable_cause(cause: impl Into<Cause>) -> Self {
        Self::retryable_from("", cause)
    }

    /// Permanent, and `cause` says it all.
    pub fn permanent_cause(cause: impl Into<Cause>) -> Self {
        Self::permanent_from("", cause)
    }

    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Retryable { .. })
    }

    /// What the task records: the context and each cause after it, `a: b: c`, leaving out a
    /// cause whose text is already there (many errors print their source in their own text).
    pub fn message(&self) -> String {
        let mut message = self.to_string();
        let mut next = std::error::Error::source(self);
        while let Some(cause) = next {
            let text = cause.to_string();
            if !message.contains(&text) {
                message.push_str(": ");
                message.push_str(&text);
            }
            next = cause.source();
        }
        message
    }
}

/// MongoDB did not do what the attempt needed: worth another attempt.
impl From<StoreError> for ExecError {
    fn from(e: StoreError) -> Self {
        Self::retryable_cause(e) // it says "mongodb: ..."
    }
}

/// S3 did not do what the attempt needed (after its own retries): worth another attempt.
impl From<StorageError> for ExecError {
    fn from(e: StorageError) -> Self {
        Self::retryable_cause(e) // it says "s3 <op> <key>: ..."
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
    fn the_message_names_every_cause() {
        let io = std::io::Error::other("connection refused");
        let e = super::ExecError::retryable_from("loading the model", io);
        assert!(e.is_retryable());
        assert_eq!(e.message(), "loading the model: connection refused");
        assert_eq!(super::ExecError::permanent("bad").message(), "bad");
        let io = std::io::Error::other("disk full");
        let e = super::ExecError::permanent_cause(io);
        assert_eq!(
            (e.to_string(), e.message()),
            ("disk full".into(), "disk full".into())
        );
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        let base = Duration::from_millis(100);
        assert_eq!(super::backoff(base, 1), Duration::from_millis(100));
        assert_eq!(super::backoff(base, 3), Duration::from_millis(400));
        assert_eq!(super::backoff(base, 40), Duration::from_secs(600));
    }
}
