//! From an AdmissionReview to the rule of its kind and back, without I/O: which endpoint serves which
//! kind (upstream's paths), what each endpoint needs to read from the cluster first, and the response.

use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, Operation};
use serde::de::DeserializeOwned;
use spiderpool_schema::{
    Problem, SpiderCoordinator, SpiderIPPool, SpiderMultusConfig, SpiderNetwork, SpiderReservedIP,
    SpiderSubnet,
};

use super::{
    Change, Decision, PatchError, Snapshot, coordinator, ippool, multusconfig, network, reservedip, subnet,
};

/// A kind the webhooks admit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// SpiderIPPool (cluster-scoped).
    IpPool,
    /// SpiderSubnet (cluster-scoped).
    Subnet,
    /// SpiderReservedIP (cluster-scoped).
    ReservedIp,
    /// SpiderMultusConfig (namespaced).
    MultusConfig,
    /// SpiderCoordinator (cluster-scoped).
    Coordinator,
    /// SpiderNetwork (cluster-scoped; ours, validation only).
    Network,
}

impl Kind {
    /// Every kind, in registration order.
    pub const ALL: [Kind; 6] = [
        Kind::IpPool,
        Kind::Subnet,
        Kind::ReservedIp,
        Kind::MultusConfig,
        Kind::Coordinator,
        Kind::Network,
    ];

    /// The kind's name (`SpiderIPPool`).
    pub fn name(self) -> &'static str {
        match self {
            Kind::IpPool => "SpiderIPPool",
            Kind::Subnet => "SpiderSubnet",
            Kind::ReservedIp => "SpiderReservedIP",
            Kind::MultusConfig => "SpiderMultusConfig",
            Kind::Coordinator => "SpiderCoordinator",
            Kind::Network => "SpiderNetwork",
        }
    }

    /// The resource (plural) name (`spiderippools`).
    pub fn plural(self) -> &'static str {
        match self {
            Kind::IpPool => "spiderippools",
            Kind::Subnet => "spidersubnets",
            Kind::ReservedIp => "spiderreservedips",
            Kind::MultusConfig => "spidermultusconfigs",
            Kind::Coordinator => "spidercoordinators",
            Kind::Network => "spidernetworks",
        }
    }

    /// Whether objects of the kind live in a namespace.
    pub fn namespaced(self) -> bool {
        self == Kind::MultusConfig
    }

    /// Whether the kind has a mutating webhook (every upstream kind; SpiderNetwork is only validated:
    /// its defaults are the compiler's business, and GitOps tools would see a mutated object as drift).
    pub fn mutated(self) -> bool {
        self != Kind::Network
    }
}

/// Mutating or validating.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Mode {
    /// Defaults and normalisation, as a JSON patch.
    Mutate,
    /// Allow or refuse.
    Validate,
}

/// One webhook endpoint: a mode for a kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Endpoint {
    /// Mutating or validating.
    pub mode: Mode,
    /// The kind admitted.
    pub kind: Kind,
}

impl Endpoint {
    /// Every endpoint served.
    pub fn all() -> Vec<Endpoint> {
        let mut all = Vec::new();
        for kind in Kind::ALL {
            if kind.mutated() {
                all.push(Endpoint {
                    mode: Mode::Mutate,
                    kind,
                });
            }
            all.push(Endpoint {
                mode: Mode::Validate,
                kind,
            });
        }
        all
    }

    /// Upstream's (controller-runtime's) path: `/mutate-spiderpool-spidernet-io-v2beta1-spiderippool`.
    pub fn path(self) -> String {
        let mode = match self.mode {
            Mode::Mutate => "mutate",
            Mode::Validate => "validate",
        };
        format!(
            "/{mode}-spiderpool-spidernet-io-v2beta1-{}",
            self.kind.name().to_ascii_lowercase()
        )
    }

    /// Whether the rule compares against every SpiderIPPool.
    pub fn needs_pools(self) -> bool {
        self.mode == Mode::Validate && matches!(self.kind, Kind::IpPool | Kind::Subnet)
    }

    /// Whether the rule reads every SpiderSubnet (the pool mutation adopts a pool into its subnet).
    pub fn needs_subnets(self) -> bool {
        self.needs_pools() || (self.mode == Mode::Mutate && self.kind == Kind::IpPool)
    }
}

