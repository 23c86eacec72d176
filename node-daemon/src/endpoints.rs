//! SpiderEndpoint reads and writes (the objects are built by [`crate::ipam::endpoint`]); every write
//! is counted in the metrics.

use std::sync::Arc;

use spiderpool_schema::SpiderEndpoint;

use crate::api::{ClusterApi, EndpointScope};
use crate::error::IpamError;
use crate::ipam::endpoint::container_of;
use crate::metrics::Metrics;

/// Why an endpoint could not be created.
#[derive(Debug)]
pub enum CreateError {
    /// One of the same name exists.
    Exists,
    /// Anything else.
    Failed(IpamError),
}

/// The SpiderEndpoints of the API server.
#[derive(Clone)]
pub struct Endpoints {
    api: Arc<dyn ClusterApi>,
    metrics: Metrics,
}

impl Endpoints {
    /// Endpoints through `api`, writes counted in `metrics`.
    pub fn new(api: Arc<dyn ClusterApi>, metrics: Metrics) -> Self {
        Endpoints { api, metrics }
    }

    /// An endpoint.
    pub async fn get(&self, namespace: &str, name: &str) -> Result<Option<SpiderEndpoint>, IpamError> {
        self.api
            .get_endpoint(namespace, name)
            .await
            .map_err(IpamError::api("reading the SpiderEndpoint"))
    }

    /// The endpoints this node's daemon wrote (label value `node_label`), in every namespace.
    pub async fn of_node(&self, node_label: &str) -> Result<Vec<SpiderEndpoint>, IpamError> {
        self.api
            .list_endpoints(EndpointScope::Node(node_label))
            .await
            .map_err(IpamError::api("listing this node's SpiderEndpoints"))
    }

    /// Creates an endpoint.
    pub async fn create(&self, endpoint: &SpiderEndpoint) -> Result<(), CreateError> {
        self.metrics.api_write("endpoint");
        match self.api.create_endpoint(endpoint).await {
            Ok(_) => Ok(()),
            Err(e) if e.is_already_exists() => Err(CreateError::Exists),
            Err(e) => Err(CreateError::Failed(IpamError::Api {
                action: "creating the SpiderEndpoint",
                source: e,
            })),
        }
    }

    /// Replaces an endpoint (guarded by its resourceVersion); returns it as written.
    pub async fn replace(&self, endpoint: &SpiderEndpoint) -> Result<SpiderEndpoint, IpamError> {
        self.metrics.api_write("endpoint");
        self.api
            .replace_endpoint(endpoint)
            .await
            .map_err(IpamError::api("updating the SpiderEndpoint"))
    }

    /// Records that sandbox `container_id` now uses the endpoint's addresses (a repeated ADD from a
    /// new sandbox); no write if it already says so.
    pub async fn note_container(
        &self,
        endpoint: &SpiderEndpoint,
        container_id: &str,
    ) -> Result<(), IpamError> {
        if container_of(endpoint) == Some(container_id) {
            return Ok(());
        }
        let namespace = endpoint.metadata.namespace.as_deref().unwrap_or_default();
        let name = endpoint.metadata.name.as_deref().unwrap_or_default();
        self.metrics.api_write("endpoint");
        self.api
            .set_endpoint_container(namespace, name, container_id)
            .await
            .map_err(IpamError::api("updating the SpiderEndpoint"))
    }

    /// Removes the endpoint's finalizer (guarded by the version it was read at) and deletes it (that
    /// object only: its UID is a precondition, so an endpoint another pod's ADD made under the same
    /// name since, such as a StatefulSet member recreated on another node, is left alone); an
    /// endpoint already gone or replaced is fine.
    pub async fn delete(&self, endpoint: &SpiderEndpoint) -> Result<(), IpamError> {
        let namespace = endpoint.metadata.namespace.as_deref().unwrap_or_default();
        let name = endpoint.metadata.name.as_deref().unwrap_or_default();
        if endpoint
            .metadata
            .finalizers
            .as_ref()
            .is_some_and(|f| !f.is_empty())
        {
            self.metrics.api_write("endpoint");
            match self
                .api
                .remove_endpoint_finalizers(namespace, name, endpoint.metadata.resource_version.as_deref())
                .await
            {
                Ok(()) => {}
                Err(e) if e.is_not_found() => return Ok(()),
                Err(e) => {
                    return Err(IpamError::Api {
                        action: "removing the SpiderEndpoint's finalizer",
                        source: e,
                    });
                }
            }
        }
        self.metrics.api_write("endpoint");
        match self
            .api
            .delete_endpoint(namespace, name, endpoint.metadata.uid.as_deref())
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) if e.is_conflict() => {
                tracing::debug!(
                    endpoint = %format!("{namespace}/{name}"),
                    "the SpiderEndpoint was replaced by another object of that name; that one is kept"
                );
                Ok(())
            }
            Err(e) => Err(IpamError::Api {
                action: "deleting the SpiderEndpoint",
                source: e,
            }),
        }
    }

    /// The name of the KubeVirt VM endpoint in `namespace` whose addresses sandbox `container_id`
    /// holds.
    pub async fn vm_endpoint_of_sandbox(
        &self,
        namespace: &str,
        container_id: &str,
    ) -> Result<Option<String>, IpamError> {
        let list = self
            .api
            .list_endpoints(EndpointScope::Namespace(namespace))
            .await
            .map_err(IpamError::api("listing SpiderEndpoints"))?;
        Ok(list
            .into_iter()
            .find(|ep| {
                container_of(ep) == Some(container_id)
                    && ep.status.as_ref().is_some_and(|s| {
                        matches!(
                            s.owner_controller_type.as_str(),
                            "VirtualMachine" | "VirtualMachineInstance"
                        )
                    })
            })
            .and_then(|ep| ep.metadata.name))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]

    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;
    use crate::api::fake::FakeApi;

    fn endpoint() -> SpiderEndpoint {
        SpiderEndpoint {
            metadata: ObjectMeta {
                name: Some("web-0".into()),
                namespace: Some("ns".into()),
                ..ObjectMeta::default()
            },
            status: None,
        }
    }

    /// A late release of a StatefulSet member whose endpoint a recreated member (same name, another
    /// node) has replaced meanwhile must not delete the new member's endpoint.
    #[tokio::test]
    async fn deleting_a_replaced_endpoint_keeps_the_one_that_replaced_it() {
        let (fake, _) = FakeApi::new("n1");
        let endpoints = Endpoints::new(fake.clone(), Metrics::default());
        let old = fake.create_endpoint(&endpoint()).await.unwrap();
        fake.delete_endpoint("ns", "web-0", None).await.unwrap();
        let new = fake.create_endpoint(&endpoint()).await.unwrap();
        assert_ne!(old.metadata.uid, new.metadata.uid);

        endpoints.delete(&old).await.unwrap();
        let kept = fake.endpoint("ns", "web-0").unwrap();
        assert_eq!(kept.metadata.uid, new.metadata.uid);

        // Its own endpoint it deletes.
        endpoints.delete(&kept).await.unwrap();
        assert!(fake.endpoint("ns", "web-0").is_none());
    }
}
