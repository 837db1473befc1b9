//! The `Acl` service: client tokens made, listed and revoked through the
//! log (any node; workers forward).

use blixard_api::pb;
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

#[tonic::async_trait]
impl pb::acl_server::Acl for AclService {
    async fn create_token(
        &self,
        request: Request<pb::CreateTokenRequest>,
    ) -> Result<Response<pb::CreateTokenResponse>, Status> {
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
        self.raft.propose(command).await.map_err(Error::from)?;
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

    async fn revoke_token(
        &self,
        request: Request<pb::RevokeTokenRequest>,
    ) -> Result<Response<pb::RevokeTokenResponse>, Status> {
        let accessor = request.into_inner().accessor;
        let applied = self
            .raft
            .propose(Command::RevokeToken { accessor })
            .await
            .map_err(Error::from)?;
        Ok(Response::new(pb::RevokeTokenResponse {
            revision: applied.revision,
        }))
    }
}
