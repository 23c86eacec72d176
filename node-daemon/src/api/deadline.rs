//! A deadline on every API call: kube's client has no read timeout by default, so a call to an API
//! server that accepted the connection and then went silent (a blackholed network, a stopped
//! process) would hang its caller forever, and a pool writer with it. Every call through [`Deadline`]
//! ends within its timeout ([`ApiError::TimedOut`]), and tells [`Health`] whether the API server
//! answered.

use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt as _;
use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use spiderpool_schema::{NetworkAttachmentDefinition, SpiderEndpoint, SpiderIPPool};

use super::{ApiError, ApiResult, ClusterApi, EndpointScope, OwnerKind, PoolStatusWrite};
use crate::health::Health;

/// [`ClusterApi`] with a deadline on every call.
pub struct Deadline {
    inner: Arc<dyn ClusterApi>,
    timeout: Duration,
    health: Health,
}

impl Deadline {
    /// Calls `inner`, each call ending within `timeout`, reporting to `health`.
    pub fn new(inner: Arc<dyn ClusterApi>, timeout: Duration, health: Health) -> Self {
        Deadline {
            inner,
            timeout,
            health,
        }
    }

    fn bound<'a, T: Send + 'a>(&'a self, call: BoxFuture<'a, ApiResult<T>>) -> BoxFuture<'a, ApiResult<T>> {
        async move {
            let result = tokio::time::timeout(self.timeout, call)
                .await
                .unwrap_or(Err(ApiError::TimedOut(self.timeout)));
            let answered = match &result {
                Ok(_) => true,
                Err(e) => e.status_code().is_some(),
            };
            self.health.api_call(answered);
            result
        }
        .boxed()
    }
}

impl ClusterApi for Deadline {
    fn get_pool<'a>(&'a self, name: &'a str) -> BoxFuture<'a, ApiResult<Option<SpiderIPPool>>> {
        self.bound(self.inner.get_pool(name))
    }

    fn write_pool_status<'a>(
        &'a self,
        name: &'a str,
        write: &'a PoolStatusWrite,
    ) -> BoxFuture<'a, ApiResult<SpiderIPPool>> {
        self.bound(self.inner.write_pool_status(name, write))
    }

    fn get_endpoint<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, ApiResult<Option<SpiderEndpoint>>> {
        self.bound(self.inner.get_endpoint(namespace, name))
    }

    fn list_endpoints<'a>(
        &'a self,
        scope: EndpointScope<'a>,
    ) -> BoxFuture<'a, ApiResult<Vec<SpiderEndpoint>>> {
        self.bound(self.inner.list_endpoints(scope))
    }

    fn create_endpoint<'a>(
        &'a self,
        endpoint: &'a SpiderEndpoint,
    ) -> BoxFuture<'a, ApiResult<SpiderEndpoint>> {
        self.bound(self.inner.create_endpoint(endpoint))
    }

    fn replace_endpoint<'a>(
        &'a self,
        endpoint: &'a SpiderEndpoint,
    ) -> BoxFuture<'a, ApiResult<SpiderEndpoint>> {
        self.bound(self.inner.replace_endpoint(endpoint))
    }

    fn set_endpoint_container<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
        container_id: &'a str,
    ) -> BoxFuture<'a, ApiResult<()>> {
        self.bound(self.inner.set_endpoint_container(namespace, name, container_id))
    }

    fn remove_endpoint_finalizers<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
        resource_version: Option<&'a str>,
    ) -> BoxFuture<'a, ApiResult<()>> {
        self.bound(
            self.inner
                .remove_endpoint_finalizers(namespace, name, resource_version),
        )
    }

    fn delete_endpoint<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
        uid: Option<&'a str>,
    ) -> BoxFuture<'a, ApiResult<()>> {
        self.bound(self.inner.delete_endpoint(namespace, name, uid))
    }

    fn get_pod<'a>(&'a self, namespace: &'a str, name: &'a str) -> BoxFuture<'a, ApiResult<Option<Pod>>> {
        self.bound(self.inner.get_pod(namespace, name))
    }

    fn get_owner<'a>(
        &'a self,
        kind: OwnerKind,
        namespace: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, ApiResult<Option<ObjectMeta>>> {
        self.bound(self.inner.get_owner(kind, namespace, name))
    }

    fn get_nad<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, ApiResult<Option<NetworkAttachmentDefinition>>> {
        self.bound(self.inner.get_nad(namespace, name))
    }
}
