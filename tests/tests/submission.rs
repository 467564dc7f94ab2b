//! The Redis-fronted submission API against a real scheduler process: accepted runs land in
//! MongoDB, every submission gets exactly one precise reply, and bad input never stops the
//! scheduler. And how the scheduler reads its streams: a submission, or a task event, read
//! after a large one is handled without waiting for it.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::time::Duration;

use harmonia_shared::model::RunStatus;
use harmonia_shared::queue::Queue;
use harmonia_shared::resources::ResourceClass;
use harmonia_shared::store::Store;
use harmonia_tests::cluster::{Cluster, LONG, SCHEDULER, WORKER, cluster_with};
use harmonia_tests::{Scope, error_paths, submission};
use mongodb::bson::doc;
use mongodb::bson::oid::ObjectId;
use redis::AsyncCommands;
use redis::streams::StreamRangeReply;
use serde_json::{Value, json};

const MAX_BYTES: usize = 64 * 1024;

struct Api {
    queue: Queue,
    conn: harmonia_shared::queue::Conn,
}

impl Api {
    async fn new(scope: &Scope) -> Self {
        // Registers the workspaces the submissions below name.
        harmonia_tests::Client::connect(scope).await.unwrap();
        let queue = Queue::connect(&scope.config.redis).await.unwrap();
        let conn = queue.conn().await.unwrap();
        Self { queue, conn }
    }

    /// XADDs `payload` exactly as any client would; returns the entry id.
    async fn submit(&mut self, payload: &str) -> String {
        self.conn
            .xadd(
                self.queue.keys().submissions(),
                "*",
                &[("payload", payload)],
            )
            .await
            .unwrap()
    }

    /// Blocks (with a deadline) for the first entry on `stream` after `after`.
    async fn next_on(&mut self, stream: &str, after: &str) -> (String, Value) {
        let entry = self
            .queue
            .next_entry(stream, after, Duration::from_secs(20))
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("no entry on {stream} within 20 s"));
        let payload: String = entry.get("payload").unwrap();
        (entry.id, serde_json::from_str(&payload).unwrap())
    }

    async fn reply(&mut self, request_id: &str) -> Value {
        let stream = self.queue.keys().replies(request_id);
        self.next_on(&stream, "0").await.1
    }

    /// Waits until the scheduler has processed (acked and deleted) submission `entry`.
    async fn processed(&mut self, entry: &str) {
        let (queue, stream) = (&self.queue, self.queue.keys().submissions());
        harmonia_tests::wait_for(
            "the submission to be processed",
            Duration::from_secs(20),
            || async {
                let mut conn = queue.conn().await?;
                let left: StreamRangeReply = conn.xrange(&stream, entry, entry).await?;
                Ok(left.ids.is_empty().then_some(()))
            },
        )
        .await
        .unwrap();
    }

    async fn reply_count(&mut self, request_id: &str) -> usize {
        let all: StreamRangeReply = self
            .conn
            .xrange_all(self.queue.keys().replies(request_id))
            .await
            .unwrap();
        all.ids.len()
    }
}

fn diamond(request_id: &str) -> Value {
    json!({
        "request_id": request_id, "workspace": "ml", "project": "demo", "name": "diamond",
        "created_by": "tests", "tags": ["smoke"],
        "tasks": [
            {"id": "a", "type": "debug.noop"},
            {"id": "b", "type": "debug.sleep", "params": {"ms": 10}, "depends_on": ["a"]},
            {"id": "c", "type": "debug.noop", "depends_on": ["a"],
             "resources": {"gpus": 1, "gpu_memory_mb": 40000}},
            {"id": "d", "type": "debug.noop", "depends_on": ["b", "c"]}
        ]
    })
}

fn start_scheduler(scope: &Scope) -> harmonia_tests::process::ChildGuard {
    scope
        .spawn(
            "scheduler",
            "harmonia-scheduler",
            &["run", "--max-submission-bytes", &MAX_BYTES.to_string()],
        )
        .unwrap()
}

