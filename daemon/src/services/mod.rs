//! gRPC services. Every service is wrapped by [`authorize`], the one place
//! where authentication (and later mTLS identity checks) will happen.

pub mod cluster;
pub mod feed;
pub mod node;
pub mod raft;
pub mod vm;
pub(crate) mod vm_node;

pub use vm_node::VmNode;

use tonic::{Request, Status};

/// The interceptor every RPC passes through. It accepts everything today;
/// tokens or client-certificate checks go here.
#[allow(clippy::result_large_err)]
pub fn authorize(request: Request<()>) -> Result<Request<()>, Status> {
    Ok(request)
}
