//! The dashboard end to end: the real `blixard tui` in tmux, against a
//! real cluster whose agents boot real guests (qemu, TCG).

use blixard_tests::{blixard_bin, ca_file, eventually, TestCluster, Timings, Tmux, SCREEN_TIMEOUT};
use serde_json::Value;

fn phase(cluster: &TestCluster, name: &str) -> String {
    let vm: Value =
        serde_json::from_str(&cluster.cli_ok(1, &["vm", "status", name, "-o", "json"])).unwrap();
    vm["phase"].as_str().unwrap_or_default().to_string()
}

/// Goal: an operator can find a VM in the dashboard, filter to it, read
/// its description and its console, and stop it through the confirmation
/// dialog, and the
/// dashboard shows the state change. Method: a three-node cluster boots
/// two real guests; `blixard tui` runs in tmux and is driven by keys; the
/// CLI confirms what the dashboard shows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_filters_describes_shows_logs_and_stops_a_vm() {
    let cluster = TestCluster::start(3, Timings::default()).await;
    for name in ["web", "db"] {
        cluster.create_guest(1, name, &[]);
        cluster.cli_ok(1, &["vm", "start", name]);
    }
    let command = format!(
        "{} --ca-file {} --token {} --addr {} tui; sleep 60",
        blixard_bin().display(),
        ca_file().display(),
        cluster.token().unwrap(),
        cluster.address(2)
    );
    let tmux = Tmux::start("stop", &command);
    tmux.wait_for("vms(2)").await;
    eventually("both guests running", SCREEN_TIMEOUT, || async {
        let screen = tmux.screen();
        (screen.matches("Running").count() == 2).then_some(())
    })
    .await;

    tmux.keys(&["/", "w", "e", "b", "Enter"]);
    let screen = tmux.wait_for("vms(1) /web").await;
    assert!(!screen.contains("db "), "{screen}");

    tmux.keys(&["d"]);
    let screen = tmux.wait_for("vm web (Esc closes)").await;
    assert!(screen.contains("desired_state: running"), "{screen}");
    tmux.keys(&["Escape"]);
    // An Escape followed at once by `l` reads as Alt-l: wait until the
    // Escape has closed the description before the next key.
    eventually("the description to close", SCREEN_TIMEOUT, || async {
        (!tmux.screen().contains("(Esc closes)")).then_some(())
    })
    .await;

    tmux.keys(&["l"]);
    tmux.wait_for("logs web").await;
    tmux.wait_for("BLIXARD-GUEST-READY").await;
    tmux.keys(&["Escape"]);
    tmux.wait_for("vms(1) /web").await;

    tmux.keys(&["x"]);
    tmux.wait_for("stop VM web? y / n").await;
    tmux.keys(&["y"]);
    tmux.wait_for("asked to stop VM web").await;
    tmux.wait_for("Stopped").await;
    assert_eq!(phase(&cluster, "web"), "stopped");
    assert_eq!(phase(&cluster, "db"), "running");

    tmux.keys(&["Escape", ":", "n", "o", "Tab", "Enter"]);
    tmux.wait_for("nodes(3)").await;
    tmux.keys(&["q"]);
    // Quitting leaves the alternate screen: the dashboard is gone.
    eventually("the dashboard to close", SCREEN_TIMEOUT, || async {
        (!tmux.screen().contains("nodes(3)")).then_some(())
    })
    .await;
}

/// Goal: when the node the dashboard talks to dies, the dashboard says so,
/// moves to another member by itself and stays live there; and scaling a
/// replica group from the dashboard changes the cluster. Method: the
/// dashboard watches node 2, which is SIGKILLed; the screen must name the
/// lost node, then a connection to another one, then show a VM created
/// after the failure; then `S` scales a group from one to two members,
/// and the CLI sees both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_moves_to_another_node_when_its_node_dies_and_scales_a_group() {
    let mut cluster = TestCluster::start(3, Timings::default()).await;
    cluster.create_guest(1, "before", &[]);
    let lost_address = cluster.address(2).to_string();
    let command = format!(
        "{} --ca-file {} --token {} --addr {lost_address} tui; sleep 60",
        blixard_bin().display(),
        ca_file().display(),
        cluster.token().unwrap(),
    );
    let tmux = Tmux::start("reconnect", &command);
    tmux.wait_for(&format!("connected to {lost_address}")).await;
    tmux.wait_for("vms(1)").await;

    cluster.kill(2);
    tmux.wait_for(&format!("lost {lost_address}")).await;
    let others = [
        cluster.address(1).to_string(),
        cluster.address(3).to_string(),
    ];
    let screen = eventually("a connection to another node", SCREEN_TIMEOUT, || async {
        let screen = tmux.screen();
        others
            .iter()
            .any(|a| screen.contains(&format!("connected to {a}")))
            .then_some(screen)
    })
    .await;
    assert!(
        !screen.contains(&format!("connected to {lost_address}")),
        "{screen}"
    );

    cluster.create_guest(1, "g", &["--replicas", "1"]);
    tmux.wait_for("vms(2)").await;

    tmux.keys(&["/", "^", "g", "-", "Enter"]);
    tmux.wait_for("vms(1) /^g-").await;
    tmux.keys(&["S"]);
    tmux.wait_for("scale group g (now 1) to how many replicas?")
        .await;
    tmux.keys(&["BSpace", "2", "Enter"]);
    tmux.wait_for("asked to scale group g to 2").await;
    tmux.wait_for("vms(2) /^g-").await;
    let listed = cluster.cli_ok(1, &["vm", "list", "-o", "json"]);
    let names: Vec<String> = serde_json::from_str::<Value>(&listed).unwrap()["vms"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|vm| vm["name"].as_str().map(str::to_string))
        .collect();
    assert!(
        names.contains(&"g-1".to_string()) && names.contains(&"g-2".to_string()),
        "{names:?}"
    );
}
