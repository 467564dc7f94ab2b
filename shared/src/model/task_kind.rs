//! Every task type Harmonia runs, as one type with its typed parameters. The scheduler parses a
//! submitted task into a [`TaskKind`] (so a bad parameter is a rejected submission naming the
//! field, not a failed task an hour later) and the worker parses the stored task the same way
//! and matches on it to pick the executor. Adding a kind is one variant here (with its name in
//! [`TaskKind::NAMES`] and [`TaskKind::name`]) and one executor file; the compiler names every
//! match to extend.

use serde::de::DeserializeOwned;
use serde_json::Value;

use super::task_params::{
    self, ConvertParams, DownloadParams, EmbedParams, FailParams, GenerateParams, SleepParams,
    WriteParams,
};

#[derive(Debug, Clone, PartialEq)]
pub enum TaskKind {
    /// `debug.noop`: succeeds at once; outputs `started_unix_us` (when it ran) and
    /// `ready_unix_us` (when its task became ready), wall clocks in microseconds.
    Noop,
    /// `debug.sleep {ms}`
    Sleep(SleepParams),
    /// `debug.fail {times?, permanent?}`
    Fail(FailParams),
    /// `debug.crash`: aborts the worker process (a poison task).
    Crash,
    /// `debug.write {bytes}`
    Write(WriteParams),
    /// `model.download`
    Download(DownloadParams),
    /// `inference.embed`
    Embed(EmbedParams),
    /// `inference.generate`
    Generate(GenerateParams),
    /// `model.convert`
    Convert(ConvertParams),
}

/// Why a `type` and `params` make no task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KindError {
    /// No such type.
    Unknown,
    /// The params, as (field, message) pairs, the field relative to `params`.
    Params(Vec<(String, String)>),
}

impl TaskKind {
    /// Every `type` name, as submitted and stored.
    pub const NAMES: &'static [&'static str] = &[
        "debug.noop",
        "debug.sleep",
        "debug.fail",
        "debug.crash",
        "debug.write",
        "model.download",
        "inference.embed",
        "inference.generate",
        "model.convert",
    ];

    /// The kind a task's `type` and `params` (a JSON object) make.
    pub fn parse(task_type: &str, params: &Value) -> Result<Self, KindError> {
        Ok(match task_type {
            "debug.noop" => Self::Noop,
            "debug.sleep" => Self::Sleep(typed(params, |_| Vec::new())?),
            "debug.fail" => Self::Fail(typed(params, |_| Vec::new())?),
            "debug.crash" => Self::Crash,
            "debug.write" => Self::Write(typed(params, task_params::check_write)?),
            "model.download" => Self::Download(typed(params, task_params::check_download)?),
            "inference.embed" => Self::Embed(typed(params, task_params::check_embed)?),
            "inference.generate" => Self::Generate(typed(params, task_params::check_generate)?),
            "model.convert" => Self::Convert(typed(params, task_params::check_convert)?),
            _ => return Err(KindError::Unknown),
        })
    }

    /// The `type` name.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Noop => "debug.noop",
            Self::Sleep(_) => "debug.sleep",
            Self::Fail(_) => "debug.fail",
            Self::Crash => "debug.crash",
            Self::Write(_) => "debug.write",
            Self::Download(_) => "model.download",
            Self::Embed(_) => "inference.embed",
            Self::Generate(_) => "inference.generate",
            Self::Convert(_) => "model.convert",
        }
    }

    /// Whether it works on models (and so changes what the worker holds in its cache and pool).
    pub fn uses_models(&self) -> bool {
        match self {
            Self::Noop | Self::Sleep(_) | Self::Fail(_) | Self::Crash | Self::Write(_) => false,
            Self::Download(_) | Self::Embed(_) | Self::Generate(_) | Self::Convert(_) => true,
        }
    }
}

/// Parses params of one kind, then runs its checks beyond the types.
fn typed<T: DeserializeOwned>(
    params: &Value,
    check: fn(&T) -> Vec<(String, String)>,
) -> Result<T, KindError> {
    let parsed = task_params::parse::<T>(params).map_err(|p| KindError::Params(vec![p]))?;
    let problems = check(&parsed);
    if problems.is_empty() {
        Ok(parsed)
    } else {
        Err(KindError::Params(problems))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::{KindError, TaskKind};

    #[test]
    fn every_name_parses_back_to_its_kind() {
        let params = |name: &str| match name {
            "debug.sleep" => json!({"ms": 5}),
            "debug.write" => json!({"bytes": 5}),
            "model.download" => json!({"repo": "a/b"}),
            "inference.embed" => json!({"texts": ["x"]}),
            "inference.generate" => json!({"prompts": ["x"]}),
            "model.convert" => json!({"to": ["f16"]}),
            _ => json!({}),
        };
        for name in TaskKind::NAMES {
            let kind = TaskKind::parse(name, &params(name)).unwrap();
            assert_eq!(kind.name(), *name);
        }
    }

    #[test]
    fn bad_params_name_their_field() {
        let err = TaskKind::parse("debug.sleep", &json!({"ms": "soon"})).unwrap_err();
        let KindError::Params(problems) = err else {
            panic!("{err:?}")
        };
        assert_eq!(problems[0].0, "ms");
        let err = TaskKind::parse("debug.write", &json!({"bytes": 1u64 << 40})).unwrap_err();
        assert!(matches!(err, KindError::Params(p) if p[0].0 == "bytes"));
        assert_eq!(
            TaskKind::parse("debug.nope", &json!({})),
            Err(KindError::Unknown)
        );
    }
}
