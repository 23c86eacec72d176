//! The MutatingWebhookConfiguration and ValidatingWebhookConfiguration the operator manages: built here
//! (pure) pointing at the Service (or, for tests and out-of-cluster runs, at a URL), with the CA bundle of
//! the serving certificate, and applied with server-side apply so every replica writes the same thing.

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhook, MutatingWebhookConfiguration, RuleWithOperations, ServiceReference, ValidatingWebhook,
    ValidatingWebhookConfiguration, WebhookClientConfig,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::{DeleteParams, ObjectMeta, Patch, PatchParams};
use kube::{Api, Client};

use super::review::{Endpoint, Mode};

/// Field manager of the webhook configurations.
pub const FIELD_MANAGER: &str = "spiderpool-operator/webhook";

/// Where the API server sends admission requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientTarget {
    /// A Service in the cluster (the normal case).
    Service {
        /// Namespace of the Service.
        namespace: String,
        /// Name of the Service.
        name: String,
        /// Service port.
        port: i32,
    },
    /// A base URL (`https://host:port`) the endpoint path is appended to.
    Url(String),
}

/// What the operator registers.
#[derive(Debug, Clone, PartialEq)]
pub struct Registration {
    /// Name of both configuration objects (upstream: `spiderpool-controller`).
    pub name: String,
    /// Where requests go.
    pub target: ClientTarget,
    /// Only objects whose labels match are sent to the webhooks (none: every object). Tests use it to
    /// keep cluster-wide webhooks away from other tests' objects.
    pub object_selector: Option<LabelSelector>,
    /// Seconds the API server waits for an answer.
    pub timeout_seconds: i32,
}

impl Registration {
    /// Upstream's registration: both configurations named `name`, pointing at the Service.
    pub fn for_service(name: &str, namespace: &str, service: &str, port: i32) -> Self {
        Registration {
            name: name.to_string(),
            target: ClientTarget::Service {
                namespace: namespace.to_string(),
                name: service.to_string(),
                port,
            },
            object_selector: None,
            timeout_seconds: 10,
        }
    }
}

/// Where the API server sends the requests of the webhook at `path`, trusting `ca_pem`.
pub(crate) fn client_config(target: &ClientTarget, path: &str, ca_pem: &str) -> WebhookClientConfig {
    let ca_bundle = Some(ByteString(ca_pem.as_bytes().to_vec()));
    match target {
        ClientTarget::Service {
            namespace,
            name,
            port,
        } => WebhookClientConfig {
            ca_bundle,
            service: Some(ServiceReference {
                namespace: namespace.clone(),
                name: name.clone(),
                path: Some(path.to_string()),
                port: Some(*port),
            }),
            url: None,
        },
        ClientTarget::Url(base) => WebhookClientConfig {
            ca_bundle,
            service: None,
            url: Some(format!("{}{path}", base.trim_end_matches('/'))),
        },
    }
}

fn rules(endpoint: Endpoint) -> Vec<RuleWithOperations> {
    vec![RuleWithOperations {
        api_groups: Some(vec![spiderpool_schema::GROUP.to_string()]),
        api_versions: Some(vec![spiderpool_schema::VERSION.to_string()]),
        operations: Some(vec!["CREATE".to_string(), "UPDATE".to_string()]),
        resources: Some(vec![endpoint.kind.plural().to_string()]),
        scope: Some(
            if endpoint.kind.namespaced() {
                "Namespaced"
            } else {
                "Cluster"
            }
            .to_string(),
        ),
    }]
}

/// Webhook name inside a configuration: `spiderippool.spiderpool.spidernet.io`.
fn webhook_name(endpoint: Endpoint) -> String {
    format!(
        "{}.{}",
        endpoint.kind.name().to_ascii_lowercase(),
        spiderpool_schema::GROUP
    )
}

fn meta(registration: &Registration) -> ObjectMeta {
    ObjectMeta {
        name: Some(registration.name.clone()),
        labels: Some(
            [(
                "app.kubernetes.io/managed-by".to_string(),
                "spiderpool-operator".to_string(),
            )]
            .into(),
        ),
        ..ObjectMeta::default()
    }
}

/// The MutatingWebhookConfiguration: one webhook per mutated kind, `failurePolicy: Fail` as upstream.
pub fn mutating_configuration(registration: &Registration, ca_pem: &str) -> MutatingWebhookConfiguration {
    let webhooks = Endpoint::all()
        .into_iter()
        .filter(|e| e.mode == Mode::Mutate)
        .map(|endpoint| MutatingWebhook {
            name: webhook_name(endpoint),
            admission_review_versions: vec!["v1".to_string()],
            client_config: client_config(&registration.target, &endpoint.path(), ca_pem),
            failure_policy: Some("Fail".to_string()),
            match_policy: Some("Equivalent".to_string()),
            object_selector: registration.object_selector.clone(),
            reinvocation_policy: Some("Never".to_string()),
            rules: Some(rules(endpoint)),
            side_effects: "None".to_string(),
            timeout_seconds: Some(registration.timeout_seconds),
            ..MutatingWebhook::default()
        })
        .collect();
    MutatingWebhookConfiguration {
        metadata: meta(registration),
        webhooks: Some(webhooks),
    }
}

