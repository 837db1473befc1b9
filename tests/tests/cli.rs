//! The scripted CLI against a real cluster: every JSON output against the
//! schema `blixard schema` gives for it; `--wait`; platform documents
//! applied, exported and diffed.

#![cfg(not(madsim))]

use std::process::Output;

use blixard_tests::{guest_image, TestCluster, Timings};
use serde_json::Value;

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The schema of `command`'s JSON output, compiled.
fn validator(cluster: &TestCluster, command: &str) -> jsonschema::Validator {
    let words: Vec<&str> = std::iter::once("schema")
        .chain(command.split(' '))
        .collect();
    let schema: Value = serde_json::from_str(&cluster.cli_ok(1, &words)).unwrap();
    jsonschema::validator_for(&schema).unwrap_or_else(|e| panic!("schema of {command}: {e}"))
}

/// Runs `args` with `-o json` on node 1 and checks every JSON value it
/// prints (one, or one per line for streams) against `schema_of`'s schema.
fn check(cluster: &TestCluster, schema_of: &str, args: &[&str]) -> Vec<Value> {
    check_exiting(cluster, schema_of, args, 0)
}

/// [`check`] of a command that exits `code`.
fn check_exiting(cluster: &TestCluster, schema_of: &str, args: &[&str], code: i32) -> Vec<Value> {
    let mut full = args.to_vec();
    full.extend(["-o", "json"]);
    let output = cluster.cli(1, &full);
    assert_eq!(
        output.status.code(),
        Some(code),
        "{args:?}: {}",
        stderr(&output)
    );
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let values: Vec<Value> = match serde_json::from_str(&stdout) {
        Ok(value) => vec![value],
        Err(_) => stdout
            .lines()
            .map(|line| {
                serde_json::from_str(line).unwrap_or_else(|e| panic!("{args:?}: {e}: {line:?}"))
            })
            .collect(),
    };
    assert!(!values.is_empty(), "{args:?} printed nothing");
    let validator = validator(cluster, schema_of);
    for value in &values {
        let errors: Vec<String> = validator
            .iter_errors(value)
            .map(|e| format!("{} at {}", e, e.instance_path))
            .collect();
        assert!(
            errors.is_empty(),
            "{args:?} does not match the schema of {schema_of}: {errors:?}\n{value:#}"
        );
    }
    values
}

/// Goal: `watch` runs a reading command again when the cluster changes.
/// Method: `blixard watch vm list -o json` with an hour-long interval
/// runs as a child; a VM created meanwhile shows up in its output, which
/// only a change can have triggered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_runs_the_command_again_on_a_change() {
    use std::io::Read;
    use std::sync::{Arc, Mutex};
    let cluster = TestCluster::start(1, Timings::default()).await;
    cluster.create_flake(1, "first");
    let mut child = std::process::Command::new(blixard_tests::blixard_bin())
        .arg("--ca-file")
        .arg(blixard_tests::ca_file())
        .arg("--token")
        .arg(cluster.token().unwrap())
        .args([
            "--addr",
            cluster.address(1),
            "watch",
            "--interval",
            "1h",
            "vm",
            "list",
            "-o",
            "json",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let seen = Arc::new(Mutex::new(String::new()));
    let mut stdout = child.stdout.take().unwrap();
    let sink = seen.clone();
    std::thread::spawn(move || {
        let mut buffer = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buffer) {
            if n == 0 {
                break;
            }
            sink.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buffer[..n]));
        }
    });
    let shows = |name: &'static str| {
        let seen = seen.clone();
        move || {
            let seen = seen.clone();
            async move { seen.lock().unwrap().contains(name).then_some(()) }
        }
    };
    blixard_tests::eventually(
        "the first run",
        blixard_tests::SCREEN_TIMEOUT,
        shows("\"first\""),
    )
    .await;
    cluster.create_flake(1, "second");
    blixard_tests::eventually(
        "a run after the change",
        blixard_tests::SCREEN_TIMEOUT,
        shows("\"second\""),
    )
    .await;
    child.kill().unwrap();
    child.wait().unwrap();
}

