//! Bad input (CLI arguments, config files, requests) gets a clear error and
//! a non-zero exit, and changes no state.

#![cfg(not(madsim))]

use std::path::Path;
use std::process::{Command, Output};

use blixard_tests::{blixard_bin, free_port, TestCluster, Timings};

fn blixard(args: &[&str]) -> Output {
    Command::new(blixard_bin()).args(args).output().unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Lists every file under `dir` with its contents, to prove nothing changed.
fn snapshot_dir(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files = Vec::new();
    if !dir.exists() {
        return files;
    }
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            files.push((path.display().to_string(), std::fs::read(&path).unwrap()));
        }
    }
    files.sort();
    files
}

/// Goal: a broken config never starts an agent nor touches its data
/// directory. Method: truncated TOML, an unknown key, a wrong type and a
/// zero node id each exit non-zero naming the problem; the data directory
/// is never created.
#[test]
fn bad_config_files_are_refused_before_touching_data() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let cases = [
        ("truncated", "[cluster\nnode_id = 1", "config.toml"),
        ("unknown key", "[cluster]\nnode_idd = 1\n", "node_idd"),
        ("wrong type", "[cluster]\nnode_id = \"one\"\n", "node_id"),
        ("node id zero", "[cluster]\nnode_id = 0\n", "node_id"),
        ("bad bind", "[cluster]\nnode_id = 1\n[api]\nbind = \"here\"\n", "api.bind"),
        (
            "unreachable bind",
            "[cluster]\nnode_id = 1\n[api]\nbind = \"0.0.0.0:7000\"\n",
            "api.bind \"0.0.0.0:7000\" is advertised to peers",
        ),
        (
            "endless election timeout",
            "[cluster]\nnode_id = 1\n[consensus]\nelection_timeout_ms = 18446744073709551615\n",
            "consensus.election_timeout_ms 18446744073709551615 must be between",
        ),
        (
            "election shorter than heartbeats",
            "[cluster]\nnode_id = 1\n[consensus]\nelection_timeout_ms = 100\nheartbeat_interval_ms = 100\n",
            "election_timeout_ms",
        ),
    ];
    for (case, text, expected) in cases {
        let config = dir.path().join("config.toml");
        std::fs::write(&config, text).unwrap();
        let output = blixard(&[
            "agent",
            "--config",
            config.to_str().unwrap(),
            "--data-dir",
            data_dir.to_str().unwrap(),
        ]);
        assert!(!output.status.success(), "{case}: agent started");
        assert!(
            stderr(&output).contains(expected),
            "{case}: {}",
            stderr(&output)
        );
        assert!(!data_dir.exists(), "{case}: data directory created");
    }
    let missing = blixard(&["agent", "--config", "/nonexistent/blixard.toml"]);
    assert!(!missing.status.success());
    assert!(
        stderr(&missing).contains("/nonexistent/blixard.toml"),
        "{}",
        stderr(&missing)
    );
}

/// Goal: CLI misuse exits non-zero with a message naming the problem.
#[test]
fn bad_cli_arguments_name_the_problem() {
    let unknown_flag = blixard(&["vm", "list", "--frobnicate"]);
    assert_eq!(unknown_flag.status.code(), Some(2));
    assert!(stderr(&unknown_flag).contains("--frobnicate"));
    let no_runner = blixard(&["vm", "create", "web", "--vcpus", "1", "--memory", "64"]);
    assert_eq!(no_runner.status.code(), Some(2));
    assert!(
        stderr(&no_runner).contains("--flake"),
        "{}",
        stderr(&no_runner)
    );
    let kernel_without_initrd = blixard(&[
        "vm", "create", "web", "--vcpus", "1", "--memory", "64", "--kernel", "/k",
    ]);
    assert_eq!(kernel_without_initrd.status.code(), Some(2));
    let bad_output = blixard(&["vm", "list", "--output", "xml"]);
    assert_eq!(bad_output.status.code(), Some(2));
    let no_node = blixard(&[
        "--addr",
        &format!("127.0.0.1:{}", free_port()),
        "vm",
        "list",
    ]);
    // Exit 4: the cluster is unavailable.
    assert_eq!(no_node.status.code(), Some(4));
    // A token never goes out in plain text beyond this machine's loopback
    // (0.0.0.0 reaches this machine, so nothing leaves it either way).
    let plaintext = blixard(&[
        "--token",
        "blx_secret",
        "--addr",
        &format!("0.0.0.0:{}", free_port()),
        "vm",
        "list",
    ]);
    assert_eq!(plaintext.status.code(), Some(2), "{plaintext:?}");
    assert!(
        stderr(&plaintext).contains("plain text"),
        "{}",
        stderr(&plaintext)
    );
    assert!(
        stderr(&no_node).contains("cannot reach blixard"),
        "{}",
        stderr(&no_node)
    );
}

