//! `blixard acl token create | list | revoke`: client tokens; `blixard
//! audit`: who changed what.

use std::time::{Duration, UNIX_EPOCH};

use blixard_api::pb;
use serde::Serialize;

use crate::cli::{AclCommand, AclRoleCommand, AclTokenCommand, OutputFormat};
use crate::client::{self, status_error};
use crate::output;

/// A token as listed (never its secret).
#[derive(Serialize, schemars::JsonSchema)]
pub struct TokenView {
    pub accessor: String,
    pub name: String,
    /// admin, operator or viewer.
    pub role: String,
    pub created_at_unix_ms: u64,
    /// When the token stops working (absent: never).
    pub expires_at_unix_ms: Option<u64>,
}

/// A token just made, with the secret shown only here.
#[derive(Serialize, schemars::JsonSchema)]
pub struct CreatedTokenView {
    pub accessor: String,
    pub name: String,
    pub role: String,
    pub created_at_unix_ms: u64,
    pub expires_at_unix_ms: Option<u64>,
    /// Send as `--token`, `BLIXARD_TOKEN` or `token` in the client config.
    pub secret: String,
}

/// A role and what it allows.
#[derive(Serialize, schemars::JsonSchema)]
pub struct RoleView {
    pub name: String,
    /// e.g. vm:read, vm:write.
    pub permissions: Vec<String>,
    /// admin, operator and viewer are built in.
    pub built_in: bool,
}

#[derive(Serialize, schemars::JsonSchema)]
pub struct DeletedRoleView {
    pub name: String,
    pub revision: u64,
}

fn role_view(role: pb::RoleInfo) -> RoleView {
    RoleView {
        name: role.name,
        permissions: role.permissions,
        built_in: role.built_in,
    }
}

fn roles_table(roles: &[RoleView]) -> comfy_table::Table {
    let mut table = output::table(&["ROLE", "ALLOWS", "BUILT IN"]);
    for role in roles {
        table.add_row(vec![
            role.name.clone(),
            role.permissions.join(", "),
            if role.built_in { "yes" } else { "no" }.to_string(),
        ]);
    }
    table
}

#[derive(Serialize, schemars::JsonSchema)]
pub struct RevokedView {
    pub accessor: String,
    pub revision: u64,
}

fn view(token: pb::TokenInfo) -> TokenView {
    TokenView {
        accessor: token.accessor,
        name: token.name,
        role: token.role,
        created_at_unix_ms: token.created_at_unix_ms,
        expires_at_unix_ms: (token.expires_at_unix_ms > 0).then_some(token.expires_at_unix_ms),
    }
}

fn created_at(unix_ms: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(unix_ms)).to_string()
}