fn platform_document(replicas: u32) -> String {
    let (kernel, initrd) = guest_image();
    format!(
        "apiVersion: blixard.dev/v1
kind: Platform
metadata:
  name: shop
spec:
  vms:
    - name: web
      kernel: {kernel}
      initrd: {initrd}
      replicas: {replicas}
      vcpus: 1
      memory: 128
      placement:
        spreadAcross: node
    - name: db
      kernel: {kernel}
      initrd: {initrd}
      vcpus: 1
      memory: 128
      state: stopped
",
        kernel = kernel.display(),
        initrd = initrd.display()
    )
}

/// Goal: every command's JSON output is what its published schema says
/// (all fields, no others, right types), and `--wait` returns only once
/// the state is reached. Method: a three-node cluster with real guests;
/// each command runs with `-o json` and its output is validated against
/// `blixard schema COMMAND`; the VMs started with `--wait` are running
/// in the output itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_json_output_matches_its_schema_and_wait_waits() {
    let cluster = TestCluster::start(3, Timings::default()).await;
    check(&cluster, "cluster status", &["cluster", "status"]);
    check(&cluster, "cluster autopilot", &["cluster", "autopilot"]);
    check(&cluster, "cluster failover", &["cluster", "failover"]);
    check(&cluster, "node list", &["node", "list"]);
    check(&cluster, "node status", &["node", "status", "1"]);
    check(
        &cluster,
        "node eligibility",
        &["node", "eligibility", "1", "--enable"],
    );

    let (kernel, initrd) = guest_image();
    let (kernel, initrd) = (kernel.to_str().unwrap(), initrd.to_str().unwrap());
    let guest = |name: &'static str| {
        vec![
            "vm", "create", name, "--vcpus", "1", "--memory", "128", "--kernel", kernel,
            "--initrd", initrd,
        ]
    };
    check(&cluster, "vm create", &guest("solo"));
    let mut group = guest("grp");
    group.extend(["--replicas", "2", "--wait"]);
    let created = check(&cluster, "vm create", &group);
    let phases: Vec<&str> = created[0]["vms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|vm| vm["phase"].as_str().unwrap())
        .collect();
    assert_eq!(phases, ["running", "running"], "--wait returned early");

    let started = check(&cluster, "vm start", &["vm", "start", "solo", "--wait"]);
    assert_eq!(started[0]["phase"], "running", "--wait returned early");
    let status = check(&cluster, "vm status", &["vm", "status", "solo"]);
    assert!(status[0]["stats"]["rss_bytes"].as_u64().unwrap() > 0);
    check(&cluster, "vm list", &["vm", "list"]);
    let stopped = check(&cluster, "vm stop", &["vm", "stop", "solo", "--wait"]);
    assert_eq!(stopped[0]["phase"], "stopped", "--wait returned early");
    let scaled = check(
        &cluster,
        "vm scale",
        &["vm", "scale", "grp", "--replicas", "3", "--wait"],
    );
    assert_eq!(scaled[0]["vms"].as_array().unwrap().len(), 3);
    check(&cluster, "vm watch", &["vm", "watch", "--max-events", "4"]);
    check(&cluster, "events", &["events", "--recent", "20"]);
    check(&cluster, "vm delete", &["vm", "delete", "solo", "--wait"]);

    let dir = tempfile::tempdir().unwrap();
    let document = dir.path().join("shop.yaml");
    std::fs::write(&document, platform_document(1)).unwrap();
    let document = document.to_str().unwrap();
    // Changes to make: diff exits 1, quietly.
    check_exiting(&cluster, "diff", &["diff", "-f", document], 1);
    check(&cluster, "apply", &["apply", "-f", document, "-y"]);
    check(&cluster, "export", &["export", "--name", "shop"]);
    let man = dir.path().join("man");
    check(&cluster, "man", &["man", "--out", man.to_str().unwrap()]);
    assert!(man.join("blixard-vm-create.1").exists());

    // --wait fails, with exit 1 and the reason, when the VM fails.
    let broken = [
        "vm",
        "create",
        "broken",
        "--vcpus",
        "1",
        "--memory",
        "128",
        "--kernel",
        "/nonexistent/k",
        "--initrd",
        "/nonexistent/i",
    ];
    cluster.cli_ok(1, &broken);
    let failed = cluster.cli(1, &["vm", "start", "broken", "--wait", "--timeout", "60s"]);
    assert_eq!(failed.status.code(), Some(1), "{}", stderr(&failed));
    assert!(
        stderr(&failed).contains("VM broken failed: kernel /nonexistent/k does not exist"),
        "{}",
        stderr(&failed)
    );
}

