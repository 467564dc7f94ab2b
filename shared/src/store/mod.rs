//! MongoDB: the source of truth. One repository per collection; only they know collection
//! names and document shapes.

pub mod artifacts;
pub mod checksums;
pub mod licenses;
pub mod migrate;
pub mod model_artifacts;
pub mod rejections;
pub mod runs;
pub mod tasks;
pub mod workers;

pub use artifacts::ArtifactRepo;
pub use checksums::ChecksumRepo;
pub use licenses::LicenseRepo;
pub use model_artifacts::ModelArtifactRepo;
pub use rejections::RejectionRepo;
pub use runs::RunRepo;
pub use tasks::TaskRepo;
pub use workers::WorkerRepo;

use mongodb::bson::{Document, doc};
use mongodb::{Client, Database};

use crate::config::MongoConfig;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("mongodb: {0}")]
    Mongo(#[from] mongodb::error::Error),
    #[error("encoding a document: {0}")]
    Encode(#[from] mongodb::bson::ser::Error),
    #[error(
        "mongodb at {uri} is not a replica set member (transactions and change streams need one)"
    )]
    NotReplicaSet { uri: String },
    #[error(
        "database schema version {found} is newer than this binary supports ({supported}); upgrade Harmonia"
    )]
    SchemaTooNew { found: i32, supported: i32 },
}

/// A connected database handle.
#[derive(Debug, Clone)]
pub struct Store {
    client: Client,
    db: Database,
}

impl Store {
    /// Connects and checks that the server is a replica set member.
    pub async fn connect(config: &MongoConfig) -> Result<Self, StoreError> {
        let client = Client::with_uri_str(&config.uri).await?;
        let db = client.database(&config.database);
        let store = Self { client, db };
        let hello = store.hello().await?;
        if hello.get_str("setName").is_err() {
            return Err(StoreError::NotReplicaSet {
                uri: redact_uri(&config.uri),
            });
        }
        Ok(store)
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn db(&self) -> &Database {
        &self.db
    }

    pub fn runs(&self) -> RunRepo {
        RunRepo::new(&self.db)
    }

    pub fn tasks(&self) -> TaskRepo {
        TaskRepo::new(&self.db)
    }

    pub fn rejections(&self) -> RejectionRepo {
        RejectionRepo::new(&self.db)
    }

    pub fn workers(&self) -> WorkerRepo {
        WorkerRepo::new(&self.db)
    }

    pub fn model_artifacts(&self) -> ModelArtifactRepo {
        ModelArtifactRepo::new(&self.db)
    }

    pub fn checksums(&self) -> ChecksumRepo {
        ChecksumRepo::new(&self.db)
    }

    pub fn licenses(&self) -> LicenseRepo {
        LicenseRepo::new(&self.db)
    }

    pub fn artifacts(&self) -> ArtifactRepo {
        ArtifactRepo::new(&self.db)
    }

    /// Called after a task of the run reached a final state: when none is left to run, the
    /// run's aggregates are recomputed from its tasks and its final status is set.
    pub async fn settle_run(&self, run_id: mongodb::bson::oid::ObjectId) -> Result<(), StoreError> {
        if !self.tasks().any_active(run_id).await? {
            self.refresh_run(run_id).await?;
        }
        Ok(())
    }

    /// Recomputes a run's aggregates from its tasks (the truth), derives its status, and saves
    /// them.
    pub async fn refresh_run(
        &self,
        run_id: mongodb::bson::oid::ObjectId,
    ) -> Result<Option<crate::model::WorkflowRun>, StoreError> {
        let Some(run) = self.recount_run(run_id).await? else {
            return Ok(None);
        };
        self.runs().set_aggregates(&run).await?;
        Ok(Some(run))
    }

    /// The run with exact aggregates computed from its tasks, without saving them (for status
    /// queries).
    pub async fn recount_run(
        &self,
        run_id: mongodb::bson::oid::ObjectId,
    ) -> Result<Option<crate::model::WorkflowRun>, StoreError> {
        let Some(run) = self.runs().get(run_id).await? else {
            return Ok(None);
        };
        let (counts, failed) = self.tasks().count_by_status(run_id).await?;
        Ok(Some(run.with_aggregates(counts, failed)))
    }

    /// Registers (or merges into) a model artifact and records the checks of its files against
    /// it: what `model.download` and `model.convert` both end with.
    pub async fn register_model(
        &self,
        registration: &model_artifacts::Registration<'_>,
        checks: Vec<crate::model::Checksum>,
    ) -> Result<crate::model::ModelArtifact, StoreError> {
        let artifact = self.model_artifacts().register(registration).await?;
        self.checksums().record_for(artifact.id, checks).await?;
        Ok(artifact)
    }

    /// The server's `hello` reply (role, replica set name, wire version).
    pub async fn hello(&self) -> Result<Document, StoreError> {
        Ok(self.db.run_command(doc! { "hello": 1 }).await?)
    }

    pub async fn server_version(&self) -> Result<String, StoreError> {
        let info = self.db.run_command(doc! { "buildInfo": 1 }).await?;
        Ok(info.get_str("version").unwrap_or("unknown").to_owned())
    }
}

/// Every document matching `filter`, in `sort` order.
pub(crate) async fn find_all<T>(
    coll: &mongodb::Collection<T>,
    filter: Document,
    sort: Document,
) -> Result<Vec<T>, StoreError>
where
    T: serde::de::DeserializeOwned + Send + Sync,
{
    use futures::TryStreamExt;
    Ok(coll.find(filter).sort(sort).await?.try_collect().await?)
}

/// Drops `user:password@` from a URI so it can be logged.
pub fn redact_uri(uri: &str) -> String {
    match (uri.find("://"), uri.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            format!("{}://***@{}", &uri[..scheme_end], &uri[at + 1..])
        }
        _ => uri.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn credentials_are_redacted() {
        assert_eq!(
            super::redact_uri("mongodb://u:p@h:1/?replicaSet=rs0"),
            "mongodb://***@h:1/?replicaSet=rs0"
        );
        assert_eq!(super::redact_uri("mongodb://h:1"), "mongodb://h:1");
    }
}
