//! CNI DEL and the release of every address of a pod (`DELETE /v1/ipam/ips`, after an address
//! conflict): gather the pod (if it still exists) and its endpoint; decide ([`release::judge_del`]);
//! release (for a sticky pod, unless its owner still keeps the addresses).

use spiderpool_agent_api::{IpamBatchDelArgs, IpamDelArgs};

use super::Allocator;
use crate::clock;
use crate::error::IpamError;
use crate::ipam::add;
use crate::ipam::endpoint::container_of;
use crate::ipam::owner::{self, Stickiness};
use crate::ipam::release::{self, DelFacts, DelVerdict, ReleaseAllVerdict};
use crate::owner_chain;

impl Allocator {
    /// CNI DEL.
    pub async fn del(&self, args: &IpamDelArgs) -> Result<(), IpamError> {
        let started = clock::now();
        let work = {
            let (allocator, args) = (self.clone(), args.clone());
            async move { allocator.del_inner(&args).await }
        };
        let result = self
            .past_its_deadline(work, || {
                IpamError::Timeout("release did not finish in time".to_owned())
            })
            .await;
        self.inner.metrics.release(
            clock::now().duration_since(started),
            result.as_ref().err().map(IpamError::reason),
        );
        result
    }

    /// What a pod's owner means for its addresses, if the pod exists.
    fn pod_stickiness(&self, pod: Option<&k8s_openapi::api::core::v1::Pod>) -> Option<Stickiness> {
        let config = &self.inner.config;
        pod.map(|p| owner::stickiness(p, config.enable_statefulset, config.enable_kubevirt))
    }

    async fn del_inner(&self, args: &IpamDelArgs) -> Result<(), IpamError> {
        add::missing(&[
            ("podNamespace (K8S_POD_NAMESPACE)", &args.pod_namespace),
            ("podName (K8S_POD_NAME)", &args.pod_name),
            ("containerID", &args.container_id),
        ])?;
        let config = &self.inner.config;
        let namespace = args.pod_namespace.as_str();
        // Gather: the pod, if it still exists (a pod bound to this node is in the cache, possibly a
        // moment after it was deleted: its owner, which is what matters here, is the same; one that
        // is not is read, to be sure it is gone)…
        let pod = self.pod(namespace, &args.pod_name, &args.pod_uid).await?;
        let from_pod = self.pod_stickiness(pod.as_ref());
        // …its endpoint, under the endpoint's lock…
        let mut endpoint_name = from_pod
            .as_ref()
            .unwrap_or(&Stickiness::None)
            .endpoint_name(&args.pod_name)
            .to_owned();
        let mut guard = self.lock_for(namespace, &endpoint_name).lock_owned().await;
        let mut found = self.inner.endpoints.get(namespace, &endpoint_name).await?;
        if found.is_none()
            && pod.is_none()
            && config.enable_kubevirt
            && let Some(vm) = self
                .inner
                .endpoints
                .vm_endpoint_of_sandbox(namespace, &args.container_id)
                .await?
        {
            // A gone VM launcher pod: its endpoint is named after the VM; find it by the sandbox and
            // read it again under the VM's lock.
            drop(guard);
            endpoint_name = vm;
            guard = self.lock_for(namespace, &endpoint_name).lock_owned().await;
            found = self.inner.endpoints.get(namespace, &endpoint_name).await?;
        }
        let _guard = guard;
        let Some(ep) = found else {
            tracing::info!(endpoint = endpoint_name, "no SpiderEndpoint: nothing to release");
            return Ok(());
        };
        let status = ep.status.clone().unwrap_or_default();
        let stickiness = release::stickiness_of(
            from_pod,
            &status,
            &args.pod_name,
            &endpoint_name,
            config.enable_statefulset,
            config.enable_kubevirt,
        );
        // Decide.
        let verdict = release::judge_del(&DelFacts {
            container_id: &args.container_id,
            args_uid: &args.pod_uid,
            pod_uid: pod.as_ref().and_then(|p| p.metadata.uid.as_deref()),
            holder_container: container_of(&ep),
            endpoint_uid: &status.current.uid,
            sticky: stickiness.is_sticky(),
        });
        // Act.
        match verdict {
            DelVerdict::Release => self.release_endpoint(&ep).await,
            DelVerdict::ReleaseUnlessRetained => {
                // Gather whether the sticky owner still keeps the addresses.
                if owner_chain::retains(self.inner.api.as_ref(), &stickiness, namespace).await? {
                    tracing::info!(
                        endpoint = endpoint_name,
                        "keeping the addresses of a StatefulSet member / KubeVirt VM"
                    );
                    return Ok(());
                }
                self.release_endpoint(&ep).await
            }
            DelVerdict::OtherSandbox(holder) => {
                tracing::info!(
                    holder,
                    "DEL from a sandbox that no longer holds the addresses; nothing to release"
                );
                Ok(())
            }
            DelVerdict::OtherIncarnation(holder_uid) => {
                tracing::info!(
                    endpoint = endpoint_name,
                    holder_uid,
                    "the addresses belong to another incarnation of the pod: nothing to release"
                );
                Ok(())
            }
        }
    }

    /// `DELETE /v1/ipam/ips`: release every address of a pod (after an address conflict).
    pub async fn release_all(&self, args: &IpamBatchDelArgs) -> Result<(), IpamError> {
        add::missing(&[("podNamespace", &args.pod_namespace), ("podName", &args.pod_name)])?;
        // Gather the pod's owner; decide whether this may release at all.
        let pod = self.pod(&args.pod_namespace, &args.pod_name, "").await?;
        let stickiness = self.pod_stickiness(pod.as_ref()).unwrap_or(Stickiness::None);
        if let Some(why) =
            release::release_all_forbidden(stickiness.is_sticky(), args.is_release_conflict_ips)
        {
            return Err(IpamError::Forbidden(why.to_owned()));
        }
        // Gather the endpoint under its lock; decide; release.
        let endpoint_name = stickiness.endpoint_name(&args.pod_name).to_owned();
        let lock = self.lock_for(&args.pod_namespace, &endpoint_name);
        let _guard = lock.lock().await;
        let Some(ep) = self
            .inner
            .endpoints
            .get(&args.pod_namespace, &endpoint_name)
            .await?
        else {
            return Ok(());
        };
        let endpoint_uid = ep
            .status
            .as_ref()
            .map(|s| s.current.uid.as_str())
            .unwrap_or_default();
        match release::judge_release_all(&args.pod_uid, endpoint_uid) {
            ReleaseAllVerdict::Release => self.release_endpoint(&ep).await,
            ReleaseAllVerdict::OtherIncarnation => Ok(()),
        }
    }
}
