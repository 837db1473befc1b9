//! `blixard vm watch` streams the VM list and then every committed change.

#![cfg(not(madsim))]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use std::collections::BTreeMap;

use blixard_api::pb;
use blixard_api::pb::vm_client::VmClient;
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
    // The initial list is complete, at its revision.
    let synced = next_event().expect("the synced marker");
    assert_eq!(synced["event"], "synced", "{synced}");
    assert!(synced.get("vm").is_none(), "{synced}");
    assert!(synced["revision"].as_u64() >= first["revision"].as_u64());
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

/// Goal: a watch whose initial list is read in pages while VMs change
/// shows each VM's state with revisions that only rise per VM, and ends
/// up equal to the state. Method: 1000 heavy VMs (many pages); once the
/// first page is out, VMs in it and in later pages change; then a writer
/// stops, starts, deletes and creates VMs while the watch is read; after
/// a last marker VM's event, the watcher's view equals `Vm.List` (reading
/// on while the leader's own writes, such as marking a VM unplaceable on
/// this node without an agent, still land).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_started_during_writes_ends_equal_to_the_state() {
    use blixard_api::pb;
    use std::collections::BTreeMap;
    let cluster = TestCluster::start_without_agents(1, Timings::default()).await;
    let mut client = cluster.vm_client(1).await;
    // Heavy enough (about 3 MB) that the list overflows what HTTP/2
    // buffers (a 2 MiB window and 400 KiB on the node), so the watch waits
    // for its reader between pages.
    for i in 0..1000 {
        client
            .create(pb::CreateVmRequest {
                spec: Some(blixard_tests::heavy_flake_spec(&format!("vm-{i:04}"), 3000)),
                replicas: 0,
                stopped: false,
            })
            .await
            .unwrap();
    }
    let mut watch = client
        .watch(pb::WatchVmsRequest::default())
        .await
        .unwrap()
        .into_inner();
    let mut watched = Watched::default();
    let apply = |watched: &mut Watched, event: pb::VmEvent| {
        let Watched { seen, synced } = watched;
        if event.kind == pb::VmEventKind::Synced as i32 {
            assert_eq!(*synced, None, "a second SYNCED at {}", event.revision);
            *synced = Some(event.revision);
            return String::new();
        }
        if let Some(synced) = *synced {
            assert!(
                event.revision > synced,
                "{event:?} after SYNCED at {synced}"
            );
        }
        let vm = event.vm.unwrap();
        let name = vm.spec.as_ref().unwrap().name.clone();
        if let Some((last, _)) = seen.get(&name) {
            assert!(
                event.revision > *last,
                "{name}: an event at revision {} after one at {last}",
                event.revision
            );
        }
        let deleted = event.kind == pb::VmEventKind::Deleted as i32;
        assert!(
            !deleted || seen.get(&name).is_some_and(|(_, vm)| vm.is_some()),
            "{name}: deleted at revision {} but never shown",
            event.revision
        );
        seen.insert(name.clone(), (event.revision, (!deleted).then_some(vm)));
        name
    };
    // The first page is out and the watch waits for room: changes now,
    // to VMs in later pages and in the first, come before those pages
    // are read, so their events are older than the pages that show them.
    apply(&mut watched, next(&mut watch).await);
    for name in ["vm-0999", "vm-0000"] {
        let request = pb::VmNameRequest { name: name.into() };
        client.stop(request).await.unwrap();
    }
    client
        .delete(pb::VmNameRequest {
            name: "vm-0900".into(),
        })
        .await
        .unwrap();
    blixard_tests::create_vm(&mut client, "vm-0950a")
        .await
        .unwrap();
    let mut writer_client = cluster.vm_client(1).await;
    let writer = tokio::spawn(async move {
        for i in 0..150u32 {
            let name = format!("vm-{:04}", (i * 7) % 1000);
            let request = pb::VmNameRequest { name: name.clone() };
            match i % 4 {
                // A VM deleted already refuses its stop or start.
                0 => {
                    let _ = writer_client.stop(request).await;
                }
                1 => {
                    let _ = writer_client.start(request).await;
                }
                2 => {
                    let _ = writer_client.delete(request).await;
                }
                _ => {
                    let _ = blixard_tests::create_vm(&mut writer_client, &format!("new-{i}")).await;
                }
            }
        }
    });
    while !writer.is_finished() {
        apply(&mut watched, next(&mut watch).await);
    }
    writer.await.unwrap();
    blixard_tests::create_vm(&mut client, "marker")
        .await
        .unwrap();
    while apply(&mut watched, next(&mut watch).await) != "marker" {}
    assert!(watched.synced.is_some(), "no SYNCED before the marker");

    // name -> (desired state, mod revision)
    let view = |vms: Vec<(String, &pb::VmInfo)>| -> BTreeMap<String, (i32, u64)> {
        vms.into_iter()
            .map(|(name, vm)| (name, (vm.desired_state, vm.mod_revision)))
            .collect()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let list = blixard_tests::all_vms(&client).await.unwrap();
        let listed = view(
            list.vms
                .iter()
                .map(|vm| (vm.spec.as_ref().unwrap().name.clone(), vm))
                .collect(),
        );
        let shown = view(
            watched
                .seen
                .iter()
                .filter_map(|(name, (_, vm))| vm.as_ref().map(|vm| (name.clone(), vm)))
                .collect(),
        );
        if shown == listed {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the watch never caught up with the list:\nshown  {shown:?}\nlisted {listed:?}"
        );
        // Writes that landed after the marker are on their way.
        if let Ok(Ok(Some(event))) =
            tokio::time::timeout(Duration::from_millis(500), watch.message()).await
        {
            apply(&mut watched, event);
        }
    }
}

