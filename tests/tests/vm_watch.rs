//! `blixard vm watch` streams the VM list and then every committed change.

#![cfg(not(madsim))]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use blixard_tests::{blixard_bin, TestCluster, Timings};

/// Goal: a watcher on a follower sees the existing VMs, then each change
/// made through another node, in commit order with rising revisions.
/// Method: one VM exists; start `vm watch -o json` on node 2; once its
/// ADDED event for that VM arrives, create, start and delete another VM
/// through node 1 and read the events until the delete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_streams_existing_vms_then_changes_in_order() {
    let cluster = TestCluster::start(3, Timings::default()).await;
    let run = |args: &[&str]| {
        let output = cluster.cli(1, args);
        assert!(
            output.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    };
    run(&[
        "vm",
        "create",
        "existing",
        "--vcpus",
        "1",
        "--memory",
        "64",
        "--flake",
        "/etc/vms#a",
    ]);

    let mut watcher = Command::new(blixard_bin())
        .arg("--ca-file")
        .arg(blixard_tests::ca_file())
        .arg("--token")
        .arg(cluster.token().unwrap())
        .args(["--addr", cluster.address(2), "vm", "watch", "-o", "json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (lines_tx, lines) = mpsc::channel();
    let stdout = watcher.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if lines_tx.send(line.unwrap()).is_err() {
                return;
            }
        }
    });
    let stderr = watcher.stderr.take().unwrap();
    let errors = std::thread::spawn(move || std::io::read_to_string(stderr).unwrap_or_default());
    let next_event = || -> Option<serde_json::Value> {
        let line = lines.recv_timeout(Duration::from_secs(20)).ok()?;
        Some(serde_json::from_str(&line).unwrap())
    };
    // The watcher ended or is stuck: say how, with what it printed.
    let mut explain = move || -> String {
        let _ = watcher.kill();
        let status = watcher.wait();
        format!("watcher {status:?}")
    };

    let Some(first) = next_event() else {
        panic!(
            "no first watch event: {}; stderr: {}",
            explain(),
            errors.join().unwrap()
        );
    };
    assert_eq!(
        (first["event"].as_str(), first["vm"]["name"].as_str()),
        (Some("added"), Some("existing"))
    );
    run(&[
        "vm",
        "create",
        "webapp",
        "--vcpus",
        "1",
        "--memory",
        "64",
        "--flake",
        "/etc/vms#b",
    ]);
    run(&["vm", "start", "webapp"]);
    run(&["vm", "delete", "webapp"]);
    // Started, the VM is also placed and its node reports on it: any number
    // of further modifications may come between start and delete.
    let mut events = Vec::new();
    while events
        .last()
        .is_none_or(|e: &serde_json::Value| e["event"] != "deleted")
    {
        assert!(events.len() < 64, "no delete event among {events:?}");
        let Some(event) = next_event() else {
            panic!(
                "watch ended after {events:?}: {}; stderr: {}",
                explain(),
                errors.join().unwrap()
            );
        };
        events.push(event);
    }
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(kinds[0], "added");
    assert!(
        kinds[1..kinds.len() - 1].iter().all(|k| *k == "modified"),
        "{kinds:?}"
    );
    assert!(kinds.len() >= 3, "{kinds:?}");
    assert!(events.iter().all(|e| e["vm"]["name"] == "webapp"));
    assert_eq!(events[1]["vm"]["desired_state"], "running");
    let revisions: Vec<u64> = events
        .iter()
        .map(|e| e["revision"].as_u64().unwrap())
        .collect();
    assert!(first["revision"].as_u64().unwrap() < revisions[0]);
    assert!(revisions.windows(2).all(|w| w[0] < w[1]), "{revisions:?}");
    explain();

    // --max-events ends a watch by itself: here after the one VM left.
    let one = cluster.cli_ok(1, &["vm", "watch", "--max-events", "1", "-o", "json"]);
    let event: serde_json::Value = serde_json::from_str(one.trim()).unwrap();
    assert_eq!(event["vm"]["name"], "existing");
}
