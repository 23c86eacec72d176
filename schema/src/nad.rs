//! Multus' `NetworkAttachmentDefinition` (`k8s.cni.cncf.io/v1`, short name `net-attach-def`): one CNI
//! configuration pods attach to by name. Multus owns the kind; we read it (to resolve `multusName` and
//! pod network annotations) and write it (rendered from SpiderMultusConfigs and SpiderNetworks).
//!
//! The type follows the Network Plumbing Working Group's Go client (`spec.config` is a JSON string, always
//! written). It is written by hand rather than with kube-derive because Multus' CRD does not require
//! `spec`: NetworkAttachmentDefinitions without a spec are legal (Multus then reads the configuration
//! from a file of that name on the node), and a derived type would fail to deserialize them, breaking
//! every list and watch in a namespace that has one. For the same reason the CRD we ship (for clusters
//! where Multus has not installed its own yet) is a hand-built copy of Multus' structural CRD.

use std::borrow::Cow;
use std::collections::BTreeMap;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, CustomResourceDefinitionNames, CustomResourceDefinitionSpec,
    CustomResourceDefinitionVersion, CustomResourceValidation, JSONSchemaProps,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::core::crd::v1::CustomResourceExt;
use kube::core::object::HasSpec;
use kube::core::{ApiResource, NamespaceResourceScope, Resource};
use serde::ser::SerializeStruct;
use serde::{Deserialize, Serialize, Serializer};

use crate::validation::{Problem, Problems, Validate};

/// API group of NetworkAttachmentDefinition.
pub const NAD_GROUP: &str = "k8s.cni.cncf.io";
/// The one version of NetworkAttachmentDefinition.
pub const NAD_VERSION: &str = "v1";
/// `apiVersion` of NetworkAttachmentDefinition.
pub const NAD_API_VERSION: &str = "k8s.cni.cncf.io/v1";
/// Kind name.
const KIND: &str = "NetworkAttachmentDefinition";
/// Plural (the resource name in URLs).
pub const NAD_PLURAL: &str = "network-attachment-definitions";
/// Name of Multus' CRD.
const CRD_NAME: &str = "network-attachment-definitions.k8s.cni.cncf.io";

/// NetworkAttachmentDefinition annotation naming the device-plugin resource (e.g. an SR-IOV VF pool)
/// a pod attaching to it must request; Multus' resource injector and Spiderpool's webhook read it.
pub const ANNO_RESOURCE_NAME: &str = "k8s.v1.cni.cncf.io/resourceName";
/// Pod annotation listing the extra networks of a pod: `ns/name,ns/name@net2`, or a JSON array of
/// `{"name":..,"namespace":..,"interface":..}`.
pub const ANNO_POD_NETWORKS: &str = "k8s.v1.cni.cncf.io/networks";
/// Pod annotation replacing the pod's default network (`eth0`) with a NetworkAttachmentDefinition.
pub const ANNO_POD_DEFAULT_NETWORK: &str = "v1.multus-cni.io/default-network";

/// A CNI configuration pods can attach to by name.
#[derive(Deserialize, Clone, Debug, PartialEq, Default)]
pub struct NetworkAttachmentDefinition {
    /// Standard object metadata.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// The CNI configuration. Absent in some objects (Multus then reads a file on the node); such an
    /// object reads as an empty `config`.
    #[serde(default)]
    pub spec: NetworkAttachmentDefinitionSpec,
}

/// Spec of a NetworkAttachmentDefinition.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct NetworkAttachmentDefinitionSpec {
    /// The CNI configuration as a JSON string: a single plugin (`{"cniVersion":..,"type":..}`) or a
    /// configuration list (`{"cniVersion":..,"name":..,"plugins":[..]}`). Empty means "the file of this
    /// name in Multus' configuration directory on the node".
    #[serde(default)]
    pub config: String,
}

impl NetworkAttachmentDefinition {
    /// A NetworkAttachmentDefinition in `namespace` with the given configuration.
    pub fn new(name: &str, namespace: &str, spec: NetworkAttachmentDefinitionSpec) -> Self {
        Self {
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                namespace: Some(namespace.to_string()),
                ..ObjectMeta::default()
            },
            spec,
        }
    }
}

impl NetworkAttachmentDefinitionSpec {
    /// The configuration parsed as JSON; `None` when it is empty.
    pub fn config_json(&self) -> Result<Option<serde_json::Value>, serde_json::Error> {
        if self.config.is_empty() {
            Ok(None)
        } else {
            serde_json::from_str(&self.config).map(Some)
        }
    }