#[tokio::test]
async fn accepted_runs_land_in_mongo_and_resubmission_is_idempotent() {
    let scope = Scope::new("accepted");
    let _scheduler = start_scheduler(&scope);
    let mut api = Api::new(&scope).await;

    api.submit(&diamond("req-diamond").to_string()).await;
    let reply = api.reply("req-diamond").await;
    assert_eq!(reply["status"], "accepted", "{reply}");
    let run_id = ObjectId::parse_str(reply["run_id"].as_str().unwrap()).unwrap();

    let store = Store::connect(&scope.config.mongo).await.unwrap();
    let run = store.runs().get(run_id).await.unwrap().unwrap();
    assert_eq!(
        (run.request_id.as_str(), run.task_count),
        ("req-diamond", 4)
    );

    let tasks = store.tasks().for_run(run_id).await.unwrap();
    let d = tasks.iter().find(|t| t.node_id == "d").unwrap();
    assert_eq!(d.upstream_node_ids, ["b", "c"]);
    assert_eq!(d.waiting_on, ["b", "c"]);
    assert_eq!(d.class, "cpu");
    let a = tasks.iter().find(|t| t.node_id == "a").unwrap();
    // The root is queued once the run exists; the rest wait on their upstream tasks.
    assert_eq!(a.status, harmonia_shared::model::TaskStatus::Queued);
    assert!(
        tasks
            .iter()
            .filter(|t| t.node_id != "a")
            .all(|t| t.status == harmonia_shared::model::TaskStatus::Pending)
    );
    assert_eq!(a.downstream_node_ids, ["b", "c"]);
    let c = tasks.iter().find(|t| t.node_id == "c").unwrap();
    assert_eq!((c.resources.gpus, c.resources.gpu_memory_mb), (1, 40000));
    assert_eq!(c.class, "g1m40000");
    assert_eq!(
        tasks.iter().find(|t| t.node_id == "b").unwrap().params,
        doc! {"ms": 10_i64}
    );

    // Same request id again (even with other content): same run, nothing new, and no second
    // reply: the request already has its one answer.
    let mut changed = diamond("req-diamond");
    changed["name"] = json!("renamed");
    let entry = api.submit(&changed.to_string()).await;
    api.processed(&entry).await;
    assert_eq!(
        api.reply_count("req-diamond").await,
        1,
        "one reply per request"
    );
    let runs = store
        .db()
        .collection::<mongodb::bson::Document>("workflow_runs")
        .count_documents(doc! {})
        .await
        .unwrap();
    assert_eq!(runs, 1);
    let task_docs = store
        .db()
        .collection::<mongodb::bson::Document>("run_tasks")
        .count_documents(doc! {})
        .await
        .unwrap();
    assert_eq!(task_docs, 4);
}

