//! Replica-group and settings operations racing from every node of a real
//! three-node cluster: each outcome must match some order of the same
//! operations run one at a time (issue 14).
//!
//! Before these were decided at apply time, the daemon read the state,
//! decided, and proposed: two creates of one group both succeeded, a
//! scale racing a deletion brought the group back, and two operators
//! changing different settings lost one change.

#![cfg(not(madsim))]

use std::time::Duration;

use blixard_api::connect::Connection;
use blixard_api::pb;
use blixard_api::pb::cluster_client::ClusterClient;
use blixard_api::pb::vm_client::VmClient;
use blixard_tests::{flake_spec, TestCluster, Timings};
use tonic::Code;

/// Rounds of each race: one round of an unguarded read-then-propose
/// usually loses; several make it all but certain.
const ROUNDS: usize = 5;
/// Racing clients per node.
const CLIENTS_PER_NODE: usize = 2;

async fn group_members(client: &mut VmClient<Connection>, group: &str) -> Vec<String> {
    // Listed with the server's group filter, page by page.
    let list = blixard_api::pages::all_vms(group, |request| {
        let mut client = client.clone();
        async move { client.list(request).await }
    })
    .await
    .expect("vm list");
    let mut members: Vec<String> = list
        .vms
        .iter()
        .filter_map(|vm| vm.spec.as_ref())
        .inspect(|spec| assert_eq!(spec.group, group, "{} listed in {group}", spec.name))
        .map(|spec| spec.name.clone())
        .collect();
    members.sort();
    members
}

/// Runs the call `call` makes on every racing client at once, spread over
/// every node, and returns each outcome (a refusal by its code).
async fn race<F, Fut, T>(cluster: &TestCluster, call: F) -> Vec<Result<T, Code>>
where
    F: Fn(VmClient<Connection>) -> Fut,
    Fut: std::future::Future<Output = Result<T, tonic::Status>> + Send + 'static,
    T: Send + 'static,
{
    let mut calls = Vec::new();
    for id in 1..=3 {
        let client = cluster.vm_client(id).await;
        for _ in 0..CLIENTS_PER_NODE {
            calls.push(tokio::spawn(call(client.clone())));
        }
    }
    let mut outcomes = Vec::new();
    for call in calls {
        outcomes.push(call.await.expect("racing call panicked").map_err(|status| {
            assert!(
                matches!(status.code(), Code::AlreadyExists | Code::NotFound),
                "a racing call failed for another reason: {status:?}"
            );
            status.code()
        }));
    }
    outcomes
}

/// Goal: of creates of one group racing from every node exactly one wins,
/// of scales to zero racing scales up at most one deletes the group and
/// none brings it back, and a scale after that finds no group. Method: six
/// clients on three nodes race each operation, several rounds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_group_operations_have_one_winner() {
    let cluster = TestCluster::start(3, Timings::default()).await;
    cluster.wait_leader_among(&[1, 2, 3]).await;
    let mut reader = cluster.vm_client(1).await;
    for round in 0..ROUNDS {
        let group = format!("race{round}");
        let created = race(&cluster, |mut client| {
            let group = group.clone();
            async move {
                client
                    .create(pb::CreateVmRequest {
                        spec: Some(flake_spec(&group)),
                        replicas: 2,
                        stopped: true,
                    })
                    .await
                    .map(drop)
            }
        })
        .await;
        assert_eq!(
            created.iter().filter(|c| c.is_ok()).count(),
            1,
            "round {round}: racing creates of one group: {created:?}"
        );
        assert_eq!(
            group_members(&mut reader, &group).await,
            [format!("{group}-1"), format!("{group}-2")]
        );

        // Scales to zero race scales up: a scale up applied after the
        // deletion must find no group, so the group ends deleted exactly
        // when one scale to zero won, and at most one can.
        let turn = std::sync::atomic::AtomicU32::new(0);
        let scaled = race(&cluster, |mut client| {
            let group = group.clone();
            let replicas = 3 * (turn.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 2);
            async move {
                client
                    .scale(pb::ScaleVmRequest {
                        name: group,
                        replicas,
                        stopped: true,
                    })
                    .await
                    .map(|_| replicas)
            }
        })
        .await;
        let deletions = scaled.iter().filter(|r| **r == Ok(0)).count();
        let members = group_members(&mut reader, &group).await;
        assert!(deletions <= 1, "round {round}: {scaled:?}");
        assert_eq!(
            members.is_empty(),
            deletions == 1,
            "round {round}: {scaled:?} left {members:?}"
        );
        if !members.is_empty() {
            assert_eq!(members.len(), 3, "round {round}: {scaled:?}");
            reader
                .scale(pb::ScaleVmRequest {
                    name: group.clone(),
                    replicas: 0,
                    stopped: true,
                })
                .await
                .expect("delete the group");
        }
        let after = reader
            .scale(pb::ScaleVmRequest {
                name: group.clone(),
                replicas: 3,
                stopped: true,
            })
            .await
            .expect_err("a scale of a deleted group succeeded");
        assert_eq!(after.code(), Code::NotFound, "{after:?}");
        assert!(group_members(&mut reader, &group).await.is_empty());
    }
}

/// Goal: two operators changing different settings at once both get
/// their change. Method: each round, one client per node sets one setting
/// to a value unique to the round; then every node reads all three.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_changed_at_once_keep_every_change() {
    let cluster = TestCluster::start(3, Timings::default()).await;
    cluster.wait_leader_among(&[1, 2, 3]).await;
    for round in 0..ROUNDS as u64 {
        let dead_voter_after_ms = 20_000 + round;
        let lost_after_ms = 30_000 + round;
        let replace_lost = round % 2 == 0;
        let updates = [
            pb::UpdateSettingsRequest {
                dead_voter_after_ms: Some(dead_voter_after_ms),
                ..Default::default()
            },
            pb::UpdateSettingsRequest {
                lost_after_ms: Some(lost_after_ms),
                ..Default::default()
            },
            pb::UpdateSettingsRequest {
                replace_lost: Some(replace_lost),
                ..Default::default()
            },
        ];
        let mut calls = Vec::new();
        for (id, update) in (1..=3).zip(updates) {
            let mut client = ClusterClient::new(cluster.channel(id).await.expect("connect"));
            calls.push(tokio::spawn(
                async move { client.update_settings(update).await },
            ));
        }
        for call in calls {
            call.await.unwrap().expect("a settings update failed");
        }
        for id in 1..=3 {
            let mut client = ClusterClient::new(cluster.channel(id).await.expect("connect"));
            let settings = tokio::time::timeout(
                Duration::from_secs(10),
                client.get_settings(pb::GetSettingsRequest {}),
            )
            .await
            .expect("settings read timed out")
            .expect("settings read")
            .into_inner();
            assert_eq!(
                (
                    settings.dead_voter_after_ms,
                    settings.lost_after_ms,
                    settings.replace_lost
                ),
                (dead_voter_after_ms, lost_after_ms, replace_lost),
                "round {round}: node {id} lost a settings change"
            );
        }
    }
}
