//! Schema migrations, run by every process on start-up. Each step is idempotent, so concurrent
//! start-ups of several replicas are safe; the version is recorded in `meta`.

use mongodb::bson::{Document, doc};

use super::{Store, StoreError};
use crate::model::SCHEMA_VERSION;

const META: &str = "meta";

/// Brings the database to [`SCHEMA_VERSION`] and returns the version found before.
pub async fn migrate(store: &Store) -> Result<i32, StoreError> {
    let meta = store.db().collection::<Document>(META);
    let found = meta
        .find_one(doc! { "_id": "schema" })
        .await?
        .and_then(|d| d.get_i32("version").ok())
        .unwrap_or(0);
    if found > SCHEMA_VERSION {
        return Err(StoreError::SchemaTooNew {
            found,
            supported: SCHEMA_VERSION,
        });
    }
    // Version 1: the collections' indexes. Later versions add steps below this one.
    store.runs().create_indexes().await?;
    if found < 6 {
        // See version 6 below.
        store.tasks().drop_full_status_indexes().await?;
    }
    store.tasks().create_indexes().await?;
    store.rejections().create_indexes().await?;
    store.workers().create_indexes().await?;
    // Version 2: model work.
    store.model_artifacts().create_indexes().await?;
    store.checksums().create_indexes().await?;
    store.licenses().create_indexes().await?;
    store.artifacts().create_indexes().await?;
    // Version 3: tasks record the Redis epoch they were published in (a new index on tasks).
    // Version 4: workspaces, projects, tokens, the audit log; runs record their task types
    // (listing by type; runs stored before have none and are not found by that filter).
    store.runs().create_list_indexes().await?;
    store.workspaces().create_indexes().await?;
    store.projects().create_indexes().await?;
    store.tokens().create_indexes().await?;
    store.audit().create_indexes().await?;
    // Version 5: dashboard sessions (expired by a TTL index); tasks gain `attempts`, which
    // older documents read as empty.
    store.sessions().create_indexes().await?;
    // Version 6: run_tasks' per-status indexes are partial (only running, or only queued,
    // tasks), under new names; the full ones they replace are dropped above, before the
    // partial ones are created.
    meta.update_one(
        doc! { "_id": "schema", "version": { "$not": { "$gt": SCHEMA_VERSION } } },
        doc! { "$set": { "version": SCHEMA_VERSION } },
    )
    .upsert(true)
    .await
    .or_else(|e| match *e.kind {
        // A newer replica raced us to a higher version: the upsert's filter missed and the
        // insert collided. Its schema wins.
        mongodb::error::ErrorKind::Write(mongodb::error::WriteFailure::WriteError(ref w))
            if w.code == 11000 =>
        {
            Ok(Default::default())
        }
        _ => Err(e),
    })?;
    Ok(found)
}
