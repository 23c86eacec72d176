//! The SpiderSubnet auto-pool vocabulary shared by the operator (which creates and scales automatic
//! pools) and the node daemon (which finds the pool of a pod's application): the pod-template
//! annotations `ipam.spidernet.io/subnet`, `subnets`, `ippool-ip-number` and `ippool-reclaim`, the
//! labels upstream puts on automatic pools (keys in [`crate::labels`]), their names and their pod
//! affinity.
//!
//! Everything here is pure. Parse errors name the annotation and say what is wrong.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use serde::Deserialize;
use spiderpool_ipmath::IpFamily;

use crate::labels::{
    AFFINITY_APP_API_GROUP, AFFINITY_APP_API_VERSION, AFFINITY_APP_KIND, AFFINITY_APP_NAME,
    AFFINITY_APP_NAMESPACE, LABEL_INTERFACE, LABEL_IP_VERSION, LABEL_IPPOOL_CIDR, LABEL_IPPOOL_RECLAIM,
    LABEL_OWNER_APP_GV, LABEL_OWNER_APP_KIND, LABEL_OWNER_APP_NAME, LABEL_OWNER_APP_NAMESPACE,
    LABEL_OWNER_APP_UID, LABEL_OWNER_SPIDER_SUBNET,
};

/// Pod annotation: the SpiderSubnet(s) of one interface, `{"interface":"eth0","ipv4":["s4"],"ipv6":["s6"]}`.
pub const ANNO_SUBNET: &str = "ipam.spidernet.io/subnet";
/// Pod annotation: the SpiderSubnets of several interfaces, a JSON list of [`ANNO_SUBNET`] items. Wins
/// over [`ANNO_SUBNET`].
pub const ANNO_SUBNETS: &str = "ipam.spidernet.io/subnets";
/// Pod annotation (also put on automatic pools): the size of the automatic pool, `+N` (replicas + N) or
/// `N` (exactly N).
pub const ANNO_IPPOOL_IP_NUMBER: &str = "ipam.spidernet.io/ippool-ip-number";
/// Pod annotation: `true` (default) deletes the automatic pool with its application.
pub const ANNO_IPPOOL_RECLAIM: &str = "ipam.spidernet.io/ippool-reclaim";

/// Pod annotation: the pod interface that gets the default route (e.g. `net1`), read by the node daemon
/// into the `coordinator` plugin's `podDefaultRouteNIC`; written by the topology compiler for app
/// bindings that name one. Wins over the SpiderCoordinator's `podDefaultRouteNIC`.
pub const ANNO_DEFAULT_ROUTE_NIC: &str = "ipam.spidernet.io/default-route-nic";

/// The interface a single-interface [`ANNO_SUBNET`] means when it names none.
pub const DEFAULT_INTERFACE: &str = "eth0";

/// Longest object name (DNS-1123 subdomain).
const MAX_NAME_LENGTH: usize = 253;
/// How many characters of the application UID end an automatic pool's name.
const UID_SUFFIX_LENGTH: usize = 5;

/// What is wrong with a pod's subnet annotations.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("annotation {annotation}: {reason}")]
pub struct AnnotationError {
    /// The annotation at fault.
    pub annotation: &'static str,
    /// Why it was refused.
    pub reason: String,
}

impl AnnotationError {
    fn new(annotation: &'static str, reason: impl Into<String>) -> Self {
        Self {
            annotation,
            reason: reason.into(),
        }
    }
}

/// The subnets of one pod interface (only the first subnet of each family counts, as upstream).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubnetItem {
    /// Pod interface, e.g. `eth0`.
    pub interface: String,
    /// SpiderSubnet for IPv4, if any.
    pub ipv4: Option<String>,
    /// SpiderSubnet for IPv6, if any.
    pub ipv6: Option<String>,
}

impl SubnetItem {
    /// The subnet of one family.
    pub fn subnet(&self, family: IpFamily) -> Option<&str> {
        match family {
            IpFamily::V4 => self.ipv4.as_deref(),
            IpFamily::V6 => self.ipv6.as_deref(),
        }
    }
}

/// How big an automatic pool is (`ipam.spidernet.io/ippool-ip-number`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpNumber {
    /// `+N`: the application's replicas plus N spare addresses.
    Flexible(u32),
    /// `N`: exactly N addresses (required for third-party controllers, whose replicas are unknown).
    Fixed(u32),
}