/// What a watcher saw: name -> (revision of the last event, the VM as it
/// showed, `None` once deleted), and the revision of its SYNCED.
#[derive(Default)]
struct Watched {
    seen: std::collections::BTreeMap<String, (u64, Option<blixard_api::pb::VmInfo>)>,
    synced: Option<u64>,
}

async fn next(watch: &mut tonic::Streaming<blixard_api::pb::VmEvent>) -> blixard_api::pb::VmEvent {
    tokio::time::timeout(Duration::from_secs(20), watch.message())
        .await
        .expect("a watch event within 20 s")
        .unwrap()
        .expect("the watch went on")
}

/// A watcher's VMs: the events it took, applied in order.
#[derive(Default)]
struct Watcher {
    position: blixard_api::resume::Position,
    vms: BTreeMap<String, pb::VmInfo>,
    /// (kind, name) of each change taken after SYNCED.
    taken: Vec<(i32, String)>,
    /// Whether the initial list is done (its first SYNCED came).
    listed: bool,
    synced_at: Option<u64>,
}

impl Watcher {
    /// Takes events from `watch` until its next SYNCED, or until `cut`
    /// changes have been read (then the stream is dropped).
    async fn read(&mut self, mut watch: tonic::Streaming<pb::VmEvent>, cut: Option<usize>) {
        let mut read = 0;
        loop {
            if cut == Some(read) {
                return;
            }
            let event = next(&mut watch).await;
            read += 1;
            if !self.position.take(&event) {
                continue;
            }
            if event.kind == pb::VmEventKind::Synced as i32 {
                self.synced_at = Some(event.revision);
                self.listed = true;
                return;
            }
            let vm = event.vm.unwrap();
            let name = vm.spec.as_ref().unwrap().name.clone();
            if self.listed {
                self.taken.push((event.kind, name.clone()));
            }
            if event.kind == pb::VmEventKind::Deleted as i32 {
                self.vms.remove(&name);
            } else {
                self.vms.insert(name, vm);
            }
        }
    }

