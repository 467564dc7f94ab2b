//! Models: every verified snapshot and conversion (`model_artifacts`), with sizes, sha256,
//! licenses, the verification history (`checksums`) and the lineage of conversions. Model
//! artifacts are shared by every workspace (a cache of public weights), so any signed-in token
//! with `runs:read` sees them.

use std::collections::HashMap;
use std::sync::Arc;

use askama::Template;
use axum::extract::{Path, State};
use harmonia_shared::model::checksum::ExpectedSource;
use harmonia_shared::model::{Checksum, License, ModelArtifact, TokenScope};
use harmonia_shared::store::{Store, StoreError};
use mongodb::bson::oid::ObjectId;

use super::page::{self, Chrome, PageResult, human_bytes, when};
use super::session::Viewer;
use crate::gateway::AppState;
use crate::gateway::problem::Problem;

const LISTED: i64 = 200;
/// How far back a chain of conversions is followed.
const LINEAGE_DEPTH: usize = 16;

#[derive(Debug)]
pub struct ModelRow {
    pub id: String,
    pub name: String,
    pub version: String,
    pub format: String,
    pub size: String,
    pub files: usize,
    pub verified: String,
    pub license: String,
    pub source: Option<String>,
    /// The source's name and version where it is known, else its id.
    pub source_label: String,
    pub conversion: String,
}

fn license_text(l: Option<&License>) -> String {
    match l {
        None => "unknown".into(),
        Some(l) => {
            let commercial = match l.commercial_use {
                Some(true) => "commercial use allowed",
                Some(false) => "no commercial use",
                None => "commercial use unknown",
            };
            format!("{} ({commercial})", l.spdx_id)
        }
    }
}

/// `3 of 3 files ok`: files whose latest check matched.
fn verified(m: &ModelArtifact, checks: &[&Checksum]) -> String {
    let ok = m
        .files
        .iter()
        .filter(|f| {
            checks
                .iter()
                .filter(|c| c.file == f.name)
                .max_by_key(|c| c.verified_at)
                .is_some_and(|c| c.ok)
        })
        .count();
    format!("{ok} of {} files ok", m.files.len())
}

async fn license(
    store: &Store,
    cache: &mut HashMap<ObjectId, Option<License>>,
    id: Option<ObjectId>,
) -> Result<Option<License>, StoreError> {
    let Some(id) = id else { return Ok(None) };
    if let Some(known) = cache.get(&id) {
        return Ok(known.clone());
    }
    let found = store.licenses().get(id).await?;
    cache.insert(id, found.clone());
    Ok(found)
}

/// A model's row, from its checks and licence (read by the caller: one query for a list).
fn row(m: &ModelArtifact, checks: &[&Checksum], lic: Option<&License>) -> ModelRow {
    ModelRow {
        id: m.id.to_hex(),
        name: m.name.clone(),
        version: m.version.clone(),
        format: m.format.clone(),
        size: human_bytes(m.size_bytes),
        files: m.files.len(),
        verified: verified(m, checks),
        license: license_text(lic),
        source: m.lineage.as_ref().map(|l| l.source_artifact_id.to_hex()),
        source_label: m
            .lineage
            .as_ref()
            .map(|l| l.source_artifact_id.to_hex())
            .unwrap_or_default(),
        conversion: m
            .lineage
            .as_ref()
            .map(|l| l.conversion.clone())
            .unwrap_or_default(),
    }
}

#[derive(Debug, Template)]
#[template(path = "models.html")]
pub struct ModelsPage {
    pub chrome: Chrome,
    pub models: Vec<ModelRow>,
}

/// `GET /models`: the newest model artifacts.
pub async fn list(State(state): State<Arc<AppState>>, viewer: Viewer) -> PageResult {
    viewer.caller().require(TokenScope::RunsRead)?;
    let mut cache = HashMap::new();
    let newest = state.store.model_artifacts().newest(LISTED).await?;
    let ids: Vec<ObjectId> = newest.iter().map(|m| m.id).collect();
    let checks = state.store.checksums().for_artifacts(&ids).await?;
    let mut models = Vec::with_capacity(newest.len());
    for m in &newest {
        let mine: Vec<&Checksum> = checks
            .iter()
            .filter(|c| c.artifact_id == Some(m.id))
            .collect();
        let lic = license(&state.store, &mut cache, m.license_id).await?;
        models.push(row(m, &mine, lic.as_ref()));
    }
    for r in &mut models {
        if let Some(src) = newest.iter().find(|m| Some(m.id.to_hex()) == r.source) {
            r.source_label = format!("{} {}", src.name, src.version);
        }
    }
    Ok(page::render(&ModelsPage {
        chrome: Chrome::new(&viewer, "models"),
        models,
    }))
}

