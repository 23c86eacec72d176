//! Certificates for the webhook server: loaded from files (cert-manager or a provided Secret mounted into
//! the pod, upstream's `tls.method: certmanager|provided`), kept in a Secret that the first replica
//! generates and every replica then shares (upstream's `auto`), or generated in memory (one replica,
//! tests). Whatever the source, the CA certificate is what the webhook configurations' `caBundle` holds.

use std::path::Path;
use std::sync::Arc;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Secret keys, as `kubernetes.io/tls` Secrets and cert-manager name them.
const SECRET_CERT: &str = "tls.crt";
const SECRET_KEY: &str = "tls.key";
const SECRET_CA: &str = "ca.crt";

/// Why certificates could not be made or loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// rcgen refused to make a certificate.
    #[error("cannot generate the webhook certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The PEM text holds no usable certificate or key.
    #[error("{what} is not valid PEM: {reason}")]
    Pem {
        /// Which input.
        what: String,
        /// Why.
        reason: String,
    },
    /// rustls refused the certificate and key.
    #[error("the webhook certificate and key do not make a TLS server: {0}")]
    Rustls(#[from] rustls::Error),
    /// The Secret could not be read or created.
    #[error("cannot read or create the Secret {namespace}/{name}: {source}")]
    Secret {
        /// Namespace of the Secret.
        namespace: String,
        /// Name of the Secret.
        name: String,
        /// Why.
        #[source]
        source: Box<kube::Error>,
    },
    /// The Secret exists but lacks a key.
    #[error("the Secret {namespace}/{name} has no `{key}`")]
    SecretKey {
        /// Namespace of the Secret.
        namespace: String,
        /// Name of the Secret.
        name: String,
        /// The missing key.
        key: &'static str,
    },
}

/// A serving certificate, its key and the CA that signed it, all PEM.
#[derive(Clone)]
pub struct TlsMaterial {
    /// The serving certificate (optionally followed by intermediates).
    pub cert_chain_pem: String,
    /// The serving certificate's private key.
    pub key_pem: String,
    /// The CA certificate clients verify the chain with (the webhook configurations' `caBundle`).
    pub ca_pem: String,
}

impl std::fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.debug_struct("TlsMaterial")
            .field("cert_chain_pem", &self.cert_chain_pem)
            .field("ca_pem", &self.ca_pem)
            .finish_non_exhaustive()
    }
}

/// The names a Service is reached by from the API server: `<name>.<namespace>.svc` and friends.
pub fn service_dns_names(name: &str, namespace: &str) -> Vec<String> {
    vec![
        name.to_string(),
        format!("{name}.{namespace}"),
        format!("{name}.{namespace}.svc"),
        format!("{name}.{namespace}.svc.cluster.local"),
    ]
}

/// A new self-signed CA and a serving certificate for `names` (DNS names or IP addresses) signed by it.
/// rcgen's default validity (until 4096) is kept: nothing rotates these yet, see the module docs.
pub fn generate(names: &[String]) -> Result<TlsMaterial, TlsError> {
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::default();
    let mut ca_dn = DistinguishedName::new();
    ca_dn.push(DnType::CommonName, "spiderpool-webhook-ca");
    ca_params.distinguished_name = ca_dn;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
    ];
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, ca_key);

    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(names.to_vec())?;
    let mut dn = DistinguishedName::new();
    dn.push(
        DnType::CommonName,
        names.first().map_or("spiderpool-webhook", String::as_str),
    );
    params.distinguished_name = dn;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    let cert = params.signed_by(&key, &issuer)?;
    Ok(TlsMaterial {
        cert_chain_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        ca_pem: ca_cert.pem(),
    })
}

fn read(path: &Path) -> Result<String, TlsError> {
    std::fs::read_to_string(path).map_err(|source| TlsError::Read {
        path: path.display().to_string(),
        source,
    })
}

/// Loads a certificate chain and key from files. Without a CA file the last certificate of the chain is
/// taken as the CA (right for a self-signed certificate and for chains that end at their root).
pub fn load_files(cert: &Path, key: &Path, ca: Option<&Path>) -> Result<TlsMaterial, TlsError> {
    let cert_chain_pem = read(cert)?;
    let key_pem = read(key)?;
    let ca_pem = match ca {
        Some(ca) => read(ca)?,
        None => last_certificate_pem(&cert_chain_pem).ok_or_else(|| TlsError::Pem {
            what: cert.display().to_string(),
            reason: "no certificate found".into(),
        })?,
    };
    Ok(TlsMaterial {
        cert_chain_pem,
        key_pem,
        ca_pem,
    })
}

/// The last `CERTIFICATE` block of a PEM bundle, as PEM.
fn last_certificate_pem(pem: &str) -> Option<String> {
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    let start = pem.rfind(BEGIN)?;
    let end = pem[start..].find(END)? + start + END.len();
    Some(format!("{}\n", &pem[start..end]))
}

