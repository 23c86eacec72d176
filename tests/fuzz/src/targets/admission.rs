//! AdmissionReview bodies as the API server sends them to the webhooks (any user who may create a
//! Spider* object controls the object inside): decoded as the webhook server decodes them, then
//! decided and answered by every endpoint of the request's kind (both, for an unknown kind: every
//! endpoint), against a snapshot with a pool and a subnet to overlap with.

use std::sync::OnceLock;

use kube::api::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionReview};
use spiderpool_operator::webhook::Snapshot;
use spiderpool_operator::webhook::review::{Endpoint, nad_to_read, review};
use spiderpool_schema::{SpiderIPPool, SpiderSubnet};

use super::{Shape, Target};

pub const TARGET: Target = Target {
    name: "admission",
    run,
    shape: Shape::Json,
    dictionary: &[
        b"\"SpiderIPPool\"",
        b"\"SpiderSubnet\"",
        b"\"SpiderReservedIP\"",
        b"\"SpiderMultusConfig\"",
        b"\"SpiderCoordinator\"",
        b"\"SpiderNetwork\"",
        b"\"UPDATE\"",
        b"\"oldObject\"",
        b"\"ipVersion\"",
        b"\"excludeIPs\"",
        b"\"routes\"",
        b"\"10.0.0.0/8\"",
        b"\"fd00::/8\"",
    ],
};

fn snapshot() -> &'static Snapshot {
    static SNAPSHOT: OnceLock<Snapshot> = OnceLock::new();
    SNAPSHOT.get_or_init(|| {
        let pool: Option<SpiderIPPool> = serde_json::from_value(serde_json::json!({
            "apiVersion": "spiderpool.spidernet.io/v2beta1", "kind": "SpiderIPPool",
            "metadata": {"name": "existing-v4"},
            "spec": {"subnet": "10.6.0.0/16", "ips": ["10.6.0.10-10.6.0.200"], "gateway": "10.6.0.1"}
        }))
        .ok();
        let subnet: Option<SpiderSubnet> = serde_json::from_value(serde_json::json!({
            "apiVersion": "spiderpool.spidernet.io/v2beta1", "kind": "SpiderSubnet",
            "metadata": {"name": "existing-subnet"},
            "spec": {"subnet": "fd00:6::/64", "ips": ["fd00:6::10-fd00:6::ff"]}
        }))
        .ok();
        Snapshot {
            pools: pool.into_iter().collect(),
            subnets: subnet.into_iter().collect(),
            existing_nad: None,
        }
    })
}

fn run(data: &[u8]) -> String {
    let review_in: AdmissionReview<DynamicObject> = match serde_json::from_slice(data) {
        Ok(review) => review,
        Err(error) => {
            return format!(
                "undecodable: {}",
                error.to_string().chars().take(40).collect::<String>()
            );
        }
    };
    let request: AdmissionRequest<DynamicObject> = match review_in.try_into() {
        Ok(request) => request,
        Err(error) => return format!("no request: {error}"),
    };
    let endpoints: Vec<Endpoint> = Endpoint::all()
        .into_iter()
        .filter(|e| e.kind.name() == request.kind.kind)
        .collect();
    let endpoints = if endpoints.is_empty() {
        Endpoint::all()
    } else {
        endpoints
    };
    let mut out = Vec::new();
    for endpoint in endpoints {
        let _ = nad_to_read(endpoint, &request);
        let response = review(endpoint, &request, snapshot());
        // The answer goes back to the API server as JSON: it must encode.
        let encoded = serde_json::to_vec(&response.clone().into_review());
        assert!(
            encoded.is_ok(),
            "an admission response does not encode: {encoded:?}"
        );
        out.push(format!(
            "{:?} {:?} allowed={} code={} patched={}",
            endpoint.mode,
            endpoint.kind,
            response.allowed,
            response.result.code,
            response.patch.is_some()
        ));
    }
    out.join("; ")
}
