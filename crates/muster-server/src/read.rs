//! The read path: a Range served from the local state machine, after the read-index barrier
//! unless the caller accepts a serializable (possibly stale) read.

use muster_types::{RangeRequest, RangeResponse};

use crate::error::ServerError;
use crate::node::Node;

impl Node {
    /// Serves `req` locally; returns the response and the store revision it was read at.
    pub async fn range(&self, req: &RangeRequest) -> Result<(RangeResponse, i64), ServerError> {
        self.config.limits.check_read(&req.range)?;
        if !req.serializable {
            self.linearizable_barrier().await?;
        }
        let sm = self.sm.read();
        let resp = sm.mvcc.range(req)??;
        Ok((resp, sm.mvcc.current_revision()))
    }
}