/// The ValidatingWebhookConfiguration: one webhook per kind, `failurePolicy: Fail` as upstream.
pub fn validating_configuration(registration: &Registration, ca_pem: &str) -> ValidatingWebhookConfiguration {
    let webhooks = Endpoint::all()
        .into_iter()
        .filter(|e| e.mode == Mode::Validate)
        .map(|endpoint| ValidatingWebhook {
            name: webhook_name(endpoint),
            admission_review_versions: vec!["v1".to_string()],
            client_config: client_config(&registration.target, &endpoint.path(), ca_pem),
            failure_policy: Some("Fail".to_string()),
            match_policy: Some("Equivalent".to_string()),
            object_selector: registration.object_selector.clone(),
            rules: Some(rules(endpoint)),
            side_effects: "None".to_string(),
            timeout_seconds: Some(registration.timeout_seconds),
            ..ValidatingWebhook::default()
        })
        .collect();
    ValidatingWebhookConfiguration {
        metadata: meta(registration),
        webhooks: Some(webhooks),
    }
}

/// Creates or updates both configurations (server-side apply, forced: the operator owns them).
pub async fn apply(client: Client, registration: &Registration, ca_pem: &str) -> Result<(), kube::Error> {
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let mut mutating = mutating_configuration(registration, ca_pem);
    mutating.metadata.managed_fields = None;
    let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    api.patch(
        &registration.name,
        &params,
        &Patch::Apply(&with_types(&mutating, "MutatingWebhookConfiguration")?),
    )
    .await?;
    let validating = validating_configuration(registration, ca_pem);
    let api: Api<ValidatingWebhookConfiguration> = Api::all(client);
    api.patch(
        &registration.name,
        &params,
        &Patch::Apply(&with_types(&validating, "ValidatingWebhookConfiguration")?),
    )
    .await?;
    tracing::info!(name = %registration.name, "webhook configurations applied");
    Ok(())
}

/// Server-side apply needs `apiVersion` and `kind` in the body; k8s-openapi types leave them out when
/// serialized on their own.
pub(crate) fn with_types<T: serde::Serialize>(
    object: &T,
    kind: &str,
) -> Result<serde_json::Value, kube::Error> {
    let mut value = serde_json::to_value(object).map_err(kube::Error::SerdeError)?;
    if let Some(map) = value.as_object_mut() {
        map.insert("apiVersion".into(), "admissionregistration.k8s.io/v1".into());
        map.insert("kind".into(), kind.into());
    }
    Ok(value)
}

/// Deletes both configurations, and the pod webhook's (absent ones are fine).
pub async fn remove(client: Client, registration: &Registration) -> Result<(), kube::Error> {
    let params = DeleteParams::default();
    let mutating: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    ignore_not_found(mutating.delete(&registration.name, &params).await.map(|_| ()))?;
    let pods = super::pod::pod_configuration_name(registration);
    ignore_not_found(mutating.delete(&pods, &params).await.map(|_| ()))?;
    let validating: Api<ValidatingWebhookConfiguration> = Api::all(client);
    ignore_not_found(validating.delete(&registration.name, &params).await.map(|_| ()))
}

fn ignore_not_found(result: Result<(), kube::Error>) -> Result<(), kube::Error> {
    match result {
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configurations_point_at_the_service_with_the_ca() {
        let reg = Registration::for_service(
            "spiderpool-controller",
            "kube-system",
            "spiderpool-controller",
            5722,
        );
        let m = mutating_configuration(&reg, "CA");
        let hooks = m.webhooks.unwrap();
        assert_eq!(hooks.len(), 5);
        let pool = &hooks[0];
        assert_eq!(pool.name, "spiderippool.spiderpool.spidernet.io");
        assert_eq!(pool.failure_policy.as_deref(), Some("Fail"));
        let service = pool.client_config.service.as_ref().unwrap();
        assert_eq!(
            service.path.as_deref(),
            Some("/mutate-spiderpool-spidernet-io-v2beta1-spiderippool")
        );
        assert_eq!(service.port, Some(5722));
        assert_eq!(pool.client_config.ca_bundle.as_ref().unwrap().0, b"CA");

        let v = validating_configuration(&reg, "CA").webhooks.unwrap();
        assert_eq!(v.len(), 6);
        let smc = v
            .iter()
            .find(|h| h.name.starts_with("spidermultusconfig"))
            .unwrap();
        assert_eq!(
            smc.rules.as_ref().unwrap()[0].scope.as_deref(),
            Some("Namespaced")
        );
        assert_eq!(
            smc.rules.as_ref().unwrap()[0].operations.as_ref().unwrap(),
            &vec!["CREATE".to_string(), "UPDATE".to_string()]
        );
    }

    #[test]
    fn url_targets_append_the_path() {
        let reg = Registration {
            target: ClientTarget::Url("https://127.0.0.1:9443/".into()),
            ..Registration::for_service("x", "ns", "svc", 443)
        };
        let v = validating_configuration(&reg, "CA").webhooks.unwrap();
        assert_eq!(
            v.last().unwrap().client_config.url.as_deref(),
            Some("https://127.0.0.1:9443/validate-spiderpool-spidernet-io-v2beta1-spidernetwork")
        );
        assert!(v[0].client_config.service.is_none());
    }
}