    fn resume(&mut self) -> pb::WatchVmsRequest {
        self.synced_at = None;
        self.position
            .resume()
            .expect("a watcher past SYNCED resumes")
    }
}

/// Goal: a watcher that lost its stream resumes from where it was, on any
/// node, and gets exactly the changes it missed, in order, even when its
/// stream was cut inside one revision's changes; a node whose history no
/// longer reaches back says OUT_OF_RANGE, and a revision from the future
/// is refused. Method: a voter and a worker; a watch on the voter to
/// SYNCED; with the watch gone, a group of 3 (one revision), a stop and a
/// delete; resume on the worker (its history is its mirror's); again from
/// the same place on the voter, cut after two of the group's changes and
/// resumed; each watcher's VMs equal the list; the worker restarted no
/// longer has the history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_resumes_from_its_revision_on_any_node() {
    let mut cluster = TestCluster::start_without_agents(
        2,
        Timings {
            voters: 1,
            ..Timings::default()
        },
    )
    .await;
    let mut client = cluster.vm_client(1).await;
    blixard_tests::create_vm(&mut client, "a").await.unwrap();
    let mut first = Watcher::default();
    let watch = client.watch(pb::WatchVmsRequest::default()).await.unwrap();
    first.read(watch.into_inner(), None).await;
    let synced_at = first.synced_at.expect("SYNCED after the list");
    assert_eq!(first.vms.keys().collect::<Vec<_>>(), ["a"]);

    let group_revision = client
        .create(pb::CreateVmRequest {
            spec: Some(blixard_tests::flake_spec("g")),
            replicas: 3,
            stopped: true,
        })
        .await
        .unwrap()
        .into_inner()
        .revision;
    client
        .stop(pb::VmNameRequest { name: "a".into() })
        .await
        .unwrap();
    client
        .delete(pb::VmNameRequest { name: "a".into() })
        .await
        .unwrap();
    let mut cut = Watcher {
        position: first.position.clone(),
        vms: first.vms.clone(),
        ..Watcher::default()
    };
    cut.synced_at = first.synced_at;
    cut.listed = true;

    let expected: Vec<(i32, String)> = [
        (pb::VmEventKind::Added, "g-1"),
        (pb::VmEventKind::Added, "g-2"),
        (pb::VmEventKind::Added, "g-3"),
        (pb::VmEventKind::Modified, "a"),
        (pb::VmEventKind::Deleted, "a"),
    ]
    .map(|(kind, name)| (kind as i32, name.to_string()))
    .to_vec();

    // On the worker.
    assert_eq!(cluster.the_worker(2).await, 2);
    let mut on_two = cluster.vm_client(2).await;
    let watch = on_two.watch(first.resume()).await.unwrap();
    first.read(watch.into_inner(), None).await;
    assert_eq!(first.taken, expected);
    assert!(first.synced_at.unwrap() > synced_at);

    // Cut after two of the group's three changes, then resumed.
    let watch = client.watch(cut.resume()).await.unwrap();
    cut.read(watch.into_inner(), Some(2)).await;
    assert_eq!(cut.taken.len(), 2, "{:?}", cut.taken);
    let resume = cut.resume();
    assert_eq!(
        resume.after_revision.unwrap() + 1,
        group_revision,
        "the cut revision again"
    );
    let watch = client.watch(resume).await.unwrap();
    cut.read(watch.into_inner(), None).await;
    assert_eq!(cut.taken, expected, "each change once");

    let listed: BTreeMap<String, pb::VmInfo> = blixard_tests::all_vms(&client)
        .await
        .unwrap()
        .vms
        .into_iter()
        .map(|vm| (vm.spec.as_ref().unwrap().name.clone(), vm))
        .collect();
    for watcher in [&first, &cut] {
        assert_eq!(watcher.vms, listed);
    }

    let ahead = client
        .watch(pb::WatchVmsRequest {
            after_revision: Some(u64::MAX / 2),
        })
        .await
        .unwrap_err();
    assert_eq!(ahead.code(), tonic::Code::InvalidArgument, "{ahead:?}");

    cluster.kill(2);
    cluster.restart(2);
    let refused = blixard_tests::eventually(
        "node 2 back, without the history",
        Duration::from_secs(30),
        || async {
            let mut client = VmClient::new(cluster.channel(2).await?);
            let request = pb::WatchVmsRequest {
                after_revision: Some(synced_at),
            };
            match client.watch(request).await {
                Err(status) if status.code() == tonic::Code::OutOfRange => Some(status),
                _ => None,
            }
        },
    )
    .await;
    assert!(
        refused.message().contains("watch from the start"),
        "{refused:?}"
    );
}

