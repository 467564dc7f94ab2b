//! Chaos: clients keep submitting while workers are SIGKILLed every 2 s and replaced, the
//! scheduler is SIGKILLed and restarted, Redis is flushed and later restarted on an empty data
//! dir. Afterwards every submission has its one run, every run and task ends as planned, the run
//! counts match the tasks, no task succeeded twice and no task started before its upstream.
//!
//! Sized for the suite by default (500 tasks, 30 s of faults); `scripts/chaos` runs it bigger
//! through `HARMONIA_CHAOS_TASKS`, `HARMONIA_CHAOS_FAULT_S` and `HARMONIA_CHAOS_FAN_OUT`.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::time::{Duration, Instant};

use harmonia_tests::chaos::{PlannedRun, Verdict, plan};
use harmonia_tests::cluster::{SCHEDULER, WORKER};
use harmonia_tests::process::ChildGuard;
use harmonia_tests::servers::RedisServer;
use harmonia_tests::{Client, Scope, wait_for};
use mongodb::bson::oid::ObjectId;

const CLIENTS: usize = 4;
const WORKERS: usize = 3;

fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[derive(Debug, Default)]
struct Faults {
    workers_killed: usize,
    crashed_workers_replaced: usize,
    schedulers_killed: usize,
    flushes: usize,
    redis_restarts: usize,
}

/// The processes under test, respawned as the faults kill them.
#[derive(Debug)]
struct Fleet {
    scope: Scope,
    scheduler: ChildGuard,
    workers: Vec<ChildGuard>,
    spawned: usize,
    /// Every worker's log, dead ones included (for the duplicate-success check).
    logs: Vec<std::path::PathBuf>,
}

impl Fleet {
    fn start(scope: Scope) -> Self {
        let scheduler = spawn_scheduler(&scope, 0);
        let mut fleet = Self {
            scope,
            scheduler,
            workers: Vec::new(),
            spawned: 0,
            logs: Vec::new(),
        };
        for _ in 0..WORKERS {
            let w = fleet.spawn_worker();
            fleet.workers.push(w);
        }
        fleet
    }

    fn spawn_worker(&mut self) -> ChildGuard {
        let label = format!("worker-{}", self.spawned);
        self.spawned += 1;
        self.logs.push(self.scope.dir.join(format!("{label}.log")));
        let mut args = WORKER.to_vec();
        args.extend(["--gpus", "none", "--log-format", "json"]);
        self.scope.spawn(&label, "harmonia-worker", &args).unwrap()
    }

    /// Replaces workers that died by themselves (a poison task aborts its worker).
    fn replace_crashed(&mut self) -> usize {
        let mut replaced = 0;
        for i in 0..self.workers.len() {
            if self.workers[i].try_wait().is_some() {
                self.workers[i] = self.spawn_worker();
                replaced += 1;
            }
        }
        replaced
    }
}

fn spawn_scheduler(scope: &Scope, n: usize) -> ChildGuard {
    let mut args = SCHEDULER.to_vec();
    args.extend(["--reclaim-after-s", "2"]);
    scope
        .spawn(&format!("scheduler-{n}"), "harmonia-scheduler", &args)
        .unwrap()
}

/// Submits its share of the plan, paced over `window`, each until answered (resending as the
/// protocol says); returns (request id, run id) per reply.
async fn submitter(
    client: Client,
    runs: Vec<PlannedRun>,
    window: Duration,
) -> Vec<(String, String)> {
    let gap = window / u32::try_from(runs.len().max(1)).unwrap();
    let mut replies = Vec::new();
    for run in runs {
        let started = Instant::now();
        let payload = run.submission.to_string();
        let reply = client
            .queue
            .submit_and_wait(&run.request_id, &payload, Duration::from_secs(120))
            .await
            .unwrap_or_else(|e| panic!("{}: {e:#}", run.request_id));
        let reply: serde_json::Value = serde_json::from_str(&reply).unwrap();
        assert_eq!(reply["status"], "accepted", "{}: {reply}", run.request_id);
        replies.push((
            run.request_id.clone(),
            reply["run_id"].as_str().unwrap().to_owned(),
        ));
        // Pacing, not synchronisation: spread the load over the fault window.
        tokio::time::sleep(gap.saturating_sub(started.elapsed())).await;
    }
    replies
}