/// Why a request could not be decided (the response then refuses it with this message).
#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    /// CREATE or UPDATE without the object.
    #[error("the admission request carries no object")]
    MissingObject,
    /// The object does not decode as its kind; the problem names the field.
    #[error("{problem}")]
    Decode {
        /// Where and why.
        problem: Problem,
    },
    /// The mutation could not be expressed as a patch.
    #[error(transparent)]
    Patch(#[from] PatchError),
}

/// Decodes an admitted object, or says which field did not decode and why, in the `path: message` form
/// of every other refusal (`spec.ipVersion: invalid type: string "ipv4", expected i64`;
/// `spec.subnet: is required`).
fn decode<K: DeserializeOwned>(object: &DynamicObject) -> Result<K, ReviewError> {
    let value = serde_json::to_value(object).map_err(|e| ReviewError::Decode {
        problem: Problem {
            path: "metadata".into(),
            message: e.to_string(),
        },
    })?;
    serde_path_to_error::deserialize(value).map_err(|error| {
        let path = error.path().to_string();
        let inner = error.into_inner().to_string();
        let problem = match inner
            .strip_prefix("missing field `")
            .and_then(|rest| rest.strip_suffix('`'))
        {
            Some(field) => Problem {
                path: join_path(&path, field),
                message: "is required".into(),
            },
            None => Problem {
                path: if path == "." { "object".into() } else { path },
                message: inner,
            },
        };
        ReviewError::Decode { problem }
    })
}

/// `parent.field`, or `field` at the root (serde_path_to_error writes the root as `.`).
fn join_path(parent: &str, field: &str) -> String {
    if parent.is_empty() || parent == "." {
        field.to_string()
    } else {
        format!("{parent}.{field}")
    }
}

/// The typed object and old object of a request; `None` for operations that are not admitted (DELETE,
/// CONNECT: the webhooks are not registered for them).
fn typed<K: DeserializeOwned>(
    request: &AdmissionRequest<DynamicObject>,
) -> Result<Option<(K, Option<K>)>, ReviewError> {
    if !matches!(request.operation, Operation::Create | Operation::Update) {
        return Ok(None);
    }
    let object = request.object.as_ref().ok_or(ReviewError::MissingObject)?;
    let new = decode(object)?;
    let old = match (&request.operation, &request.old_object) {
        (Operation::Update, Some(old)) => Some(decode(old)?),
        _ => None,
    };
    Ok(Some((new, old)))
}

fn change<'a, K>(new: &'a K, old: Option<&'a K>) -> Change<'a, K> {
    match old {
        Some(old) => Change::Update { new, old },
        None => Change::Create(new),
    }
}

/// The `(namespace, name)` of the NetworkAttachmentDefinition a SpiderMultusConfig request would
/// generate, which the validating rule needs to see; `None` for other requests.
pub fn nad_to_read(
    endpoint: Endpoint,
    request: &AdmissionRequest<DynamicObject>,
) -> Option<(String, String)> {
    if endpoint
        != (Endpoint {
            mode: Mode::Validate,
            kind: Kind::MultusConfig,
        })
    {
        return None;
    }
    // An object that does not decode has nothing to read; `decide` says why it is refused.
    let Ok(Some((smc, _))) = typed::<SpiderMultusConfig>(request) else {
        return None;
    };
    let namespace = smc
        .metadata
        .namespace
        .clone()
        .or_else(|| request.namespace.clone())
        .unwrap_or_default();
    Some((namespace, smc.net_attach_def_name()))
}

/// Decides one request with the rule of its endpoint.
///
/// An object that does not decode as its kind is refused by the validating webhook with the field and
/// the reason. The mutating webhook runs before the API server checks the object against the CRD's
/// schema, so it leaves such an object unchanged: the schema check then refuses it (naming the field,
/// with every other schema problem), or else the validating webhook does.
pub fn decide(
    endpoint: Endpoint,
    request: &AdmissionRequest<DynamicObject>,
    snapshot: &Snapshot,
) -> Result<Decision, ReviewError> {
    match decide_typed(endpoint, request, snapshot) {
        Err(ReviewError::Decode { .. }) if endpoint.mode == Mode::Mutate => Ok(Decision::default()),
        Err(ReviewError::Decode { problem }) => Ok(Decision::from_problems(vec![problem])),
        other => other,
    }
}

