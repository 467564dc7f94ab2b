//! The chaos workload and its verdict: runs of every shape the fleet must survive (independent
//! tasks, chains, diamonds, a fan-out/fan-in, flaky, failing, timing-out and crashing tasks),
//! each with the outcome it must end in, and the checks made once the faults stop.

use std::collections::{BTreeMap, HashMap};

use harmonia_shared::model::{RunStatus, RunTask, TaskCounts, TaskStatus, WorkflowRun};
use serde_json::{Value, json};

use crate::submission;

/// Attempts for tasks that must succeed: a worker SIGKILLed mid-task costs one, so this
/// outlasts any fault schedule.
const SURVIVE: u32 = 100;

/// One planned run: its submission and the end it must reach.
#[derive(Debug, Clone)]
pub struct PlannedRun {
    pub request_id: String,
    pub submission: Value,
    pub tasks: usize,
    pub status: RunStatus,
    /// Task counts the run must end with: (succeeded, failed, skipped).
    pub counts: (u32, u32, u32),
}

/// Runs of mixed shapes adding up to at least `tasks` tasks; one fan-out of `fan_out`.
pub fn plan(tag: &str, tasks: usize, fan_out: usize) -> Vec<PlannedRun> {
    let mut runs = vec![fan(&format!("{tag}-fan"), fan_out)];
    let mut total = runs[0].tasks;
    let mut i = 0;
    while total < tasks {
        let id = format!("{tag}-{i}");
        let run = match i % 12 {
            0 | 4 | 8 => independent(&id, 5),
            1 | 5 => chain(&id, 10),
            2 | 9 => diamond(&id),
            3 | 10 => flaky(&id),
            6 => failing(&id),
            7 => timing_out(&id),
            _ if i % 48 == 11 => crashing(&id),
            _ => independent(&id, 3),
        };
        total += run.tasks;
        runs.push(run);
        i += 1;
    }
    runs
}

fn noop(id: &str, deps: &[String]) -> Value {
    json!({"id": id, "type": "debug.noop", "depends_on": deps, "max_attempts": SURVIVE})
}

fn sleep(id: &str, ms: u64, deps: &[String]) -> Value {
    json!({"id": id, "type": "debug.sleep", "params": {"ms": ms}, "depends_on": deps,
           "max_attempts": SURVIVE})
}

fn run(id: &str, tasks: Vec<Value>, status: RunStatus, counts: (u32, u32, u32)) -> PlannedRun {
    PlannedRun {
        request_id: id.to_owned(),
        tasks: tasks.len(),
        submission: submission(id, Value::Array(tasks)),
        status,
        counts,
    }
}

fn succeeds(id: &str, tasks: Vec<Value>) -> PlannedRun {
    let n = u32::try_from(tasks.len()).unwrap_or(u32::MAX);
    run(id, tasks, RunStatus::Succeeded, (n, 0, 0))
}

fn independent(id: &str, n: usize) -> PlannedRun {
    let tasks = (0..n)
        .map(|k| match k % 2 {
            0 => noop(&format!("t{k}"), &[]),
            _ => sleep(&format!("t{k}"), 30, &[]),
        })
        .collect();
    succeeds(id, tasks)
}

fn chain(id: &str, n: usize) -> PlannedRun {
    let tasks = (0..n)
        .map(|k| {
            let deps: Vec<String> = (k > 0).then(|| format!("c{}", k - 1)).into_iter().collect();
            sleep(&format!("c{k}"), 10, &deps)
        })
        .collect();
    succeeds(id, tasks)
}

fn diamond(id: &str) -> PlannedRun {
    let a = ["a".to_owned()];
    let bc = ["b".to_owned(), "c".to_owned()];
    succeeds(
        id,
        vec![
            noop("a", &[]),
            noop("b", &a),
            sleep("c", 20, &a),
            noop("d", &bc),
        ],
    )
}

fn fan(id: &str, width: usize) -> PlannedRun {
    let root = ["root".to_owned()];
    let mut tasks = vec![noop("root", &[])];
    let middle: Vec<String> = (0..width).map(|k| format!("m{k}")).collect();
    tasks.extend(middle.iter().map(|m| noop(m, &root)));
    tasks.push(noop("sink", &middle));
    succeeds(id, tasks)
}

/// Fails its first attempt, then succeeds; its downstream runs after it.
fn flaky(id: &str) -> PlannedRun {
    let f = ["f".to_owned()];
    let flaky = json!({"id": "f", "type": "debug.fail", "params": {"times": 1},
                       "max_attempts": SURVIVE});
    succeeds(id, vec![flaky, noop("g", &f), noop("h", &f)])
}

/// A permanent failure: the run fails, both downstream tasks are skipped.
fn failing(id: &str) -> PlannedRun {
    let f = ["f".to_owned()];
    let fail = json!({"id": "f", "type": "debug.fail", "params": {"permanent": true}});
    let tasks = vec![noop("ok", &[]), fail, noop("g", &f), noop("h", &f)];
    run(id, tasks, RunStatus::Failed, (1, 1, 2))
}