#[tokio::test]
async fn fifty_malformed_submissions_each_get_a_precise_rejection() {
    let scope = Scope::new("malformed");
    let _scheduler = start_scheduler(&scope);
    let mut api = Api::new(&scope).await;

    // (request id, payload, expected error path, expected message fragment)
    let mut cases: Vec<(String, String, String, String)> = Vec::new();
    for i in 0..10 {
        let rid = format!("cycle-{i}");
        let mut s = diamond(&rid);
        s["tasks"][0]["depends_on"] = json!(["d"]);
        cases.push((
            rid,
            s.to_string(),
            ".depends_on".into(),
            "dependency cycle".into(),
        ));

        let rid = format!("unknown-dep-{i}");
        let mut s = diamond(&rid);
        s["tasks"][2]["depends_on"] = json!(["a", format!("ghost{i}")]);
        cases.push((
            rid,
            s.to_string(),
            "tasks[2].depends_on[1]".into(),
            format!("unknown task id 'ghost{i}'"),
        ));

        let rid = format!("wrong-type-{i}");
        let mut s = diamond(&rid);
        s["tasks"][1]["params"]["ms"] = json!("ten");
        cases.push((
            rid,
            s.to_string(),
            "tasks[1].params.ms".into(),
            "non-negative integer".into(),
        ));

        let rid = format!("bad-resources-{i}");
        let mut s = diamond(&rid);
        s["tasks"][3]["resources"] = json!({"gpus": "two"});
        cases.push((
            rid,
            s.to_string(),
            "tasks[3].resources.gpus".into(),
            "expected an integer".into(),
        ));

        let rid = format!("huge-{i}");
        let mut s = diamond(&rid);
        s["tasks"][0]["params"]["blob"] = json!("x".repeat(MAX_BYTES));
        cases.push((
            rid,
            s.to_string(),
            "$".into(),
            format!("the limit is {MAX_BYTES}"),
        ));
    }
    assert_eq!(cases.len(), 50);
    for (_, payload, _, _) in &cases {
        api.submit(payload).await;
    }
    // A valid submission after all of them is still served.
    api.submit(&diamond("still-serving").to_string()).await;

    for (rid, _, path, fragment) in &cases {
        let reply = api.reply(rid).await;
        assert_eq!(reply["status"], "rejected", "{rid}: {reply}");
        let errors = reply["errors"].as_array().unwrap();
        assert!(
            errors
                .iter()
                .any(|e| e["path"].as_str().unwrap().ends_with(path.as_str())
                    && e["message"].as_str().unwrap().contains(fragment.as_str())),
            "{rid}: expected {path} ~ {fragment}, got {reply}"
        );
        assert_eq!(api.reply_count(rid).await, 1, "{rid}: exactly one reply");
    }
    assert_eq!(api.reply("still-serving").await["status"], "accepted");

    // Rejections are also recorded in MongoDB, where the submitter can read them later.
    let store = Store::connect(&scope.config.mongo).await.unwrap();
    let rejection = store
        .rejections()
        .by_request_id("cycle-3")
        .await
        .unwrap()
        .unwrap();
    assert!(
        rejection.errors[0].message.contains("dependency cycle"),
        "{rejection:?}"
    );
}

#[tokio::test]
async fn params_with_operator_or_dotted_keys_are_rejected_and_never_stored() {
    let scope = Scope::new("operator-keys");
    let _scheduler = start_scheduler(&scope);
    let mut api = Api::new(&scope).await;
    let mut s = diamond("operator-keys");
    s["tasks"][0]["params"] = json!({"$where": "sleep(10000)", "nested": [{"a.b": 1}]});
    api.submit(&s.to_string()).await;
    let reply = api.reply("operator-keys").await;
    assert_eq!(reply["status"], "rejected", "{reply}");
    let paths = error_paths(&reply);
    assert_eq!(
        paths,
        [
            r#"tasks[0].params["$where"]"#,
            r#"tasks[0].params.nested[0]["a.b"]"#
        ],
        "{reply}"
    );
    let store = Store::connect(&scope.config.mongo).await.unwrap();
    let tasks = store
        .db()
        .collection::<mongodb::bson::Document>("run_tasks")
        .count_documents(doc! {})
        .await
        .unwrap();
    assert_eq!(tasks, 0, "nothing of a rejected submission is stored");
    let rejection = store
        .rejections()
        .by_request_id("operator-keys")
        .await
        .unwrap();
    assert!(
        rejection.is_some(),
        "the rejection is recorded for the submitter"
    );
}

#[tokio::test]
async fn submissions_without_a_request_id_are_rejected_on_the_rejections_stream() {
    let scope = Scope::new("anonymous");
    let _scheduler = start_scheduler(&scope);
    let mut api = Api::new(&scope).await;
    let rejections = api.queue.keys().rejections();

    let mut after = "0".to_owned();
    for (payload, fragment) in [
        ("{not json", "not valid JSON"),
        ("[1, 2, 3]", "expected a JSON object"),
        ("{\"tasks\": []}", "request_id"),
    ] {
        let entry_id = api.submit(payload).await;
        let (id, reply) = api.next_on(&rejections, &after).await;
        after = id;
        assert_eq!(reply["status"], "rejected");
        assert_eq!(reply["entry_id"], entry_id.as_str(), "{reply}");
        let text = reply["errors"].to_string();
        assert!(text.contains(fragment), "{payload}: {reply}");
    }
    // An entry without the payload field at all.
    let entry_id: String = api
        .conn
        .xadd(api.queue.keys().submissions(), "*", &[("body", "{}")])
        .await
        .unwrap();
    let (_, reply) = api.next_on(&rejections, &after).await;
    assert_eq!(reply["entry_id"], entry_id.as_str());
    assert!(reply["errors"].to_string().contains("payload"), "{reply}");
}

