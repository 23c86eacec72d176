//! Certificates for a test control plane: one CA, the API server's serving certificate, the admin's
//! client certificate (group `system:masters`), the API server's client certificate towards kubelets,
//! and the service-account signing key. The CA stays in memory ([`Ca`]) so that real nodes of the
//! real-node tier get client certificates of their own (`system:node:<name>`, kube-proxy, ...).

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyPair, KeyUsagePurpose,
};

/// Paths of the PEM files written by [`write`].
#[derive(Debug, Clone)]
pub(crate) struct CertFiles {
    pub ca_cert: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub admin_cert: PathBuf,
    pub admin_key: PathBuf,
    /// PKCS#8 private key: `--service-account-signing-key-file`, controller-manager's
    /// `--service-account-private-key-file`.
    pub sa_key: PathBuf,
    /// SPKI public key: `--service-account-key-file`.
    pub sa_pub: PathBuf,
    /// `--kubelet-client-certificate` / `--kubelet-client-key` (group `system:masters`).
    pub kubelet_client_cert: PathBuf,
    pub kubelet_client_key: PathBuf,
}

/// The cluster's certificate authority, kept to sign more client certificates.
pub(crate) struct Ca {
    issuer: Issuer<'static, KeyPair>,
    dir: PathBuf,
}

impl Ca {
    /// Writes `<name>.crt` and `<name>.key` into the pki dir: a client certificate for user
    /// `common_name` in the groups `organizations`. Returns (certificate, key).
    pub(crate) fn client_cert(
        &self,
        name: &str,
        common_name: &str,
        organizations: &[&str],
    ) -> Result<(PathBuf, PathBuf)> {
        let (cert, key) = client_pem(&self.issuer, common_name, organizations)?;
        let cert_path = self.dir.join(format!("{name}.crt"));
        let key_path = self.dir.join(format!("{name}.key"));
        std::fs::write(&cert_path, cert).with_context(|| format!("writing {}", cert_path.display()))?;
        std::fs::write(&key_path, key).with_context(|| format!("writing {}", key_path.display()))?;
        Ok((cert_path, key_path))
    }
}

/// A client certificate (PEM) and its key (PEM).
fn client_pem(
    issuer: &Issuer<'static, KeyPair>,
    common_name: &str,
    organizations: &[&str],
) -> Result<(String, String)> {
    let key = KeyPair::generate().context("generating a client key")?;
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    for org in organizations {
        name.push(DnType::OrganizationName, *org);
    }
    name.push(DnType::CommonName, common_name);
    params.distinguished_name = name;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    let cert = params
        .signed_by(&key, issuer)
        .with_context(|| format!("signing the client certificate of {common_name}"))?;
    Ok((cert.pem(), key.serialize_pem()))
}

fn dn(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn
}

/// Generates everything and writes it into `dir` (created if missing). The serving certificate
/// names `service_ip` and `address` (the address the API server listens on) besides loopback.
pub(crate) fn write(dir: &Path, service_ip: IpAddr, address: IpAddr) -> Result<(CertFiles, Ca)> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;

    let ca_key = KeyPair::generate().context("generating the CA key")?;
    let mut ca_params = CertificateParams::default();
    ca_params.distinguished_name = dn("spiderpool-test-ca");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
    ];
    let ca_cert = ca_params.self_signed(&ca_key).context("signing the CA")?;
    let issuer = Issuer::new(ca_params, ca_key);

    let server_key = KeyPair::generate().context("generating the serving key")?;
    let mut names = vec!["127.0.0.1".to_owned(), service_ip.to_string()];
    if !address.is_loopback() {
        names.push(address.to_string());
    }
    let mut server_params = CertificateParams::new(
        names
            .into_iter()
            .chain(
                [
                    "localhost",
                    "kubernetes",
                    "kubernetes.default",
                    "kubernetes.default.svc",
                    "kubernetes.default.svc.cluster.local",
                ]
                .map(str::to_owned),
            )
            .collect::<Vec<_>>(),
    )
    .context("serving certificate names")?;
    server_params.distinguished_name = dn("kube-apiserver");
    server_params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    server_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    server_params.use_authority_key_identifier_extension = true;
    let server_cert = server_params
        .signed_by(&server_key, &issuer)
        .context("signing the serving certificate")?;

    let admin = client_pem(&issuer, "spiderpool-test-admin", &["system:masters"])?;
    let kubelet_client = client_pem(&issuer, "kube-apiserver-kubelet-client", &["system:masters"])?;

    let sa_key = KeyPair::generate().context("generating the service-account key")?;

    let files = CertFiles {
        ca_cert: dir.join("ca.crt"),
        server_cert: dir.join("apiserver.crt"),
        server_key: dir.join("apiserver.key"),
        admin_cert: dir.join("admin.crt"),
        admin_key: dir.join("admin.key"),
        sa_key: dir.join("sa.key"),
        sa_pub: dir.join("sa.pub"),
        kubelet_client_cert: dir.join("apiserver-kubelet-client.crt"),
        kubelet_client_key: dir.join("apiserver-kubelet-client.key"),
    };
    let contents = [
        (&files.ca_cert, ca_cert.pem()),
        (&files.server_cert, server_cert.pem()),
        (&files.server_key, server_key.serialize_pem()),
        (&files.admin_cert, admin.0),
        (&files.admin_key, admin.1),
        (&files.kubelet_client_cert, kubelet_client.0),
        (&files.kubelet_client_key, kubelet_client.1),
        (&files.sa_key, sa_key.serialize_pem()),
        (&files.sa_pub, sa_key.public_key_pem()),
    ];
    for (path, pem) in contents {
        std::fs::write(path, pem).with_context(|| format!("writing {}", path.display()))?;
    }
    let ca = Ca {
        issuer,
        dir: dir.to_path_buf(),
    };
    Ok((files, ca))
}