impl IpNumber {
    /// Parses `+N` or `N` (N a non-negative integer).
    pub fn parse(text: &str) -> Result<Self, AnnotationError> {
        let trimmed = text.trim();
        let (flexible, digits) = match trimmed.strip_prefix('+') {
            Some(rest) => (true, rest),
            None => (false, trimmed),
        };
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(AnnotationError::new(
                ANNO_IPPOOL_IP_NUMBER,
                format!(
                    "`{text}` is neither `+N` (replicas plus N) nor `N` (exactly N) with N a non-negative integer"
                ),
            ));
        }
        let n: u32 = digits
            .parse()
            .map_err(|_| AnnotationError::new(ANNO_IPPOOL_IP_NUMBER, format!("`{text}` is too large")))?;
        Ok(if flexible {
            Self::Flexible(n)
        } else {
            Self::Fixed(n)
        })
    }

    /// The pool size for an application with `replicas` pods.
    pub fn desired_ips(self, replicas: u32) -> u32 {
        match self {
            Self::Flexible(spare) => replicas.saturating_add(spare),
            Self::Fixed(n) => n,
        }
    }

    /// The annotation value (`+N` or `N`), as put on the automatic pool.
    pub fn annotation_value(self) -> String {
        match self {
            Self::Flexible(n) => format!("+{n}"),
            Self::Fixed(n) => n.to_string(),
        }
    }
}

/// What a pod template asks of SpiderSubnet: the subnets per interface, the pool size and whether the
/// pools go with the application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubnetRequest {
    /// One item per interface, in the annotation's order.
    pub items: Vec<SubnetItem>,
    /// Pool size.
    pub ip_number: IpNumber,
    /// Whether the automatic pools are deleted with the application.
    pub reclaim: bool,
}

/// Wire shape of one annotation item.
#[derive(Deserialize)]
struct RawItem {
    #[serde(default)]
    interface: Option<String>,
    #[serde(default)]
    ipv4: Option<Vec<String>>,
    #[serde(default)]
    ipv6: Option<Vec<String>>,
}

/// Parses the subnet annotations of a pod (template). `Ok(None)` when neither [`ANNO_SUBNETS`] nor
/// [`ANNO_SUBNET`] is present: the pod does not use SpiderSubnet.
///
/// `default_spare_ips` is the spare-address count used when [`ANNO_IPPOOL_IP_NUMBER`] is absent (Helm's
/// `ipam.spiderSubnet.autoPool.defaultRedundantIPNumber`, default 1). Upstream's Helm chart writes that
/// value under a key its Go code never reads, so upstream always uses 0 (reference bug 13.5); we honour
/// the configured value.
pub fn parse_subnet_request(
    annotations: &BTreeMap<String, String>,
    default_spare_ips: u32,
) -> Result<Option<SubnetRequest>, AnnotationError> {
    let Some((_, items)) = parse_subnet_items(annotations)? else {
        return Ok(None);
    };
    let ip_number = match annotations.get(ANNO_IPPOOL_IP_NUMBER) {
        Some(text) => IpNumber::parse(text)?,
        None => IpNumber::Flexible(default_spare_ips),
    };
    let reclaim = parse_reclaim(annotations)?;
    Ok(Some(SubnetRequest {
        items,
        ip_number,
        reclaim,
    }))
}

