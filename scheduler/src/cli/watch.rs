//! `harmonia-scheduler watch <run_id>`: the run's tasks live, until it ends. On a terminal, one
//! indicatif bar per task (status, stage, %); otherwise (a pipe, a CI log) one line per change.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::Duration;

use harmonia_shared::Config;
use harmonia_shared::model::{RunStatus, RunTask, WorkflowRun};
use harmonia_shared::store::Store;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::control;

#[derive(Debug, Clone, clap::Args)]
pub struct WatchArgs {
    pub run_id: String,
    /// How often to read the run from MongoDB, in ms.
    #[arg(long, env = "HARMONIA_WATCH_INTERVAL_MS", default_value_t = 250)]
    pub interval_ms: u64,
    /// One line per change even on a terminal.
    #[arg(long, env = "HARMONIA_WATCH_PLAIN")]
    pub plain: bool,
}

/// What is shown of a task: changes to it are what get drawn or printed.
#[derive(Debug, Clone, PartialEq)]
struct Shown {
    status: String,
    percent: u64,
    detail: String,
}

impl Shown {
    fn of(t: &RunTask) -> Self {
        let (percent, stage) = match (&t.progress, t.status.is_terminal()) {
            (_, true) => (100, String::new()),
            (Some(p), false) => {
                let msg = p
                    .message
                    .as_deref()
                    .map(|m| format!(" ({m})"))
                    .unwrap_or_default();
                (
                    p.percent.clamp(0.0, 100.0) as u64,
                    format!("{}{msg}", p.stage),
                )
            }
            (None, false) => (0, t.wait_reason.clone().unwrap_or_default()),
        };
        let error = t
            .error
            .as_ref()
            .map(|e| format!(" {}", e.message))
            .unwrap_or_default();
        let worker = t
            .worker_id
            .as_deref()
            .map(|w| format!(" on {w}"))
            .unwrap_or_default();
        Self {
            status: t.status.as_str().into(),
            percent,
            detail: format!("#{}{worker} {stage}{error}", t.attempt)
                .trim_end()
                .to_owned(),
        }
    }
}

/// Where changes go.
trait View {
    fn task(&mut self, node: &str, shown: &Shown);
    fn done(&mut self, run: &WorkflowRun);
}

struct Bars {
    multi: MultiProgress,
    bars: HashMap<String, ProgressBar>,
}

impl Bars {
    fn new() -> Self {
        Self {
            multi: MultiProgress::with_draw_target(ProgressDrawTarget::stdout()),
            bars: HashMap::new(),
        }
    }
}

impl View for Bars {
    fn task(&mut self, node: &str, shown: &Shown) {
        let multi = &self.multi;
        let bar = self.bars.entry(node.to_owned()).or_insert_with(|| {
            let style = ProgressStyle::with_template("{prefix:<16} {bar:30} {pos:>3}% {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar());
            let bar = multi.add(ProgressBar::new(100).with_style(style));
            bar.set_prefix(node.to_owned());
            bar
        });
        bar.set_position(shown.percent);
        bar.set_message(format!("{:<9} {}", shown.status, shown.detail));
    }

    fn done(&mut self, run: &WorkflowRun) {
        for bar in self.bars.values() {
            bar.finish();
        }
        let _ = self.multi.println(summary(run));
    }
}

struct Lines;

impl View for Lines {
    fn task(&mut self, node: &str, shown: &Shown) {
        let line = format!(
            "{node} {} {}% {}",
            shown.status, shown.percent, shown.detail
        );
        let _ = writeln!(std::io::stdout().lock(), "{}", line.trim_end());
    }

    fn done(&mut self, run: &WorkflowRun) {
        let _ = writeln!(std::io::stdout().lock(), "{}", summary(run));
    }
}

fn summary(run: &WorkflowRun) -> String {
    let c = &run.counts;
    format!(
        "run {} {}: {}/{} succeeded, {} failed, {} cancelled, {} skipped",
        run.id,
        run.status.as_str(),
        c.succeeded,
        run.task_count,
        c.failed,
        c.cancelled,
        c.skipped
    )
}

pub async fn run(config: &Config, args: &WatchArgs) -> anyhow::Result<ExitCode> {
    let id = control::parse_run_id(&args.run_id)?;
    let store = Store::connect(&config.mongo).await?;
    let mut view: Box<dyn View> = if !args.plain && std::io::stdout().is_terminal() {
        Box::new(Bars::new())
    } else {
        Box::new(Lines)
    };
    let mut last: HashMap<String, Shown> = HashMap::new();
    loop {
        let run = store
            .recount_run(id)
            .await?
            .ok_or_else(|| anyhow::anyhow!("no run with id {}", args.run_id))?;
        for task in store.tasks().for_run(id).await? {
            let shown = Shown::of(&task);
            if last.get(&task.node_id) != Some(&shown) {
                view.task(&task.node_id, &shown);
                last.insert(task.node_id.clone(), shown);
            }
        }
        if run.status.is_terminal() {
            view.done(&run);
            return Ok(if run.status == RunStatus::Succeeded {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            });
        }
        tokio::time::sleep(Duration::from_millis(args.interval_ms.max(50))).await;
    }
}