/// Injects faults until `window` has passed: a worker killed and replaced every 2 s, the
/// scheduler killed and restarted at 20 % and 50 %, FLUSHALL at 35 %, an empty Redis restart at
/// 70 % (after the last scheduler restart, so a scheduler must survive it without one).
async fn inject(fleet: &mut Fleet, redis: &mut RedisServer, window: Duration) -> Faults {
    let mut faults = Faults::default();
    let start = Instant::now();
    let (mut flushed, mut restarted, mut scheduler_kills) = (false, false, 0);
    let mut victim = 0;
    while start.elapsed() < window {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let at = start.elapsed().as_secs_f64() / window.as_secs_f64();
        victim = (victim + 1) % WORKERS;
        fleet.workers[victim].kill();
        fleet.workers[victim] = fleet.spawn_worker();
        faults.workers_killed += 1;
        faults.crashed_workers_replaced += fleet.replace_crashed();
        if (at >= 0.2 && scheduler_kills == 0) || (at >= 0.5 && scheduler_kills == 1) {
            fleet.scheduler.kill();
            scheduler_kills += 1;
            fleet.scheduler = spawn_scheduler(&fleet.scope, scheduler_kills);
            faults.schedulers_killed += 1;
        }
        if at >= 0.35 && !flushed {
            let client = redis::Client::open(redis.url.as_str()).unwrap();
            let mut conn = client.get_multiplexed_async_connection().await.unwrap();
            let () = redis::cmd("FLUSHALL").query_async(&mut conn).await.unwrap();
            flushed = true;
            faults.flushes += 1;
        }
        if at >= 0.7 && !restarted {
            redis.restart_empty().await.unwrap();
            restarted = true;
            faults.redis_restarts += 1;
        }
    }
    faults
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_fleet_loses_nothing_and_applies_nothing_twice_under_kills_flushes_and_restarts() {
    let tasks = usize::try_from(setting("HARMONIA_CHAOS_TASKS", 500)).unwrap();
    let window = Duration::from_secs(setting("HARMONIA_CHAOS_FAULT_S", 30));
    let fan_out = usize::try_from(setting("HARMONIA_CHAOS_FAN_OUT", 100)).unwrap();
    let began = Instant::now();
    let (scope, mut redis) = Scope::with_own_redis("chaos").await.unwrap();
    let client = Client::connect(&scope).await.unwrap();
    let planned = plan("chaos", tasks, fan_out);
    let mut fleet = Fleet::start(scope);

    let mut clients = tokio::task::JoinSet::new();
    for k in 0..CLIENTS {
        let share: Vec<PlannedRun> = planned.iter().skip(k).step_by(CLIENTS).cloned().collect();
        clients.spawn(submitter(client.clone(), share, window));
    }
    let faults = inject(&mut fleet, &mut redis, window).await;
    let mut replies = Vec::new();
    while let Some(done) = clients.join_next().await {
        replies.extend(done.unwrap());
    }
    // While the runs settle, poison tasks may still abort workers: keep the fleet at strength.
    let runs = tokio::select! {
        runs = settle(&client, &planned, &replies) => runs,
        () = keep_workers(&mut fleet) => unreachable!("keep_workers never returns"),
    };

    let verdict = verify(&client, &fleet, &planned, &replies, &runs).await;
    report(&verdict, &faults, replies.len(), began.elapsed());
    assert!(verdict.problems.is_empty(), "{:#?}", verdict.problems);
}

/// Replaces crashed workers until dropped.
async fn keep_workers(fleet: &mut Fleet) {
    loop {
        fleet.replace_crashed();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until every replied run is terminal; returns run id by request id.
async fn settle(
    client: &Client,
    planned: &[PlannedRun],
    replies: &[(String, String)],
) -> std::collections::HashMap<String, ObjectId> {
    let runs: std::collections::HashMap<String, ObjectId> = replies
        .iter()
        .map(|(rid, run)| (rid.clone(), ObjectId::parse_str(run).unwrap()))
        .collect();
    assert_eq!(runs.len(), planned.len(), "every request was answered");
    let _ = wait_for("every run to finish", Duration::from_secs(300), || async {
        let active = client.store.runs().active_ids(None, 1).await?;
        Ok(active.is_empty().then_some(()))
    })
    .await;
    runs
}

async fn verify(
    client: &Client,
    fleet: &Fleet,
    planned: &[PlannedRun],
    replies: &[(String, String)],
    runs: &std::collections::HashMap<String, ObjectId>,
) -> Verdict {
    let mut verdict = Verdict::default();
    let mut succeeded = Vec::new();
    for plan in planned {
        // All replies to one request name the same run, and MongoDB has that run for it.
        let ids: std::collections::HashSet<&String> = replies
            .iter()
            .filter(|(r, _)| r == &plan.request_id)
            .map(|(_, id)| id)
            .collect();
        assert_eq!(
            ids.len(),
            1,
            "{}: replies name runs {ids:?}",
            plan.request_id
        );
        let stored = client
            .store
            .runs()
            .by_request_id(&plan.request_id)
            .await
            .unwrap();
        assert_eq!(
            stored.as_ref().map(|r| r.id),
            runs.get(&plan.request_id).copied()
        );
        let tasks = match &stored {
            Some(run) => client.tasks(run.id).await.unwrap(),
            None => Vec::new(),
        };
        succeeded.extend(
            tasks
                .iter()
                .filter(|t| t.status == harmonia_shared::model::TaskStatus::Succeeded)
                .map(|t| t.id.to_hex()),
        );
        verdict.check_run(plan, stored.as_ref(), &tasks);
    }
    let logs: Vec<String> = fleet
        .logs
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap_or_default())
        .collect();
    verdict.check_successes(&logs, &succeeded);
    verdict
}

#[allow(clippy::print_stdout)] // the figures scripts/chaos prints (--nocapture)
fn report(v: &Verdict, f: &Faults, answered: usize, wall: Duration) {
    println!(
        "chaos: {} runs / {} tasks submitted, {answered} answered",
        v.runs, v.tasks
    );
    println!(
        "chaos: {} tasks terminal, {} lost, {} succeeded twice",
        v.terminal, v.lost, v.duplicates
    );
    println!(
        "chaos: faults: {} workers SIGKILLed, {} crashed workers replaced, {} schedulers SIGKILLed, \
         {} FLUSHALL, {} empty Redis restarts",
        f.workers_killed,
        f.crashed_workers_replaced,
        f.schedulers_killed,
        f.flushes,
        f.redis_restarts
    );
    println!(
        "chaos: wall time {:.1} s, {} problems",
        wall.as_secs_f64(),
        v.problems.len()
    );
}