/// The SpiderSubnets a pod asks for, per interface: [`ANNO_SUBNETS`] when present, else
/// [`ANNO_SUBNET`]; `Ok(None)` when the pod has neither. Returns the annotation used and one item per
/// interface, each with its interface name resolved. The operator (which creates the automatic pools)
/// and the node daemon (which allocates from them) both read the annotations through this function,
/// so they never disagree on what a pod asks for.
///
/// The rules:
/// - [`ANNO_SUBNETS`] is a non-empty list; either every item names its interface or none does.
///   Unnamed items are the interfaces Multus gives by position: `eth0`, `net1`, `net2`, ... (the same
///   rule as unnamed `ipam.spidernet.io/ippools` items). An interface is listed once, and one subnet
///   serves one interface (upstream's rule).
/// - [`ANNO_SUBNET`] is one item; without `interface` it is for `eth0`.
/// - Each item names an IPv4 and/or an IPv6 subnet; only the first of each family counts (upstream);
///   empty names are refused. Unknown keys are ignored, as upstream's JSON decoding does.
pub fn parse_subnet_items(
    annotations: &BTreeMap<String, String>,
) -> Result<Option<(&'static str, Vec<SubnetItem>)>, AnnotationError> {
    if let Some(text) = annotations.get(ANNO_SUBNETS) {
        let raw: Vec<RawItem> = serde_json::from_str(text).map_err(|e| {
            AnnotationError::new(
                ANNO_SUBNETS,
                format!("not a JSON list of {{\"interface\",\"ipv4\",\"ipv6\"}} items: {e}"),
            )
        })?;
        if raw.is_empty() {
            return Err(AnnotationError::new(ANNO_SUBNETS, "lists no interface"));
        }
        let named = raw
            .iter()
            .filter(|item| item.interface.as_deref().is_some_and(|i| !i.is_empty()))
            .count();
        if named != 0 && named != raw.len() {
            return Err(AnnotationError::new(
                ANNO_SUBNETS,
                "either every item names its interface or none does (unnamed items are eth0, net1, net2, ... by position)",
            ));
        }
        let mut items = Vec::with_capacity(raw.len());
        for (index, item) in raw.into_iter().enumerate() {
            let interface = match item.interface.filter(|i| !i.is_empty()) {
                Some(interface) => interface,
                None if index == 0 => DEFAULT_INTERFACE.to_string(),
                None => format!("net{index}"),
            };
            items.push(convert_item(
                ANNO_SUBNETS,
                index,
                interface,
                item.ipv4,
                item.ipv6,
            )?);
        }
        check_duplicates(&items)?;
        return Ok(Some((ANNO_SUBNETS, items)));
    }
    let Some(text) = annotations.get(ANNO_SUBNET) else {
        return Ok(None);
    };
    let raw: RawItem = serde_json::from_str(text).map_err(|e| {
        AnnotationError::new(
            ANNO_SUBNET,
            format!("not a JSON object {{\"interface\",\"ipv4\",\"ipv6\"}}: {e}"),
        )
    })?;
    let interface = raw
        .interface
        .filter(|i| !i.is_empty())
        .unwrap_or_else(|| DEFAULT_INTERFACE.to_string());
    Ok(Some((
        ANNO_SUBNET,
        vec![convert_item(ANNO_SUBNET, 0, interface, raw.ipv4, raw.ipv6)?],
    )))
}

/// [`ANNO_IPPOOL_RECLAIM`]: `true` unless it says otherwise. Accepts Go's `strconv.ParseBool` spellings.
pub fn parse_reclaim(annotations: &BTreeMap<String, String>) -> Result<bool, AnnotationError> {
    match annotations.get(ANNO_IPPOOL_RECLAIM).map(|s| s.trim()) {
        None => Ok(true),
        Some("true" | "True" | "TRUE" | "t" | "T" | "1") => Ok(true),
        Some("false" | "False" | "FALSE" | "f" | "F" | "0") => Ok(false),
        Some(other) => Err(AnnotationError::new(
            ANNO_IPPOOL_RECLAIM,
            format!("`{other}` is not `true` or `false`"),
        )),
    }
}

fn convert_item(
    annotation: &'static str,
    index: usize,
    interface: String,
    ipv4: Option<Vec<String>>,
    ipv6: Option<Vec<String>>,
) -> Result<SubnetItem, AnnotationError> {
    let first = |list: Option<Vec<String>>, family: &str| -> Result<Option<String>, AnnotationError> {
        match list.and_then(|l| l.into_iter().next()) {
            None => Ok(None),
            Some(name) if name.trim().is_empty() => Err(AnnotationError::new(
                annotation,
                format!("item {index} ({interface}): the {family} subnet name is empty"),
            )),
            Some(name) => Ok(Some(name)),
        }
    };
    let ipv4 = first(ipv4, "ipv4")?;
    let ipv6 = first(ipv6, "ipv6")?;
    if ipv4.is_none() && ipv6.is_none() {
        return Err(AnnotationError::new(
            annotation,
            format!("item {index} ({interface}) names neither an ipv4 nor an ipv6 subnet"),
        ));
    }
    Ok(SubnetItem {
        interface,
        ipv4,
        ipv6,
    })
}