    /// What Multus needs to use the configuration: a JSON object that is either one plugin (a `type`) or
    /// a list (`plugins`, each with a `type`). An empty configuration is allowed.
    pub fn check(&self, problems: &mut Problems, path: &str) {
        let path = format!("{path}.config");
        let value = match self.config_json() {
            Ok(None) => return,
            Ok(Some(value)) => value,
            Err(e) => {
                problems.push(path, format!("is not valid JSON: {e}"));
                return;
            }
        };
        let Some(object) = value.as_object() else {
            problems.push(path, "must be a JSON object");
            return;
        };
        match object.get("plugins") {
            Some(serde_json::Value::Array(plugins)) if !plugins.is_empty() => {
                for (i, plugin) in plugins.iter().enumerate() {
                    if let Err(message) = check_plugin(plugin) {
                        problems.push(path.clone(), format!("plugins[{i}] {message}"));
                    }
                }
            }
            Some(_) => problems.push(path, "`plugins` must be a non-empty list of plugin objects"),
            None => {
                if let Err(message) = check_plugin(&value) {
                    problems.push(path, format!("{message} (or a `plugins` list)"));
                }
            }
        }
    }
}

/// A CNI plugin configuration: a JSON object with a non-empty string `type` (what libcni requires).
pub(crate) fn check_plugin(value: &serde_json::Value) -> Result<(), String> {
    let Some(object) = value.as_object() else {
        return Err("must be a JSON object".into());
    };
    match object.get("type") {
        Some(serde_json::Value::String(t)) if !t.is_empty() => {}
        Some(serde_json::Value::String(_)) | None => return Err("needs a `type`".into()),
        Some(_) => return Err("has a `type` that is not a string".into()),
    }
    for key in ["cniVersion", "name"] {
        if let Some(v) = object.get(key)
            && !v.is_string()
        {
            return Err(format!("has a `{key}` that is not a string"));
        }
    }
    Ok(())
}

impl Serialize for NetworkAttachmentDefinition {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut obj = serializer.serialize_struct(KIND, 4)?;
        obj.serialize_field("apiVersion", NAD_API_VERSION)?;
        obj.serialize_field("kind", KIND)?;
        obj.serialize_field("metadata", &self.metadata)?;
        obj.serialize_field("spec", &self.spec)?;
        obj.end()
    }
}

impl Resource for NetworkAttachmentDefinition {
    type DynamicType = ();
    type Scope = NamespaceResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        KIND.into()
    }

    fn group(_: &()) -> Cow<'_, str> {
        NAD_GROUP.into()
    }

    fn version(_: &()) -> Cow<'_, str> {
        NAD_VERSION.into()
    }

    fn api_version(_: &()) -> Cow<'_, str> {
        NAD_API_VERSION.into()
    }

    fn plural(_: &()) -> Cow<'_, str> {
        NAD_PLURAL.into()
    }

    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

impl HasSpec for NetworkAttachmentDefinition {
    type Spec = NetworkAttachmentDefinitionSpec;

    fn spec(&self) -> &NetworkAttachmentDefinitionSpec {
        &self.spec
    }

    fn spec_mut(&mut self) -> &mut NetworkAttachmentDefinitionSpec {
        &mut self.spec
    }
}

/// A `type: string` schema with a description.
fn string_schema(description: &str) -> JSONSchemaProps {
    JSONSchemaProps {
        type_: Some("string".into()),
        description: Some(description.into()),
        ..JSONSchemaProps::default()
    }
}

impl CustomResourceExt for NetworkAttachmentDefinition {
    /// A copy of Multus' CRD (structural, `spec` optional), as upstream Spiderpool's chart ships it.
    fn crd() -> CustomResourceDefinition {
        let spec = JSONSchemaProps {
            type_: Some("object".into()),
            description: Some(
                "NetworkAttachmentDefinition spec defines the desired state of a network attachment".into(),
            ),
            properties: Some(BTreeMap::from([(
                "config".to_string(),
                string_schema("NetworkAttachmentDefinition config is a JSON-formatted CNI configuration"),
            )])),
            ..JSONSchemaProps::default()
        };
        let root = JSONSchemaProps {
            type_: Some("object".into()),
            description: Some(
                "NetworkAttachmentDefinition is a CRD schema specified by the Network Plumbing Working Group to \
                 express the intent for attaching pods to one or more logical or physical networks. More \
                 information available at: https://github.com/k8snetworkplumbingwg/multi-net-spec"
                    .into(),
            ),
            properties: Some(BTreeMap::from([
                (
                    "apiVersion".to_string(),
                    string_schema(
                        "APIVersion defines the versioned schema of this representation of an object. Servers \
                         should convert recognized schemas to the latest internal value, and may reject \
                         unrecognized values.",
                    ),
                ),
                (
                    "kind".to_string(),
                    string_schema(
                        "Kind is a string value representing the REST resource this object represents. Servers \
                         may infer this from the endpoint the client submits requests to. Cannot be updated. \
                         In CamelCase.",
                    ),
                ),
                (
                    "metadata".to_string(),
                    JSONSchemaProps { type_: Some("object".into()), ..JSONSchemaProps::default() },
                ),
                ("spec".to_string(), spec),
            ])),
            ..JSONSchemaProps::default()
        };
        CustomResourceDefinition {
            metadata: ObjectMeta {
                name: Some(CRD_NAME.into()),
                ..ObjectMeta::default()
            },
            spec: CustomResourceDefinitionSpec {
                group: NAD_GROUP.into(),
                names: CustomResourceDefinitionNames {
                    kind: KIND.into(),
                    plural: NAD_PLURAL.into(),
                    singular: Some("network-attachment-definition".into()),
                    short_names: Some(vec!["net-attach-def".into()]),
                    ..CustomResourceDefinitionNames::default()
                },
                scope: "Namespaced".into(),
                versions: vec![CustomResourceDefinitionVersion {
                    name: NAD_VERSION.into(),
                    served: true,
                    storage: true,
                    schema: Some(CustomResourceValidation {
                        open_api_v3_schema: Some(root),
                    }),
                    ..CustomResourceDefinitionVersion::default()
                }],
                ..CustomResourceDefinitionSpec::default()
            },
            ..CustomResourceDefinition::default()
        }
    }