#[derive(Debug)]
pub struct Step {
    pub id: String,
    pub label: String,
    pub current: bool,
    pub how: String,
}

#[derive(Debug)]
pub struct FileRow {
    pub name: String,
    pub size: String,
    pub sha256: String,
}

#[derive(Debug)]
pub struct CheckRow {
    pub when: String,
    pub file: String,
    pub result: &'static str,
    pub source: &'static str,
    pub by: String,
}

impl From<&Checksum> for CheckRow {
    fn from(c: &Checksum) -> Self {
        Self {
            when: when(Some(c.verified_at)),
            file: c.file.clone(),
            result: if c.ok { "ok" } else { "mismatch" },
            source: match c.expected_source {
                ExpectedSource::Task => "the task's sha256",
                ExpectedSource::HubLfs => "the Hub (LFS sha256)",
                ExpectedSource::GitBlob => "the Hub (git blob id)",
                ExpectedSource::Produced => "computed when written",
            },
            by: c.verified_by.clone(),
        }
    }
}

#[derive(Debug, Template)]
#[template(path = "model.html")]
pub struct ModelPage {
    pub chrome: Chrome,
    pub m: ModelRow,
    pub revision: String,
    pub manifest: String,
    pub path: String,
    pub source_url: String,
    pub license_notes: Option<String>,
    pub created: String,
    pub created_by: String,
    pub lineage: Vec<Step>,
    pub derived: Vec<Step>,
    pub files: Vec<FileRow>,
    pub checks: Vec<CheckRow>,
}

fn step(m: &ModelArtifact, current: bool) -> Step {
    Step {
        id: m.id.to_hex(),
        label: format!("{} {} ({})", m.name, m.version, m.format),
        current,
        how: m
            .lineage
            .as_ref()
            .map(|l| l.conversion.clone())
            .unwrap_or_default(),
    }
}

/// The chain of sources that `m` was converted from, the origin first, `m` last.
async fn lineage(store: &Store, m: &ModelArtifact) -> Result<Vec<Step>, StoreError> {
    let mut chain = vec![step(m, true)];
    let mut source = m.lineage.as_ref().map(|l| l.source_artifact_id);
    while let Some(id) = source.filter(|_| chain.len() < LINEAGE_DEPTH) {
        let Some(parent) = store.model_artifacts().get(id).await? else {
            break;
        };
        chain.push(step(&parent, false));
        source = parent.lineage.as_ref().map(|l| l.source_artifact_id);
    }
    chain.reverse();
    Ok(chain)
}

/// `GET /models/{id}`.
pub async fn one(
    State(state): State<Arc<AppState>>,
    viewer: Viewer,
    Path(id): Path<String>,
) -> PageResult {
    viewer.caller().require(TokenScope::RunsRead)?;
    let missing = || Problem::not_found(format!("no model artifact with id {id}"));
    let oid = ObjectId::parse_str(&id).map_err(|_| missing())?;
    let store = &state.store;
    let m = store
        .model_artifacts()
        .get(oid)
        .await?
        .ok_or_else(missing)?;
    let mut checks = store.checksums().for_artifact(oid).await?;
    checks.sort_by_key(|c| std::cmp::Reverse(c.verified_at));
    let lic = license(store, &mut HashMap::new(), m.license_id).await?;
    let derived = store.model_artifacts().derived_from(oid).await?;
    Ok(page::render(&ModelPage {
        chrome: Chrome::new(&viewer, "models"),
        m: row(&m, &checks.iter().collect::<Vec<_>>(), lic.as_ref()),
        revision: m.revision.clone(),
        manifest: m.manifest_sha256().unwrap_or_default().to_owned(),
        path: m.path.clone(),
        source_url: m.source_url.clone(),
        license_notes: lic.and_then(|l| l.notes),
        created: when(Some(m.created_at)),
        created_by: m.created_by.clone(),
        lineage: lineage(store, &m).await?,
        derived: derived.iter().map(|d| step(d, false)).collect(),
        files: m
            .files
            .iter()
            .map(|f| FileRow {
                name: f.name.clone(),
                size: human_bytes(f.size_bytes),
                sha256: f.sha256.clone(),
            })
            .collect(),
        checks: checks.iter().map(CheckRow::from).collect(),
    }))
}
