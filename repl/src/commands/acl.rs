//! `blixard acl token create | list | revoke`: client tokens.

use std::time::{Duration, UNIX_EPOCH};

use blixard_api::pb;
use serde::Serialize;

use crate::cli::{AclCommand, AclTokenCommand, OutputFormat};
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
                    role: role.as_str().into(),
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