/// Every attempt outlives its 1 s timeout: failed after its attempts, downstream skipped.
fn timing_out(id: &str) -> PlannedRun {
    let t = ["slow".to_owned()];
    let slow = json!({"id": "slow", "type": "debug.sleep", "params": {"ms": 5000},
                      "timeout_s": 1, "max_attempts": 2});
    run(
        id,
        vec![slow, noop("after", &t)],
        RunStatus::Failed,
        (0, 1, 1),
    )
}

/// Aborts the worker that claims it (a poison task): failed once its one attempt's lease
/// expires, downstream skipped.
fn crashing(id: &str) -> PlannedRun {
    let p = ["poison".to_owned()];
    let poison = json!({"id": "poison", "type": "debug.crash", "max_attempts": 1});
    run(
        id,
        vec![poison, noop("after", &p)],
        RunStatus::Failed,
        (0, 1, 1),
    )
}

/// What the checks found; empty `problems` is a pass.
#[derive(Debug, Default)]
pub struct Verdict {
    pub runs: usize,
    pub tasks: usize,
    pub terminal: usize,
    /// Tasks never stored, or stored but not terminal.
    pub lost: usize,
    /// Tasks whose success more than one worker recorded.
    pub duplicates: usize,
    pub problems: Vec<String>,
}

impl Verdict {
    fn problem(&mut self, p: String) {
        if self.problems.len() < 50 {
            self.problems.push(p);
        }
    }

    /// Checks one planned run against what MongoDB holds for it.
    pub fn check_run(&mut self, plan: &PlannedRun, run: Option<&WorkflowRun>, tasks: &[RunTask]) {
        self.runs += 1;
        self.tasks += plan.tasks;
        let Some(run) = run else {
            self.lost += plan.tasks;
            return self.problem(format!("{}: no run in MongoDB", plan.request_id));
        };
        let terminal = tasks.iter().filter(|t| t.status.is_terminal()).count();
        self.terminal += terminal;
        self.lost += plan.tasks - terminal.min(plan.tasks);
        let actual = counts(tasks);
        let id = &plan.request_id;
        if run.status != plan.status {
            self.problem(format!(
                "{id}: run {:?}, expected {:?}",
                run.status, plan.status
            ));
        }
        let ends = (actual.succeeded, actual.failed, actual.skipped);
        if ends != plan.counts {
            self.problem(format!(
                "{id}: (succeeded, failed, skipped) {ends:?}, expected {:?}",
                plan.counts
            ));
        }
        if run.counts != actual {
            self.problem(format!(
                "{id}: run counts {:?} but tasks say {actual:?}",
                run.counts
            ));
        }
        self.check_order(id, tasks);
    }

    /// No task started before every upstream task had succeeded; skipped tasks never started.
    fn check_order(&mut self, id: &str, tasks: &[RunTask]) {
        let by_node: HashMap<&str, &RunTask> =
            tasks.iter().map(|t| (t.node_id.as_str(), t)).collect();
        for task in tasks {
            let Some(started) = task.started_at else {
                continue;
            };
            if task.status == TaskStatus::Skipped {
                self.problem(format!("{id}/{}: skipped but started", task.node_id));
            }
            for up in &task.upstream_node_ids {
                let upstream = by_node.get(up.as_str());
                let done = upstream.and_then(|u| {
                    (u.status == TaskStatus::Succeeded)
                        .then_some(u.finished_at)
                        .flatten()
                });
                if done.is_none_or(|finished| finished > started) {
                    self.problem(format!(
                        "{id}/{}: started before upstream {up} succeeded",
                        task.node_id
                    ));
                }
            }
        }
    }

    /// Every success recorded by a worker (its `task finished` log lines, JSON) happened at
    /// most once per task, and is a success in MongoDB.
    pub fn check_successes(&mut self, worker_logs: &[String], succeeded: &[String]) {
        let mut seen: BTreeMap<String, usize> = BTreeMap::new();
        for line in worker_logs.iter().flat_map(|log| log.lines()) {
            let Ok(event) = serde_json::from_str::<Value>(line) else {
                continue;
            };
            if event["message"] == "task finished" && event["status"] == "succeeded" {
                let task = event["task"].as_str().unwrap_or_default().to_owned();
                *seen.entry(task).or_default() += 1;
            }
        }
        for (task, n) in &seen {
            if *n > 1 {
                self.duplicates += 1;
                self.problem(format!("task {task} succeeded {n} times"));
            }
            if !succeeded.contains(task) {
                self.problem(format!(
                    "task {task} succeeded in a worker's log, not in MongoDB"
                ));
            }
        }
        if seen.is_empty() {
            self.problem("no worker logged a success: the log check saw nothing".into());
        }
    }
}

fn counts(tasks: &[RunTask]) -> TaskCounts {
    let mut c = TaskCounts::default();
    for t in tasks {
        match t.status {
            TaskStatus::Pending => c.pending += 1,
            TaskStatus::Queued => c.queued += 1,
            TaskStatus::Running => c.running += 1,
            TaskStatus::Succeeded => c.succeeded += 1,
            TaskStatus::Failed => c.failed += 1,
            TaskStatus::Cancelled => c.cancelled += 1,
            TaskStatus::Skipped => c.skipped += 1,
        }
    }
    c
}
