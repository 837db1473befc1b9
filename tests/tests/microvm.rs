//! Real microVMs: qemu `-M microvm` guests (TCG) started by the node agents
//! of a three-node cluster through the built-in runner.

#![cfg(not(madsim))]

use std::time::Duration;

use blixard_tests::{eventually, free_port, guest_image, TestCluster, Timings};
use serde_json::Value;

const READY_MARKER: &str = "BLIXARD-GUEST-READY";
const BOOT_TIMEOUT: Duration = Duration::from_secs(60);

fn status(cluster: &TestCluster, node: u64, name: &str) -> Value {
    serde_json::from_str(&cluster.cli_ok(node, &["vm", "status", name, "-o", "json"])).unwrap()
}

/// Polls `vm status` through `node` until `check` accepts it.
async fn wait_status(
    cluster: &TestCluster,
    node: u64,
    name: &str,
    what: &str,
    check: impl Fn(&Value) -> bool,
) -> Value {
    eventually(what, BOOT_TIMEOUT, || async {
        let vm = status(cluster, node, name);
        check(&vm).then_some(vm)
    })
    .await
}

/// One plain HTTP/1.0 GET of `/` on 127.0.0.1:`port`.
fn http_get(port: u16) -> Option<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    stream.write_all(b"GET / HTTP/1.0\r\n\r\n").ok()?;
    let mut page = String::new();
    stream.read_to_string(&mut page).ok()?;
    Some(page)
}

fn is_running(vm: &Value) -> bool {
    vm["phase"] == "running" && vm["pid"].is_u64()
}

/// Goal: a VM created through the CLI boots a real guest on the node the
/// scheduler chose, its console is readable from any node, and stop, start
/// and delete do what they say. Method: create and start through node 2;
/// wait for Running; read the readiness marker through a node that does not
/// run the VM; stop (no process left), start (a new process), delete (no
/// process, socket or state directory left).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vm_boots_logs_stops_starts_and_deletes() {
    let cluster = TestCluster::start(3, Timings::default()).await;
    let http_port = free_port();
    let forward = format!("{http_port}:80");
    cluster.create_guest(2, "web", &["--port", &forward, "--cmdline", "http=1"]);
    cluster.cli_ok(2, &["vm", "start", "web"]);
    let vm = wait_status(&cluster, 1, "web", "web to run", is_running).await;
    let node = vm["node"].as_u64().unwrap();
    let pid = vm["pid"].as_u64().unwrap() as u32;
    assert_eq!(cluster.vm_processes("web"), [pid], "exactly one hypervisor");

    let other = (1..=3).find(|n| *n != node).unwrap();
    eventually("the readiness marker in vm logs", BOOT_TIMEOUT, || async {
        let logs = cluster.cli_ok(other, &["vm", "logs", "web"]);
        logs.contains(READY_MARKER).then_some(())
    })
    .await;
    let tail = cluster.cli_ok(other, &["vm", "logs", "web", "--tail", "1"]);
    assert_eq!(tail.lines().count(), 1, "{tail:?}");
    // The guest's HTTP server, through the forwarded port on its node.
    let page = eventually("the guest to serve HTTP", BOOT_TIMEOUT, || async {
        http_get(http_port).filter(|page| page.contains("blixard guest"))
    })
    .await;
    assert!(
        page.lines()
            .next()
            .is_some_and(|status| status.contains(" 200 ")),
        "{page}"
    );
    // Live figures of the running hypervisor, fetched from its node.
    let stats = &status(&cluster, other, "web")["stats"];
    assert!(
        stats["rss_bytes"].as_u64().unwrap() > 16 * 1024 * 1024,
        "{stats}"
    );
    assert!(stats["cpu_ms"].as_u64().unwrap() > 0, "{stats}");

    cluster.cli_ok(3, &["vm", "stop", "web"]);
    wait_status(&cluster, 3, "web", "web to stop", |vm| {
        vm["phase"] == "stopped"
    })
    .await;
    assert!(
        cluster.vm_processes("web").is_empty(),
        "hypervisor still running after stop"
    );

    cluster.cli_ok(1, &["vm", "start", "web"]);
    let restarted = wait_status(&cluster, 1, "web", "web to run again", is_running).await;
    assert_ne!(restarted["pid"].as_u64().unwrap() as u32, pid);
    assert_eq!(
        restarted["node"].as_u64().unwrap(),
        node,
        "a stopped VM keeps its node"
    );

    let state_dir = cluster.nodes[&node].data_dir.join("vms").join("web");
    assert!(state_dir.join("web.sock").exists());
    // The console holds whatever the guest prints: the agent's alone.
    let mode = |path: &std::path::Path| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    };
    assert_eq!(mode(&state_dir), 0o700, "state directory mode");
    assert_eq!(
        mode(&state_dir.join("console.log")),
        0o600,
        "console log mode"
    );
    cluster.cli_ok(2, &["vm", "delete", "web"]);
    eventually("the VM to be gone from its node", BOOT_TIMEOUT, || async {
        (cluster.vm_processes("web").is_empty() && !state_dir.exists()).then_some(())
    })
    .await;
}

