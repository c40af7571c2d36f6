//! openraft's network traits over the crate's TCP transport.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError,
    Unreachable,
};
use openraft::network::{Backoff, RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::BasicNode;

use crate::auth::ClusterSecret;
use crate::error::Error;
use crate::net::{Request, Response, RpcClient};
use crate::raft_types::TypeConfig;

/// Creates (and caches) one connection per peer address, authenticated with the cluster
/// secret if the node has one.
#[derive(Clone, Default)]
pub(crate) struct Network {
    clients: Arc<Mutex<HashMap<String, Arc<RpcClient>>>>,
    secret: Option<ClusterSecret>,
}

impl Network {
    /// A network whose connections prove `secret`.
    pub(crate) fn new(secret: Option<ClusterSecret>) -> Self {
        Self {
            clients: Arc::default(),
            secret,
        }
    }
}

/// The connection to one peer.
pub(crate) struct PeerConnection {
    target: u64,
    client: Arc<RpcClient>,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerConnection;

    async fn new_client(&mut self, target: u64, node: &BasicNode) -> PeerConnection {
        let client = self
            .clients
            .lock()
            .expect("clients lock")
            .entry(node.addr.clone())
            .or_insert_with(|| Arc::new(RpcClient::new(node.addr.clone(), self.secret.clone())))
            .clone();
        PeerConnection { target, client }
    }
}

type RpcResult<T, E = openraft::error::Infallible> =
    Result<T, RPCError<u64, BasicNode, RaftError<u64, E>>>;

impl PeerConnection {
    async fn call(&self, req: Request, ttl: Duration) -> Result<Response, Error> {
        self.client.call(req, ttl).await
    }

    fn transport_error<E: std::error::Error>(
        &self,
        e: Error,
    ) -> RPCError<u64, BasicNode, RaftError<u64, E>> {
        match e {
            Error::Unavailable(_) => RPCError::Unreachable(Unreachable::new(&e)),
            other => RPCError::Network(NetworkError::new(&other)),
        }
    }

    fn unexpected<E: std::error::Error>(
        &self,
        resp: Response,
    ) -> RPCError<u64, BasicNode, RaftError<u64, E>> {
        let e = match resp {
            Response::Failed(e) => e,
            other => Error::Fatal(format!(
                "unexpected response from node {} at {}: {other:?}",
                self.target,
                self.client.addr()
            )),
        };
        RPCError::Network(NetworkError::new(&e))
    }
}

impl RaftNetwork<TypeConfig> for PeerConnection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<u64>> {
        let entries = rpc.entries.len() as u64;
        match self
            .call(Request::AppendEntries(rpc), option.hard_ttl())
            .await
        {
            Ok(Response::AppendEntries(r)) => {
                r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            Ok(other) => Err(self.unexpected(other)),
            // Over the frame limit: openraft retries at once with fewer entries (a single entry
            // always fits, since a client's record is at most `MAX_PAYLOAD_BYTES`).
            Err(Error::TooLarge { .. }) if entries > 1 => Err(RPCError::PayloadTooLarge(
                PayloadTooLarge::new_entries_hint(entries / 2),
            )),
            Err(e) => Err(self.transport_error(e)),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<u64>, InstallSnapshotError> {
        match self
            .call(Request::InstallSnapshot(rpc), option.hard_ttl())
            .await
        {
            Ok(Response::InstallSnapshot(r)) => {
                r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            Ok(other) => Err(self.unexpected(other)),
            Err(e) => Err(self.transport_error(e)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<u64>> {
        match self.call(Request::Vote(rpc), option.hard_ttl()).await {
            Ok(Response::Vote(r)) => {
                r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            Ok(other) => Err(self.unexpected(other)),
            Err(e) => Err(self.transport_error(e)),
        }
    }

    fn backoff(&self) -> Backoff {
        // Retry an unreachable peer soon: a restarted server should catch up quickly.
        Backoff::new(std::iter::repeat(Duration::from_millis(100)))
    }
}
