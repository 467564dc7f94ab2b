//! Cancel signals: `harmonia-scheduler cancel` publishes the ids of running tasks on one
//! pub/sub channel and every worker stops the attempts it holds among them at once. A signal
//! missed (a worker reconnecting) costs little: the worker also learns of the cancel at its next
//! lease renewal.

use futures::{Stream, StreamExt};
use redis::AsyncCommands;

use super::{Queue, QueueError};

impl Queue {
    /// Tells the workers to stop the attempts running these tasks.
    pub async fn signal_cancel(&self, task_ids: &[String]) -> Result<(), QueueError> {
        if task_ids.is_empty() {
            return Ok(());
        }
        let mut conn = self.conn().await?;
        let _: i64 = conn
            .publish(self.keys.cancel_channel(), task_ids.join(","))
            .await?;
        Ok(())
    }

    /// The cancel signals, as task id lists, on a connection of their own (pub/sub holds it).
    /// The stream ends when the connection breaks; subscribe again. On a Cluster the connection
    /// is to the first seed node that answers: a Cluster delivers a `PUBLISH` on every node.
    pub async fn cancel_signals(
        &self,
    ) -> Result<impl Stream<Item = Vec<String>> + Send + use<>, QueueError> {
        let mut pubsub = None;
        let mut failed = None;
        for url in &self.urls {
            match redis::Client::open(url.as_str()) {
                Ok(client) => match client.get_async_pubsub().await {
                    Ok(p) => {
                        pubsub = Some(p);
                        break;
                    }
                    Err(e) => failed = Some(e),
                },
                Err(e) => failed = Some(e),
            }
        }
        let Some(mut pubsub) = pubsub else {
            let none = || redis::RedisError::from((redis::ErrorKind::Client, "no Redis URL"));
            return Err(failed.unwrap_or_else(none).into());
        };
        pubsub.subscribe(self.keys.cancel_channel()).await?;
        Ok(pubsub.into_on_message().filter_map(|msg| async move {
            let ids: String = msg.get_payload().ok()?;
            Some(ids.split(',').map(str::to_owned).collect())
        }))
    }
}
