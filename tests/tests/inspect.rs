//! The read-only operator commands: `harmonia-scheduler workers`, `queues` (text and JSON) and `watch`.

use harmonia_shared::model::{RunStatus, TaskStatus};
use harmonia_shared::queue::WORKERS_GROUP;
use harmonia_shared::resources::ResourceClass;
use harmonia_tests::cluster::{LONG, cluster};
use harmonia_tests::{submission, wait_for};
use serde_json::{Value, json};

fn cli(c: &harmonia_tests::cluster::Cluster, args: &[&str]) -> String {
    let out = c.scope.scheduler_cli(args).expect("running the CLI");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

/// One CPU worker; one CPU task it runs, and two tasks needing a 16 GB GPU nobody has, which
/// wait in their class stream: `queues` shows that backlog, `workers` the live worker.
#[tokio::test(flavor = "multi_thread")]
async fn workers_and_queues_show_the_live_worker_and_the_backlog_it_cannot_take() {
    let c = cluster("inspect", &["none"]).await.unwrap();
    let gpu = |id: &str| json!({"id": id, "type": "debug.noop", "resources": {"gpus": 1, "gpu_memory_mb": 16000}});
    let body = submission(
        "inspect",
        json!([{"id": "cpu", "type": "debug.noop"}, gpu("g1"), gpu("g2")]),
    );
    let run_id = c.client.start(&body).await.unwrap();
    let ran = c
        .client
        .task_reaches(run_id, "cpu", TaskStatus::Succeeded)
        .await
        .unwrap();
    let class: ResourceClass = "g1m16000".parse().unwrap();
    let gpu_stream = c.client.queue.keys().task_stream(class);
    wait_for("2 GPU tasks waiting", LONG, || async {
        let info = c
            .client
            .queue
            .group_info(&gpu_stream, WORKERS_GROUP)
            .await?;
        Ok(info.is_some_and(|g| g.lag == Some(2)).then_some(()))
    })
    .await
    .unwrap();

    let queues: Vec<Value> = serde_json::from_str(&cli(&c, &["queues", "--json"])).unwrap();
    let of = |stream: &str| {
        queues
            .iter()
            .find(|q| q["stream"] == stream)
            .unwrap_or_else(|| panic!("{stream} not listed: {queues:#?}"))
    };
    let waiting = of(&gpu_stream);
    assert_eq!(
        (&waiting["length"], &waiting["lag"], &waiting["pending"]),
        (&json!(2), &json!(2), &json!(0))
    );
    assert_eq!(waiting["group"], WORKERS_GROUP);
    assert!(
        waiting["oldest_entry_age_ms"].as_u64().is_some(),
        "{waiting}"
    );
    let cpu = of(&c.client.queue.keys().task_stream(ResourceClass::CPU));
    assert_eq!(
        (&cpu["lag"], &cpu["consumers"]),
        (&json!(0), &json!(1)),
        "{cpu}"
    );
    assert!(
        queues
            .iter()
            .any(|q| q["stream"] == c.client.queue.keys().submissions())
    );
    let text = cli(&c, &["queues"]);
    assert!(
        text.contains("oldest pending") && text.contains(&gpu_stream),
        "{text}"
    );

    let workers: Vec<Value> = serde_json::from_str(&cli(&c, &["workers", "--json"])).unwrap();
    assert_eq!(workers.len(), 1, "{workers:#?}");
    let w = &workers[0];
    assert_eq!(w["_id"].as_str(), ran.worker_id.as_deref());
    assert_eq!(
        (&w["state"], &w["live"], &w["cpu_slots"]),
        (&json!("running"), &json!(true), &json!(4))
    );
    let text = cli(&c, &["workers"]);
    assert!(
        text.contains(ran.worker_id.as_deref().unwrap()) && text.contains("yes"),
        "{text}"
    );

    let run = c.client.store.runs().get(run_id).await.unwrap().unwrap();
    assert_eq!(run.status, RunStatus::Running, "the GPU tasks still wait");
}

/// `completions bash` needs no configuration, and bash, asked to complete
/// `harmonia-scheduler <TAB>` with it, offers every subcommand.
#[test]
fn bash_completions_offer_every_subcommand() {
    let binary = harmonia_tests::services::binary_path("harmonia-scheduler").unwrap();
    let out = std::process::Command::new(binary)
        .args(["completions", "bash"])
        .env("HARMONIA_CONFIG", "/nonexistent/harmonia.toml")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dir = std::env::temp_dir().join(format!("harmonia-completions-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("harmonia-scheduler.bash");
    std::fs::write(&file, &out.stdout).unwrap();
    // What bash does on TAB: call the function `complete` registered, then read COMPREPLY.
    let tab = r#"source "$1"
        f=$(complete -p harmonia-scheduler | sed 's/.*-F \([^ ]*\) .*/\1/')
        COMP_WORDS=(harmonia-scheduler ""); COMP_CWORD=1
        COMP_LINE="harmonia-scheduler "; COMP_POINT=${#COMP_LINE}
        "$f" harmonia-scheduler "" harmonia-scheduler
        printf '%s\n' "${COMPREPLY[@]}""#;
    let offered = std::process::Command::new("bash")
        .args(["-c", tab, "tab"])
        .arg(&file)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let offered = String::from_utf8_lossy(&offered.stdout).into_owned();
    let words: Vec<&str> = offered.lines().collect();
    for sub in [
        "run", "submit", "status", "cancel", "retry", "workers", "queues", "check",
    ] {
        assert!(words.contains(&sub), "{sub} not offered: {words:?}");
    }
}

/// Two tasks fail for good: both are dead letters. Replaying one retries it in place (it
/// succeeds the second time, and so does the task it had skipped) and removes its letter;
/// purging removes the other.
#[tokio::test(flavor = "multi_thread")]
async fn a_dead_letter_is_listed_shown_replayed_and_purged() {
    let c = cluster("dlq", &["none"]).await.unwrap();
    let body = submission(
        "dlq",
        json!([
            {"id": "f", "type": "debug.fail", "params": {"times": 1}, "max_attempts": 1},
            {"id": "after", "type": "debug.noop", "depends_on": ["f"]},
            {"id": "p", "type": "debug.fail", "params": {"permanent": true}, "max_attempts": 1}
        ]),
    );
    let run_id = c.client.start(&body).await.unwrap();
    assert_eq!(
        c.client.finished(run_id, LONG).await.unwrap().status,
        RunStatus::Failed
    );
    let letters = wait_for("two dead letters", LONG, || async {
        let list: Vec<Value> = serde_json::from_str(&cli(&c, &["dlq", "list", "--json"]))?;
        Ok((list.len() == 2).then_some(list))
    })
    .await
    .unwrap();
    let of = |node: &str| {
        letters
            .iter()
            .find(|l| l["payload"]["node_id"] == node)
            .and_then(|l| l["id"].as_str())
            .map(str::to_owned)
            .unwrap_or_else(|| panic!("no letter for {node}: {letters:#?}"))
    };
    let (f, p) = (of("f"), of("p"));
    let shown: Value = serde_json::from_str(&cli(&c, &["dlq", "show", &f])).unwrap();
    assert_eq!(shown["task"]["status"], "failed", "{shown:#}");
    assert!(cli(&c, &["dlq", "list"]).contains(&format!("{f}  run {}", run_id.to_hex())));

    let replayed: Value = serde_json::from_str(&cli(&c, &["dlq", "replay", &f])).unwrap();
    assert_eq!(replayed["reset"], json!(["after", "f"]), "{replayed}");
    c.client
        .task_reaches(run_id, "after", TaskStatus::Succeeded)
        .await
        .unwrap();
    assert_eq!(
        c.client.task(run_id, "f").await.unwrap().status,
        TaskStatus::Succeeded
    );
    let left: Vec<Value> = serde_json::from_str(&cli(&c, &["dlq", "list", "--json"])).unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0]["id"].as_str(), Some(p.as_str()));

    let purged: Value = serde_json::from_str(&cli(&c, &["dlq", "purge", "--all"])).unwrap();
    assert_eq!(purged["removed"], 1);
    assert_eq!(cli(&c, &["dlq", "list", "--json"]).trim(), "[]");
}

/// `watch` follows a run to its end: on a pseudo-terminal it draws progress bars, through a
/// pipe it prints one line per change; both end with the summary and exit 0 on success.
#[tokio::test(flavor = "multi_thread")]
async fn watch_renders_bars_on_a_terminal_and_lines_through_a_pipe() {
    let c = cluster("watch", &["none"]).await.unwrap();
    let body = |id: &str| {
        submission(
            id,
            json!([
                {"id": "sleep", "type": "debug.sleep", "params": {"ms": 1500}},
                {"id": "after", "type": "debug.noop", "depends_on": ["sleep"]},
            ]),
        )
    };
    // Through a pipe: plain lines, one per change, the sleep's progress among them.
    let run = c.client.start(&body("watch-pipe")).await.unwrap();
    let out = cli(&c, &["watch", &run.to_hex()]);
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("sleep running") && l.contains("sleeping")),
        "{out}"
    );
    assert!(
        lines.iter().any(|l| l.starts_with("after succeeded 100%")),
        "{out}"
    );
    assert!(
        !out.contains('\u{1b}'),
        "no escape codes in a pipe: {out:?}"
    );
    let last = lines.last().copied().unwrap_or_default();
    assert!(last.contains("succeeded: 2/2 succeeded"), "{last}");

    // On a pseudo-terminal (util-linux `script` gives the command one): indicatif bars.
    let run = c.client.start(&body("watch-tty")).await.unwrap();
    let bin = harmonia_tests::services::binary_path("harmonia-scheduler").unwrap();
    let mut script = std::process::Command::new("script");
    script
        .args([
            "-qfec",
            &format!("{} watch {}", bin.display(), run.to_hex()),
            "/dev/null",
        ])
        .envs(c.scope.env());
    let out = script.output().expect("script (util-linux)");
    let tty = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{tty}");
    assert!(
        tty.contains('\u{1b}'),
        "a terminal gets escape codes: {tty:?}"
    );
    assert!(
        tty.contains("█") || tty.contains("░"),
        "bars are drawn: {tty:?}"
    );
    assert!(tty.contains("succeeded: 2/2 succeeded"), "{tty:?}");
}
