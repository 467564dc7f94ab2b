//! The Redis epoch: a random id the scheduler writes once per Redis lifetime. Its absence means
//! Redis lost its data (a restart on an empty data dir, a FLUSHALL).
//!
//! Task stream entries are written together with a read of the epoch (one MULTI), and MongoDB
//! records the epoch each task was published in. A task marked as published in an older epoch
//! than the current one has no entry any more and is published again; this also covers a mark
//! that lands after the flush it should have been lost in.

use std::sync::LazyLock;

use super::{Queue, QueueError};

/// KEYS: epoch. ARGV: a fresh id. Returns {epoch, 1 if it was just created}.
static ENSURE_EPOCH: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
        local current = redis.call('GET', KEYS[1])
        if current then return {current, 0} end
        redis.call('SET', KEYS[1], ARGV[1])
        return {ARGV[1], 1}
        ",
    )
});

/// The current epoch, and whether this call started it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Epoch {
    pub id: String,
    /// True on the first call after Redis started empty or was flushed.
    pub started: bool,
}

impl Queue {
    /// Reads the epoch, starting a new one if Redis has none.
    pub async fn epoch(&self) -> Result<Epoch, QueueError> {
        let fresh = mongodb::bson::oid::ObjectId::new().to_hex();
        let mut conn = self.conn().await?;
        let (id, started): (String, i32) = ENSURE_EPOCH
            .key(self.keys().epoch())
            .arg(fresh)
            .invoke_async(&mut conn)
            .await?;
        Ok(Epoch {
            id,
            started: started == 1,
        })
    }

    /// The current epoch without starting one (`None` right after a loss, until the
    /// scheduler's reconcile pass notices it and starts the next).
    pub async fn current_epoch(&self) -> Result<Option<String>, QueueError> {
        let mut conn = self.conn().await?;
        let id: Option<String> = redis::cmd("GET")
            .arg(self.keys().epoch())
            .query_async(&mut conn)
            .await?;
        Ok(id)
    }
}