/// Goal: a hypervisor killed from outside is noticed, reported and
/// restarted; an agent killed and restarted adopts its running VM instead
/// of starting a second one. Method: SIGKILL qemu and wait for Running with
/// a new pid and one restart; then SIGKILL the VM's agent, restart it, and
/// check the same single qemu process is reported Running again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_hypervisor_restarts_and_restarted_agent_adopts() {
    let mut cluster = TestCluster::start(3, Timings::default()).await;
    cluster.create_guest(1, "db", &["--node", "3"]);
    cluster.cli_ok(1, &["vm", "start", "db"]);
    let vm = wait_status(&cluster, 1, "db", "db to run", is_running).await;
    assert_eq!(vm["node"], 3, "pinned VM placed elsewhere");
    let first_pid = vm["pid"].as_u64().unwrap() as u32;

    // The hypervisor this test started.
    blixard_tests::signal_pid(first_pid, nix::sys::signal::Signal::SIGKILL).unwrap();
    let vm = wait_status(&cluster, 1, "db", "db to be restarted", |vm| {
        is_running(vm) && vm["restarts"] == 1 && vm["pid"].as_u64() != Some(first_pid as u64)
    })
    .await;
    assert_eq!(vm["exit_status"], "signal 9");
    // Its lifecycle is in every node's events, in order.
    let lifecycle = [
        "vm_created",
        "vm_placed",
        "vm_starting",
        "vm_running",
        "vm_restarted",
        "vm_starting",
        "vm_running",
    ];
    for id in 1..=3 {
        let told = eventually(
            &format!("node {id} to tell db's restart"),
            Duration::from_secs(20),
            || async {
                let events = cluster.cli_ok(id, &["events", "--recent", "1000", "-o", "json"]);
                let told: Vec<String> = events
                    .lines()
                    .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
                    .filter(|event| event["vm"] == "db")
                    .map(|event| event["kind"].as_str().unwrap().to_string())
                    .collect();
                (told.len() >= lifecycle.len()).then_some(told)
            },
        )
        .await;
        assert_eq!(told, lifecycle, "node {id}");
    }
    let second_pid = vm["pid"].as_u64().unwrap() as u32;
    assert_eq!(cluster.vm_processes("db"), [second_pid]);

    cluster.kill(3);
    assert_eq!(
        cluster.vm_processes("db"),
        [second_pid],
        "the VM died with its agent"
    );
    let before_restart = status(&cluster, 1, "db")["mod_revision"].as_u64().unwrap();
    cluster.restart(3);
    // The restarted agent reports the adopted VM (a newer revision).
    let vm = wait_status(&cluster, 1, "db", "the agent to adopt db", |vm| {
        is_running(vm) && vm["mod_revision"].as_u64().unwrap() > before_restart
    })
    .await;
    assert_eq!(vm["pid"].as_u64().unwrap() as u32, second_pid);
    assert_eq!(
        cluster.vm_processes("db"),
        [second_pid],
        "the VM was doubled"
    );
    // Still adopted, not replaced, a moment of agent work later.
    eventually("logs through the restarted agent", BOOT_TIMEOUT, || async {
        let logs = cluster.cli_ok(3, &["vm", "logs", "db"]);
        logs.contains(READY_MARKER).then_some(())
    })
    .await;
    assert_eq!(cluster.vm_processes("db"), [second_pid]);
}

