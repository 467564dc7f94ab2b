//! Connections to one Redis server or to a Redis Cluster, behind one type: every command,
//! script and pipeline of this module runs on either. On a Cluster each command goes to the
//! master of its key's slot; every key of a deployment shares the prefix's hash tag (required
//! by [`crate::config::RedisConfig`] in Cluster mode), so the scripts' and transactions' keys
//! are in one slot.

use deadpool_redis::{Runtime, cluster};
use redis::aio::ConnectionLike;
use redis::{Cmd, Pipeline, RedisFuture, Value};

use super::QueueError;

/// The pool of one server's connections or of Cluster connections.
#[derive(Clone)]
pub(super) enum Pools {
    One(deadpool_redis::Pool),
    Cluster(cluster::Pool),
}

impl Pools {
    /// A pool over `urls`: one server's URL, or a Cluster's seed nodes when `cluster`.
    pub(super) fn new(cluster: bool, urls: &[String], size: usize) -> Result<Self, QueueError> {
        let pool = deadpool_redis::PoolConfig::new(size);
        if cluster {
            let mut config = cluster::Config::from_urls(urls.to_vec());
            config.pool = Some(pool);
            return Ok(Self::Cluster(config.create_pool(Some(Runtime::Tokio1))?));
        }
        let url = urls.first().cloned().unwrap_or_default();
        let mut config = deadpool_redis::Config::from_url(url);
        config.pool = Some(pool);
        Ok(Self::One(config.create_pool(Some(Runtime::Tokio1))?))
    }

    pub(super) async fn get(&self) -> Result<Conn, deadpool_redis::PoolError> {
        Ok(match self {
            Self::One(pool) => Conn::One(pool.get().await?),
            Self::Cluster(pool) => Conn::Cluster(pool.get().await?),
        })
    }
}

/// A pooled connection (back to its pool when dropped).
pub enum Conn {
    One(deadpool_redis::Connection),
    Cluster(cluster::Connection),
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::One(_) => "Conn::One",
            Self::Cluster(_) => "Conn::Cluster",
        })
    }
}

impl Conn {
    /// Closes this connection instead of returning it to the pool: its read buffer grew to the
    /// largest reply it carried and would keep that size for the connection's life (a
    /// 7 MB submission left 8 MB held by an idle pooled connection). The pool opens a fresh
    /// one when it needs it.
    pub fn close(self) {
        match self {
            Self::One(c) => drop(deadpool_redis::Connection::take(c)),
            Self::Cluster(c) => drop(cluster::Connection::take(c)),
        }
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::One(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::One(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::One(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}
