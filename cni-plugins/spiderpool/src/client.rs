//! The node daemon's IPAM API as this plugin uses it: a trait (so the command handlers can be
//! unit-tested against an in-memory daemon) and its implementation on the common HTTP client.

use spiderpool_agent_api::{
    IpamAddArgs, IpamAddResponse, IpamBatchDelArgs, IpamDelArgs, IpamGcArgs, IpamGcResponse, PATH_GC,
    PATH_HEALTHY, PATH_IP, PATH_IPS, PATH_WORKLOAD_ENDPOINT, WorkloadEndpointStatus,
};
pub use spiderpool_cni_common::http::{ClientError, UnixClient};
use spiderpool_cni_common::http::{decode, encode_query_value, status_error};

/// The daemon's IPAM API as the plugin uses it. A trait so that the command handlers can be
/// unit-tested against an in-memory daemon.
pub trait Daemon {
    /// `POST /v1/ipam/ip`.
    fn add(&self, args: &IpamAddArgs) -> Result<IpamAddResponse, ClientError>;
    /// `DELETE /v1/ipam/ip`.
    fn del(&self, args: &IpamDelArgs) -> Result<(), ClientError>;
    /// `GET /v1/workloadendpoint`; `None` when the daemon records nothing for the pod (404).
    fn workload_endpoint(
        &self,
        pod_namespace: &str,
        pod_name: &str,
    ) -> Result<Option<WorkloadEndpointStatus>, ClientError>;
    /// `POST /v1/ipam/gc`.
    fn gc(&self, args: &IpamGcArgs) -> Result<IpamGcResponse, ClientError>;
    /// `GET /v1/ipam/healthy`.
    fn healthy(&self) -> Result<(), ClientError>;
    /// `DELETE /v1/ipam/ips`: release every address of a pod (after a conflict).
    fn release_all(&self, args: &IpamBatchDelArgs) -> Result<(), ClientError>;
}

impl Daemon for UnixClient {
    fn add(&self, args: &IpamAddArgs) -> Result<IpamAddResponse, ClientError> {
        self.call("POST", PATH_IP, Some(args))
    }

    fn del(&self, args: &IpamDelArgs) -> Result<(), ClientError> {
        let response = self.call_raw("DELETE", PATH_IP, Some(args))?;
        if (200..300).contains(&response.status) {
            Ok(())
        } else {
            Err(status_error(&response))
        }
    }

    fn workload_endpoint(
        &self,
        pod_namespace: &str,
        pod_name: &str,
    ) -> Result<Option<WorkloadEndpointStatus>, ClientError> {
        let target = format!(
            "{PATH_WORKLOAD_ENDPOINT}?podNamespace={}&podName={}",
            encode_query_value(pod_namespace),
            encode_query_value(pod_name)
        );
        let response = self.call_raw("GET", &target, None::<&()>)?;
        match response.status {
            404 => Ok(None),
            200..300 => decode(&response.body).map(Some),
            _ => Err(status_error(&response)),
        }
    }

    fn gc(&self, args: &IpamGcArgs) -> Result<IpamGcResponse, ClientError> {
        self.call("POST", PATH_GC, Some(args))
    }

    fn healthy(&self) -> Result<(), ClientError> {
        let response = self.call_raw("GET", PATH_HEALTHY, None::<&()>)?;
        if response.status == 200 {
            Ok(())
        } else {
            Err(status_error(&response))
        }
    }

    fn release_all(&self, args: &IpamBatchDelArgs) -> Result<(), ClientError> {
        let response = self.call_raw("DELETE", PATH_IPS, Some(args))?;
        if (200..300).contains(&response.status) {
            Ok(())
        } else {
            Err(status_error(&response))
        }
    }
}
