//! `Registry.Subscribe`: a watch on a service's prefix, decoded into instance events.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use muster_proto::registrypb as pb;
use tonic::Status;

use crate::error::ServerError;
use crate::node::Node;

pub type SubscribeStream =
    Pin<Box<dyn Stream<Item = Result<pb::SubscribeResponse, Status>> + Send>>;

/// Starts a subscription stream.
pub async fn subscribe(
    _node: Arc<Node>,
    _req: pb::SubscribeRequest,
) -> Result<SubscribeStream, ServerError> {
    Err(ServerError::Unsupported {
        what: "registry subscribe (pending the watch hub)",
    })
}
