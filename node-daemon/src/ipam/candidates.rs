//! Which pools a pod interface may draw from, by upstream's priority rules (reference section 3.2):
//! the first rule that applies wins and the lower ones are ignored.
//!
//! 1. SpiderSubnet annotations (`subnets` over `subnet`): the application's automatic pools;
//! 2. the pod's `ipam.spidernet.io/ippools` (every interface at once);
//! 3. the pod's `ipam.spidernet.io/ippool`;
//! 4. the namespace's `default-ipv4-ippool` / `default-ipv6-ippool`;
//! 5. the CNI configuration's `default_ipv4_ippool` / `default_ipv6_ippool`;
//! 6. every pool with `spec.default: true`.
//!
//! Pool names may be wildcards (`*`, `?`, `[...]`), expanded against the pools of that family in name
//! order. Unlike upstream (reference section 13.2), the order the user wrote is kept: it is the order
//! pools are tried among pools of equal filter priority.

use std::collections::BTreeMap;

use spiderpool_ipmath::IpFamily;

use super::annotations::{self, ANNO_IPPOOL, ANNO_IPPOOLS, ANNO_SUBNET, ANNO_SUBNETS, AnnotationError};
use super::glob;

/// Which rule chose the candidates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Rule 1: SpiderSubnet automatic pools; the names are subnet names.
    Subnet,
    /// Rule 2: the pod's `ippools` annotation.
    PodIppools,
    /// Rule 3: the pod's `ippool` annotation.
    PodIppool,
    /// Rule 4: the namespace's default pools.
    Namespace,
    /// Rule 5: the CNI configuration's default pools.
    Netconf,
    /// Rule 6: cluster default pools.
    ClusterDefault,
}

/// The pools (or, for [`Source::Subnet`], subnets) one interface may use, in the order to try them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NicRequest {
    /// Interface name in the pod.
    pub nic: String,
    /// IPv4 candidates (empty: no IPv4 address for this interface).
    pub ipv4: Vec<String>,
    /// IPv6 candidates.
    pub ipv6: Vec<String>,
    /// No default route through the gateway.
    pub clean_gateway: bool,
}

impl NicRequest {
    /// Candidates of one family.
    pub fn pools(&self, family: IpFamily) -> &[String] {
        match family {
            IpFamily::V4 => &self.ipv4,
            IpFamily::V6 => &self.ipv6,
        }
    }
}

/// The outcome of the rules: the rule that applied and the interfaces to allocate for. Only rule 1
/// and 2 name several interfaces; the others give only the interface being added.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidates {
    /// The rule that applied.
    pub source: Source,
    /// One entry per interface.
    pub nics: Vec<NicRequest>,
}

/// Everything the rules look at.
#[derive(Debug, Clone)]
pub struct CandidateInput<'a> {
    /// The pod's annotations.
    pub pod_annotations: &'a BTreeMap<String, String>,
    /// The pod namespace's annotations.
    pub namespace_annotations: &'a BTreeMap<String, String>,
    /// The interface being added (`CNI_IFNAME`).
    pub if_name: &'a str,
    /// The CNI configuration's `default_ipv4_ippool`.
    pub netconf_ipv4: &'a [String],
    /// The CNI configuration's `default_ipv6_ippool`.
    pub netconf_ipv6: &'a [String],
    /// The CNI configuration's `clean_gateway`.
    pub netconf_clean_gateway: bool,
    /// Names of the pools with `spec.default: true`, per family, in name order.
    pub cluster_default_ipv4: &'a [String],
    /// See `cluster_default_ipv4`.
    pub cluster_default_ipv6: &'a [String],
    /// Names of every IPv4 pool (for wildcards), in name order.
    pub all_ipv4: &'a [String],
    /// Names of every IPv6 pool (for wildcards), in name order.
    pub all_ipv6: &'a [String],
    /// Whether IPv4 / IPv6 allocation is enabled (a disabled family's candidates are dropped).
    pub enable_ipv4: bool,
    /// See `enable_ipv4`.
    pub enable_ipv6: bool,
    /// Whether SpiderSubnet automatic pools are enabled.
    pub enable_auto_pools: bool,
}

/// Why no candidate could be chosen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CandidateError {
    /// A malformed annotation.
    #[error(transparent)]
    Annotation(#[from] AnnotationError),
    /// No rule applies.
    #[error(
        "no IPPool available: no pool selection rule of any kind applies (no ipam.spidernet.io annotation, no namespace default pools, no default_ipv4_ippool/default_ipv6_ippool in the CNI configuration, no pool with spec.default: true)"
    )]
    NoRule,
}

