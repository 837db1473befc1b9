//! The `Acl` service: client tokens made, listed and revoked through the
//! log (any node; workers forward), and the audit trail.

use blixard_api::pb;
use blixard_consensus::audit::{Actor, AuditRecord};
use blixard_consensus::{Command, Token, TokenRole};
use tonic::{Request, Response, Status};

use super::vm_node::now_unix_ms;
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
        let role = TokenRole::parse(&request.role).ok_or_else(|| {
            Status::invalid_argument(format!(
                "unknown role {:?}: expected admin, operator or viewer",
                blixard_api::validate::echo(&request.role)
            ))
        })?;
        let now = now_unix_ms();
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
