//! `blixard cluster status | join | remove-node | rotate-certs |
//! join-token create|list|revoke`.

use blixard_api::{pb, validate};
use serde::Serialize;

use crate::cli::{ClusterCommand, JoinTokenCommand, OutputFormat};
use crate::client::{self, status_error};
use crate::output;

/// A join token just made.
#[derive(Serialize, schemars::JsonSchema)]
pub struct JoinTokenView {
    /// Give it to the new node: `blixard agent --join ADDR --join-token
    /// TOKEN` (with the cluster's ca.pem in its DATA_DIR/tls/).
    pub join_token: String,
    pub accessor: String,
    pub expires_at_unix_ms: u64,
}

/// A join token as listed (never its secret).
#[derive(Serialize, schemars::JsonSchema)]
pub struct JoinTokenInfoView {
    pub accessor: String,
    pub created_at_unix_ms: u64,
    pub expires_at_unix_ms: u64,
    /// The node it was spent on; null while unspent.
    pub spent_on_node_id: Option<u64>,
}

/// One node's certificate renewal.
#[derive(Serialize, schemars::JsonSchema)]
pub struct RenewedView {
    pub node_id: u64,
    /// SHA-256 of the new certificate (DER), hex; null if it failed.
    pub cert_sha256: Option<String>,
    /// The node that signed it.
    pub signed_by: Option<u64>,
    /// Why it failed; null when renewed.
    pub error: Option<String>,
}

/// A join token withdrawn.
#[derive(Serialize, schemars::JsonSchema)]
pub struct JoinTokenRevokedView {
    pub accessor: String,
    pub revision: u64,
}

fn rfc3339(unix_ms: u64) -> String {
    humantime::format_rfc3339_seconds(
        std::time::UNIX_EPOCH + std::time::Duration::from_millis(unix_ms),
    )
    .to_string()
}

#[derive(Serialize, schemars::JsonSchema)]
pub struct MemberView {
    pub node_id: u64,
    pub address: String,
    pub role: &'static str,
    /// "kvm" or "tcg" once the node's agent has reported.
    pub accel: Option<String>,
    pub memory_mib_total: Option<u64>,
}

#[derive(Serialize, schemars::JsonSchema)]
pub struct StatusView {
    pub node_id: u64,
    pub raft_role: String,
    pub leader_id: Option<u64>,
    pub term: u64,
    pub commit_index: u64,
    pub applied_index: u64,
    pub first_log_index: u64,
    pub revision: u64,
    pub members: Vec<MemberView>,
}

pub fn members(members: &[pb::Member]) -> Vec<MemberView> {
    members
        .iter()
        .map(|m| MemberView {
            node_id: m.node_id,
            address: m.address.clone(),
            accel: m.host.as_ref().map(|h| h.accel.clone()),
            memory_mib_total: m.host.as_ref().map(|h| h.memory_mib_total),
            role: match m.role() {
                pb::MemberRole::Voter => "voter",
                pb::MemberRole::Learner => "learner",
                pb::MemberRole::Unspecified => "unknown",
            },
        })
        .collect()
}

fn members_table(members: &[MemberView], leader_id: Option<u64>) -> comfy_table::Table {
    let mut table = output::table(&["NODE", "ADDRESS", "ROLE", "LEADER", "ACCEL", "MEMORY MiB"]);
    for m in members {
        let leader = if Some(m.node_id) == leader_id {
            "*"
        } else {
            ""
        };
        table.add_row(vec![
            m.node_id.to_string(),
            m.address.clone(),
            m.role.to_string(),
            leader.to_string(),
            m.accel.clone().unwrap_or_else(|| "-".into()),
            m.memory_mib_total.map_or("-".into(), |m| m.to_string()),
        ]);
    }
    table
}

pub fn status_view(status: pb::StatusResponse) -> StatusView {
    StatusView {
        node_id: status.node_id,
        raft_role: status.raft_role.clone(),
        leader_id: (status.leader_id != 0).then_some(status.leader_id),
        term: status.term,
        commit_index: status.commit_index,
        applied_index: status.applied_index,
        first_log_index: status.first_log_index,
        revision: status.revision,
        members: members(&status.members),
    }
}

