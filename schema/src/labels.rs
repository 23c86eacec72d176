//! Every label and annotation key that more than one part of the project reads or writes, in one place:
//! upstream's keys on pools and subnets (the operator writes them, the node daemon and the webhooks
//! match on them) and the keys the topology compiler puts on everything it generates (the operator
//! prunes and wakes by them, `spiderctl` and the pod webhook read them).
//!
//! Pod annotations that steer allocation are in [`crate::annotations`]; they are part of the pod's
//! request, not labels of our objects.

// === Upstream's pool and subnet labels ===

/// Pool label: the SpiderSubnet the pool belongs to.
pub const LABEL_OWNER_SPIDER_SUBNET: &str = "ipam.spidernet.io/owner-spider-subnet";
/// Pool label: group and version of the application, `apps_v1` (`v1` for the core group).
pub const LABEL_OWNER_APP_GV: &str = "ipam.spidernet.io/owner-application-gv";
/// Pool label: kind of the application (`Deployment`, ...).
pub const LABEL_OWNER_APP_KIND: &str = "ipam.spidernet.io/owner-application-kind";
/// Pool label: namespace of the application.
pub const LABEL_OWNER_APP_NAMESPACE: &str = "ipam.spidernet.io/owner-application-namespace";
/// Pool label: name of the application.
pub const LABEL_OWNER_APP_NAME: &str = "ipam.spidernet.io/owner-application-name";
/// Pool label: UID of the application the pool was made (or last reused) for.
pub const LABEL_OWNER_APP_UID: &str = "ipam.spidernet.io/owner-application-uid";
/// Pool label: the pod interface an automatic pool serves.
pub const LABEL_INTERFACE: &str = "ipam.spidernet.io/interface";
/// Pool label: `IPv4` or `IPv6`.
pub const LABEL_IP_VERSION: &str = "ipam.spidernet.io/ip-version";
/// Pool label: `true` when the pool goes with its application.
pub const LABEL_IPPOOL_RECLAIM: &str = "ipam.spidernet.io/ippool-reclaim";
/// Pool label: the pool's subnet in label form (`10-6-0-0-16`), set by the pool webhook.
pub const LABEL_IPPOOL_CIDR: &str = "ipam.spidernet.io/ippool-cidr";
/// Subnet label: the subnet's CIDR in label form, set by the subnet webhook.
pub const LABEL_SUBNET_CIDR: &str = "ipam.spidernet.io/subnet-cidr";

/// podAffinity key of an automatic (or topology fixed-address) pool: API group of the application
/// (empty for the core group). The allocator compares these with the pod's top controller.
pub const AFFINITY_APP_API_GROUP: &str = "ipam.spidernet.io/app-api-group";
/// podAffinity key: API version of the application.
pub const AFFINITY_APP_API_VERSION: &str = "ipam.spidernet.io/app-api-version";
/// podAffinity key: kind of the application.
pub const AFFINITY_APP_KIND: &str = "ipam.spidernet.io/app-kind";
/// podAffinity key: namespace of the application.
pub const AFFINITY_APP_NAMESPACE: &str = "ipam.spidernet.io/app-namespace";
/// podAffinity key: name of the application.
pub const AFFINITY_APP_NAME: &str = "ipam.spidernet.io/app-name";

// === What the topology compiler puts on generated objects ===

/// Label on every generated object: the SpiderNetwork it comes from. The operator prunes by it.
pub const LABEL_TOPOLOGY: &str = "spiderpool.spidernet.io/topology";
/// Label: the subnet entry a pool or reserved-IP object comes from.
pub const LABEL_SUBNET: &str = "spiderpool.spidernet.io/subnet";
/// Label: the rack entry a pool or task comes from.
pub const LABEL_RACK: &str = "spiderpool.spidernet.io/rack";
/// Label: the network entry a multus config comes from.
pub const LABEL_NETWORK: &str = "spiderpool.spidernet.io/network";
/// Label: the app binding a fixed-address pool comes from.
pub const LABEL_APP: &str = "spiderpool.spidernet.io/app";
/// Label: the pod interface a fixed-address pool is for.
pub const LABEL_POOL_INTERFACE: &str = "spiderpool.spidernet.io/interface";
/// Label: the VLAN a pool's subnet is tagged with (pools have no VLAN field since upstream v2beta1).
pub const LABEL_VLAN: &str = "spiderpool.spidernet.io/vlan";
/// Standard label naming the manager of the object.
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
/// Value of [`LABEL_MANAGED_BY`] on everything the operator generates.
pub const MANAGED_BY: &str = "spiderpool-operator";
/// Annotation: the spec path of the entry an object was rendered from, for people reading the object.
pub const ANNOTATION_SOURCE: &str = "spiderpool.spidernet.io/source";
/// Annotation on every child the operator applies: a hash of the rendered object, which tells a
/// reconcile (and `spiderctl diff`) that the live object holds exactly this rendering.
pub const ANNOTATION_RENDERED_HASH: &str = "spiderpool.spidernet.io/rendered-hash";
/// Pod annotation the pod webhook writes: `<topology>/<binding>` of the app binding it applied, so
/// `kubectl describe pod` tells where the pod's networks come from.
pub const ANNOTATION_APP_BINDING: &str = "spiderpool.spidernet.io/app-binding";
