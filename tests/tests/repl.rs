//! The REPL end to end: the real `blixard repl` in tmux against a real
//! cluster, typed into as an operator would.

#![cfg(not(madsim))]

use std::time::Duration;

use blixard_tests::{blixard_bin, eventually, TestCluster, Timings, Tmux, SCREEN_TIMEOUT};

/// The line the cursor is on: the last non-empty line of the screen.
fn current_line(tmux: &Tmux) -> String {
    tmux.screen()
        .lines()
        .rev()
        .find(|line| !line.trim().is_empty())
        .unwrap_or_default()
        .trim_end()
        .to_string()
}

/// Whether the cursor's line comes to satisfy `wanted` within `within`.
async fn line_soon(tmux: &Tmux, within: Duration, wanted: impl Fn(&str) -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    while tokio::time::Instant::now() < deadline {
        if wanted(&current_line(tmux)) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// How long one completion attempt waits for the screen before retrying
/// (the VM may not have reached the REPL's live view yet).
const ATTEMPT: Duration = Duration::from_secs(2);

/// Goal: the REPL completes names the cluster has now, recalls history,
/// survives Ctrl-C in a streaming command, keeps its history in a file,
/// and moves to another node when its node dies, saying so in the prompt.
/// Method: a three-node cluster; the REPL talks to node 2 in tmux; a VM
/// created after the REPL started is completed after `vm status `; node 2
/// is SIGKILLed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_repl_completes_live_names_recalls_history_and_survives_ctrl_c() {
    let mut cluster = TestCluster::start(3, Timings::default()).await;
    cluster.create_flake(1, "web-7");
    let home = tempfile::tempdir().unwrap();
    let address = cluster.address(2).to_string();
    let command = format!(
        "env XDG_DATA_HOME={home} XDG_CONFIG_HOME={home} {bin} --ca-file {ca} --token {token} --addr {address} repl; sleep 60",
        home = home.path().display(),
        bin = blixard_bin().display(),
        ca = blixard_tests::ca_file().display(),
        token = cluster.token().unwrap(),
    );
    let tmux = Tmux::start("repl", &command);
    // The prompt is redrawn in place once the node's status is in.
    tmux.wait_for(&format!("blixard@{address} (n2 ")).await;

    // Created after the REPL started: completion learns it from the watch.
    cluster.create_flake(1, "api-9");
    let completed = || async {
        tmux.keys(&["C-c"]);
        tmux.keys(&["vm status ap", "Tab"]);
        let done = line_soon(&tmux, ATTEMPT, |line| line.ends_with("> vm status api-9")).await;
        done.then_some(())
    };
    eventually(
        "api-9 completed after `vm status ap`",
        SCREEN_TIMEOUT,
        completed,
    )
    .await;
    tmux.keys(&["Enter"]);
    tmux.wait_for("pinned to").await;

    tmux.keys(&["vm list", "Enter"]);
    tmux.wait_for("web-7").await;
    tmux.keys(&["Up"]);
    let recalled = line_soon(&tmux, SCREEN_TIMEOUT, |line| line.ends_with("> vm list")).await;
    assert!(recalled, "{}", tmux.screen());
    tmux.keys(&["Up"]);
    let recalled = line_soon(&tmux, SCREEN_TIMEOUT, |line| {
        line.ends_with("> vm status api-9")
    })
    .await;
    assert!(recalled, "{}", tmux.screen());
    tmux.keys(&["C-c"]);

    // A streaming command runs until Ctrl-C, which returns to the prompt.
    tmux.keys(&["events --follow", "Enter"]);
    tmux.wait_for("created VM api-9").await;
    tmux.keys(&["C-c"]);
    tmux.keys(&["help vm", "Enter"]);
    tmux.wait_for("Define and control VMs").await;

    // A bad line is an error, and the session goes on.
    tmux.keys(&["vm lsit", "Enter"]);
    tmux.wait_for("unrecognized subcommand").await;

    cluster.kill(2);
    let others = [
        cluster.address(1).to_string(),
        cluster.address(3).to_string(),
    ];
    eventually(
        "the prompt to name another node",
        SCREEN_TIMEOUT,
        || async {
            let line = current_line(&tmux);
            let moved = others
                .iter()
                .any(|a| line.starts_with(&format!("blixard@{a} (n")));
            moved.then_some(())
        },
    )
    .await;
    cluster.create_flake(1, "db-3");
    tmux.keys(&["vm list", "Enter"]);
    tmux.wait_for("db-3").await;

    tmux.keys(&["exit", "Enter"]);
    let history = home.path().join("blixard/history");
    let saved = eventually("the history file", SCREEN_TIMEOUT, || async {
        std::fs::read_to_string(&history)
            .ok()
            .filter(|h| h.contains("exit"))
    })
    .await;
    assert!(
        saved.contains("vm status api-9") && saved.contains("events --follow"),
        "{saved}"
    );
}
