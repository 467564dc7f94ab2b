//! The filters of `GET /api/v1/runs` and `harmonia-scheduler list`: one struct read from a
//! query string or from flags, checked into a [`RunQuery`] with each error naming its field.

use harmonia_shared::model::{FieldError, RunStatus};
use harmonia_shared::store::{Order, RunQuery, RunSort};
use mongodb::bson::DateTime;
use serde::Deserialize;

#[derive(Debug, Clone, Default, Deserialize, clap::Args, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Only runs of this project.
    #[arg(long, env = "HARMONIA_LIST_PROJECT")]
    pub project: Option<String>,
    /// queued, running, succeeded, failed or cancelled.
    #[arg(long, env = "HARMONIA_LIST_STATUS")]
    pub status: Option<String>,
    /// Runs with at least one task of this type (e.g. `model.embed`).
    #[arg(long, env = "HARMONIA_LIST_TASK_TYPE")]
    pub task_type: Option<String>,
    /// Runs carrying this tag.
    #[arg(long, env = "HARMONIA_LIST_TAG")]
    pub tag: Option<String>,
    /// Runs submitted by this `created_by`.
    #[arg(long, env = "HARMONIA_LIST_CREATED_BY")]
    pub created_by: Option<String>,
    /// Created at or after this RFC 3339 time.
    #[arg(long, env = "HARMONIA_LIST_SINCE")]
    pub since: Option<String>,
    /// Created before this RFC 3339 time.
    #[arg(long, env = "HARMONIA_LIST_UNTIL")]
    pub until: Option<String>,
    /// Case-insensitive substring of the run's name.
    #[arg(long, env = "HARMONIA_LIST_Q")]
    pub q: Option<String>,
    /// created_at (default) or name.
    #[arg(long, env = "HARMONIA_LIST_SORT")]
    pub sort: Option<String>,
    /// desc (default) or asc.
    #[arg(long, env = "HARMONIA_LIST_ORDER")]
    pub order: Option<String>,
    /// Runs per page, 1-500 (default 50).
    #[arg(long, env = "HARMONIA_LIST_LIMIT")]
    pub limit: Option<i64>,
    /// The `next` cursor of the previous page.
    #[arg(long, env = "HARMONIA_LIST_CURSOR")]
    pub cursor: Option<String>,
}

fn field(path: &str, message: String) -> FieldError {
    FieldError {
        path: path.into(),
        message,
    }
}

fn time(path: &str, value: Option<&String>, errors: &mut Vec<FieldError>) -> Option<DateTime> {
    let value = value?;
    DateTime::parse_rfc3339_str(value)
        .map_err(|_| {
            errors.push(field(
                path,
                format!("'{value}' is not an RFC 3339 time (e.g. 2026-11-24T08:00:00Z)"),
            ))
        })
        .ok()
}

impl ListParams {
    /// The query for these parameters within `workspace` (`None`: every workspace), or every
    /// problem with them.
    pub fn query(&self, workspace: Option<String>) -> Result<RunQuery, Vec<FieldError>> {
        let mut errors = Vec::new();
        let status = self.status.as_deref().and_then(|s| {
            let parsed = RunStatus::parse(s);
            if parsed.is_none() {
                errors.push(field(
                    "status",
                    format!(
                        "'{s}' is not a run status (queued, running, succeeded, failed, cancelled)"
                    ),
                ));
            }
            parsed
        });
        let sort = match self.sort.as_deref() {
            None | Some("created_at") => RunSort::CreatedAt,
            Some("name") => RunSort::Name,
            Some(other) => {
                errors.push(field(
                    "sort",
                    format!("'{other}' is not a sort (created_at, name)"),
                ));
                RunSort::CreatedAt
            }
        };
        let order = match self.order.as_deref() {
            None | Some("desc") => Order::Desc,
            Some("asc") => Order::Asc,
            Some(other) => {
                errors.push(field(
                    "order",
                    format!("'{other}' is not an order (asc, desc)"),
                ));
                Order::Desc
            }
        };
        let limit = self.limit.unwrap_or(50);
        if !(1..=harmonia_shared::store::run_list::MAX_PAGE).contains(&limit) {
            errors.push(field("limit", format!("{limit} is not between 1 and 500")));
        }
        let since = time("since", self.since.as_ref(), &mut errors);
        let until = time("until", self.until.as_ref(), &mut errors);
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(RunQuery {
            workspace,
            project: self.project.clone(),
            status,
            task_type: self.task_type.clone(),
            tag: self.tag.clone(),
            created_by: self.created_by.clone(),
            since,
            until,
            name_contains: self.q.clone(),
            sort,
            order,
            limit,
            cursor: self.cursor.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_bad_parameter_is_reported_with_its_name() {
        let params = ListParams {
            status: Some("done".into()),
            sort: Some("size".into()),
            order: Some("up".into()),
            limit: Some(0),
            since: Some("yesterday".into()),
            ..ListParams::default()
        };
        let errors = params.query(None).unwrap_err();
        let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["status", "sort", "order", "limit", "since"]);
    }

    #[test]
    fn defaults_are_newest_first_fifty_to_a_page() {
        let q = ListParams::default().query(Some("ml".into())).unwrap();
        assert_eq!(
            (q.sort, q.order, q.limit),
            (RunSort::CreatedAt, Order::Desc, 50)
        );
        assert_eq!(q.workspace.as_deref(), Some("ml"));
    }
}
