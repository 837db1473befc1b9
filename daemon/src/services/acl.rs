//! The `Acl` service: client tokens made, listed and revoked through the
//! log (any node; workers forward), and the audit trail.

use blixard_api::pb;
use blixard_consensus::audit::{Actor, AuditRecord};
use std::collections::BTreeSet;

use blixard_consensus::{Command, CustomRole, Permission, Token, TokenRole};
use tonic::{Request, Response, Status};

use crate::handle::ClusterHandle;
use crate::{tokens, Error};

pub struct AclService {
    pub raft: ClusterHandle,
}

fn info(token: &Token) -> pb::TokenInfo {
    pb::TokenInfo {
        accessor: token.accessor.clone(),
        name: token.name.clone(),
        created_at_unix_ms: token.created_at_unix_ms,
        role: token.role.as_str().into(),
        expires_at_unix_ms: token.expires_at_unix_ms.unwrap_or(0),
    }
}

fn role_info(role: &CustomRole) -> pb::RoleInfo {
    pb::RoleInfo {
        name: role.name.clone(),
        permissions: role.permissions.iter().map(|p| p.as_str().into()).collect(),
        built_in: false,
        created_at_unix_ms: role.created_at_unix_ms,
    }
}

fn audit_to_pb(record: &AuditRecord) -> pb::AuditRecord {
    let (actor_kind, actor) = match &record.actor {
        Actor::Token { accessor } => ("token", accessor.clone()),
        Actor::Node { node_id } => ("node", node_id.to_string()),
        Actor::Anonymous => ("anonymous", String::new()),
    };
    pb::AuditRecord {
        seq: record.seq,
        revision: record.revision,
        at_unix_ms: record.at_unix_ms,
        actor_kind: actor_kind.into(),
        actor,
        token_name: record.token_name.clone().unwrap_or_default(),
        via_node: record.via_node,
        from: record.from.clone(),
        action: record.action.clone(),
        target: record.target.clone(),
    }
}

#[tonic::async_trait]
impl pb::acl_server::Acl for AclService {
    async fn create_token(
        &self,
        request: Request<pb::CreateTokenRequest>,
    ) -> Result<Response<pb::CreateTokenResponse>, Status> {
        let requester = super::requester(&request);
        let request = request.into_inner();
        // A custom role must exist; the state machine says so if not.
        let role = TokenRole::named(&request.role);
        let now = blixard_api::unix_ms_now();
        let expires = (request.ttl_ms > 0).then(|| now.saturating_add(request.ttl_ms));
        let new = tokens::generate(&request.name, role, now, expires);
        let command = Command::CreateToken {
            token: new.token.clone(),
        };
        blixard_consensus::validate::command(&command)
            .map_err(|rejection| Status::invalid_argument(rejection.to_string()))?;
        self.raft
            .propose_for(command, requester)
            .await
            .map_err(Error::from)?;
        Ok(Response::new(pb::CreateTokenResponse {
            token: Some(info(&new.token)),
            secret: new.secret,
        }))
    }

    async fn list_tokens(
        &self,
        _request: Request<pb::ListTokensRequest>,
    ) -> Result<Response<pb::ListTokensResponse>, Status> {
        self.raft.read_barrier().await.map_err(Error::from)?;
        let tokens = self
            .raft
            .read_state(|state| state.tokens.values().map(info).collect());
        Ok(Response::new(pb::ListTokensResponse { tokens }))
    }

    async fn audit(
        &self,
        request: Request<pb::AuditRequest>,
    ) -> Result<Response<pb::AuditResponse>, Status> {
        let request = request.into_inner();
        self.raft.read_barrier().await.map_err(Error::from)?;
        let (records, revision) = self.raft.read_state(|state| {
            let matching: Vec<&AuditRecord> = state
                .audit
                .iter()
                .filter(|r| r.at_unix_ms >= request.since_unix_ms)
                .filter(|r| request.who.is_empty() || r.is_by(&request.who))
                .collect();
            let skip = match request.limit {
                0 => 0,
                limit => matching.len().saturating_sub(limit as usize),
            };
            let records = matching[skip..].iter().map(|r| audit_to_pb(r)).collect();
            (records, state.revision)
        });
        Ok(Response::new(pb::AuditResponse { records, revision }))
    }

    async fn create_role(
        &self,
        request: Request<pb::CreateRoleRequest>,
    ) -> Result<Response<pb::RoleInfo>, Status> {
        let requester = super::requester(&request);
        let request = request.into_inner();
        if request.permissions.len() > Permission::ALL.len() {
            return Err(Status::invalid_argument(format!(
                "{} permissions; there are only {}",
                request.permissions.len(),
                Permission::ALL.len()
            )));
        }
        let permissions = request
            .permissions
            .iter()
            .map(|text| {
                Permission::parse(text).ok_or_else(|| {
                    let known: Vec<&str> = Permission::ALL.iter().map(|p| p.as_str()).collect();
                    Status::invalid_argument(format!(
                        "unknown permission {:?}; known: {}",
                        blixard_api::validate::echo(text),
                        known.join(", ")
                    ))
                })
            })
            .collect::<Result<BTreeSet<Permission>, Status>>()?;
        let role = CustomRole {
            name: request.name,
            permissions,
            created_at_unix_ms: blixard_api::unix_ms_now(),
        };
        let command = Command::CreateRole { role: role.clone() };
        blixard_consensus::validate::command(&command)
            .map_err(|rejection| Status::invalid_argument(rejection.to_string()))?;
        self.raft
            .propose_for(command, requester)
            .await
            .map_err(Error::from)?;
        Ok(Response::new(role_info(&role)))
    }

    async fn list_roles(
        &self,
        _request: Request<pb::ListRolesRequest>,
    ) -> Result<Response<pb::ListRolesResponse>, Status> {
        self.raft.read_barrier().await.map_err(Error::from)?;
        let mut roles: Vec<pb::RoleInfo> = TokenRole::BUILT_IN
            .iter()
            .map(|role| pb::RoleInfo {
                name: role.as_str().into(),
                permissions: Permission::ALL
                    .iter()
                    .filter(|p| role.built_in_allows(**p) == Some(true))
                    .map(|p| p.as_str().into())
                    .collect(),
                built_in: true,
                created_at_unix_ms: 0,
            })
            .collect();
        roles.extend(
            self.raft
                .read_state(|state| state.roles.values().map(role_info).collect::<Vec<_>>()),
        );
        Ok(Response::new(pb::ListRolesResponse { roles }))
    }

    async fn delete_role(
        &self,
        request: Request<pb::DeleteRoleRequest>,
    ) -> Result<Response<pb::DeleteRoleResponse>, Status> {
        let requester = super::requester(&request);
        let name = request.into_inner().name;
        let command = Command::DeleteRole { name };
        blixard_consensus::validate::command(&command)
            .map_err(|rejection| Status::invalid_argument(rejection.to_string()))?;
        let applied = self
            .raft
            .propose_for(command, requester)
            .await
            .map_err(Error::from)?;
        Ok(Response::new(pb::DeleteRoleResponse {
            revision: applied.revision,
        }))
    }

    async fn revoke_token(
        &self,
        request: Request<pb::RevokeTokenRequest>,
    ) -> Result<Response<pb::RevokeTokenResponse>, Status> {
        let requester = super::requester(&request);
        let accessor = request.into_inner().accessor;
        let applied = self
            .raft
            .propose_for(Command::RevokeToken { accessor }, requester)
            .await
            .map_err(Error::from)?;
        Ok(Response::new(pb::RevokeTokenResponse {
            revision: applied.revision,
        }))
    }
}
