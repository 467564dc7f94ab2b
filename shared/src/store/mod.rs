//! MongoDB: the source of truth. One repository per collection; only they know collection
//! names and document shapes.

pub mod artifacts;
pub mod audit;
pub mod checksums;
pub mod licenses;
pub mod migrate;
pub mod model_artifacts;
pub mod outputs;
pub mod projects;
pub mod rejections;
pub mod run_list;
pub mod runs;
pub mod sessions;
pub mod tasks;
pub mod tokens;
pub mod workers;
pub mod workspaces;

pub use artifacts::ArtifactRepo;
pub use audit::{AuditQuery, AuditRepo};
pub use checksums::ChecksumRepo;
pub use licenses::LicenseRepo;
pub use model_artifacts::ModelArtifactRepo;
pub use projects::ProjectRepo;
pub use rejections::RejectionRepo;
pub use run_list::{Order, RunPage, RunQuery, RunSort};
pub use runs::RunRepo;
pub use sessions::SessionRepo;
pub use tasks::TaskRepo;
pub use tokens::TokenRepo;
pub use workers::WorkerRepo;
pub use workspaces::WorkspaceRepo;

use std::sync::Arc;
use std::time::Duration;

use mongodb::bson::{Bson, Document, doc};
use mongodb::event::EventHandler;
use mongodb::event::sdam::SdamEvent;
use mongodb::options::ClientOptions;
use mongodb::{Client, Database};

use crate::config::MongoConfig;
use crate::outage::Outage;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("mongodb: {0}")]
    Mongo(#[from] mongodb::error::Error),
    #[error("encoding a document: {0}")]
    Encode(#[from] mongodb::bson::ser::Error),
    #[error("mongodb at {uri} is not a replica set member (retryable writes need one)")]
    NotReplicaSet { uri: String },
    #[error(
        "mongodb refused {failed} statement(s) of a batched update, first: {message} (code {code})"
    )]
    Statements {
        failed: usize,
        code: i32,
        message: String,
    },
    /// A batched write was applied but not confirmed as durable (no majority, a step-down).
    #[error("mongodb did not confirm a batched write as durable: {message} (code {code})")]
    WriteConcern { code: i32, message: String },
    #[error(
        "database schema version {found} is newer than this binary supports ({supported}); upgrade Harmonia"
    )]
    SchemaTooNew { found: i32, supported: i32 },
}

/// Server codes of a node that is stepping down, starting up or shutting down: another try
/// (once a primary is back) can succeed.
const STATE_CHANGE_CODES: [i32; 8] = [10107, 13435, 10058, 11600, 11602, 13436, 189, 91];

impl StoreError {
    /// The database could not be reached or had no primary for a while: the same call can
    /// succeed later, so it is retried rather than failed. Anything else (a document MongoDB
    /// refuses, a newer schema) fails the same way every time.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Mongo(e) => driver_transient(e),
            Self::WriteConcern { code, .. } => STATE_CHANGE_CODES.contains(code),
            _ => false,
        }
    }
}

/// See [`StoreError::is_transient`].
fn driver_transient(e: &mongodb::error::Error) -> bool {
    use mongodb::error::ErrorKind;
    let code = match e.kind.as_ref() {
        ErrorKind::Io(_)
        | ErrorKind::ServerSelection { .. }
        | ErrorKind::ConnectionPoolCleared { .. } => return true,
        ErrorKind::Command(c) => Some(c.code),
        ErrorKind::Write(mongodb::error::WriteFailure::WriteConcernError(w)) => Some(w.code),
        _ => None,
    };
    code.is_some_and(|c| STATE_CHANGE_CODES.contains(&c))
        || e.contains_label("RetryableWriteError")
        || e.contains_label("TransientTransactionError")
}

/// A unique index refused the write: the document (or one with its key) already exists.
pub(crate) fn is_duplicate_key(e: &mongodb::error::Error) -> bool {
    use mongodb::error::{ErrorKind, WriteFailure};
    match e.kind.as_ref() {
        ErrorKind::Write(WriteFailure::WriteError(w)) => w.code == 11000,
        ErrorKind::Command(c) => c.code == 11000,
        _ => false,
    }
}

/// Whether `err` or any error in its source chain is a transient [`StoreError`] (or a driver
/// error that would make one).
pub fn is_transient(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(err);
    while let Some(e) = next {
        if let Some(store) = e.downcast_ref::<StoreError>() {
            return store.is_transient();
        }
        if let Some(driver) = e.downcast_ref::<mongodb::error::Error>() {
            return driver_transient(driver);
        }
        next = e.source();
    }
    false
}