/// Goal: runner sources that fail leave the VM Failed with the reason.
/// Method: a kernel path that does not exist, and a flake that is not there
/// (a real `nix build` fails); both reasons show in `vm status`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_runner_sources_report_failed_with_reason() {
    let cluster = TestCluster::start(1, Timings::default()).await;
    let (_, initrd) = guest_image();
    cluster.cli_ok(
        1,
        &[
            "vm",
            "create",
            "nokernel",
            "--vcpus",
            "1",
            "--memory",
            "64",
            "--kernel",
            "/nonexistent/vmlinuz",
            "--initrd",
            initrd.to_str().unwrap(),
        ],
    );
    cluster.cli_ok(1, &["vm", "start", "nokernel"]);
    let vm = wait_status(&cluster, 1, "nokernel", "nokernel to fail", |vm| {
        vm["phase"] == "failed"
    })
    .await;
    assert_eq!(vm["reason"], "kernel /nonexistent/vmlinuz does not exist");

    cluster.cli_ok(
        1,
        &[
            "vm",
            "create",
            "noflake",
            "--vcpus",
            "1",
            "--memory",
            "64",
            "--flake",
            "/nonexistent/flake",
        ],
    );
    cluster.cli_ok(1, &["vm", "start", "noflake"]);
    let vm = wait_status(&cluster, 1, "noflake", "noflake to fail", |vm| {
        vm["phase"] == "failed"
    })
    .await;
    let reason = vm["reason"].as_str().unwrap();
    assert!(
        reason.contains("nix build /nonexistent/flake#nixosConfigurations.noflake.config.microvm.declaredRunner failed"),
        "{reason}"
    );
    // The build's own output is in the VM's console log.
    let logs = cluster.cli_ok(1, &["vm", "logs", "noflake"]);
    assert!(logs.contains("/nonexistent/flake"), "{logs}");
    assert!(
        cluster.vm_processes("nokernel").is_empty() && cluster.vm_processes("noflake").is_empty()
    );
}

/// The unprivileged user the VM-user test runs hypervisors as, created
/// (as `.ci/run` does) when missing.
const VM_USER: &str = "blixard-vm";

fn ensure_vm_user() -> u32 {
    let uid = || {
        let output = std::process::Command::new("id")
            .args(["-u", VM_USER])
            .output()
            .unwrap();
        output.status.success().then(|| {
            String::from_utf8_lossy(&output.stdout)
                .trim()
                .parse()
                .unwrap()
        })
    };
    if let Some(uid) = uid() {
        return uid;
    }
    let created = std::process::Command::new("useradd")
        .args([
            "--system",
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
            VM_USER,
        ])
        .status()
        .unwrap();
    assert!(
        created.success(),
        "useradd {VM_USER} (run the tests as root)"
    );
    uid().unwrap()
}

/// The `Name: value` line of /proc/PID/status.
fn proc_status(pid: u32, field: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|line| {
            line.strip_prefix(&format!("{field}:"))
                .map(str::trim)
                .map(String::from)
        })
        .unwrap_or_default()
}

