//! `SpiderReservedIP` (short name `sr`): addresses no pool may hand out, cluster-wide, e.g. addresses
//! used by machines outside the cluster. Upstream Spiderpool's kind, unchanged.

use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};
use spiderpool_ipmath::{IpFamily, IpRange};

use crate::common::{check_ip_list, family_of_version};
use crate::validation::{Problem, Problems, Validate};

/// Spec of a SpiderReservedIP.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[kube(
    group = "spiderpool.spidernet.io",
    version = "v2beta1",
    kind = "SpiderReservedIP",
    plural = "spiderreservedips",
    shortname = "sr",
    category = "spiderpool",
    derive = "PartialEq",
    derive = "Default",
    doc = "Addresses that no pool hands out. Addresses already given to pods are not taken back.",
    printcolumn(
        name = "VERSION",
        type_ = "string",
        json_path = ".spec.ipVersion",
        description = "IP version"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct SpiderReservedIPSpec {
    // Immutability of `ipVersion` (and `subnet`) is the validating webhook's rule, as upstream's. No CEL
    // rule: any CEL rule in a CRD makes the API server append `<nil>: Invalid value: "null": some
    // validation rules were not checked ...` to every schema refusal of the kind.
    /// IP version of the addresses, 4 or 6. Derived from the first item of `ips` when left out. Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("enum" = [4, 6]))]
    pub ip_version: Option<i64>,

    /// The reserved addresses: single IPs (`172.18.30.131`) or ranges (`172.18.30.131-172.18.30.140`), all
    /// of one IP version. At least one is required.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<String>,
}

impl Validate for SpiderReservedIP {
    fn problems(&self) -> Vec<Problem> {
        let mut problems = Problems::new();
        self.spec.check(&mut problems, "spec");
        problems.into_vec()
    }
}

impl SpiderReservedIPSpec {
    /// The IP version: `ipVersion`, else the family of the first item of `ips` (upstream's webhook fills
    /// `ipVersion` the same way).
    pub fn family(&self) -> Option<IpFamily> {
        match self.ip_version {
            Some(v) => family_of_version(v),
            None => self
                .ips
                .first()
                .and_then(|first| IpRange::parse(first).ok())
                .map(|r| r.family()),
        }
    }

    /// Upstream's single-object webhook rules: at least one item, every item an IP or range of the one IP
    /// version. Overlap with other SpiderReservedIPs needs the cluster and lives with the webhook.
    pub fn check(&self, problems: &mut Problems, path: &str) {
        if let Some(v) = self.ip_version
            && family_of_version(v).is_none()
        {
            problems.push(format!("{path}.ipVersion"), format!("must be 4 or 6, not {v}"));
            return;
        }
        if self.ips.is_empty() {
            problems.push(format!("{path}.ips"), "requires at least one IP or range");
            return;
        }
        match self.family() {
            Some(family) => {
                check_ip_list(problems, &format!("{path}.ips"), family, &self.ips, None);
            }
            // No ipVersion and the first item does not parse: nothing to check the others against.
            None => {
                if let Some(Err(e)) = self.ips.first().map(|first| IpRange::parse(first)) {
                    problems.push(format!("{path}.ips[0]"), e.to_string());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reserved(yaml: &str) -> SpiderReservedIP {
        serde_saphyr::from_str(yaml).unwrap()
    }

    #[test]
    fn example_is_valid_and_derives_its_family() {
        let r = reserved(
            "apiVersion: spiderpool.spidernet.io/v2beta1\nkind: SpiderReservedIP\nmetadata:\n  name: test-ipv4-reservedip\nspec:\n  ips:\n  - 172.18.41.41-172.18.41.44\n  - 172.18.42.40\n",
        );
        assert_eq!(r.validate(), Ok(()));
        assert_eq!(r.spec.family(), Some(IpFamily::V4));
    }

    #[test]
    fn every_problem_is_reported_with_its_path() {
        let r = reserved(
            "apiVersion: spiderpool.spidernet.io/v2beta1\nkind: SpiderReservedIP\nmetadata:\n  name: bad\nspec:\n  ipVersion: 4\n  ips: [10.0.0.1, fd00::1, 10.0.0.9-10.0.0.3]\n",
        );
        let paths: Vec<String> = r.validate().unwrap_err().into_iter().map(|p| p.path).collect();
        assert_eq!(paths, vec!["spec.ips[1]", "spec.ips[2]"]);

        let r = reserved(
            "apiVersion: spiderpool.spidernet.io/v2beta1\nkind: SpiderReservedIP\nmetadata:\n  name: empty\nspec: {}\n",
        );
        assert_eq!(r.validate().unwrap_err()[0].path, "spec.ips");

        let r = reserved(
            "apiVersion: spiderpool.spidernet.io/v2beta1\nkind: SpiderReservedIP\nmetadata:\n  name: v\nspec:\n  ipVersion: 5\n  ips: [10.0.0.1]\n",
        );
        assert_eq!(r.validate().unwrap_err()[0].path, "spec.ipVersion");

        let r = reserved(
            "apiVersion: spiderpool.spidernet.io/v2beta1\nkind: SpiderReservedIP\nmetadata:\n  name: v\nspec:\n  ips: [nonsense, 10.0.0.1]\n",
        );
        assert_eq!(r.validate().unwrap_err()[0].path, "spec.ips[0]");
    }

    #[test]
    fn crd_has_no_status() {
        use kube::CustomResourceExt;
        let crd = serde_json::to_value(SpiderReservedIP::crd()).unwrap();
        let version = &crd["spec"]["versions"][0];
        assert!(version.get("subresources").is_none_or(|s| s.is_null()));
        assert!(
            version["schema"]["openAPIV3Schema"]["properties"]
                .get("status")
                .is_none()
        );
        assert_eq!(crd["spec"]["names"]["shortNames"], serde_json::json!(["sr"]));
    }
}