/// A document type and the one collection it is stored in.
pub trait Stored: Send + Sync + 'static {
    const COLLECTION: &'static str;
}

/// The repository of `T`'s collection. Each collection's file adds its operations to
/// `Repo<ItsDocument>` under its own name (`RunRepo`, `TaskRepo`...): one repository per
/// collection, and only that file knows the collection's name and shape.
#[derive(Debug)]
pub struct Repo<T: Send + Sync> {
    coll: mongodb::Collection<T>,
    db: Database,
}

impl<T: Send + Sync> Clone for Repo<T> {
    fn clone(&self) -> Self {
        Self {
            coll: self.coll.clone(),
            db: self.db.clone(),
        }
    }
}

impl<T: Stored> Repo<T> {
    pub fn new(db: &Database) -> Self {
        Self {
            coll: db.collection(T::COLLECTION),
            db: db.clone(),
        }
    }

    /// Runs many update statements (`{ q, u }` documents) as ONE unordered `update` command:
    /// one round trip and one journal commit for all of them, under the server's default write
    /// concern (`w: majority`, journaled) like every other write. Returns how many documents the
    /// statements matched in all. The driver has no such call for MongoDB before 8.0 (its
    /// `bulk_write` needs 8.0), hence the command.
    pub(crate) async fn update_each(&self, statements: Vec<Document>) -> Result<u64, StoreError> {
        if statements.is_empty() {
            return Ok(0);
        }
        let reply = self
            .db
            .run_command(doc! {
                "update": T::COLLECTION,
                "updates": statements,
                "ordered": false,
            })
            .await?;
        if let Ok(errors) = reply.get_array("writeErrors")
            && let Some(first) = errors.first().and_then(|e| e.as_document())
        {
            return Err(StoreError::Statements {
                failed: errors.len(),
                code: first.get_i32("code").unwrap_or(0),
                message: first.get_str("errmsg").unwrap_or("?").to_owned(),
            });
        }
        if let Ok(wce) = reply.get_document("writeConcernError") {
            return Err(StoreError::WriteConcern {
                code: wce.get_i32("code").unwrap_or(0),
                message: wce.get_str("errmsg").unwrap_or("?").to_owned(),
            });
        }
        Ok(match reply.get("n") {
            Some(mongodb::bson::Bson::Int32(n)) => u64::try_from(*n).unwrap_or(0),
            Some(mongodb::bson::Bson::Int64(n)) => u64::try_from(*n).unwrap_or(0),
            _ => 0,
        })
    }
}

/// A connected database handle.
#[derive(Debug, Clone)]
pub struct Store {
    client: Client,
    db: Database,
    /// Whether a writable primary is known, as the driver's monitor sees it.
    outage: Arc<Outage>,
}

impl Store {
    /// Connects and checks that the server is a replica set member.
    pub async fn connect(config: &MongoConfig) -> Result<Self, StoreError> {
        let mut options = ClientOptions::parse(&config.uri).await?;
        // A stalled server is noticed by the monitor after a heartbeat plus a connect timeout
        // (the driver's defaults make that 20 s); operations on it are then interrupted and
        // retried on the next primary. The URI can still set either.
        options.heartbeat_freq.get_or_insert(Duration::from_secs(5));
        options
            .connect_timeout
            .get_or_insert(Duration::from_secs(5));
        let outage = Arc::new(Outage::new("MongoDB"));
        options.sdam_event_handler = Some(watch_primary(outage.clone()));
        let client = Client::with_options(options)?;
        let db = client.database(&config.database);
        let store = Self { client, db, outage };
        let hello = store.hello().await?;
        if hello.get_str("setName").is_err() {
            return Err(StoreError::NotReplicaSet {
                uri: redact_uri(&config.uri),
            });
        }
        Ok(store)
    }

