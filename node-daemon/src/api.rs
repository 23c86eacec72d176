//! The narrow face of the API server the daemon's shell talks through: pool status reads and
//! writes, SpiderEndpoint reads and writes, pods, the owners of a pod's chain, and
//! NetworkAttachmentDefinitions. The watch caches ([`crate::store`]) are separate.
//!
//! One implementation talks to a real API server ([`kube::KubeApi`]); a deterministic in-memory one
//! with the API server's compare-and-swap semantics and injectable faults ([`fake::FakeApi`], with
//! the `fake` feature or in this crate's tests) drives the shell's unit tests; [`deadline::Deadline`]
//! puts a deadline on every call of either.

pub mod deadline;
pub mod kube;

#[cfg(any(test, feature = "fake"))]
pub mod fake;

use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use spiderpool_schema::{NetworkAttachmentDefinition, SpiderEndpoint, SpiderIPPool};

/// The result of one API call.
pub type ApiResult<T> = Result<T, ApiError>;

/// Why an API call failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The client or the API server said no (the status code, when there is one, is in the error).
    #[error(transparent)]
    Kube(#[from] ::kube::Error),
    /// No answer within the call's deadline.
    #[error("no answer from the API server within {0:?}")]
    TimedOut(std::time::Duration),
}

impl ApiError {
    /// The HTTP status the API server answered with, if it answered.
    pub fn status_code(&self) -> Option<u16> {
        match self {
            ApiError::Kube(::kube::Error::Api(status)) => Some(status.code),
            _ => None,
        }
    }

    /// `409 Conflict` on a write with a stale resourceVersion (not a create of an existing name).
    pub fn is_conflict(&self) -> bool {
        matches!(self, ApiError::Kube(::kube::Error::Api(s)) if s.code == 409 && s.reason != "AlreadyExists")
    }

    /// `409 AlreadyExists` on a create.
    pub fn is_already_exists(&self) -> bool {
        matches!(self, ApiError::Kube(::kube::Error::Api(s)) if s.code == 409 && s.reason == "AlreadyExists")
    }

    /// `404 Not Found`.
    pub fn is_not_found(&self) -> bool {
        self.status_code() == Some(404)
    }

    /// The API server refused the request for a reason retrying will not change: a 4xx other than
    /// 408 (timeout), 409 (conflict, decided again by the caller) and 429 (too many requests), e.g.
    /// 403 (the agent's RBAC is missing) or 422 (the object would be invalid).
    pub fn is_permanent(&self) -> bool {
        self.status_code()
            .is_some_and(|code| (400..500).contains(&code) && ![408, 409, 429].contains(&code))
    }
}

/// A write of a pool's `status.allocatedIPs` and `allocatedIPCount`, guarded by the resourceVersion
/// it was decided against (a merge patch of the status subresource: the API server refuses it with
/// 409 if the pool changed since).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolStatusWrite {
    /// The version the records were read at.
    pub resource_version: Option<String>,
    /// The encoded records; `None` removes them (an empty pool).
    pub allocated_ips: Option<String>,
    /// How many of them pods hold.
    pub allocated_ip_count: usize,
}

/// Which SpiderEndpoints a list returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndpointScope<'a> {
    /// Those of every namespace with label [`crate::ipam::endpoint::LABEL_NODE`] = this value.
    Node(&'a str),
    /// Every one of a namespace.
    Namespace(&'a str),
}

/// The owners a pod's chain may go through, read as metadata only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum OwnerKind {
    /// `apps/v1` ReplicaSet (owned by a Deployment).
    ReplicaSet,
    /// `batch/v1` Job (owned by a CronJob).
    Job,
    /// `apps/v1` StatefulSet.
    StatefulSet,
    /// `kubevirt.io/v1` VirtualMachineInstance.
    VirtualMachineInstance,
    /// `kubevirt.io/v1` VirtualMachine.
    VirtualMachine,
}

impl OwnerKind {
    /// The kind's name.
    pub fn as_str(self) -> &'static str {
        match self {
            OwnerKind::ReplicaSet => "ReplicaSet",
            OwnerKind::Job => "Job",
            OwnerKind::StatefulSet => "StatefulSet",
            OwnerKind::VirtualMachineInstance => "VirtualMachineInstance",
            OwnerKind::VirtualMachine => "VirtualMachine",
        }
    }
}

/// The API server, as far as the daemon uses it. Every call is one request.
pub trait ClusterApi: Send + Sync {
    /// A pool.
    fn get_pool<'a>(&'a self, name: &'a str) -> BoxFuture<'a, ApiResult<Option<SpiderIPPool>>>;

    /// Writes a pool's records ([`PoolStatusWrite`]); returns the pool as written.
    fn write_pool_status<'a>(
        &'a self,
        name: &'a str,
        write: &'a PoolStatusWrite,
    ) -> BoxFuture<'a, ApiResult<SpiderIPPool>>;

    /// A SpiderEndpoint.
    fn get_endpoint<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, ApiResult<Option<SpiderEndpoint>>>;

    /// SpiderEndpoints.
    fn list_endpoints<'a>(
        &'a self,
        scope: EndpointScope<'a>,
    ) -> BoxFuture<'a, ApiResult<Vec<SpiderEndpoint>>>;

    /// Creates a SpiderEndpoint (409 AlreadyExists if the name is taken).
    fn create_endpoint<'a>(
        &'a self,
        endpoint: &'a SpiderEndpoint,
    ) -> BoxFuture<'a, ApiResult<SpiderEndpoint>>;

    /// Replaces a SpiderEndpoint (with its status), guarded by its resourceVersion if it has one.
    fn replace_endpoint<'a>(
        &'a self,
        endpoint: &'a SpiderEndpoint,
    ) -> BoxFuture<'a, ApiResult<SpiderEndpoint>>;

    /// Sets the annotation naming the sandbox that holds the endpoint's addresses.
    fn set_endpoint_container<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
        container_id: &'a str,
    ) -> BoxFuture<'a, ApiResult<()>>;

    /// Removes every finalizer of a SpiderEndpoint, guarded by `resource_version` if given.
    fn remove_endpoint_finalizers<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
        resource_version: Option<&'a str>,
    ) -> BoxFuture<'a, ApiResult<()>>;

    /// Deletes a SpiderEndpoint; with `uid`, only that object (a conflict when the name now holds
    /// another one).
    fn delete_endpoint<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
        uid: Option<&'a str>,
    ) -> BoxFuture<'a, ApiResult<()>>;

    /// A pod.
    fn get_pod<'a>(&'a self, namespace: &'a str, name: &'a str) -> BoxFuture<'a, ApiResult<Option<Pod>>>;

    /// The metadata of an owner in a pod's chain; `None` also when the kind is not installed
    /// (KubeVirt).
    fn get_owner<'a>(
        &'a self,
        kind: OwnerKind,
        namespace: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, ApiResult<Option<ObjectMeta>>>;

    /// A NetworkAttachmentDefinition.
    fn get_nad<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, ApiResult<Option<NetworkAttachmentDefinition>>>;
}