/// The rustls server configuration for `material` (ring provider, TLS 1.2 and 1.3, HTTP/1.1 by ALPN).
pub fn server_config(material: &TlsMaterial) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(material.cert_chain_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            what: "the webhook certificate".into(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            what: "the webhook certificate".into(),
            reason: "no certificate found".into(),
        });
    }
    let key = PrivateKeyDer::from_pem_slice(material.key_pem.as_bytes()).map_err(|e| TlsError::Pem {
        what: "the webhook key".into(),
        reason: e.to_string(),
    })?;
    let mut config =
        rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn secret_value(secret: &Secret, namespace: &str, name: &str, key: &'static str) -> Result<String, TlsError> {
    let bytes = secret
        .data
        .as_ref()
        .and_then(|data| data.get(key))
        .ok_or_else(|| TlsError::SecretKey {
            namespace: namespace.into(),
            name: name.into(),
            key,
        })?;
    String::from_utf8(bytes.0.clone()).map_err(|e| TlsError::Pem {
        what: format!("`{key}` of the Secret {namespace}/{name}"),
        reason: e.to_string(),
    })
}

/// The material kept in a `kubernetes.io/tls` Secret (`tls.crt`, `tls.key`, `ca.crt`): read when it
/// exists, else generated for `names` and created. Replicas starting together race on the create; the
/// losers read the winner's Secret, so every replica serves a certificate from the one CA.
pub async fn from_secret(
    client: Client,
    namespace: &str,
    name: &str,
    names: &[String],
) -> Result<TlsMaterial, TlsError> {
    let secrets: Api<Secret> = Api::namespaced(client, namespace);
    let wrap = |source: kube::Error| TlsError::Secret {
        namespace: namespace.into(),
        name: name.into(),
        source: Box::new(source),
    };
    let read_secret = |secret: Secret| -> Result<TlsMaterial, TlsError> {
        Ok(TlsMaterial {
            cert_chain_pem: secret_value(&secret, namespace, name, SECRET_CERT)?,
            key_pem: secret_value(&secret, namespace, name, SECRET_KEY)?,
            ca_pem: secret_value(&secret, namespace, name, SECRET_CA)?,
        })
    };
    if let Some(secret) = secrets.get_opt(name).await.map_err(wrap)? {
        tracing::info!(%namespace, %name, "using the webhook certificate from the Secret");
        return read_secret(secret);
    }
    let material = generate(names)?;
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(namespace.into()),
            ..ObjectMeta::default()
        },
        type_: Some("kubernetes.io/tls".into()),
        data: Some(
            [
                (SECRET_CERT, &material.cert_chain_pem),
                (SECRET_KEY, &material.key_pem),
                (SECRET_CA, &material.ca_pem),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
            .collect(),
        ),
        ..Secret::default()
    };
    match secrets.create(&PostParams::default(), &secret).await {
        Ok(_) => {
            tracing::info!(%namespace, %name, "generated the webhook certificate and stored it in the Secret");
            Ok(material)
        }
        Err(kube::Error::Api(status)) if status.code == 409 => {
            let secret = secrets.get(name).await.map_err(wrap)?;
            read_secret(secret)
        }
        Err(e) => Err(wrap(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_material_makes_a_server_config() {
        let material = generate(&["127.0.0.1".into(), "webhook.ns.svc".into()]).unwrap();
        assert!(material.ca_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        let config = server_config(&material).unwrap();
        assert_eq!(config.alpn_protocols, vec![b"http/1.1".to_vec()]);
        assert!(!format!("{material:?}").contains("PRIVATE KEY"));
    }

    #[test]
    fn files_without_ca_use_the_last_certificate() {
        let material = generate(&["x".into()]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        std::fs::write(&cert, format!("{}{}", material.cert_chain_pem, material.ca_pem)).unwrap();
        std::fs::write(&key, &material.key_pem).unwrap();
        let loaded = load_files(&cert, &key, None).unwrap();
        assert_eq!(loaded.ca_pem.trim(), material.ca_pem.trim());
        server_config(&loaded).unwrap();
        let missing = load_files(&dir.path().join("nope"), &key, None).unwrap_err();
        assert!(missing.to_string().contains("nope"), "{missing}");
    }

    #[test]
    fn garbage_is_refused_with_a_reason() {
        let material = TlsMaterial {
            cert_chain_pem: "not pem".into(),
            key_pem: "not pem".into(),
            ca_pem: String::new(),
        };
        let error = server_config(&material).unwrap_err();
        assert!(error.to_string().contains("webhook certificate"), "{error}");
    }

    #[test]
    fn service_names() {
        assert_eq!(
            service_dns_names("spiderpool-controller", "kube-system")[2],
            "spiderpool-controller.kube-system.svc"
        );
    }
}
