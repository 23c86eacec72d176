//! CNI GC for one network: gather this node's endpoints; decide which the runtime no longer has
//! ([`release::gc_candidates`]); release each, after reading it again under its lock (an ADD may
//! have just handed it to a new sandbox, [`release::still_held_by`]).

use spiderpool_agent_api::{IpamGcArgs, IpamGcResponse};

use super::Allocator;
use crate::error::IpamError;
use crate::ipam::add;
use crate::ipam::endpoint::label_value;
use crate::ipam::release;

impl Allocator {
    /// CNI GC for one network: releases the addresses of this node's attachments of `net_name` that
    /// the runtime no longer has.
    pub async fn gc(&self, args: &IpamGcArgs) -> Result<IpamGcResponse, IpamError> {
        add::missing(&[("netName", &args.net_name)])?;
        let node_label = label_value(&self.inner.config.node_name);
        let endpoints = self.inner.endpoints.of_node(&node_label).await?;
        let candidates = release::gc_candidates(&endpoints, &args.net_name, &args.valid_attachments);
        let mut released = Vec::new();
        for candidate in candidates {
            let lock = self.lock_for(&candidate.namespace, &candidate.name);
            let _guard = lock.lock().await;
            let Some(fresh) = self
                .inner
                .endpoints
                .get(&candidate.namespace, &candidate.name)
                .await?
            else {
                continue;
            };
            if !release::still_held_by(&fresh, &candidate.container_id) {
                continue;
            }
            tracing::info!(
                endpoint = %format!("{}/{}", candidate.namespace, candidate.name),
                container = candidate.container_id,
                "CNI GC: releasing addresses the runtime no longer knows"
            );
            self.release_endpoint(&fresh).await?;
            released.extend(candidate.attachments());
        }
        Ok(IpamGcResponse { released })
    }
}