fn check_duplicates(items: &[SubnetItem]) -> Result<(), AnnotationError> {
    for (i, a) in items.iter().enumerate() {
        for b in &items[..i] {
            if a.interface == b.interface {
                return Err(AnnotationError::new(
                    ANNO_SUBNETS,
                    format!("interface `{}` is listed twice", a.interface),
                ));
            }
            for family in [IpFamily::V4, IpFamily::V6] {
                if let (Some(x), Some(y)) = (a.subnet(family), b.subnet(family))
                    && x == y
                {
                    return Err(AnnotationError::new(
                        ANNO_SUBNETS,
                        format!(
                            "subnet `{x}` serves both `{}` and `{}`; each interface needs its own subnet",
                            b.interface, a.interface
                        ),
                    ));
                }
            }
        }
    }
    Ok(())
}

/// The application an automatic pool belongs to: a pod's top controller.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AppRef {
    /// `apps/v1`, `batch/v1`, `v1`, `apps.kruise.io/v1alpha1`, ...
    pub api_version: String,
    /// `Deployment`, `StatefulSet`, ...
    pub kind: String,
    /// Namespace of the application.
    pub namespace: String,
    /// Name of the application.
    pub name: String,
    /// UID of the application.
    pub uid: String,
}

impl AppRef {
    /// Group and version as a label value: `apps_v1`, or `v1` for the core group.
    pub fn label_gv(&self) -> String {
        self.api_version.replacen('/', "_", 1)
    }

    /// `(group, version)`; the group is empty for the core group.
    pub fn group_version(&self) -> (&str, &str) {
        match self.api_version.split_once('/') {
            Some((group, version)) => (group, version),
            None => ("", self.api_version.as_str()),
        }
    }

    /// Upstream's application key in a subnet's `controlledIPPools`:
    /// `<group>_<version>_<kind>_<namespace>_<name>` (`apps_v1_Deployment_default_demo`).
    pub fn application_key(&self) -> String {
        format!(
            "{}_{}_{}_{}",
            self.label_gv(),
            self.kind,
            self.namespace,
            self.name
        )
    }

    /// Upstream's five `ipam.spidernet.io/app-*` labels of this application: what a pool's podAffinity
    /// names to select the application's pods (automatic pools, and the topology compiler's
    /// fixed-address pools); the allocator matches them against the pod's top controller.
    pub fn affinity_labels(&self) -> BTreeMap<String, String> {
        let (group, version) = self.group_version();
        BTreeMap::from([
            (AFFINITY_APP_API_GROUP.to_string(), group.to_string()),
            (AFFINITY_APP_API_VERSION.to_string(), version.to_string()),
            (AFFINITY_APP_KIND.to_string(), self.kind.clone()),
            (AFFINITY_APP_NAMESPACE.to_string(), self.namespace.clone()),
            (AFFINITY_APP_NAME.to_string(), self.name.clone()),
        ])
    }

    /// Reads the application back from an automatic pool's labels; `None` for other pools.
    pub fn from_pool_labels(labels: &BTreeMap<String, String>) -> Option<Self> {
        let get = |key: &str| labels.get(key).cloned();
        let gv = get(LABEL_OWNER_APP_GV)?;
        let api_version = match gv.split_once('_') {
            Some((group, version)) => format!("{group}/{version}"),
            None => gv,
        };
        Some(Self {
            api_version,
            kind: get(LABEL_OWNER_APP_KIND)?,
            namespace: get(LABEL_OWNER_APP_NAMESPACE)?,
            name: get(LABEL_OWNER_APP_NAME)?,
            uid: get(LABEL_OWNER_APP_UID).unwrap_or_default(),
        })
    }
}

/// `IPv4` / `IPv6`, the value of [`LABEL_IP_VERSION`].
pub fn ip_version_label(family: IpFamily) -> &'static str {
    match family {
        IpFamily::V4 => "IPv4",
        IpFamily::V6 => "IPv6",
    }
}