/// Goal: a watcher that falls further behind than a node buffers for it
/// is ended with DATA_LOSS and, resumed from its revision, gets every
/// change it missed, once. Method: a watch read to SYNCED, then left
/// unread while 9 groups of 1000 VMs with 3 KB flake references are
/// created (9000 changes, past the 8192 a watch may fall behind); read
/// on to DATA_LOSS, resume with `Position`, read to a marker VM; the
/// watcher's VMs equal the list.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_that_fell_behind_resumes_without_a_gap() {
    let cluster = TestCluster::start_without_agents(1, Timings::default()).await;
    let mut client = cluster.vm_client(1).await;
    let mut watcher = Watcher::default();
    let watch = client.watch(pb::WatchVmsRequest::default()).await.unwrap();
    let mut watch = watch.into_inner();
    // Read to SYNCED, keeping the stream.
    while watcher.synced_at.is_none() {
        let event = next(&mut watch).await;
        watcher.position.take(&event);
        if event.kind == pb::VmEventKind::Synced as i32 {
            watcher.synced_at = Some(event.revision);
        }
    }
    for group in 0..9 {
        client
            .create(pb::CreateVmRequest {
                spec: Some(blixard_tests::heavy_flake_spec(&format!("g{group}"), 3000)),
                replicas: 1000,
                stopped: true,
            })
            .await
            .unwrap();
    }
    blixard_tests::create_vm(&mut client, "marker")
        .await
        .unwrap();

    let mut lost = None;
    let mut resumed = false;
    loop {
        let item = tokio::time::timeout(Duration::from_secs(60), watch.message())
            .await
            .expect("a watch event or its end within 60 s");
        let event = match item {
            Ok(Some(event)) => event,
            Ok(None) => panic!("the watch ended without an error"),
            Err(status) if status.code() == tonic::Code::DataLoss && !resumed => {
                lost = Some(status);
                resumed = true;
                let resume = watcher.resume();
                watch = client.watch(resume).await.unwrap().into_inner();
                continue;
            }
            Err(status) => panic!("{status:?}"),
        };
        if !watcher.position.take(&event) || event.kind == pb::VmEventKind::Synced as i32 {
            continue;
        }
        let vm = event.vm.unwrap();
        let name = vm.spec.as_ref().unwrap().name.clone();
        if event.kind == pb::VmEventKind::Deleted as i32 {
            watcher.vms.remove(&name);
        } else {
            watcher.vms.insert(name.clone(), vm);
        }
        if name == "marker" {
            break;
        }
    }
    let lost = lost.expect("the watcher was never ended for falling behind");
    assert!(lost.message().contains("behind"), "{lost:?}");
    let listed: BTreeMap<String, pb::VmInfo> = blixard_tests::all_vms(&client)
        .await
        .unwrap()
        .vms
        .into_iter()
        .map(|vm| (vm.spec.as_ref().unwrap().name.clone(), vm))
        .collect();
    assert_eq!(watcher.vms.len(), 9001);
    assert!(
        watcher.vms == listed,
        "the watcher's VMs differ from the list"
    );
}