#[tokio::test]
async fn cli_submit_and_status_round_trip() {
    let scope = Scope::new("cli");
    let _scheduler = start_scheduler(&scope);
    let file = scope.dir.join("diamond.json");
    let mut sub = diamond("ignored");
    sub.as_object_mut().unwrap().remove("request_id"); // generated by the CLI
    std::fs::write(&file, sub.to_string()).unwrap();

    // Unregistered workspace: rejected, naming the field.
    let out = scope
        .scheduler_cli(&["submit", file.to_str().unwrap()])
        .unwrap();
    assert!(!out.status.success());
    let reply: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(error_paths(&reply), ["workspace"], "{reply}");
    for args in [["workspaces", "create", "ml"], ["projects", "create", "ml"]] {
        let mut args = args.to_vec();
        if args[0] == "projects" {
            args.push("demo");
        }
        let out = scope.scheduler_cli(&args).unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    let out = scope
        .scheduler_cli(&["submit", file.to_str().unwrap()])
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reply: Value = serde_json::from_slice(&out.stdout).unwrap();
    let run_id = reply["run_id"].as_str().unwrap();

    let out = scope.scheduler_cli(&["status", run_id, "--json"]).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["run"]["name"], "diamond");
    let nodes: Vec<&str> = status["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["node_id"].as_str().unwrap())
        .collect();
    assert_eq!(nodes, ["a", "b", "c", "d"]);

    // The CLI's actions are in the audit log under its user.
    let out = scope.scheduler_cli(&["audit", "--json"]).unwrap();
    let audit: Value = serde_json::from_slice(&out.stdout).unwrap();
    let actions: Vec<(&str, &str)> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap(),
                e["resource_id"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        actions,
        [
            ("run.submit", run_id),
            ("project.create", "ml/demo"),
            ("workspace.create", "ml")
        ],
        "newest first"
    );
    assert!(
        audit[0]["actor"].as_str().unwrap().starts_with("cli:"),
        "{audit}"
    );

    // An archived project takes no new runs.
    let out = scope
        .scheduler_cli(&["projects", "archive", "ml", "demo"])
        .unwrap();
    assert!(out.status.success());
    let out = scope
        .scheduler_cli(&["submit", file.to_str().unwrap()])
        .unwrap();
    let reply: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(error_paths(&reply), ["project"], "{reply}");
    assert!(reply.to_string().contains("archived"), "{reply}");

    // Unknown ids: one clear error line and a non-zero exit.
    let out = scope
        .scheduler_cli(&["status", &ObjectId::new().to_hex()])
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no run with id"));
}

#[tokio::test]
async fn a_restarted_scheduler_processes_what_was_submitted_while_it_was_down() {
    let scope = Scope::new("restart");
    let mut scheduler = start_scheduler(&scope);
    let mut api = Api::new(&scope).await;
    api.submit(&diamond("before").to_string()).await;
    assert_eq!(api.reply("before").await["status"], "accepted");

    scheduler.kill();
    api.submit(&diamond("while-down").to_string()).await;
    let _scheduler = start_scheduler(&scope);
    let reply = tokio::time::timeout(Duration::from_secs(30), api.reply("while-down"))
        .await
        .unwrap();
    assert_eq!(reply["status"], "accepted");
}

/// Tasks in a [`large`] submission: seconds of inserts (a thousand tasks a command), against
/// milliseconds for one task.
const LARGE: usize = 30_000;

/// A submission of [`LARGE`] independent no-op tasks.
fn large(request_id: &str) -> Value {
    let nodes: Vec<Value> = (0..LARGE)
        .map(|i| json!({"id": format!("t{i}"), "type": "debug.noop"}))
        .collect();
    let mut large = diamond(request_id);
    large["tasks"] = json!(nodes);
    large
}

fn start_scheduler_for_large(scope: &Scope) -> harmonia_tests::process::ChildGuard {
    let max_bytes = (8 << 20).to_string();
    let args = ["run", "--max-submission-bytes", &max_bytes];
    scope
        .spawn("scheduler", "harmonia-scheduler", &args)
        .unwrap()
}

/// Waits until a submission's handling has begun: its first tasks are in.
async fn first_tasks_stored(tasks: &mongodb::Collection<mongodb::bson::Document>) {
    harmonia_tests::wait_for(
        "the large submission's first tasks",
        Duration::from_secs(20),
        || async { Ok((tasks.count_documents(doc! {}).await? > 0).then_some(())) },
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn a_submission_is_stored_while_a_large_one_read_before_it_is_still_being_stored() {
    let scope = Scope::new("read-on");
    let _scheduler = start_scheduler_for_large(&scope);
    let mut api = Api::new(&scope).await;
    let store = Store::connect(&scope.config.mongo).await.unwrap();
    let (runs, tasks) = (
        store
            .db()
            .collection::<mongodb::bson::Document>("workflow_runs"),
        store
            .db()
            .collection::<mongodb::bson::Document>("run_tasks"),
    );
    api.submit(&large("large").to_string()).await;
    first_tasks_stored(&tasks).await;

    // Read after the large one: it is stored and answered while the large one's tasks are
    // still going in (its run document is the large one's last write).
    api.submit(&diamond("small").to_string()).await;
    assert_eq!(api.reply("small").await["status"], "accepted");
    let large_run = runs.count_documents(doc! { "request_id": "large" }).await;
    let large_tasks = tasks.count_documents(doc! {}).await.unwrap() - 4;
    assert_eq!(
        large_run.unwrap(),
        0,
        "the small submission waited for the large one ({large_tasks} of its tasks were in)"
    );

    // The large one completes whole all the same.
    let reply = tokio::time::timeout(Duration::from_secs(60), api.reply("large"))
        .await
        .unwrap();
    assert_eq!(reply["status"], "accepted", "{reply}");
    let run_id = ObjectId::parse_str(reply["run_id"].as_str().unwrap()).unwrap();
    let run = store.runs().get(run_id).await.unwrap().unwrap();
    assert_eq!(run.task_count as usize, LARGE);
    let stored = tasks.count_documents(doc! { "run_id": run_id }).await;
    assert_eq!(stored.unwrap() as usize, LARGE);
}

#[tokio::test]
async fn a_submission_in_hand_is_not_handled_again_when_a_dead_replicas_entries_are_taken_over() {
    let scope = Scope::new("in-hand");
    let mut api = Api::new(&scope).await;
    let store = Store::connect(&scope.config.mongo).await.unwrap();
    let tasks = store
        .db()
        .collection::<mongodb::bson::Document>("run_tasks");
    let stream = api.queue.keys().submissions();
    let group = harmonia_shared::queue::SCHEDULER_GROUP;
    // A replica that read a submission and died: its entry is pending under its name.
    let mut conn = api.queue.conn().await.unwrap();
    let _: () = redis::cmd("XGROUP")
        .arg(&["CREATE", &stream, group, "0", "MKSTREAM"])
        .query_async(&mut conn)
        .await
        .unwrap();
    let left = api.submit(&diamond("left-behind").to_string()).await;
    let opts = redis::streams::StreamReadOptions::default()
        .group(group, "dead-replica")
        .count(1);
    let _: redis::streams::StreamReadReply =
        conn.xread_options(&[&stream], &[">"], &opts).await.unwrap();
    let _scheduler = start_scheduler_for_large(&scope);
    api.submit(&large("large").to_string()).await;
    first_tasks_stored(&tasks).await;

    // While the large one is in hand, the dead replica's entry comes due for take-over
    // (idle far past --reclaim-after-s): this replica then reads its own pending list, where
    // the large one still is.
    let _: redis::Value = redis::cmd("XCLAIM")
        .arg(&[
            &stream,
            group,
            "dead-replica",
            "0",
            &left,
            "IDLE",
            "3600000",
        ])
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(api.reply("left-behind").await["status"], "accepted");
    let reply = tokio::time::timeout(Duration::from_secs(60), api.reply("large"))
        .await
        .unwrap();
    assert_eq!(reply["status"], "accepted", "{reply}");

    // Handled once: each ready task appended once (no worker runs here), the large run's
    // 30,000 and the left-behind run's root.
    let cpu = api.queue.keys().task_stream(ResourceClass::CPU);
    let appended: usize = conn.xlen(&cpu).await.unwrap();
    assert_eq!(appended, LARGE + 1);
}

/// A run of one root task and [`LARGE`] tasks below it that need a GPU (the worker here has
/// none: they are queued, never run).
fn wide(request_id: &str) -> Value {
    let mut nodes = vec![json!({"id": "root", "type": "debug.noop"})];
    nodes.extend((0..LARGE).map(|i| {
        json!({"id": format!("t{i}"), "type": "debug.noop", "depends_on": ["root"],
               "resources": {"gpus": 1}})
    }));
    let mut wide = diamond(request_id);
    wide["tasks"] = json!(nodes);
    wide
}

/// Whether the task events stream still holds the event of `run`'s task `node` (events are
/// deleted when they are acked, after their effects).
async fn event_in_hand(c: &Cluster, run: ObjectId, node: &str) -> bool {
    let mut conn = c.client.queue.conn().await.unwrap();
    let all: StreamRangeReply = conn
        .xrange_all(c.client.queue.keys().events())
        .await
        .unwrap();
    all.ids.iter().any(|e| {
        let event: Value = serde_json::from_str(&e.get::<String>("payload").unwrap()).unwrap();
        event["run_id"] == run.to_hex() && event["node_id"] == node
    })
}

#[tokio::test]
async fn a_task_is_promoted_while_a_large_promotion_read_before_it_is_still_being_written() {
    let max_bytes = (8 << 20).to_string();
    let mut scheduler = SCHEDULER.to_vec();
    scheduler.extend(["--max-submission-bytes", &max_bytes]);
    let mut worker = WORKER.to_vec();
    worker.extend(["--gpus", "none"]);
    let c = cluster_with("promote-on", &scheduler, &[worker])
        .await
        .unwrap();
    let wide_run = c.client.start(&wide("wide")).await.unwrap();
    // Its root's success releases 30,000 tasks: wait until that promotion has begun.
    let tasks = c
        .client
        .store
        .db()
        .collection::<mongodb::bson::Document>("run_tasks");
    let released =
        doc! { "run_id": wide_run, "node_id": { "$ne": "root" }, "waiting_on": { "$size": 0 } };
    harmonia_tests::wait_for("the large promotion to begin", LONG, || async {
        Ok((tasks.count_documents(released.clone()).await? > 0).then_some(()))
    })
    .await
    .unwrap();

    // A two-task run submitted now: its second task is promoted (and the run ends) while the
    // large promotion is still being written, its event not yet acked.
    let chain = json!([
        {"id": "a", "type": "debug.noop"},
        {"id": "b", "type": "debug.noop", "depends_on": ["a"]}
    ]);
    let chain_run = c.client.start(&submission("chain", chain)).await.unwrap();
    let run = c.client.finished(chain_run, LONG).await.unwrap();
    assert_eq!(run.status, RunStatus::Succeeded);
    let queued = doc! { "run_id": wide_run, "status": "queued" };
    let wide_queued = tasks.count_documents(queued.clone()).await.unwrap();
    assert!(
        event_in_hand(&c, wide_run, "root").await,
        "the chain's promotion waited for the large one ({wide_queued} of its tasks were queued)"
    );

    // The large promotion completes whole all the same, and its event is then acked.
    harmonia_tests::wait_for("the large promotion to end", LONG, || async {
        let left = event_in_hand(&c, wide_run, "root").await;
        Ok((!left).then_some(()))
    })
    .await
    .unwrap();
    let wide_queued = tasks.count_documents(queued).await.unwrap();
    assert_eq!(wide_queued as usize, LARGE);
}