/// Name of an automatic pool: `auto<4|6>-<app name>-<interface>-<first 5 characters of the last UID
/// segment>`, lower-cased, with the application name shortened so the whole fits in 253 characters.
pub fn auto_pool_name(app_name: &str, family: IpFamily, interface: &str, app_uid: &str) -> String {
    let last = app_uid.rsplit('-').next().unwrap_or_default();
    let suffix: String = last.chars().take(UID_SUFFIX_LENGTH).collect();
    // "auto4" + three '-' separators.
    let room = MAX_NAME_LENGTH.saturating_sub(suffix.len() + 8 + interface.len());
    let name: String = app_name.chars().take(room).collect();
    format!(
        "auto{}-{}-{}-{}",
        family.as_version(),
        name.to_lowercase(),
        interface.to_lowercase(),
        suffix.to_lowercase()
    )
}

/// The labels that find the automatic pool of an application's interface and family, whatever its
/// subnet: what the node daemon matches when it waits for the pool of a pod.
pub fn auto_pool_match_labels(app: &AppRef, interface: &str, family: IpFamily) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_OWNER_APP_GV.to_string(), app.label_gv()),
        (LABEL_OWNER_APP_KIND.to_string(), app.kind.clone()),
        (LABEL_OWNER_APP_NAMESPACE.to_string(), app.namespace.clone()),
        (LABEL_OWNER_APP_NAME.to_string(), app.name.clone()),
        (LABEL_INTERFACE.to_string(), interface.to_string()),
        (LABEL_IP_VERSION.to_string(), ip_version_label(family).to_string()),
    ])
}

/// All labels of an automatic pool (upstream's set): the match labels plus the subnet, the application
/// UID, the reclaim flag and the CIDR label.
pub fn auto_pool_labels(
    subnet_name: &str,
    subnet_cidr_label: &str,
    app: &AppRef,
    interface: &str,
    family: IpFamily,
    reclaim: bool,
) -> BTreeMap<String, String> {
    let mut labels = auto_pool_match_labels(app, interface, family);
    labels.insert(LABEL_OWNER_SPIDER_SUBNET.to_string(), subnet_name.to_string());
    labels.insert(LABEL_OWNER_APP_UID.to_string(), app.uid.clone());
    labels.insert(LABEL_IPPOOL_RECLAIM.to_string(), reclaim.to_string());
    labels.insert(LABEL_IPPOOL_CIDR.to_string(), subnet_cidr_label.to_string());
    labels
}

/// The podAffinity of an automatic pool: the five `ipam.spidernet.io/app-*` keys, which the allocator
/// compares with the pod's top controller (not with pod labels).
pub fn auto_pool_pod_affinity(app: &AppRef) -> LabelSelector {
    LabelSelector {
        match_labels: Some(app.affinity_labels()),
        match_expressions: None,
    }
}