pub async fn run(command: ClusterCommand, addr: &str, format: OutputFormat) -> anyhow::Result<()> {
    match command {
        ClusterCommand::Status => {
            let status = client::cluster(addr)
                .await?
                .status(pb::StatusRequest {})
                .await
                .map_err(status_error)?
                .into_inner();
            let view = status_view(status);
            output::print(format, &view, |v| {
                let mut table = output::table(&["FIELD", "VALUE"]);
                let leader = v.leader_id.map_or("none".to_string(), |id| id.to_string());
                for (field, value) in [
                    ("node", v.node_id.to_string()),
                    ("role", v.raft_role.clone()),
                    ("leader", leader),
                    ("term", v.term.to_string()),
                    ("commit index", v.commit_index.to_string()),
                    ("applied index", v.applied_index.to_string()),
                    ("first log index", v.first_log_index.to_string()),
                    ("revision", v.revision.to_string()),
                ] {
                    table.add_row(vec![field.to_string(), value]);
                }
                let members = members_table(&v.members, v.leader_id);
                // Two tables read better than one wide one.
                let mut both = table;
                both.add_row(vec![String::new(), String::new()]);
                both.add_row(vec!["members".to_string(), members.to_string()]);
                both
            })
        }
        ClusterCommand::Join { node_id, address } => {
            validate::node_id(node_id)?;
            validate::address(&address)?;
            let mut cluster = client::cluster(addr).await?;
            // Joined into the cluster the node at ADDR serves.
            let cluster_id = cluster
                .status(pb::StatusRequest {})
                .await
                .map_err(status_error)?
                .into_inner()
                .cluster_id;
            let response = cluster
                .join(pb::JoinRequest {
                    node_id,
                    address,
                    cluster_id,
                })
                .await
                .map_err(status_error)?
                .into_inner();
            let leader = (response.leader_id != 0).then_some(response.leader_id);
            let view = members(&response.members);
            output::print(format, &view, |v| members_table(v, leader))
        }
        ClusterCommand::Autopilot {
            voters,
            dead_voter_after,
        } => {
            let update = pb::UpdateSettingsRequest {
                voters,
                dead_voter_after_ms: dead_voter_after,
                ..Default::default()
            };
            settings(addr, format, update).await
        }
        ClusterCommand::Failover {
            lost_after,
            replace_lost,
        } => {
            let update = pb::UpdateSettingsRequest {
                lost_after_ms: lost_after,
                replace_lost,
                ..Default::default()
            };
            settings(addr, format, update).await
        }
        ClusterCommand::JoinToken(JoinTokenCommand::Create { ttl }) => {
            let made = client::cluster(addr)
                .await?
                .create_join_token(pb::CreateJoinTokenRequest {
                    ttl_ms: ttl.unwrap_or(0),
                })
                .await
                .map_err(status_error)?
                .into_inner();
            let view = JoinTokenView {
                join_token: made.join_token,
                accessor: made.accessor,
                expires_at_unix_ms: made.expires_at_unix_ms,
            };
            output::print(format, &view, |v| {
                let mut table = output::table(&["JOIN TOKEN (shown once)", "EXPIRES"]);
                table.add_row(vec![v.join_token.clone(), rfc3339(v.expires_at_unix_ms)]);
                table
            })
        }
        ClusterCommand::JoinToken(JoinTokenCommand::List) => {
            let listed: Vec<JoinTokenInfoView> = client::cluster(addr)
                .await?
                .list_join_tokens(pb::ListJoinTokensRequest {})
                .await
                .map_err(status_error)?
                .into_inner()
                .join_tokens
                .into_iter()
                .map(|t| JoinTokenInfoView {
                    accessor: t.accessor,
                    created_at_unix_ms: t.created_at_unix_ms,
                    expires_at_unix_ms: t.expires_at_unix_ms,
                    spent_on_node_id: t.spent_on_node_id,
                })
                .collect();
            output::print(format, &listed, |listed| {
                let mut table = output::table(&["ACCESSOR", "CREATED", "EXPIRES", "SPENT ON"]);
                for t in listed {
                    table.add_row(vec![
                        t.accessor.clone(),
                        rfc3339(t.created_at_unix_ms),
                        rfc3339(t.expires_at_unix_ms),
                        t.spent_on_node_id
                            .map_or("-".into(), |id| format!("node {id}")),
                    ]);
                }
                table
            })
        }
        ClusterCommand::JoinToken(JoinTokenCommand::Revoke { accessor }) => {
            let revision = client::cluster(addr)
                .await?
                .revoke_join_token(pb::RevokeJoinTokenRequest {
                    accessor: accessor.clone(),
                })
                .await
                .map_err(status_error)?
                .into_inner()
                .revision;
            let view = JoinTokenRevokedView { accessor, revision };
            output::print(format, &view, |v| {
                let mut table = output::table(&["REVOKED", "REVISION"]);
                table.add_row(vec![v.accessor.clone(), v.revision.to_string()]);
                table
            })
        }
        ClusterCommand::RotateCerts { nodes } => rotate_certs(addr, format, nodes).await,
        ClusterCommand::RemoveNode { node_id } => {
            validate::node_id(node_id)?;
            let response = client::cluster(addr)
                .await?
                .remove_node(pb::RemoveNodeRequest { node_id })
                .await
                .map_err(status_error)?
                .into_inner();
            let view = members(&response.members);
            output::print(format, &view, |v| members_table(v, None))
        }
    }
}