impl<'a> CandidateInput<'a> {
    /// Input with no CNI-configuration or cluster defaults, both families and automatic pools enabled.
    pub fn new(
        pod_annotations: &'a BTreeMap<String, String>,
        namespace_annotations: &'a BTreeMap<String, String>,
        if_name: &'a str,
    ) -> Self {
        CandidateInput {
            pod_annotations,
            namespace_annotations,
            if_name,
            netconf_ipv4: &[],
            netconf_ipv6: &[],
            netconf_clean_gateway: false,
            cluster_default_ipv4: &[],
            cluster_default_ipv6: &[],
            all_ipv4: &[],
            all_ipv6: &[],
            enable_ipv4: true,
            enable_ipv6: true,
            enable_auto_pools: true,
        }
    }
}

/// Applies the rules.
pub fn candidates(input: &CandidateInput<'_>) -> Result<Candidates, CandidateError> {
    let annotations = input.pod_annotations;

    if let Some(key) = [ANNO_SUBNETS, ANNO_SUBNET]
        .into_iter()
        .find(|key| annotations.contains_key(*key))
        && !input.enable_auto_pools
    {
        return Err(AnnotationError {
            annotation: key.to_owned(),
            reason: "SpiderSubnet automatic pools are disabled on this cluster".to_owned(),
        }
        .into());
    }
    // The operator reads the same annotations through the same parser to make the automatic pools.
    if let Some((key, items)) = annotations::parse_subnets(annotations)? {
        let nics = name_items(
            key,
            input.if_name,
            items.into_iter().map(|i| {
                (
                    i.interface,
                    i.ipv4.into_iter().collect(),
                    i.ipv6.into_iter().collect(),
                    false,
                )
            }),
        )?;
        return Ok(finish(input, Source::Subnet, nics, false));
    }

    if let Some(text) = annotations.get(ANNO_IPPOOLS) {
        let items = annotations::parse_ippools(text)?;
        let nics = name_items(
            ANNO_IPPOOLS,
            input.if_name,
            items
                .into_iter()
                .map(|i| (i.interface, i.ipv4, i.ipv6, i.cleangateway)),
        )?;
        return Ok(finish(input, Source::PodIppools, nics, true));
    }

    if let Some(text) = annotations.get(ANNO_IPPOOL) {
        let pools = annotations::parse_ippool(text)?;
        let nic = single(input, pools.ipv4, pools.ipv6);
        return Ok(finish(input, Source::PodIppool, vec![nic], true));
    }

    let (ns_v4, ns_v6) = annotations::namespace_default_pools(input.namespace_annotations)?;
    let rules = [
        (Source::Namespace, ns_v4, ns_v6),
        (
            Source::Netconf,
            input.netconf_ipv4.to_vec(),
            input.netconf_ipv6.to_vec(),
        ),
        (
            Source::ClusterDefault,
            input.cluster_default_ipv4.to_vec(),
            input.cluster_default_ipv6.to_vec(),
        ),
    ];
    for (source, v4, v6) in rules {
        let v4 = if input.enable_ipv4 { v4 } else { Vec::new() };
        let v6 = if input.enable_ipv6 { v6 } else { Vec::new() };
        if !v4.is_empty() || !v6.is_empty() {
            let nic = single(input, v4, v6);
            return Ok(finish(input, source, vec![nic], true));
        }
    }
    Err(CandidateError::NoRule)
}

fn single(input: &CandidateInput<'_>, ipv4: Vec<String>, ipv6: Vec<String>) -> NicRequest {
    NicRequest {
        nic: input.if_name.to_owned(),
        ipv4,
        ipv6,
        clean_gateway: input.netconf_clean_gateway,
    }
}

/// Gives every item its interface name. Named items must include the interface being added. Unnamed
/// items are bound by position to Multus' default interface names (`eth0`, `net1`, `net2`, ...), the
/// names Multus gives attachments that do not choose one; upstream binds them lazily on later ADDs
/// instead, which needs more writes and gives the same names for Multus-created pods.
fn name_items(
    annotation: &str,
    if_name: &str,
    items: impl Iterator<Item = (String, Vec<String>, Vec<String>, bool)>,
) -> Result<Vec<NicRequest>, AnnotationError> {
    let nics: Vec<NicRequest> = items
        .enumerate()
        .map(|(index, (interface, ipv4, ipv6, clean_gateway))| NicRequest {
            nic: if !interface.is_empty() {
                interface
            } else if index == 0 {
                "eth0".to_owned()
            } else {
                format!("net{index}")
            },
            ipv4,
            ipv6,
            clean_gateway,
        })
        .collect();
    if !nics.iter().any(|n| n.nic == if_name) {
        let listed: Vec<&str> = nics.iter().map(|n| n.nic.as_str()).collect();
        return Err(AnnotationError {
            annotation: annotation.to_owned(),
            reason: format!(
                "interface {if_name} is not listed (listed: {})",
                listed.join(", ")
            ),
        });
    }
    Ok(nics)
}

