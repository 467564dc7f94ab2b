//! Listing `workflow_runs` with the content-generation seed's retrieval patterns: filters by
//! workspace/project, status, task type, tag, submitter and date range, a substring of the name,
//! a sort, and keyset (cursor) pagination. Every combination is served by one of the indexes
//! below (tests check `explain`: no COLLSCAN).

use futures::TryStreamExt;
use mongodb::IndexModel;
use mongodb::bson::oid::ObjectId;
use mongodb::bson::{Bson, DateTime, Document, doc};
use serde::{Deserialize, Serialize};

use super::StoreError;
use super::runs::RunRepo;
use crate::model::{RunStatus, WorkflowRun};

pub const MAX_PAGE: i64 = 500;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunSort {
    #[default]
    CreatedAt,
    Name,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Order {
    Asc,
    #[default]
    Desc,
}

/// One page's request. `None` filters match everything.
#[derive(Debug, Clone, Default)]
pub struct RunQuery {
    pub workspace: Option<String>,
    pub project: Option<String>,
    pub status: Option<RunStatus>,
    pub task_type: Option<String>,
    pub tag: Option<String>,
    pub created_by: Option<String>,
    /// Created at or after.
    pub since: Option<DateTime>,
    /// Created before.
    pub until: Option<DateTime>,
    /// Case-insensitive substring of the name.
    pub name_contains: Option<String>,
    pub sort: RunSort,
    pub order: Order,
    pub limit: i64,
    /// Where the previous page ended ([`RunPage::next`]).
    pub cursor: Option<String>,
}

#[derive(Debug, Clone)]
pub struct RunPage {
    pub runs: Vec<WorkflowRun>,
    /// The cursor of the next page; `None` on the last one.
    pub next: Option<String>,
}

#[derive(Debug, thiserror::Error)]
#[error("cursor: {0}")]
pub struct BadCursor(String);

/// The sort key and id of a page's last run, hex-encoded JSON, tied to the sort it came from.
#[derive(Debug, Serialize, Deserialize)]
struct Cursor {
    sort: RunSort,
    order: Order,
    /// `created_at` in ms, or the name.
    key: serde_json::Value,
    id: String,
}

impl Cursor {
    fn of(q: &RunQuery, run: &WorkflowRun) -> String {
        let key = match q.sort {
            RunSort::CreatedAt => run.created_at.timestamp_millis().into(),
            RunSort::Name => run.name.clone().into(),
        };
        let c = Cursor {
            sort: q.sort,
            order: q.order,
            key,
            id: run.id.to_hex(),
        };
        hex::encode(serde_json::to_vec(&c).unwrap_or_default())
    }

    fn parse(q: &RunQuery, text: &str) -> Result<(Bson, ObjectId), BadCursor> {
        let bad = || BadCursor(format!("'{text}' is not a cursor this listing returned"));
        let bytes = hex::decode(text).map_err(|_| bad())?;
        let c: Cursor = serde_json::from_slice(&bytes).map_err(|_| bad())?;
        if (c.sort, c.order) != (q.sort, q.order) {
            return Err(BadCursor(
                "the cursor came from a listing with another sort or order".into(),
            ));
        }
        let id = ObjectId::parse_str(&c.id).map_err(|_| bad())?;
        let key = match (q.sort, c.key) {
            (RunSort::CreatedAt, serde_json::Value::Number(n)) => {
                Bson::DateTime(DateTime::from_millis(n.as_i64().ok_or_else(bad)?))
            }
            (RunSort::Name, serde_json::Value::String(s)) => Bson::String(s),
            _ => return Err(bad()),
        };
        Ok((key, id))
    }
}

/// Escapes `text` for use as a literal inside a regular expression.
fn literal(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if "\\^$.|?*+()[]{}-/".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

impl RunQuery {
    fn sort_field(&self) -> &'static str {
        match self.sort {
            RunSort::CreatedAt => "created_at",
            RunSort::Name => "name",
        }
    }

    fn filter(&self) -> Result<Document, BadCursor> {
        let mut f = Document::new();
        let fields = [
            ("workspace", &self.workspace),
            ("project", &self.project),
            ("task_types", &self.task_type),
            ("tags", &self.tag),
            ("created_by", &self.created_by),
        ];
        for (field, value) in fields {
            if let Some(v) = value {
                f.insert(field, v.as_str());
            }
        }
        if let Some(status) = self.status {
            f.insert("status", status.as_str());
        }
        let mut range = Document::new();
        if let Some(since) = self.since {
            range.insert("$gte", since);
        }
        if let Some(until) = self.until {
            range.insert("$lt", until);
        }
        if !range.is_empty() {
            f.insert("created_at", range);
        }
        if let Some(q) = self.name_contains.as_deref().filter(|q| !q.is_empty()) {
            f.insert("name", doc! { "$regex": literal(q), "$options": "i" });
        }
        if let Some(cursor) = &self.cursor {
            let (key, id) = Cursor::parse(self, cursor)?;
            let op = if self.order == Order::Desc {
                "$lt"
            } else {
                "$gt"
            };
            let field = self.sort_field();
            f.insert(
                "$or",
                vec![
                    doc! { field: { op: key.clone() } },
                    doc! { field: key, "_id": { op: id } },
                ],
            );
        }
        Ok(f)
    }

    fn sort_doc(&self) -> Document {
        let dir = if self.order == Order::Desc { -1 } else { 1 };
        doc! { self.sort_field(): dir, "_id": dir }
    }
}

impl RunRepo {
    /// How many of the workspace's runs have each status, read from the
    /// `(workspace, status, ...)` index alone (a covered query).
    pub async fn count_by_status_in(
        &self,
        workspace: &str,
    ) -> Result<Vec<(RunStatus, u64)>, StoreError> {
        let mut cursor = self
            .coll
            .aggregate([
                doc! { "$match": { "workspace": workspace } },
                doc! { "$project": { "_id": 0, "status": 1 } },
                doc! { "$group": { "_id": "$status", "n": { "$sum": 1 } } },
            ])
            .hint(mongodb::options::Hint::Keys(doc! {
                "workspace": 1, "status": 1, "created_at": -1, "_id": -1,
            }))
            .await?;
        let mut counts = Vec::new();
        while let Some(group) = cursor.try_next().await? {
            let status = group.get_str("_id").ok().and_then(RunStatus::parse);
            let n = match group.get("n") {
                Some(Bson::Int32(n)) => u64::try_from(*n).unwrap_or(0),
                Some(Bson::Int64(n)) => u64::try_from(*n).unwrap_or(0),
                _ => 0,
            };
            if let Some(status) = status {
                counts.push((status, n));
            }
        }
        Ok(counts)
    }

    /// The indexes behind [`RunRepo::list`]: one per filter, each ending in the sort keys, so
    /// the first filter the planner picks also gives the order.
    pub async fn create_list_indexes(&self) -> Result<(), StoreError> {
        let by = |field: &str| {
            IndexModel::builder()
                .keys(doc! { "workspace": 1, field: 1, "created_at": -1, "_id": -1 })
                .build()
        };
        self.coll
            .create_indexes([
                by("project"),
                by("status"),
                by("tags"),
                by("task_types"),
                by("created_by"),
                IndexModel::builder()
                    .keys(doc! { "workspace": 1, "created_at": -1, "_id": -1 })
                    .build(),
                IndexModel::builder()
                    .keys(doc! { "workspace": 1, "name": 1, "_id": 1 })
                    .build(),
                // Fleet-wide listings (the CLI without --workspace).
                IndexModel::builder()
                    .keys(doc! { "created_at": -1, "_id": -1 })
                    .build(),
                IndexModel::builder()
                    .keys(doc! { "name": 1, "_id": 1 })
                    .build(),
            ])
            .await?;
        Ok(())
    }

    /// One page of runs matching `q`.
    pub async fn list(&self, q: &RunQuery) -> Result<Result<RunPage, BadCursor>, StoreError> {
        let filter = match q.filter() {
            Ok(f) => f,
            Err(e) => return Ok(Err(e)),
        };
        let limit = q.limit.clamp(1, MAX_PAGE);
        let mut runs: Vec<WorkflowRun> = self
            .coll
            .find(filter)
            .sort(q.sort_doc())
            .limit(limit + 1)
            .await?
            .try_collect()
            .await?;
        let more = runs.len() as i64 > limit;
        runs.truncate(limit as usize);
        let next = more
            .then(|| runs.last().map(|r| Cursor::of(q, r)))
            .flatten();
        Ok(Ok(RunPage { runs, next }))
    }

    /// MongoDB's `explain` of the query [`RunRepo::list`] would run: how tests and the
    /// benchmark see which index serves it.
    pub async fn explain_list(&self, q: &RunQuery) -> Result<Document, StoreError> {
        let filter = q.filter().unwrap_or_default();
        let db = self.coll.client().database(&self.coll.namespace().db);
        Ok(db
            .run_command(doc! {
                "explain": {
                    "find": self.coll.name(),
                    "filter": filter,
                    "sort": q.sort_doc(),
                    "limit": q.limit.clamp(1, MAX_PAGE) + 1,
                },
                "verbosity": "queryPlanner",
            })
            .await?)
    }
}

/// The stage names of an explain's winning plan, outermost first (`["LIMIT", "FETCH",
/// "IXSCAN"]`).
pub fn plan_stages(explain: &Document) -> Vec<String> {
    let mut stages = Vec::new();
    let mut next = explain
        .get_document("queryPlanner")
        .and_then(|p| p.get_document("winningPlan"))
        .ok();
    while let Some(stage) = next {
        // 7.0+ nests the classic plan under `queryPlan`.
        let stage = stage.get_document("queryPlan").unwrap_or(stage);
        if let Ok(name) = stage.get_str("stage") {
            stages.push(name.to_owned());
        }
        next = stage.get_document("inputStage").ok().or_else(|| {
            stage
                .get_array("inputStages")
                .ok()
                .and_then(|a| a.first())
                .and_then(Bson::as_document)
        });
    }
    stages
}