#[derive(Serialize, schemars::JsonSchema)]
pub struct SettingsView {
    voters: u32,
    dead_voter_after_ms: u64,
    lost_after_ms: u64,
    replace_lost: bool,
}

/// Shows the settings, changing the given ones first (if any).
async fn settings(
    addr: &str,
    format: OutputFormat,
    update: pb::UpdateSettingsRequest,
) -> anyhow::Result<()> {
    let mut client = client::cluster(addr).await?;
    let unchanged = update == pb::UpdateSettingsRequest::default();
    let settings = match unchanged {
        true => client.get_settings(pb::GetSettingsRequest {}).await,
        false => client.update_settings(update).await,
    }
    .map_err(status_error)?
    .into_inner();
    let view = SettingsView {
        voters: settings.voters,
        dead_voter_after_ms: settings.dead_voter_after_ms,
        lost_after_ms: settings.lost_after_ms,
        replace_lost: settings.replace_lost,
    };
    output::print(format, &view, |v| {
        let mut table = output::table(&["SETTING", "VALUE"]);
        for (name, value) in [
            ("voters", v.voters.to_string()),
            ("dead voter after ms", v.dead_voter_after_ms.to_string()),
            ("lost after ms", v.lost_after_ms.to_string()),
            ("replace lost", v.replace_lost.to_string()),
        ] {
            table.add_row(vec![name.to_string(), value]);
        }
        table
    })
}

/// Renews the certificates of `only` (every node the cluster records
/// when empty), one at a time through the node at `addr`; reports each,
/// and fails if any was not renewed (running it again is safe).
async fn rotate_certs(addr: &str, format: OutputFormat, only: Vec<u64>) -> anyhow::Result<()> {
    for node_id in &only {
        validate::node_id(*node_id)?;
    }
    let nodes: Vec<u64> = match only.is_empty() {
        false => only,
        true => client::list_nodes(&client::node(addr).await?)
            .await?
            .nodes
            .into_iter()
            // A node only gossip knows holds no certificate of ours.
            .filter(|n| n.role != "none")
            .map(|n| n.node_id)
            .collect(),
    };
    let mut cluster = client::cluster(addr).await?;
    let bar = output::bar(nodes.len() as u64, "renewing certificates");
    let mut renewed = Vec::with_capacity(nodes.len());
    for node_id in nodes {
        bar.set_message(format!("node {node_id}"));
        let answer = cluster
            .renew_certificate(pb::RenewCertificateRequest { node_id })
            .await;
        renewed.push(match answer {
            Ok(answer) => {
                let answer = answer.into_inner();
                RenewedView {
                    node_id,
                    cert_sha256: Some(answer.cert_sha256),
                    signed_by: Some(answer.signed_by),
                    error: None,
                }
            }
            Err(status) => RenewedView {
                node_id,
                cert_sha256: None,
                signed_by: None,
                error: Some(status_error(status).to_string()),
            },
        });
        bar.inc(1);
    }
    bar.finish_and_clear();
    let failed = renewed.iter().filter(|r| r.error.is_some()).count();
    output::print(format, &renewed, |renewed| {
        let mut table = output::table(&["NODE", "CERTIFICATE SHA-256", "SIGNED BY", "ERROR"]);
        for r in renewed {
            table.add_row(vec![
                r.node_id.to_string(),
                r.cert_sha256.clone().unwrap_or_else(|| "-".into()),
                r.signed_by.map_or("-".into(), |id| format!("node {id}")),
                r.error.clone().unwrap_or_default(),
            ]);
        }
        table
    })?;
    match failed {
        0 => Ok(()),
        n => anyhow::bail!("{n} node(s) not renewed (see ERROR); run rotate-certs again"),
    }
}