    fn crd_name() -> &'static str {
        CRD_NAME
    }

    fn api_resource() -> ApiResource {
        ApiResource::erase::<Self>(&())
    }

    fn shortnames() -> &'static [&'static str] {
        &["net-attach-def"]
    }
}

impl Validate for NetworkAttachmentDefinition {
    fn problems(&self) -> Vec<Problem> {
        let mut problems = Problems::new();
        self.spec.check(&mut problems, "spec");
        problems.into_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendered_nad_round_trips() {
        let yaml = "apiVersion: k8s.cni.cncf.io/v1\nkind: NetworkAttachmentDefinition\nmetadata:\n  name: macvlan-conf\n  namespace: kube-system\nspec:\n  config: '{\"cniVersion\":\"0.3.1\",\"name\":\"macvlan-conf\",\"plugins\":[{\"type\":\"macvlan\",\"master\":\"eth0\",\"mode\":\"bridge\",\"ipam\":{\"type\":\"spiderpool\"}},{\"type\":\"coordinator\"}]}'\n";
        let nad: NetworkAttachmentDefinition = serde_saphyr::from_str(yaml).unwrap();
        assert_eq!(nad.validate(), Ok(()));
        let back: serde_json::Value = serde_saphyr::from_str(yaml).unwrap();
        assert_eq!(serde_json::to_value(&nad).unwrap(), back);
        assert_eq!(
            nad.spec.config_json().unwrap().unwrap()["plugins"][1]["type"],
            "coordinator"
        );
    }

    #[test]
    fn nad_without_spec_reads_as_empty_config() {
        let nad: NetworkAttachmentDefinition = serde_saphyr::from_str(
            "apiVersion: k8s.cni.cncf.io/v1\nkind: NetworkAttachmentDefinition\nmetadata:\n  name: from-file\n",
        )
        .unwrap();
        assert_eq!(nad.spec.config, "");
        assert_eq!(nad.validate(), Ok(()));
        assert_eq!(
            serde_json::to_value(&nad).unwrap()["spec"],
            serde_json::json!({"config": ""})
        );
    }

    #[test]
    fn bad_configs_are_reported() {
        for (config, expect) in [
            ("{not json", "not valid JSON"),
            ("[1]", "JSON object"),
            ("{\"cniVersion\":\"0.3.1\"}", "needs a `type`"),
            ("{\"plugins\":[]}", "non-empty list"),
            (
                "{\"plugins\":[{\"type\":\"macvlan\"},{\"name\":\"x\"}]}",
                "plugins[1] needs a `type`",
            ),
            ("{\"type\":\"macvlan\",\"name\":5}", "`name` that is not a string"),
        ] {
            let nad = NetworkAttachmentDefinition::new(
                "x",
                "default",
                NetworkAttachmentDefinitionSpec {
                    config: config.into(),
                },
            );
            let problems = nad.validate().unwrap_err();
            assert_eq!(problems[0].path, "spec.config", "{config}");
            assert!(
                problems[0].message.contains(expect),
                "{config}: {}",
                problems[0].message
            );
        }
    }

    #[test]
    fn crd_is_multus_shape() {
        let crd = serde_json::to_value(NetworkAttachmentDefinition::crd()).unwrap();
        assert_eq!(
            crd["metadata"]["name"],
            "network-attachment-definitions.k8s.cni.cncf.io"
        );
        assert_eq!(
            crd["spec"]["names"]["shortNames"],
            serde_json::json!(["net-attach-def"])
        );
        let root = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
        assert!(root.get("required").is_none(), "spec must stay optional");
        assert_eq!(
            root["properties"]["spec"]["properties"]["config"]["type"],
            "string"
        );
        assert_eq!(NetworkAttachmentDefinition::api_resource().plural, NAD_PLURAL);
        assert_eq!(
            NetworkAttachmentDefinition::url_path(&(), Some("ns")),
            "/apis/k8s.cni.cncf.io/v1/namespaces/ns/network-attachment-definitions"
        );
    }
}