fn finish(input: &CandidateInput<'_>, source: Source, mut nics: Vec<NicRequest>, expand: bool) -> Candidates {
    for nic in &mut nics {
        if !input.enable_ipv4 {
            nic.ipv4.clear();
        }
        if !input.enable_ipv6 {
            nic.ipv6.clear();
        }
        if nic.nic == input.if_name {
            nic.clean_gateway |= input.netconf_clean_gateway;
        }
        if expand {
            nic.ipv4 = expand_wildcards(&nic.ipv4, input.all_ipv4);
            nic.ipv6 = expand_wildcards(&nic.ipv6, input.all_ipv6);
        }
    }
    Candidates { source, nics }
}

/// Replaces each wildcard by the matching pool names (in name order), keeping the written order and
/// dropping repeats.
/// Each pattern is parsed once and matched against each pool name in time linear in the name
/// ([`glob`]).
pub fn expand_wildcards(names: &[String], all: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(names.len());
    let mut seen: std::collections::HashSet<String> = std::collections::HashSet::new();
    let mut push = |name: &String| {
        if seen.insert(name.clone()) {
            out.push(name.clone());
        }
    };
    for name in names {
        if glob::is_pattern(name) {
            let pattern = glob::Pattern::new(name);
            all.iter()
                .filter(|pool| pattern.matches(pool))
                .for_each(&mut push);
        } else {
            push(name);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    struct Case {
        pod: BTreeMap<String, String>,
        ns: BTreeMap<String, String>,
        netconf_v4: Vec<String>,
        default_v4: Vec<String>,
        default_v6: Vec<String>,
        all_v4: Vec<String>,
        all_v6: Vec<String>,
    }

    impl Case {
        fn new() -> Self {
            Case {
                pod: BTreeMap::new(),
                ns: BTreeMap::new(),
                netconf_v4: vec![],
                default_v4: s(&["default-v4"]),
                default_v6: s(&["default-v6"]),
                all_v4: s(&["a", "b", "default-v4", "rack1-v4", "rack2-v4"]),
                all_v6: s(&["default-v6", "rack1-v6"]),
            }
        }
        fn pod(mut self, key: &str, value: &str) -> Self {
            self.pod.insert(key.to_owned(), value.to_owned());
            self
        }
        fn run(&self, if_name: &str) -> Result<Candidates, CandidateError> {
            candidates(&CandidateInput {
                pod_annotations: &self.pod,
                namespace_annotations: &self.ns,
                if_name,
                netconf_ipv4: &self.netconf_v4,
                netconf_ipv6: &[],
                netconf_clean_gateway: false,
                cluster_default_ipv4: &self.default_v4,
                cluster_default_ipv6: &self.default_v6,
                all_ipv4: &self.all_v4,
                all_ipv6: &self.all_v6,
                enable_ipv4: true,
                enable_ipv6: true,
                enable_auto_pools: true,
            })
        }
    }

    #[test]
    fn priority_order_first_rule_wins() {
        let mut case = Case::new();
        assert_eq!(case.run("eth0").unwrap().source, Source::ClusterDefault);
        case.netconf_v4 = s(&["b"]);
        let c = case.run("eth0").unwrap();
        assert_eq!(
            (c.source, c.nics[0].ipv4.clone(), c.nics[0].ipv6.clone()),
            (Source::Netconf, s(&["b"]), vec![])
        );
        case.ns
            .insert(annotations::ANNO_NS_DEFAULT_IPV4.into(), r#"["a"]"#.into());
        assert_eq!(case.run("eth0").unwrap().source, Source::Namespace);
        let case = case.pod(ANNO_IPPOOL, r#"{"ipv4":["rack1-v4"]}"#);
        assert_eq!(case.run("eth0").unwrap().source, Source::PodIppool);
        let case = case.pod(ANNO_IPPOOLS, r#"[{"interface":"eth0","ipv4":["a"]}]"#);
        assert_eq!(case.run("eth0").unwrap().source, Source::PodIppools);
        let case = case.pod(ANNO_SUBNET, r#"{"ipv4":["s1","s2"]}"#);
        let c = case.run("eth0").unwrap();
        assert_eq!((c.source, c.nics[0].ipv4.clone()), (Source::Subnet, s(&["s1"])));
        let case = case.pod(ANNO_SUBNETS, r#"[{"interface":"eth0","ipv6":["s6"]}]"#);
        let c = case.run("eth0").unwrap();
        assert_eq!((c.source, c.nics[0].ipv6.clone()), (Source::Subnet, s(&["s6"])));
    }

    #[test]
    fn nothing_applies_is_an_error_naming_every_rule() {
        let mut case = Case::new();
        case.default_v4.clear();
        case.default_v6.clear();
        let err = case.run("eth0").unwrap_err();
        assert_eq!(err, CandidateError::NoRule);
        assert!(err.to_string().contains("spec.default"));
    }

    #[test]
    fn ippools_names_interfaces_and_keeps_clean_gateway() {
        let case = Case::new().pod(
            ANNO_IPPOOLS,
            r#"[{"interface":"eth0","ipv4":["a"]},{"interface":"net1","ipv4":["rack*"],"ipv6":["rack1-v6"],"cleangateway":true}]"#,
        );
        let c = case.run("net1").unwrap();
        assert_eq!(c.nics.len(), 2);
        assert_eq!(c.nics[1].nic, "net1");
        assert_eq!(c.nics[1].ipv4, s(&["rack1-v4", "rack2-v4"]));
        assert!(c.nics[1].clean_gateway && !c.nics[0].clean_gateway);
        let err = case.run("net7").unwrap_err();
        assert!(
            err.to_string()
                .contains("interface net7 is not listed (listed: eth0, net1)"),
            "{err}"
        );
    }

    #[test]
    fn unnamed_ippools_items_take_multus_default_names() {
        let case = Case::new().pod(
            ANNO_IPPOOLS,
            r#"[{"ipv4":["a"]},{"ipv4":["b"]},{"ipv6":["rack1-v6"]}]"#,
        );
        let c = case.run("net2").unwrap();
        let names: Vec<&str> = c.nics.iter().map(|n| n.nic.as_str()).collect();
        assert_eq!(names, ["eth0", "net1", "net2"]);
    }

    #[test]
    fn wildcards_expand_in_written_order_without_repeats() {
        let all = s(&["a1", "a2", "b1"]);
        assert_eq!(
            expand_wildcards(&s(&["b1", "a*", "a1"]), &all),
            s(&["b1", "a1", "a2"])
        );
        assert_eq!(expand_wildcards(&s(&["z*"]), &all), Vec::<String>::new());
        assert_eq!(expand_wildcards(&s(&["missing"]), &all), s(&["missing"]));
    }

    #[test]
    fn disabled_family_and_auto_pools() {
        let case = Case::new().pod(ANNO_IPPOOL, r#"{"ipv4":["a"],"ipv6":["rack1-v6"]}"#);
        let c = candidates(&CandidateInput {
            all_ipv4: &case.all_v4,
            all_ipv6: &case.all_v6,
            enable_ipv6: false,
            ..CandidateInput::new(&case.pod, &case.ns, "eth0")
        })
        .unwrap();
        assert_eq!(
            (c.nics[0].ipv4.clone(), c.nics[0].ipv6.clone()),
            (s(&["a"]), vec![])
        );

        let case = Case::new().pod(ANNO_SUBNET, r#"{"ipv4":["s"]}"#);
        let err = candidates(&CandidateInput {
            enable_auto_pools: false,
            ..CandidateInput::new(&case.pod, &case.ns, "eth0")
        })
        .unwrap_err();
        assert!(err.to_string().contains("automatic pools are disabled"), "{err}");
    }

    #[test]
    fn bad_annotations_fail_with_their_name() {
        let case = Case::new().pod(ANNO_IPPOOL, "[1,2]");
        let err = case.run("eth0").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("annotation ipam.spidernet.io/ippool:"),
            "{err}"
        );
        let mut case = Case::new();
        case.ns
            .insert(annotations::ANNO_NS_DEFAULT_IPV4.into(), "nope".into());
        let err = case.run("eth0").unwrap_err();
        assert!(err.to_string().contains("default-ipv4-ippool"), "{err}");
    }
}