fn decide_typed(
    endpoint: Endpoint,
    request: &AdmissionRequest<DynamicObject>,
    snapshot: &Snapshot,
) -> Result<Decision, ReviewError> {
    let kind = endpoint.kind;
    let decision = match (endpoint.mode, kind) {
        (Mode::Mutate, Kind::IpPool) => match typed::<SpiderIPPool>(request)? {
            Some((new, _)) => ippool::admit_mutation(&new, snapshot)?,
            None => Decision::default(),
        },
        (Mode::Mutate, Kind::Subnet) => match typed::<SpiderSubnet>(request)? {
            Some((new, _)) => subnet::admit_mutation(&new)?,
            None => Decision::default(),
        },
        (Mode::Mutate, Kind::ReservedIp) => match typed::<SpiderReservedIP>(request)? {
            Some((new, _)) => reservedip::admit_mutation(&new)?,
            None => Decision::default(),
        },
        (Mode::Mutate, Kind::MultusConfig) => match typed::<SpiderMultusConfig>(request)? {
            Some((new, _)) => multusconfig::admit_mutation(&new)?,
            None => Decision::default(),
        },
        (Mode::Mutate, Kind::Coordinator) => match typed::<SpiderCoordinator>(request)? {
            Some((new, _)) => coordinator::admit_mutation(&new)?,
            None => Decision::default(),
        },
        (Mode::Mutate, Kind::Network) => Decision::default(),
        (Mode::Validate, Kind::IpPool) => match typed::<SpiderIPPool>(request)? {
            Some((new, old)) => {
                Decision::from_problems(ippool::validate(change(&new, old.as_ref()), snapshot))
            }
            None => Decision::default(),
        },
        (Mode::Validate, Kind::Subnet) => match typed::<SpiderSubnet>(request)? {
            Some((new, old)) => {
                Decision::from_problems(subnet::validate(change(&new, old.as_ref()), snapshot))
            }
            None => Decision::default(),
        },
        (Mode::Validate, Kind::ReservedIp) => match typed::<SpiderReservedIP>(request)? {
            Some((new, old)) => Decision::from_problems(reservedip::validate(change(&new, old.as_ref()))),
            None => Decision::default(),
        },
        (Mode::Validate, Kind::MultusConfig) => match typed::<SpiderMultusConfig>(request)? {
            Some((new, old)) => {
                multusconfig::validate(change(&new, old.as_ref()), snapshot.existing_nad.as_ref())
            }
            None => Decision::default(),
        },
        (Mode::Validate, Kind::Coordinator) => match typed::<SpiderCoordinator>(request)? {
            Some((new, old)) => Decision::from_problems(coordinator::validate(change(&new, old.as_ref()))),
            None => Decision::default(),
        },
        (Mode::Validate, Kind::Network) => match typed::<SpiderNetwork>(request)? {
            Some((new, old)) => Decision::from_problems(network::validate(change(&new, old.as_ref()))),
            None => Decision::default(),
        },
    };
    Ok(decision)
}

/// The response to `request` for a decision (or for the reason it could not be decided).
pub fn respond(
    request: &AdmissionRequest<DynamicObject>,
    decision: Result<Decision, ReviewError>,
) -> AdmissionResponse {
    let response = AdmissionResponse::from(request);
    let decision = match decision {
        Ok(decision) => decision,
        Err(error) => return response.deny(error.to_string()),
    };
    if !decision.allowed() {
        let mut response = response.deny(decision.message());
        response.result.code = 422;
        response.result.reason = "Invalid".to_string();
        return response;
    }
    let mut response = response;
    if !decision.warnings.is_empty() {
        response.warnings = Some(decision.warnings);
    }
    if decision.patch.0.is_empty() {
        return response;
    }
    match response.clone().with_patch(decision.patch) {
        Ok(patched) => patched,
        Err(error) => response.deny(format!("cannot encode the mutation: {error}")),
    }
}