pub async fn run(command: AclCommand, addr: &str, format: OutputFormat) -> anyhow::Result<()> {
    let mut acl = client::acl(addr).await?;
    match command {
        AclCommand::Token(AclTokenCommand::Create { name, role, ttl }) => {
            let created = acl
                .create_token(pb::CreateTokenRequest {
                    name,
                    role,
                    ttl_ms: ttl.unwrap_or(0),
                })
                .await
                .map_err(status_error)?
                .into_inner();
            let token = view(created.token.unwrap_or_default());
            let created = CreatedTokenView {
                accessor: token.accessor,
                name: token.name,
                role: token.role,
                created_at_unix_ms: token.created_at_unix_ms,
                expires_at_unix_ms: token.expires_at_unix_ms,
                secret: created.secret,
            };
            output::print(format, &created, |t| {
                let mut table = output::table(&["ACCESSOR", "NAME", "ROLE", "SECRET (shown once)"]);
                table.add_row(vec![
                    t.accessor.clone(),
                    t.name.clone(),
                    t.role.clone(),
                    t.secret.clone(),
                ]);
                table
            })
        }
        AclCommand::Token(AclTokenCommand::List) => {
            let tokens: Vec<TokenView> = acl
                .list_tokens(pb::ListTokensRequest {})
                .await
                .map_err(status_error)?
                .into_inner()
                .tokens
                .into_iter()
                .map(view)
                .collect();
            output::print(format, &tokens, |tokens| {
                let mut table = output::table(&["ACCESSOR", "NAME", "ROLE", "CREATED", "EXPIRES"]);
                for t in tokens {
                    table.add_row(vec![
                        t.accessor.clone(),
                        t.name.clone(),
                        t.role.clone(),
                        created_at(t.created_at_unix_ms),
                        t.expires_at_unix_ms.map_or("never".into(), created_at),
                    ]);
                }
                table
            })
        }
        AclCommand::Role(AclRoleCommand::Create { name, permissions }) => {
            let role = acl
                .create_role(pb::CreateRoleRequest { name, permissions })
                .await
                .map_err(status_error)?
                .into_inner();
            let role = role_view(role);
            output::print(format, &role, |role| {
                roles_table(std::slice::from_ref(role))
            })
        }
        AclCommand::Role(AclRoleCommand::List) => {
            let roles: Vec<RoleView> = acl
                .list_roles(pb::ListRolesRequest {})
                .await
                .map_err(status_error)?
                .into_inner()
                .roles
                .into_iter()
                .map(role_view)
                .collect();
            output::print(format, &roles, |roles| roles_table(roles))
        }
        AclCommand::Role(AclRoleCommand::Delete { name }) => {
            let revision = acl
                .delete_role(pb::DeleteRoleRequest { name: name.clone() })
                .await
                .map_err(status_error)?
                .into_inner()
                .revision;
            let deleted = DeletedRoleView { name, revision };
            output::print(format, &deleted, |d| {
                let mut table = output::table(&["DELETED", "REVISION"]);
                table.add_row(vec![d.name.clone(), d.revision.to_string()]);
                table
            })
        }
        AclCommand::Token(AclTokenCommand::Revoke { accessor }) => {
            let revision = acl
                .revoke_token(pb::RevokeTokenRequest {
                    accessor: accessor.clone(),
                })
                .await
                .map_err(status_error)?
                .into_inner()
                .revision;
            let revoked = RevokedView { accessor, revision };
            output::print(format, &revoked, |r| {
                let mut table = output::table(&["REVOKED", "REVISION"]);
                table.add_row(vec![r.accessor.clone(), r.revision.to_string()]);
                table
            })
        }
    }
}

/// One accepted change in the audit trail.
#[derive(Serialize, schemars::JsonSchema)]
pub struct AuditView {
    pub seq: u64,
    /// The state revision the change made.
    pub revision: u64,
    pub at_unix_ms: u64,
    /// The token's name (or accessor), `node-ID`, or `anonymous`.
    pub who: String,
    /// token, node or anonymous.
    pub actor_kind: String,
    /// The token's accessor or the node id (empty for anonymous).
    pub actor: String,
    /// The node the client spoke to.
    pub via_node: u64,
    /// The client's address as that node saw it.
    pub from: String,
    /// The command, e.g. create_vm.
    pub action: String,
    /// What it changed: a VM, node-ID, a token accessor, settings.
    pub target: String,
}

fn audit_view(record: pb::AuditRecord) -> AuditView {
    let who = match record.actor_kind.as_str() {
        "token" if !record.token_name.is_empty() => record.token_name.clone(),
        "node" => format!("node-{}", record.actor),
        "anonymous" => "anonymous".into(),
        _ => record.actor.clone(),
    };
    AuditView {
        seq: record.seq,
        revision: record.revision,
        at_unix_ms: record.at_unix_ms,
        who,
        actor_kind: record.actor_kind,
        actor: record.actor,
        via_node: record.via_node,
        from: record.from,
        action: record.action,
        target: record.target,
    }
}

/// `blixard audit`: the newest `limit` changes, oldest first.
pub async fn audit(
    addr: &str,
    format: OutputFormat,
    since_ms: Option<u64>,
    who: String,
    limit: u32,
) -> anyhow::Result<()> {
    let since_unix_ms = since_ms.map_or(0, |ago| blixard_api::unix_ms_now().saturating_sub(ago));
    let records: Vec<AuditView> = client::acl(addr)
        .await?
        .audit(pb::AuditRequest {
            since_unix_ms,
            who,
            limit,
        })
        .await
        .map_err(status_error)?
        .into_inner()
        .records
        .into_iter()
        .map(audit_view)
        .collect();
    output::print(format, &records, |records| {
        let mut table = output::table(&[
            "SEQ", "TIME", "WHO", "ACTION", "TARGET", "VIA", "FROM", "REVISION",
        ]);
        for r in records {
            table.add_row(vec![
                r.seq.to_string(),
                created_at(r.at_unix_ms),
                r.who.clone(),
                r.action.clone(),
                r.target.clone(),
                format!("node-{}", r.via_node),
                r.from.clone(),
                r.revision.to_string(),
            ]);
        }
        table
    })
}
