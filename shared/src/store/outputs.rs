//! A task's output pointer, stored under its attempt's lease in one transaction with the task:
//! an attempt that lost its lease (presumed dead, partitioned, frozen) can never replace the
//! pointer of the attempt that took over, however late its write arrives.

use mongodb::ClientSession;
use mongodb::error::{TRANSIENT_TRANSACTION_ERROR, UNKNOWN_TRANSACTION_COMMIT_RESULT};

use super::{Store, StoreError};
use crate::model::Artifact;

/// How many times a transaction that conflicted (e.g. with a re-queue of the task) is retried.
const TRANSACTION_TRIES: u32 = 5;

/// What became of a fenced pointer write.
#[derive(Debug)]
pub enum FencedPut {
    /// Stored; `replaced_key` is the object of the pointer an earlier attempt had left (now
    /// named by no pointer).
    Stored {
        artifact: Box<Artifact>,
        replaced_key: Option<String>,
    },
    /// The attempt no longer holds the task: nothing was written.
    LeaseLost,
}

impl Store {
    /// Saves `artifact` as the output of its producing task if the attempt holding
    /// `lease_token` still holds that task.
    pub async fn put_output(
        &self,
        artifact: &Artifact,
        lease_token: &str,
    ) -> Result<FencedPut, StoreError> {
        let mut session = self.client().start_session().await?;
        let mut tries = 0;
        loop {
            tries += 1;
            session.start_transaction().await?;
            let outcome = match self
                .put_output_in(&mut session, artifact, lease_token)
                .await
            {
                Ok(FencedPut::LeaseLost) => {
                    session.abort_transaction().await?;
                    return Ok(FencedPut::LeaseLost);
                }
                Ok(stored) => commit(&mut session).await.map(|()| stored),
                Err(e) => {
                    let _ = session.abort_transaction().await;
                    Err(e)
                }
            };
            match outcome {
                Err(StoreError::Mongo(e))
                    if tries < TRANSACTION_TRIES
                        && e.contains_label(TRANSIENT_TRANSACTION_ERROR) => {}
                other => return other,
            }
        }
    }

    async fn put_output_in(
        &self,
        session: &mut ClientSession,
        artifact: &Artifact,
        lease_token: &str,
    ) -> Result<FencedPut, StoreError> {
        let (stored, replaced) = self.artifacts().put_in(session, artifact).await?;
        let held = self
            .tasks()
            .add_output_in(session, artifact.producer_id, lease_token, stored.id)
            .await?;
        Ok(if held {
            FencedPut::Stored {
                artifact: Box::new(stored),
                replaced_key: replaced.map(|old| old.storage_ref.key),
            }
        } else {
            FencedPut::LeaseLost
        })
    }
}

async fn commit(session: &mut ClientSession) -> Result<(), StoreError> {
    let mut tries = 0;
    loop {
        tries += 1;
        match session.commit_transaction().await {
            // The commit may or may not have applied: committing again is safe.
            Err(e)
                if tries < TRANSACTION_TRIES
                    && e.contains_label(UNKNOWN_TRANSACTION_COMMIT_RESULT) => {}
            other => return Ok(other?),
        }
    }
}
