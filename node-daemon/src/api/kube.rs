//! [`ClusterApi`] over a real API server, with kube's client.

use ::kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams, Preconditions};
use ::kube::core::{ApiResource, DynamicObject, GroupVersionKind};
use ::kube::{Api, Client};
use futures::FutureExt as _;
use futures::future::BoxFuture;
use k8s_openapi::api::apps::v1::{ReplicaSet, StatefulSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::json;
use spiderpool_schema::{NetworkAttachmentDefinition, SpiderEndpoint, SpiderIPPool};

use super::{ApiResult, ClusterApi, EndpointScope, OwnerKind, PoolStatusWrite};
use crate::ipam::endpoint::{ANNO_CONTAINER_ID, LABEL_NODE};

/// The API server through kube's client.
#[derive(Clone)]
pub struct KubeApi {
    client: Client,
}

impl KubeApi {
    /// Talks through `client`.
    pub fn new(client: Client) -> Self {
        KubeApi { client }
    }

    fn endpoints(&self, namespace: &str) -> Api<SpiderEndpoint> {
        Api::namespaced(self.client.clone(), namespace)
    }

    fn kubevirt(&self, kind: &str, namespace: &str) -> Api<DynamicObject> {
        let resource = ApiResource::from_gvk(&GroupVersionKind::gvk("kubevirt.io", "v1", kind));
        Api::namespaced_with(self.client.clone(), namespace, &resource)
    }
}

impl ClusterApi for KubeApi {
    fn get_pool<'a>(&'a self, name: &'a str) -> BoxFuture<'a, ApiResult<Option<SpiderIPPool>>> {
        async move {
            Ok(Api::<SpiderIPPool>::all(self.client.clone())
                .get_opt(name)
                .await?)
        }
        .boxed()
    }

    fn write_pool_status<'a>(
        &'a self,
        name: &'a str,
        write: &'a PoolStatusWrite,
    ) -> BoxFuture<'a, ApiResult<SpiderIPPool>> {
        async move {
            let patch = json!({
                "metadata": {"resourceVersion": write.resource_version},
                "status": {"allocatedIPs": write.allocated_ips, "allocatedIPCount": write.allocated_ip_count},
            });
            let api = Api::<SpiderIPPool>::all(self.client.clone());
            Ok(api
                .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await?)
        }
        .boxed()
    }

    fn get_endpoint<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, ApiResult<Option<SpiderEndpoint>>> {
        async move { Ok(self.endpoints(namespace).get_opt(name).await?) }.boxed()
    }

    fn list_endpoints<'a>(
        &'a self,
        scope: EndpointScope<'a>,
    ) -> BoxFuture<'a, ApiResult<Vec<SpiderEndpoint>>> {
        async move {
            let list = match scope {
                EndpointScope::Node(label) => {
                    let selector = format!("{LABEL_NODE}={label}");
                    Api::<SpiderEndpoint>::all(self.client.clone())
                        .list(&ListParams::default().labels(&selector))
                        .await?
                }
                EndpointScope::Namespace(namespace) => {
                    self.endpoints(namespace).list(&ListParams::default()).await?
                }
            };
            Ok(list.items)
        }
        .boxed()
    }

    fn create_endpoint<'a>(
        &'a self,
        endpoint: &'a SpiderEndpoint,
    ) -> BoxFuture<'a, ApiResult<SpiderEndpoint>> {
        async move {
            let namespace = endpoint.metadata.namespace.as_deref().unwrap_or_default();
            Ok(self
                .endpoints(namespace)
                .create(&PostParams::default(), endpoint)
                .await?)
        }
        .boxed()
    }

    fn replace_endpoint<'a>(
        &'a self,
        endpoint: &'a SpiderEndpoint,
    ) -> BoxFuture<'a, ApiResult<SpiderEndpoint>> {
        async move {
            let namespace = endpoint.metadata.namespace.as_deref().unwrap_or_default();
            let name = endpoint.metadata.name.as_deref().unwrap_or_default();
            Ok(self
                .endpoints(namespace)
                .replace(name, &PostParams::default(), endpoint)
                .await?)
        }
        .boxed()
    }

    fn set_endpoint_container<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
        container_id: &'a str,
    ) -> BoxFuture<'a, ApiResult<()>> {
        async move {
            let patch = json!({"metadata": {"annotations": {ANNO_CONTAINER_ID: container_id}}});
            self.endpoints(namespace)
                .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
            Ok(())
        }
        .boxed()
    }

    fn remove_endpoint_finalizers<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
        resource_version: Option<&'a str>,
    ) -> BoxFuture<'a, ApiResult<()>> {
        async move {
            let patch = json!({"metadata": {"finalizers": null, "resourceVersion": resource_version}});
            self.endpoints(namespace)
                .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
            Ok(())
        }
        .boxed()
    }

    fn delete_endpoint<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
        uid: Option<&'a str>,
    ) -> BoxFuture<'a, ApiResult<()>> {
        async move {
            let params = DeleteParams {
                preconditions: uid.map(|uid| Preconditions {
                    uid: Some(uid.to_owned()),
                    resource_version: None,
                }),
                ..DeleteParams::default()
            };
            self.endpoints(namespace).delete(name, &params).await?;
            Ok(())
        }
        .boxed()
    }

    fn get_pod<'a>(&'a self, namespace: &'a str, name: &'a str) -> BoxFuture<'a, ApiResult<Option<Pod>>> {
        async move {
            Ok(Api::<Pod>::namespaced(self.client.clone(), namespace)
                .get_opt(name)
                .await?)
        }
        .boxed()
    }

    fn get_owner<'a>(
        &'a self,
        kind: OwnerKind,
        namespace: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, ApiResult<Option<ObjectMeta>>> {
        async move {
            let client = self.client.clone();
            let meta = match kind {
                OwnerKind::ReplicaSet => Api::<ReplicaSet>::namespaced(client, namespace)
                    .get_metadata_opt(name)
                    .await?
                    .map(|o| o.metadata),
                OwnerKind::Job => Api::<Job>::namespaced(client, namespace)
                    .get_metadata_opt(name)
                    .await?
                    .map(|o| o.metadata),
                OwnerKind::StatefulSet => Api::<StatefulSet>::namespaced(client, namespace)
                    .get_metadata_opt(name)
                    .await?
                    .map(|o| o.metadata),
                OwnerKind::VirtualMachineInstance | OwnerKind::VirtualMachine => {
                    match self
                        .kubevirt(kind.as_str(), namespace)
                        .get_metadata_opt(name)
                        .await
                    {
                        Ok(found) => found.map(|o| o.metadata),
                        // KubeVirt not installed: there are no VMs.
                        Err(::kube::Error::Api(s)) if s.code == 404 => None,
                        Err(e) => return Err(e.into()),
                    }
                }
            };
            Ok(meta)
        }
        .boxed()
    }

    fn get_nad<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, ApiResult<Option<NetworkAttachmentDefinition>>> {
        async move {
            Ok(
                Api::<NetworkAttachmentDefinition>::namespaced(self.client.clone(), namespace)
                    .get_opt(name)
                    .await?,
            )
        }
        .boxed()
    }
}