/// Goal: with `[agent] vm_user`, qemu runs as that user (no root, no
/// supplementary groups) and cannot write the VM's state directory, yet
/// the guest boots and the agent still controls it. Method: one node
/// whose hypervisors run as `blixard-vm`; start a guest; check the
/// process's real and effective uid, its groups, the state directory's
/// owner and mode and the QMP socket's; read the readiness marker; stop
/// it through QMP and start it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hypervisors_run_as_the_configured_vm_user() {
    use blixard_tests::{Network, NodeOptions};
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let uid = ensure_vm_user();
    let cluster =
        TestCluster::start_with(1, Timings::default(), Network::Loopback, |_| NodeOptions {
            vm_user: Some(VM_USER.into()),
            ..NodeOptions::default()
        })
        .await;
    cluster.create_guest(1, "guest", &[]);
    cluster.cli_ok(1, &["vm", "start", "guest"]);
    let vm = wait_status(&cluster, 1, "guest", "the guest to run", is_running).await;
    let pid = vm["pid"].as_u64().unwrap() as u32;
    let uids: Vec<String> = proc_status(pid, "Uid")
        .split_whitespace()
        .map(String::from)
        .collect();
    assert_eq!(
        uids,
        vec![uid.to_string(); 4],
        "real, effective, saved, fs uid"
    );
    assert!(
        proc_status(pid, "Gid")
            .split_whitespace()
            .all(|gid| gid != "0"),
        "root's group: {}",
        proc_status(pid, "Gid")
    );
    assert_eq!(proc_status(pid, "Groups"), "", "supplementary groups");
    assert_eq!(proc_status(pid, "NoNewPrivs"), "1");
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    let environ = String::from_utf8_lossy(&environ);
    // PATH from the agent; the rest bash sets for itself.
    assert!(
        environ
            .split('\0')
            .filter(|v| !v.is_empty())
            .all(|v| ["PATH=", "PWD=", "SHLVL=", "_="]
                .iter()
                .any(|ok| v.starts_with(ok))),
        "the agent's environment reached qemu: {environ}"
    );
    eventually("the readiness marker", BOOT_TIMEOUT, || async {
        let logs = cluster.cli_ok(1, &["vm", "logs", "guest"]);
        logs.contains(READY_MARKER).then_some(())
    })
    .await;
    let state_dir = cluster.dir.path().join("vms-node1/guest");
    let metadata = std::fs::metadata(&state_dir).unwrap();
    assert_eq!(metadata.uid(), 0, "the state directory is the agent's");
    assert_eq!(metadata.permissions().mode() & 0o777, 0o711);
    let socket = std::fs::metadata(state_dir.join("guest.sock")).unwrap();
    assert_eq!(
        (socket.uid(), socket.permissions().mode() & 0o777),
        (0, 0o600)
    );
    // What the hypervisor's user may not do there, tried as that user.
    let as_vm_user = |args: &[&str]| {
        std::process::Command::new("runuser")
            .args(["-u", VM_USER, "--"])
            .args(args)
            .output()
            .unwrap()
            .status
            .success()
    };
    let dir = state_dir.display().to_string();
    assert!(
        as_vm_user(&["test", "-x", &dir]),
        "the runner's directory is passable"
    );
    assert!(
        !as_vm_user(&["touch", &format!("{dir}/planted")]),
        "planted a file"
    );
    assert!(!as_vm_user(&["ls", &dir]), "listed the state directory");
    assert!(
        !as_vm_user(&["cat", &format!("{dir}/console.log")]),
        "read the console"
    );
    assert!(!as_vm_user(&[
        "mv",
        &format!("{dir}/pid"),
        &format!("{dir}/pid2")
    ]));

    cluster.cli_ok(1, &["vm", "stop", "guest"]);
    wait_status(&cluster, 1, "guest", "the guest to stop", |vm| {
        vm["phase"] == "stopped"
    })
    .await;
    assert!(cluster.vm_processes("guest").is_empty());
    cluster.cli_ok(1, &["vm", "start", "guest"]);
    let again = wait_status(&cluster, 1, "guest", "the guest to run again", is_running).await;
    assert_ne!(again["pid"].as_u64().unwrap() as u32, pid);
}
