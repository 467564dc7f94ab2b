//! The Redis epoch: a random id the scheduler writes once per Redis process holding the
//! deployment's keys. It changes when Redis may have lost writes: its absence means Redis lost
//! its data (a restart on an empty data dir, a FLUSHALL); a different server process (`run_id`)
//! means a restart from a snapshot or a failover to a replica, either of which can lose the last
//! writes while the epoch key itself survives.
//!
//! Task stream entries are written together with a read of the epoch (one MULTI), and MongoDB
//! records the epoch each task was published in. A task marked as published in an older epoch
//! than the current one may have no entry any more and is published again (a second entry for a
//! task is harmless: its claim is fenced); this also covers a mark that lands after the loss it
//! should have been lost in.

use std::sync::LazyLock;

use super::{Queue, QueueError};

/// KEYS: epoch. ARGV: a fresh id, the server's `run_id`. An epoch is `<id>@<run_id>`: kept
/// while the same server process holds it. Returns {epoch, 1 if it was just started}.
static ENSURE_EPOCH: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
        local current = redis.call('GET', KEYS[1])
        local suffix = '@' .. ARGV[2]
        if current and string.sub(current, -#suffix) == suffix then return {current, 0} end
        local epoch = ARGV[1] .. suffix
        redis.call('SET', KEYS[1], epoch)
        return {epoch, 1}
        ",
    )
});

/// The current epoch, and whether this call started it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Epoch {
    pub id: String,
    /// True on the first call after Redis started empty, was flushed, restarted or failed over.
    pub started: bool,
}

impl Queue {
    /// Reads the epoch, starting a new one if Redis has none or another server process holds
    /// the deployment's keys than the one that started it.
    pub async fn epoch(&self) -> Result<Epoch, QueueError> {
        let fresh = mongodb::bson::oid::ObjectId::new().to_hex();
        let mut conn = self.conn().await?;
        let info = self.server_info(&mut conn).await?;
        let run_id = super::info_field(&info, "run_id").ok_or_else(|| {
            redis::RedisError::from((redis::ErrorKind::Parse, "INFO server has no run_id"))
        })?;
        let (id, started): (String, i32) = ENSURE_EPOCH
            .key(self.keys().epoch())
            .arg(fresh)
            .arg(run_id)
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