/// Goal: a node without its certificates, or whose join address does not
/// answer, or that has neither a cluster to join nor leave to found one,
/// stops before it writes anything. Method: start it without
/// certificates; then with certificates (outside the data directory,
/// named by `[tls]`) and --join at a closed port; then with neither
/// --join nor --bootstrap.
#[test]
fn missing_certificates_or_unreachable_join_address_fail_without_writing_data() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let dead = format!("127.0.0.1:{}", free_port());
    let bind = format!("127.0.0.1:{}", free_port());
    let agent_joining = |config: &Path, join: &[&str]| {
        let mut args = vec![
            "agent",
            "--config",
            config.to_str().unwrap(),
            "--node-id",
            "2",
            "--bind",
            &bind,
            "--data-dir",
            data_dir.to_str().unwrap(),
        ];
        args.extend_from_slice(join);
        blixard(&args)
    };
    let agent = |config: &Path| agent_joining(config, &["--join", &dead]);
    let config = dir.path().join("config.toml");
    std::fs::write(&config, "").unwrap();
    let output = agent(&config);
    assert!(!output.status.success());
    let message = stderr(&output);
    assert!(
        message.contains("TLS") && message.contains("blixard tls cert create"),
        "{message}"
    );
    assert!(!data_dir.exists(), "data directory created");

    let certs = dir.path().join("certs");
    let ca = &blixard_tests::test_ca().1;
    let node = blixard_api::tls::issue_node_cert(ca, 2).unwrap();
    blixard_api::tls::write_node(&certs, ca, &blixard_tests::test_gossip_keys(), &node).unwrap();
    std::fs::write(
        &config,
        format!(
            "[tls]\nca_file = \"{0}/ca.pem\"\ncert_file = \"{0}/node.pem\"\nkey_file = \"{0}/node-key.pem\"\ngossip_key_file = \"{0}/gossip.key\"\n",
            certs.display()
        ),
    )
    .unwrap();
    let output = agent(&config);
    assert!(!output.status.success());
    let message = stderr(&output);
    assert!(
        message.contains("no join address answered") && message.contains(&dead),
        "{message}"
    );
    assert!(!data_dir.exists(), "data directory created");

    // Neither --join nor --bootstrap: a node never founds a cluster of
    // its own by accident (a typo in --join used to do exactly that).
    let output = agent_joining(&config, &[]);
    assert!(!output.status.success());
    let message = stderr(&output);
    assert!(
        message.contains("neither --join nor --bootstrap") && message.contains("--bootstrap"),
        "{message}"
    );
    assert!(!data_dir.exists(), "data directory created");
}

/// Goal: bad VM requests are refused with a clear error and leave the
/// cluster state (revision and VM list) and the data files unchanged; a
/// second agent on a live data directory is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_change_no_state() {
    let cluster = TestCluster::start(1, Timings::default()).await;
    let ok = cluster.cli(
        1,
        &[
            "vm",
            "create",
            "web",
            "--vcpus",
            "1",
            "--memory",
            "128",
            "--flake",
            "/etc/vms#web",
        ],
    );
    assert!(ok.status.success(), "{}", stderr(&ok));
    let before = cluster.vm_names(1).await.unwrap();
    // Exit codes: 1 the operation failed, 2 bad input, 3 not found.
    let cases: [(&[&str], &str, i32); 6] = [
        (
            &[
                "vm", "create", "web", "--vcpus", "1", "--memory", "128", "--flake", "x#y",
            ],
            "already exists",
            1,
        ),
        (
            &[
                "vm", "create", "Web_1", "--vcpus", "1", "--memory", "128", "--flake", "x#y",
            ],
            "invalid VM name",
            2,
        ),
        (
            &[
                "vm", "create", "zero", "--vcpus", "0", "--memory", "128", "--flake", "x#y",
            ],
            "invalid vcpus 0",
            2,
        ),
        (
            &[
                "vm",
                "create",
                "huge",
                "--vcpus",
                "1",
                "--memory",
                "999999999",
                "--flake",
                "x#y",
            ],
            "invalid memory",
            2,
        ),
        (&["vm", "start", "missing"], "no VM named", 3),
        (&["cluster", "remove-node", "9"], "not a member", 3),
    ];
    for (args, expected, code) in cases {
        let output = cluster.cli(1, args);
        assert_eq!(
            output.status.code(),
            Some(code),
            "{args:?}: {}",
            stderr(&output)
        );
        assert!(
            stderr(&output).contains(expected),
            "{args:?}: {}",
            stderr(&output)
        );
    }
    assert_eq!(
        cluster.vm_names(1).await.unwrap(),
        before,
        "a refused request changed state"
    );

    // The server validates too: a raw gRPC request bypassing the CLI.
    let mut client = cluster.vm_client(1).await;
    let mut spec = blixard_tests::flake_spec("raw");
    spec.memory_mib = 1;
    let refused = client
        .create(blixard_api::pb::CreateVmRequest {
            spec: Some(spec),
            replicas: 0,
            stopped: false,
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert_eq!(cluster.vm_names(1).await.unwrap(), before);

    let data_dir = &cluster.nodes[&1].data_dir;
    let files_before = snapshot_dir(data_dir)
        .into_iter()
        .map(|(name, _)| name)
        .collect::<Vec<_>>();
    let second = blixard(&[
        "agent",
        "--node-id",
        "1",
        "--bind",
        &format!("127.0.0.1:{}", free_port()),
        "--data-dir",
        data_dir.to_str().unwrap(),
    ]);
    assert!(!second.status.success());
    assert!(
        stderr(&second).contains("in use by another blixard process"),
        "{}",
        stderr(&second)
    );
    let files_after = snapshot_dir(data_dir)
        .into_iter()
        .map(|(name, _)| name)
        .collect::<Vec<_>>();
    assert_eq!(files_before, files_after);
    assert_eq!(cluster.vm_names(1).await.unwrap(), before);
}