    /// MongoDB outages as the driver's monitor sees them (one log line each way).
    pub fn outage(&self) -> &Outage {
        &self.outage
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

    pub fn workspaces(&self) -> WorkspaceRepo {
        WorkspaceRepo::new(&self.db)
    }

    pub fn projects(&self) -> ProjectRepo {
        ProjectRepo::new(&self.db)
    }

    pub fn tokens(&self) -> TokenRepo {
        TokenRepo::new(&self.db)
    }

    pub fn audit(&self) -> AuditRepo {
        AuditRepo::new(&self.db)
    }

    pub fn sessions(&self) -> SessionRepo {
        SessionRepo::new(&self.db)
    }

    /// Queued tasks whose stream entries Redis lost (they were published in another epoch than
    /// `epoch`) are made due again, a page of runs at a time; returns how many. Only tasks of
    /// runs that exist: a run's tasks are inserted before its document (the commit point), and
    /// the tasks of a creation that died before it must never run.
    pub async fn republish_stale(&self, epoch: &str) -> Result<u64, StoreError> {
        use futures::TryStreamExt;
        let tasks = self.tasks();
        let mut pages = std::pin::pin!(tasks.stale_runs(epoch).await?.try_chunks(1000));
        let mut due = 0;
        while let Some(runs) = pages.try_next().await.map_err(|e| e.1)? {
            let runs = self.runs().existing(&runs).await?;
            if !runs.is_empty() {
                due += tasks.republish_stale(epoch, &runs).await?;
            }
        }
        Ok(due)
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

    /// The run with exact aggregates and its tasks, from one read of each: the aggregates are
    /// counted from the tasks read (for pages that show both).
    pub async fn run_with_tasks(
        &self,
        run_id: mongodb::bson::oid::ObjectId,
    ) -> Result<Option<(crate::model::WorkflowRun, Vec<crate::model::RunTask>)>, StoreError> {
        let Some(run) = self.runs().get(run_id).await? else {
            return Ok(None);
        };
        let tasks = self.tasks().for_run(run_id).await?;
        let (counts, failed) = crate::model::TaskCounts::of_nodes(
            tasks.iter().map(|t| (t.node_id.as_str(), t.status)),
        );
        Ok(Some((run.with_aggregates(counts, failed), tasks)))
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

    /// The seconds of snapshot history mongod keeps (`minSnapshotHistoryWindowInSeconds`, 300
    /// by default since MongoDB 5.0); `None` where it cannot be read (a user without the
    /// privilege, a mongod without the parameter). Harmonia reads no snapshot at a past cluster
    /// time, so whatever is kept is pure cost: every task update keeps its previous version
    /// that long, and once a large run's dirty data passes WiredTiger's eviction target, eviction
    /// writes those versions to the history store (docs/scaling.md).
    async fn snapshot_history_window_s(&self) -> Result<Option<i64>, StoreError> {
        const PARAMETER: &str = "minSnapshotHistoryWindowInSeconds";
        let admin = self.client.database("admin");
        match admin
            .run_command(doc! { "getParameter": 1, PARAMETER: 1 })
            .await
        {
            Ok(reply) => Ok(match reply.get(PARAMETER) {
                Some(Bson::Int32(s)) => Some(i64::from(*s)),
                Some(Bson::Int64(s)) => Some(*s),
                _ => None,
            }),
            // Refused (not authorized, no such parameter): the advice is left out, nothing fails.
            Err(e) if matches!(*e.kind, mongodb::error::ErrorKind::Command(_)) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// One line of advice when mongod keeps snapshot history (see
    /// [`Self::snapshot_history_window_s`]); `None` when it keeps none or cannot say.
    pub async fn history_advice(&self) -> Result<Option<String>, StoreError> {
        Ok(self
            .snapshot_history_window_s()
            .await?
            .filter(|&s| s > 0)
            .map(|s| {
                format!(
                    "mongod keeps {s} s of snapshot history, which Harmonia never reads; \
                     minSnapshotHistoryWindowInSeconds=0 makes large runs faster (docs/scaling.md)"
                )
            }))
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

/// Feeds `outage` from the driver's topology monitor: no writable primary is an outage (a stalled
/// or stopped server, or an election), one again is its end.
fn watch_primary(outage: Arc<Outage>) -> EventHandler<SdamEvent> {
    EventHandler::callback(move |event| {
        let SdamEvent::TopologyDescriptionChanged(change) = event else {
            return;
        };
        // A client being dropped (the process ending) empties its topology: not an outage.
        if change.new_description.servers().is_empty() {
            return;
        }
        let (was, is) = (
            change.previous_description.has_writable_server(),
            change.new_description.has_writable_server(),
        );
        match (was, is) {
            (true, false) => {
                outage.failed(&format_args!(
                    "no writable primary ({:?})",
                    change.new_description.topology_type()
                ));
            }
            (false, true) => outage.answered(),
            _ => {}
        }
    })
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
        assert_eq!(super::redact_uri("redis://:p@h:1"), "redis://***@h:1");
    }
}
