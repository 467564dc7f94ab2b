//! `workspaces` and `projects` (EmboFlow seed): the ownership boundary of runs, tasks, artifacts
//! and tokens. Runs name them by slug; a submission to one that is unknown or archived is
//! rejected.

use mongodb::bson::DateTime;
use mongodb::bson::oid::ObjectId;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Lifecycle {
    Active,
    /// Keeps its history readable; takes no new runs.
    Archived,
}

impl Lifecycle {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Archived => "archived",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Workspace {
    #[serde(rename = "_id")]
    pub id: ObjectId,
    /// Unique; what submissions, runs and tokens name.
    pub slug: String,
    pub name: String,
    pub status: Lifecycle,
    pub created_by: String,
    pub created_at: DateTime,
    pub updated_at: DateTime,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Project {
    #[serde(rename = "_id")]
    pub id: ObjectId,
    /// The workspace's slug; (workspace, slug) is unique.
    pub workspace: String,
    pub slug: String,
    pub name: String,
    pub description: String,
    pub status: Lifecycle,
    pub created_by: String,
    pub created_at: DateTime,
    pub updated_at: DateTime,
}

/// Whether `slug` is a usable workspace or project slug: 1–64 of `a-z 0-9 - _ .`, starting
/// with a letter or digit (the same alphabet as ids in submissions, lower-case only).
pub fn check_slug(slug: &str) -> Result<(), String> {
    let ok_start = slug
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    let ok_chars = slug
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c));
    if slug.is_empty() || slug.len() > 64 || !ok_start || !ok_chars {
        return Err(format!(
            "'{slug}' is not a slug: 1-64 characters of a-z, 0-9, '-', '_', '.', starting with a letter or digit"
        ));
    }
    Ok(())
}
