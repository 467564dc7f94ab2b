//! Redis: the fast transport. Nothing here is the source of truth; MongoDB is.

pub mod cancels;
pub mod dead;
pub mod epoch;
pub mod events;
pub mod groups;
pub mod hints;
pub mod keys;
pub mod replies;
pub mod stats;
pub mod submit;
pub mod tasks;

pub use events::{SCHEDULER_GROUP, TaskEvent};
pub use keys::Keys;
pub use replies::{Reply, ReplyTo};
pub use tasks::{SPEC_MAX_BYTES, TaskEntry, TaskStream, WORKERS_GROUP, unix_us};

/// One stream entry as read through a group: its id and its fields (`entry.get("payload")`).
pub use redis::streams::StreamId as Entry;

mod conn;
pub use conn::Conn;

use conn::Pools;

use crate::config::RedisConfig;

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("redis pool: {0}")]
    CreatePool(#[from] deadpool_redis::CreatePoolError),
    #[error("redis connection: {0}")]
    Pool(#[from] deadpool_redis::PoolError),
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("no reply for request {request_id} within {waited:?} (is a scheduler running?)")]
    NoReply {
        request_id: String,
        waited: std::time::Duration,
    },
}

impl QueueError {
    /// Redis did not answer (down, restarting, unreachable): trying again can succeed. A bad
    /// URL or a refused command cannot.
    pub fn is_unreachable(&self) -> bool {
        match self {
            Self::Pool(_) => true,
            Self::Redis(e) => {
                e.is_io_error()
                    || e.is_connection_refusal()
                    || e.is_timeout()
                    // A Cluster moving a slot or electing a master (MOVED inside a transaction,
                    // TRYAGAIN, CLUSTERDOWN, MASTERDOWN, READONLY from a demoted master): the
                    // same command succeeds soon.
                    || e.is_cluster_error()
                    || matches!(
                        e.kind(),
                        redis::ErrorKind::Server(
                            redis::ServerErrorKind::MasterDown | redis::ServerErrorKind::ReadOnly
                        )
                    )
            }
            Self::CreatePool(_) | Self::NoReply { .. } => false,
        }
    }

    /// Redis has no such consumer group (lost with its data in a flush or an empty restart).
    pub fn is_no_group(&self) -> bool {
        matches!(self, Self::Redis(e) if e.code() == Some("NOGROUP"))
    }
}

/// How long a blocking stream read (XREAD/XREADGROUP BLOCK) waits per call. It must stay under
/// the client's response timeout (500 ms by default in redis-rs), or every idle read would
/// surface as an error; loops simply read again.
pub const BLOCK_MS: usize = 250;

/// A pooled Redis handle plus the key names for this deployment's prefix.
#[derive(Clone)]
pub struct Queue {
    pool: Pools,
    keys: Keys,
    /// For the connections a pool cannot lend (pub/sub): the server's URL, or a Cluster's seed
    /// nodes. Never printed: they may hold a password.
    urls: Vec<String>,
    /// Whether Redis answers, as the pool sees it (one log line each way per outage).
    outage: std::sync::Arc<crate::outage::Outage>,
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue").field("keys", &self.keys).finish()
    }
}

impl Queue {
    /// Builds the pool (of one server's connections, or of Cluster connections when
    /// `config.cluster`) and checks that Redis answers.
    pub async fn connect(config: &RedisConfig) -> Result<Self, QueueError> {
        let urls = config.urls();
        let queue = Self {
            pool: Pools::new(config.cluster, &urls, config.pool_size)?,
            keys: Keys::new(config.prefix.clone()),
            urls,
            outage: std::sync::Arc::new(crate::outage::Outage::new("Redis")),
        };
        queue.ping().await?;
        Ok(queue)
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// A pooled connection. The pool checks a connection before lending it, so failing to get
    /// one means Redis does not answer: that starts an outage, and the next success ends it.
    pub async fn conn(&self) -> Result<Conn, QueueError> {
        match self.pool.get().await {
            Ok(conn) => {
                self.outage.answered();
                Ok(conn)
            }
            Err(e) => {
                self.outage.failed(&e);
                Err(e.into())
            }
        }
    }

    /// Redis outages as the pool sees them.
    pub fn outage(&self) -> &crate::outage::Outage {
        &self.outage
    }

    /// The server's version string, which also proves the connection works.
    /// (Not counted as an outage when it fails: `connect` and `check` report that themselves.)
    pub async fn ping(&self) -> Result<String, QueueError> {
        let mut conn = self.pool.get().await?;
        let info = self.server_info(&mut conn).await?;
        Ok(info_field(&info, "redis_version")
            .unwrap_or("unknown")
            .to_owned())
    }

    /// `INFO server` of the Redis process holding this deployment's keys: the pipeline starts
    /// with a command on a key, so on a Cluster it goes to that key's master (a bare `INFO`
    /// would ask every master).
    pub(crate) async fn server_info(&self, conn: &mut Conn) -> Result<String, QueueError> {
        let (_, info): (Option<String>, String) = redis::pipe()
            .get(self.keys().epoch())
            .cmd("INFO")
            .arg("server")
            .query_async(conn)
            .await?;
        Ok(info)
    }
}

/// One field (`run_id`, `redis_version`) of an `INFO` reply.
fn info_field<'a>(info: &'a str, name: &str) -> Option<&'a str> {
    info.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
        .map(str::trim)
        .filter(|value| !value.is_empty())
}

#[cfg(test)]
mod tests {
    use redis::{ErrorKind, RedisError, ServerErrorKind};

    use super::QueueError;

    fn error(kind: ServerErrorKind) -> QueueError {
        QueueError::Redis(RedisError::from((
            ErrorKind::Server(kind),
            "from the server",
        )))
    }

    #[test]
    fn the_run_id_is_read_from_info_server() {
        let info = "# Server\r\nredis_version:7.0.15\r\nrun_id:7c1f0a\r\ntcp_port:6379\r\n";
        assert_eq!(super::info_field(info, "run_id"), Some("7c1f0a"));
        assert_eq!(
            super::info_field("# Server\r\nredis_version:7.0.15\r\n", "run_id"),
            None
        );
    }

    #[test]
    fn a_cluster_failing_over_is_unreachable_for_now_and_a_refused_command_is_not() {
        for kind in [
            ServerErrorKind::ClusterDown,
            ServerErrorKind::TryAgain,
            ServerErrorKind::MasterDown,
            ServerErrorKind::Moved,
            ServerErrorKind::ReadOnly,
        ] {
            assert!(error(kind).is_unreachable(), "{kind:?}");
        }
        assert!(!error(ServerErrorKind::CrossSlot).is_unreachable());
        assert!(!error(ServerErrorKind::NoScript).is_unreachable());
    }
}
