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
        .args([
            "--addr",
            cluster.address(2),
            "vm",
            "watch",
            "--max-events",
            "4",
            "-o",
            "json",
        ])
        .stdout(Stdio::piped())
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
    let next_event = || -> serde_json::Value {
        let line = lines
            .recv_timeout(Duration::from_secs(20))
            .expect("no watch event within 20 s");
        serde_json::from_str(&line).unwrap()
    };

    let first = next_event();
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
    let mut events = vec![next_event()];
    while events.last().unwrap()["event"] != "deleted" {
        assert!(events.len() < 64, "no delete event among {events:?}");
        events.push(next_event());
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
    watcher.kill().unwrap();
    watcher.wait().unwrap();
}