/// Pods a Job runs at once, as upstream sizes a Job's pool: `completions` if set, else `parallelism`,
/// else 1 (a 0 counts as 1).
pub fn job_pod_count(parallelism: Option<i32>, completions: Option<i32>) -> u32 {
    let chosen = completions.or(parallelism).unwrap_or(1);
    u32::try_from(chosen).ok().filter(|n| *n > 0).unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn annos(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn deployment() -> AppRef {
        AppRef {
            api_version: "apps/v1".into(),
            kind: "Deployment".into(),
            namespace: "default".into(),
            name: "Demo".into(),
            uid: "8fe0b2a1-1111-2222-3333-4444c5d6e7f8".into(),
        }
    }

    #[test]
    fn no_annotation_means_no_request() {
        assert_eq!(parse_subnet_request(&annos(&[]), 1), Ok(None));
        assert_eq!(
            parse_subnet_request(&annos(&[(ANNO_IPPOOL_IP_NUMBER, "2")]), 1),
            Ok(None)
        );
    }

    #[test]
    fn single_subnet_defaults() {
        let req = parse_subnet_request(&annos(&[(ANNO_SUBNET, r#"{"ipv4":["s4","other"]}"#)]), 1)
            .unwrap()
            .unwrap();
        assert_eq!(
            req.items,
            vec![SubnetItem {
                interface: "eth0".into(),
                ipv4: Some("s4".into()),
                ipv6: None
            }]
        );
        // Bug 13.5: the configured default spare count is used, not 0.
        assert_eq!(req.ip_number, IpNumber::Flexible(1));
        assert!(req.reclaim);
    }

    #[test]
    fn multiple_subnets_win_and_are_checked() {
        let req = parse_subnet_request(
            &annos(&[
                (ANNO_SUBNET, r#"{"ipv4":["ignored"]}"#),
                (
                    ANNO_SUBNETS,
                    r#"[{"interface":"eth0","ipv4":["a"],"ipv6":["a6"]},{"interface":"net1","ipv4":["b"]}]"#,
                ),
                (ANNO_IPPOOL_IP_NUMBER, "5"),
                (ANNO_IPPOOL_RECLAIM, "false"),
            ]),
            0,
        )
        .unwrap()
        .unwrap();
        assert_eq!(req.items.len(), 2);
        assert_eq!(req.items[1].interface, "net1");
        assert_eq!(req.items[0].subnet(IpFamily::V6), Some("a6"));
        assert_eq!(req.ip_number, IpNumber::Fixed(5));
        assert!(!req.reclaim);

        let err = |value: &str| parse_subnet_request(&annos(&[(ANNO_SUBNETS, value)]), 0).unwrap_err();
        let e = err(r#"[{"interface":"eth0","ipv4":["a"]},{"interface":"eth0","ipv4":["b"]}]"#);
        assert_eq!(e.annotation, ANNO_SUBNETS);
        assert!(e.reason.contains("listed twice"), "{e}");
        let e = err(r#"[{"interface":"eth0","ipv4":["a"]},{"interface":"net1","ipv4":["a"]}]"#);
        assert!(e.reason.contains("serves both"), "{e}");
        assert!(
            err(r#"[{"interface":"eth0","ipv4":["a"]},{"ipv4":["b"]}]"#)
                .reason
                .contains("every item names its interface or none")
        );
        assert!(err(r#"[{"interface":"eth0"}]"#).reason.contains("neither"));
        assert!(
            err(r#"[{"interface":"eth0","ipv4":[""]}]"#)
                .reason
                .contains("empty")
        );
        assert!(err("[]").reason.contains("no interface"));
        assert!(err("nonsense").reason.contains("JSON"));
    }

    #[test]
    fn unnamed_subnets_items_are_the_interfaces_multus_gives_by_position() {
        let parse = |value: &str| parse_subnet_items(&annos(&[(ANNO_SUBNETS, value)]));
        let (annotation, items) = parse(r#"[{"ipv4":["a"]},{"ipv4":["b"],"ipv6":["b6"]},{"ipv6":["c6"]}]"#)
            .unwrap()
            .unwrap();
        assert_eq!(annotation, ANNO_SUBNETS);
        let names: Vec<&str> = items.iter().map(|i| i.interface.as_str()).collect();
        assert_eq!(names, ["eth0", "net1", "net2"]);
        // One unnamed item is eth0, as for the single `subnet` annotation.
        let (_, items) = parse(r#"[{"ipv4":["a"]}]"#).unwrap().unwrap();
        assert_eq!(items[0].interface, "eth0");
        // Unknown keys are ignored, as upstream's JSON decoding does.
        let (_, items) = parse(r#"[{"interface":"net1","ipv4":["a"],"vlan":3}]"#)
            .unwrap()
            .unwrap();
        assert_eq!(items[0].ipv4.as_deref(), Some("a"));
        assert_eq!(parse_subnet_items(&annos(&[])), Ok(None));
    }

    #[test]
    fn bad_single_annotation_names_itself() {
        let e = parse_subnet_request(&annos(&[(ANNO_SUBNET, "{")]), 0).unwrap_err();
        assert_eq!(e.annotation, ANNO_SUBNET);
        assert!(e.to_string().starts_with("annotation ipam.spidernet.io/subnet:"));
        let e = parse_subnet_request(&annos(&[(ANNO_SUBNET, "{}")]), 0).unwrap_err();
        assert!(e.reason.contains("neither"));
    }

    #[test]
    fn ip_number_forms() {
        assert_eq!(IpNumber::parse("+2"), Ok(IpNumber::Flexible(2)));
        assert_eq!(IpNumber::parse("+0"), Ok(IpNumber::Flexible(0)));
        assert_eq!(IpNumber::parse("3"), Ok(IpNumber::Fixed(3)));
        for bad in ["", "+", "-1", "++1", "1+", "two", "+-1", "99999999999"] {
            let e = IpNumber::parse(bad).unwrap_err();
            assert_eq!(e.annotation, ANNO_IPPOOL_IP_NUMBER, "{bad}");
        }
        assert_eq!(IpNumber::Flexible(2).desired_ips(3), 5);
        assert_eq!(IpNumber::Fixed(2).desired_ips(3), 2);
        assert_eq!(IpNumber::Flexible(u32::MAX).desired_ips(3), u32::MAX);
        assert_eq!(IpNumber::Flexible(1).annotation_value(), "+1");
        assert_eq!(IpNumber::Fixed(4).annotation_value(), "4");
        let e = parse_subnet_request(
            &annos(&[(ANNO_SUBNET, r#"{"ipv4":["s"]}"#), (ANNO_IPPOOL_IP_NUMBER, "x")]),
            0,
        )
        .unwrap_err();
        assert_eq!(e.annotation, ANNO_IPPOOL_IP_NUMBER);
    }

    #[test]
    fn reclaim_forms() {
        assert_eq!(parse_reclaim(&annos(&[])), Ok(true));
        assert_eq!(parse_reclaim(&annos(&[(ANNO_IPPOOL_RECLAIM, "0")])), Ok(false));
        assert_eq!(parse_reclaim(&annos(&[(ANNO_IPPOOL_RECLAIM, "True")])), Ok(true));
        let e = parse_reclaim(&annos(&[(ANNO_IPPOOL_RECLAIM, "yes")])).unwrap_err();
        assert_eq!(e.annotation, ANNO_IPPOOL_RECLAIM);
    }

    #[test]
    fn pool_names_follow_upstream() {
        let app = deployment();
        assert_eq!(
            auto_pool_name(&app.name, IpFamily::V4, "eth0", &app.uid),
            "auto4-demo-eth0-4444c"
        );
        assert_eq!(
            auto_pool_name(&app.name, IpFamily::V6, "NET1", "abc"),
            "auto6-demo-net1-abc"
        );
        let long = "a".repeat(300);
        let name = auto_pool_name(&long, IpFamily::V4, "eth0", &app.uid);
        assert_eq!(name.len(), 253);
        assert!(name.ends_with("-eth0-4444c"));
    }

    #[test]
    fn labels_and_affinity() {
        let app = deployment();
        assert_eq!(app.label_gv(), "apps_v1");
        assert_eq!(app.application_key(), "apps_v1_Deployment_default_Demo");
        let labels = auto_pool_labels("s4", "10-6-0-0-16", &app, "eth0", IpFamily::V4, true);
        assert_eq!(labels[LABEL_OWNER_SPIDER_SUBNET], "s4");
        assert_eq!(labels[LABEL_IP_VERSION], "IPv4");
        assert_eq!(labels[LABEL_IPPOOL_RECLAIM], "true");
        assert_eq!(labels[LABEL_OWNER_APP_UID], app.uid);
        assert_eq!(AppRef::from_pool_labels(&labels), Some(app.clone()));
        assert_eq!(AppRef::from_pool_labels(&BTreeMap::new()), None);

        let core = AppRef {
            api_version: "v1".into(),
            kind: "Pod".into(),
            ..app.clone()
        };
        assert_eq!(core.label_gv(), "v1");
        assert_eq!(core.group_version(), ("", "v1"));
        let back = AppRef::from_pool_labels(&auto_pool_labels("s", "c", &core, "eth0", IpFamily::V6, false));
        assert_eq!(back.map(|a| a.api_version), Some("v1".to_string()));

        let affinity = auto_pool_pod_affinity(&app);
        let m = affinity.match_labels.unwrap();
        assert_eq!(m[AFFINITY_APP_API_GROUP], "apps");
        assert_eq!(m[AFFINITY_APP_API_VERSION], "v1");
        assert_eq!(m[AFFINITY_APP_KIND], "Deployment");
        assert_eq!(m[AFFINITY_APP_NAME], "Demo");
        assert_eq!(m.len(), 5);
    }

    #[test]
    fn job_sizes_follow_upstream() {
        assert_eq!(job_pod_count(None, None), 1);
        assert_eq!(job_pod_count(Some(3), None), 3);
        assert_eq!(job_pod_count(Some(0), None), 1);
        assert_eq!(job_pod_count(None, Some(4)), 4);
        assert_eq!(job_pod_count(Some(2), Some(5)), 5);
        assert_eq!(job_pod_count(Some(2), Some(0)), 1);
    }
}