/// Goal: a platform document is the source of truth for the VMs it
/// names: apply makes them, export gives the document back, diff of that
/// finds nothing, a replica change plans exactly a scale, and VMs made by
/// hand are never taken over. Method: a real cluster with real guests,
/// driven through the CLI with JSON plans.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_export_diff_round_trip() {
    let cluster = TestCluster::start(3, Timings::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shop.yaml");
    std::fs::write(&path, platform_document(2)).unwrap();
    let doc = path.to_str().unwrap();

    let plan: Value = serde_json::from_str(
        &cluster.cli_ok(1, &["apply", "-f", doc, "-y", "--wait", "-o", "json"]),
    )
    .unwrap();
    let actions: Vec<(&str, &str)> = plan["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["action"].as_str().unwrap(), c["name"].as_str().unwrap()))
        .collect();
    assert_eq!(actions, [("create", "web"), ("create", "db")]);
    let listed: Value =
        serde_json::from_str(&cluster.cli_ok(2, &["vm", "list", "-o", "json"])).unwrap();
    let states: Vec<(String, String, String)> = listed["vms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|vm| {
            (
                vm["name"].as_str().unwrap().to_string(),
                vm["desired_state"].as_str().unwrap().to_string(),
                vm["phase"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let expected = [
        ("db", "stopped", "stopped"),
        ("web-1", "running", "running"),
        ("web-2", "running", "running"),
    ];
    let expected: Vec<(String, String, String)> = expected
        .iter()
        .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
        .collect();
    assert_eq!(states, expected);
    let nodes: std::collections::BTreeSet<u64> = listed["vms"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|vm| vm["node"].as_u64())
        .collect();
    assert_eq!(
        nodes.len(),
        2,
        "spreadAcross: node put two replicas together"
    );

    let exported = dir.path().join("exported.yaml");
    std::fs::write(&exported, cluster.cli_ok(3, &["export", "--name", "shop"])).unwrap();
    let again: Value = serde_json::from_str(
        &cluster.cli_ok(1, &["diff", "-f", exported.to_str().unwrap(), "-o", "json"]),
    )
    .unwrap();
    assert_eq!(again["changes"], Value::Array(vec![]), "{again:#}");
    assert_eq!(again["unchanged"], 2);

    std::fs::write(&path, platform_document(3)).unwrap();
    let differs = cluster.cli(1, &["diff", "-f", doc, "-o", "json"]);
    assert_eq!(differs.status.code(), Some(1), "{}", stderr(&differs));
    assert_eq!(stderr(&differs), "", "a difference is no error");
    let plan: Value = serde_json::from_slice(&differs.stdout).unwrap();
    assert_eq!(
        plan["changes"],
        serde_json::json!([{"action": "scale", "name": "web", "from": 2, "to": 3}])
    );
    cluster.cli_ok(1, &["apply", "-f", doc, "-y", "--wait"]);
    let after: Value =
        serde_json::from_str(&cluster.cli_ok(1, &["diff", "-f", doc, "-o", "json"])).unwrap();
    assert_eq!(after["changes"], Value::Array(vec![]));

    // A VM made by hand, or by another document, is never taken over.
    cluster.create_flake(1, "hand");
    let mut hand = std::fs::read_to_string(&path).unwrap();
    hand.push_str(
        "    - {name: hand, config: /etc/vms#x, vcpus: 1, memory: 128, state: stopped}\n",
    );
    std::fs::write(&path, hand).unwrap();
    // A document that does not fit the cluster is trouble (2), not a
    // difference (1).
    let refused = cluster.cli(1, &["diff", "-f", doc]);
    assert_eq!(refused.status.code(), Some(2));
    assert!(
        stderr(&refused).contains("VM hand exists and is made by hand"),
        "{}",
        stderr(&refused)
    );
    std::fs::write(&path, platform_document(3)).unwrap();
    let (kernel, initrd) = guest_image();
    let taken = "apiVersion: blixard.dev/v1\nkind: Platform\nmetadata: {name: other}\nspec:\n  vms:\n    - {name: db, kernel: K, initrd: I, vcpus: 1, memory: 128}\n"
        .replace('K', kernel.to_str().unwrap())
        .replace('I', initrd.to_str().unwrap());
    let other = dir.path().join("other.yaml");
    std::fs::write(&other, taken).unwrap();
    let conflict = cluster.cli(1, &["apply", "-f", other.to_str().unwrap(), "-y"]);
    assert_eq!(conflict.status.code(), Some(1));
    assert!(
        stderr(&conflict).contains("VM db exists and is managed by platform \"shop\""),
        "{}",
        stderr(&conflict)
    );

    // A bad document: exit 2, where and why, nothing changed.
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        platform_document(2).replace("vcpus: 1", "vcpus: 1\n      cpus: 2"),
    )
    .unwrap();
    let refused = cluster.cli(1, &["apply", "-f", bad.to_str().unwrap(), "-y"]);
    assert_eq!(refused.status.code(), Some(2));
    assert!(
        stderr(&refused).contains("unknown field `cpus`") && stderr(&refused).contains("line 12"),
        "{}",
        stderr(&refused)
    );
    let unchanged: Value =
        serde_json::from_str(&cluster.cli_ok(1, &["diff", "-f", doc, "-o", "json"])).unwrap();
    assert_eq!(unchanged["changes"], Value::Array(vec![]));
}

/// Goal: a read command whose output goes into a pipe its reader closed
/// ends quietly, as Unix filters do (by SIGPIPE, status 141; or 0 when it
/// wrote everything first), never with a panic. Method: each read command,
/// with and without a cluster, piped into `true`, which exits at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_commands_into_a_closed_pipe_end_quietly() {
    let cluster = TestCluster::start_without_agents(1, Timings::default()).await;
    cluster.create_flake(1, "web");
    let bin = blixard_tests::blixard_bin().display().to_string();
    let token = cluster.token().unwrap_or_default();
    let ca = blixard_tests::ca_file().display().to_string();
    let address = cluster.address(1).to_string();
    for args in [
        &["schema"][..],
        &["completions", "zsh"],
        &["vm", "list"],
        &["vm", "list", "-o", "json"],
        &["vm", "status", "web"],
        &["node", "list"],
        &["node", "list", "-o", "yaml"],
        &["events", "--recent", "100"],
        &["cluster", "status"],
        &["export"],
    ] {
        let mut words = vec![
            bin.as_str(),
            "--token",
            &token,
            "--addr",
            &address,
            "--ca-file",
            &ca,
        ];
        words.extend_from_slice(args);
        let quoted: Vec<String> = words.iter().map(|w| format!("'{w}'")).collect();
        let script = format!("{} | true; exit ${{PIPESTATUS[0]}}", quoted.join(" "));
        let output = std::process::Command::new("bash")
            .args(["-c", &script])
            .output()
            .unwrap();
        let shown = args.join(" ");
        assert!(
            matches!(output.status.code(), Some(0 | 141)),
            "{shown}: {:?}\n{}",
            output.status,
            stderr(&output)
        );
        assert!(
            !stderr(&output).contains("panicked"),
            "{shown}: {}",
            stderr(&output)
        );
    }

    // The event table has a header and says when each event happened.
    let events = cluster.cli_ok(1, &["events", "--recent", "10"]);
    let mut lines = events.lines();
    let header = lines.next().unwrap_or_default();
    assert!(
        header.contains("REVISION") && header.contains("TIME") && header.contains("KIND"),
        "{events}"
    );
    let created = lines
        .find(|line| line.contains("vm_created"))
        .unwrap_or_else(|| panic!("no vm_created in\n{events}"));
    let time = created.split_whitespace().nth(1).unwrap_or_default();
    assert!(
        time.len() == 20 && time.ends_with('Z') && time.as_bytes()[10] == b'T',
        "no time in {created:?}"
    );
}
