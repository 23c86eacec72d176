//! A pod's owners as the API server has them: the top controller (Deployment through ReplicaSet,
//! CronJob through Job, VM through VMI) and whether a sticky owner still keeps the pod's addresses.

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

use crate::api::{ClusterApi, OwnerKind};
use crate::error::IpamError;
use crate::ipam::owner::{self, AppRef, Stickiness};

/// The owner above a direct controller that counts as the application: which kind to read, and the
/// kind of its controller to look for.
fn parent_of(direct: &OwnerReference) -> Option<(OwnerKind, &'static str)> {
    match (direct.kind.as_str(), direct.api_version.as_str()) {
        ("ReplicaSet", "apps/v1") => Some((OwnerKind::ReplicaSet, "Deployment")),
        ("Job", "batch/v1") => Some((OwnerKind::Job, "CronJob")),
        ("VirtualMachineInstance", "kubevirt.io/v1") => {
            Some((OwnerKind::VirtualMachineInstance, "VirtualMachine"))
        }
        _ => None,
    }
}

/// The pod's top controller, falling back to the direct controller when a hop cannot be read.
pub async fn top_controller(api: &dyn ClusterApi, pod: &Pod) -> AppRef {
    let Some(direct) = owner::controller_ref(pod) else {
        return owner::bare_pod_app(pod);
    };
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let parent = match parent_of(direct) {
        Some((kind, parent_kind)) => api
            .get_owner(kind, &namespace, &direct.name)
            .await
            .ok()
            .flatten()
            .and_then(|meta| meta.owner_references)
            .and_then(|refs| {
                refs.into_iter()
                    .find(|r| r.controller == Some(true) && r.kind == parent_kind)
            }),
        None => None,
    };
    let top = parent.as_ref().unwrap_or(direct);
    AppRef {
        api_version: top.api_version.clone(),
        kind: top.kind.clone(),
        namespace,
        name: top.name.clone(),
        uid: top.uid.clone(),
    }
}

/// Whether a sticky owner still wants the addresses kept: a StatefulSet that exists and is not
/// being deleted (whatever the member's ordinal), a VMI or VM that exists and is not being deleted.
pub async fn retains(
    api: &dyn ClusterApi,
    stickiness: &Stickiness,
    namespace: &str,
) -> Result<bool, IpamError> {
    match stickiness {
        Stickiness::None => Ok(false),
        Stickiness::StatefulSet { set, .. } => {
            let found = api
                .get_owner(OwnerKind::StatefulSet, namespace, set)
                .await
                .map_err(IpamError::api("reading the StatefulSet"))?;
            Ok(found.is_some_and(|meta| meta.deletion_timestamp.is_none()))
        }
        Stickiness::KubeVirt { vmi } => {
            for kind in [OwnerKind::VirtualMachineInstance, OwnerKind::VirtualMachine] {
                let found = api
                    .get_owner(kind, namespace, vmi)
                    .await
                    .map_err(IpamError::api("reading KubeVirt objects"))?;
                if found.is_some_and(|meta| meta.deletion_timestamp.is_none()) {
                    return Ok(true);
                }
            }
            Ok(false)
        }
    }
}