/// [`decide`] then [`respond`].
pub fn review(
    endpoint: Endpoint,
    request: &AdmissionRequest<DynamicObject>,
    snapshot: &Snapshot,
) -> AdmissionResponse {
    respond(request, decide(endpoint, request, snapshot))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::core::admission::AdmissionReview;
    use serde_json::json;

    fn request(
        kind: &str,
        plural: &str,
        operation: &str,
        object: serde_json::Value,
        old: serde_json::Value,
    ) -> AdmissionRequest<DynamicObject> {
        let review: AdmissionReview<DynamicObject> = serde_json::from_value(json!({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {
                "uid": "1234",
                "kind": {"group": "spiderpool.spidernet.io", "version": "v2beta1", "kind": kind},
                "resource": {"group": "spiderpool.spidernet.io", "version": "v2beta1", "resource": plural},
                "name": object["metadata"]["name"],
                "operation": operation,
                "userInfo": {"username": "admin"},
                "object": object,
                "oldObject": old,
            }
        }))
        .unwrap();
        review.try_into().unwrap()
    }

    fn pool(name: &str, subnet: &str, ips: &[&str]) -> serde_json::Value {
        json!({"apiVersion": "spiderpool.spidernet.io/v2beta1", "kind": "SpiderIPPool",
               "metadata": {"name": name}, "spec": {"subnet": subnet, "ips": ips}})
    }

    #[test]
    fn paths_follow_upstream() {
        let paths: Vec<String> = Endpoint::all().into_iter().map(Endpoint::path).collect();
        assert!(paths.contains(&"/mutate-spiderpool-spidernet-io-v2beta1-spiderippool".to_string()));
        assert!(paths.contains(&"/validate-spiderpool-spidernet-io-v2beta1-spiderreservedip".to_string()));
        assert!(paths.contains(&"/validate-spiderpool-spidernet-io-v2beta1-spidermultusconfig".to_string()));
        assert!(paths.contains(&"/validate-spiderpool-spidernet-io-v2beta1-spidernetwork".to_string()));
        assert!(!paths.contains(&"/mutate-spiderpool-spidernet-io-v2beta1-spidernetwork".to_string()));
        assert_eq!(paths.len(), 11);
    }

    #[test]
    fn mutation_response_carries_a_json_patch() {
        let req = request(
            "SpiderIPPool",
            "spiderippools",
            "CREATE",
            pool("a", "10.6.0.0/16", &["10.6.0.1"]),
            json!(null),
        );
        let endpoint = Endpoint {
            mode: Mode::Mutate,
            kind: Kind::IpPool,
        };
        let response = review(endpoint, &req, &Snapshot::default());
        assert!(response.allowed);
        assert_eq!(response.uid, "1234");
        let patch: serde_json::Value = serde_json::from_slice(response.patch.as_ref().unwrap()).unwrap();
        assert!(patch.to_string().contains("/spec/ipVersion"), "{patch}");
        let wire = serde_json::to_value(response.into_review()).unwrap();
        assert_eq!(wire["response"]["patchType"], "JSONPatch");
    }

    #[test]
    fn refusal_names_the_field() {
        let req = request(
            "SpiderIPPool",
            "spiderippools",
            "CREATE",
            pool("a", "10.6.0.0/16", &["10.6.0.1"]),
            json!(null),
        );
        let endpoint = Endpoint {
            mode: Mode::Validate,
            kind: Kind::IpPool,
        };
        let snapshot = Snapshot {
            pools: vec![serde_json::from_value(pool("b", "10.6.0.0/24", &["10.6.0.2"])).unwrap()],
            ..Snapshot::default()
        };
        let response = review(endpoint, &req, &snapshot);
        assert!(!response.allowed);
        assert!(
            response.result.message.starts_with("spec.subnet: "),
            "{}",
            response.result.message
        );
        assert!(response.patch.is_none());
    }

    #[test]
    fn update_uses_the_old_object_and_delete_is_allowed() {
        let mut old = pool("a", "10.6.0.0/16", &["10.6.0.1"]);
        old["status"] = json!({"allocatedIPs": "{\"10.6.0.1\":{\"pod\":\"ns/p\",\"podUid\":\"u\"}}"});
        let new = pool("a", "10.6.0.0/16", &["10.6.0.2"]);
        let endpoint = Endpoint {
            mode: Mode::Validate,
            kind: Kind::IpPool,
        };
        let response = review(
            endpoint,
            &request("SpiderIPPool", "spiderippools", "UPDATE", new, old.clone()),
            &Snapshot::default(),
        );
        assert!(!response.allowed);
        assert!(
            response
                .result
                .message
                .contains("spec.ips: cannot remove 10.6.0.1"),
            "{}",
            response.result.message
        );

        let mut delete = request("SpiderIPPool", "spiderippools", "DELETE", old.clone(), old);
        delete.object = None;
        assert!(review(endpoint, &delete, &Snapshot::default()).allowed);
    }

    #[test]
    fn undecodable_objects_are_refused_naming_the_field() {
        let refusal = |mode: Mode, spec: serde_json::Value| {
            let bad = json!({"apiVersion": "spiderpool.spidernet.io/v2beta1", "kind": "SpiderIPPool",
                             "metadata": {"name": "x"}, "spec": spec});
            let endpoint = Endpoint {
                mode,
                kind: Kind::IpPool,
            };
            review(
                endpoint,
                &request("SpiderIPPool", "spiderippools", "CREATE", bad, json!(null)),
                &Snapshot::default(),
            )
        };
        let response = refusal(
            Mode::Validate,
            json!({"subnet": "10.0.0.0/24", "ipVersion": "ipv4"}),
        );
        assert!(!response.allowed);
        assert_eq!(response.result.code, 422);
        assert!(
            response
                .result
                .message
                .starts_with("spec.ipVersion: invalid type: string \"ipv4\""),
            "{}",
            response.result.message
        );
        let response = refusal(Mode::Validate, json!({"default": true}));
        assert_eq!(response.result.message, "spec.subnet: is required");
        let response = refusal(Mode::Validate, json!({"subnet": "10.0.0.0/24", "ips": [1]}));
        assert!(
            response.result.message.starts_with("spec.ips[0]: "),
            "{}",
            response.result.message
        );
        // The mutating webhook leaves it to the API server's schema check (which names the field too).
        let response = refusal(Mode::Mutate, json!({"subnet": 42}));
        assert!(response.allowed);
        assert!(response.patch.is_none());
    }

    #[test]
    fn multus_config_names_its_nad() {
        let smc = json!({"apiVersion": "spiderpool.spidernet.io/v2beta1", "kind": "SpiderMultusConfig",
                         "metadata": {"name": "m", "namespace": "ns",
                                      "annotations": {"multus.spidernet.io/cr-name": "custom-name"}},
                         "spec": {"cniType": "macvlan", "macvlan": {"master": ["eth0"]}}});
        let req = request(
            "SpiderMultusConfig",
            "spidermultusconfigs",
            "CREATE",
            smc,
            json!(null),
        );
        let endpoint = Endpoint {
            mode: Mode::Validate,
            kind: Kind::MultusConfig,
        };
        assert_eq!(
            nad_to_read(endpoint, &req),
            Some(("ns".to_string(), "custom-name".to_string()))
        );
        assert_eq!(
            nad_to_read(
                Endpoint {
                    mode: Mode::Mutate,
                    ..endpoint
                },
                &req
            ),
            None
        );
    }

    #[test]
    fn invalid_topologies_are_refused_with_paths() {
        let net = json!({"apiVersion": "spiderpool.spidernet.io/v2beta1", "kind": "SpiderNetwork",
                         "metadata": {"name": "Bad_Name"},
                         "spec": {"subnets": [{"name": "s", "ipv4": {"cidr": "10.0.0.0/24"}}],
                                  "racks": [{"name": "r", "nodeSelector": {"matchLabels": {"a": "b"}}}]}});
        let endpoint = Endpoint {
            mode: Mode::Validate,
            kind: Kind::Network,
        };
        let response = review(
            endpoint,
            &request("SpiderNetwork", "spidernetworks", "CREATE", net, json!(null)),
            &Snapshot::default(),
        );
        assert!(!response.allowed);
        assert!(
            response.result.message.contains("metadata.name: "),
            "{}",
            response.result.message
        );
    }
}
