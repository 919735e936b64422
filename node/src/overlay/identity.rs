//! A node's identity on the QUIC mesh: a certificate issued by the cluster
//! CA through the `certificates.k8s.io/v1` CertificateSigningRequest API
//! (signer `skiff.dev/node-mesh`, approved and signed by the control
//! plane's `csrsigning-controller`), cached on disk between restarts.
//!
//! [`mesh_identity`] is the entry point: it reuses `mesh.crt`/`mesh.key`
//! while they are good for another day, and otherwise asks for a new
//! certificate, like a kubelet's certificate manager.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use k8s_openapi::ByteString;
use k8s_openapi::api::certificates::v1::{
    CertificateSigningRequest, CertificateSigningRequestSpec,
};
use kube::Api;
use kube::api::{ObjectMeta, PostParams};
use rcgen::{CertificateParams, DnType, KeyPair, SanType};
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

/// The signer that issues node mesh certificates.
pub const NODE_MESH_SIGNER: &str = "skiff.dev/node-mesh";
/// The usages a mesh certificate is requested with: it serves and dials.
pub const MESH_USAGES: &[&str] = &[
    "digital signature",
    "key encipherment",
    "server auth",
    "client auth",
];
/// The certificate file in the identity directory (certificate, then CA).
pub const CERT_FILE: &str = "mesh.crt";
/// The private key file in the identity directory (mode 0600).
pub const KEY_FILE: &str = "mesh.key";
/// A stored certificate is renewed when it has less than this left.
pub const RENEW_BEFORE: Duration = Duration::from_secs(24 * 3600);

/// A node's mesh identity: its certificate (chain PEM), key (PEM) and the cluster CA (PEM).
#[derive(Clone)]
pub struct MeshIdentity {
    /// The node's name (the certificate's DNS SAN; CN `system:node:<node>`).
    pub node: String,
    /// The node's certificate followed by the CA certificate, PEM.
    pub cert_pem: String,
    /// The node's private key, PEM (PKCS#8).
    pub key_pem: String,
    /// The cluster CA certificate, PEM.
    pub ca_pem: String,
}

impl std::fmt::Debug for MeshIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the private key.
        f.debug_struct("MeshIdentity")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

/// Loads `dir/mesh.crt` + `dir/mesh.key` if present, chaining to `ca_pem`,
/// for `node`, and valid for at least 1 more day; otherwise generates a key
/// pair, creates a CertificateSigningRequest (generateName `node-mesh-`,
/// signerName `skiff.dev/node-mesh`, usages digital signature, key
/// encipherment, server auth, client auth; CN `system:node:NODE`, O
/// `system:nodes`, SAN DNS `NODE`), waits up to `timeout` for
/// `status.certificate`, writes the files (the key with mode 0600) and
/// returns.
///
/// This errors if the request is denied or fails (with the condition's
/// message), if no certificate arrives within `timeout`, if the issued
/// certificate does not chain to `ca_pem` for `node`, or if the API or the
/// files cannot be reached.
pub async fn mesh_identity(
    client: kube::Client,
    node: &str,
    dir: &Path,
    ca_pem: &str,
    timeout: Duration,
) -> anyhow::Result<MeshIdentity> {
    let (cert_path, key_path) = (dir.join(CERT_FILE), dir.join(KEY_FILE));
    match load(node, &cert_path, &key_path, ca_pem) {
        Ok(Some(identity)) => {
            tracing::debug!(node, "reusing the stored mesh certificate");
            return Ok(identity);
        }
        Ok(None) => {}
        Err(why) => {
            tracing::info!(node, error = %format!("{why:#}"), "requesting a new mesh certificate");
        }
    }

    let key = KeyPair::generate().context("generating the mesh key")?;
    let request = certificate_request(node, &key)?;
    let api: Api<CertificateSigningRequest> = Api::all(client);
    let csr = CertificateSigningRequest {
        metadata: ObjectMeta {
            generate_name: Some("node-mesh-".to_owned()),
            ..Default::default()
        },
        spec: CertificateSigningRequestSpec {
            request: ByteString(request.into_bytes()),
            signer_name: NODE_MESH_SIGNER.to_owned(),
            usages: Some(MESH_USAGES.iter().map(|u| (*u).to_owned()).collect()),
            ..Default::default()
        },
        status: None,
    };
    let created = api
        .create(&PostParams::default(), &csr)
        .await
        .context("creating the mesh CertificateSigningRequest")?;
    let name = created.metadata.name.clone().unwrap_or_default();
    tracing::info!(node, csr = %name, "requested a mesh certificate");

    let cert_pem = tokio::time::timeout(timeout, wait_for_certificate(&api, &name))
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "CertificateSigningRequest {name} was not signed within {timeout:?} (is the csrsigning controller running?)"
            )
        })??;
    let identity = MeshIdentity {
        node: node.to_owned(),
        cert_pem,
        key_pem: key.serialize_pem(),
        ca_pem: ca_pem.to_owned(),
    };
    verify(&identity, UnixTime::now())
        .with_context(|| format!("the certificate issued for CertificateSigningRequest {name}"))?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    write_file(&key_path, &identity.key_pem, true)?;
    write_file(&cert_path, &identity.cert_pem, false)?;
    Ok(identity)
}

/// A PEM PKCS#10 request for `node`'s mesh certificate, signed by `key`.
fn certificate_request(node: &str, key: &KeyPair) -> anyhow::Result<String> {
    // Node names are DNS subdomains (RFC 1123): lowercase letters, digits,
    // '-' and '.'; the name is the certificate's DNS SAN.
    let dns_subdomain = !node.is_empty()
        && node.len() <= 253
        && node.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        });
    anyhow::ensure!(dns_subdomain, "node name {node:?} is not a DNS name");
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, format!("system:node:{node}"));
    params
        .distinguished_name
        .push(DnType::OrganizationName, "system:nodes");
    params.subject_alt_names =
        vec![SanType::DnsName(node.try_into().with_context(|| {
            format!("node name {node:?} is not a DNS name")
        })?)];
    let csr = params
        .serialize_request(key)
        .context("creating the certificate request")?;
    csr.pem().context("encoding the certificate request")
}

/// Waits (by watching) until the request has a certificate, or fails.
async fn wait_for_certificate(
    api: &Api<CertificateSigningRequest>,
    name: &str,
) -> anyhow::Result<String> {
    let done = |csr: Option<&CertificateSigningRequest>| {
        csr.and_then(|c| c.status.as_ref()).is_some_and(|s| {
            s.certificate.as_ref().is_some_and(|c| !c.0.is_empty())
                || s.conditions
                    .iter()
                    .flatten()
                    .any(|c| (c.type_ == "Denied" || c.type_ == "Failed") && c.status == "True")
        })
    };
    let csr = kube::runtime::wait::await_condition(api.clone(), name, done)
        .await
        .with_context(|| format!("watching CertificateSigningRequest {name}"))?
        .with_context(|| format!("CertificateSigningRequest {name} was deleted"))?;
    let status = csr.status.unwrap_or_default();
    if let Some(c) = status
        .conditions
        .iter()
        .flatten()
        .find(|c| (c.type_ == "Denied" || c.type_ == "Failed") && c.status == "True")
    {
        bail!(
            "CertificateSigningRequest {name} {}: {}",
            if c.type_ == "Denied" {
                "was denied"
            } else {
                "failed"
            },
            c.message.as_deref().unwrap_or("no reason given")
        );
    }
    let cert = status.certificate.unwrap_or_default().0;
    String::from_utf8(cert).with_context(|| format!("the certificate of {name} is not PEM"))
}

/// The stored identity, if both files exist and are still good for
/// [`RENEW_BEFORE`]; `Ok(None)` if there are no files, an error saying why
/// stored files cannot be used.
fn load(
    node: &str,
    cert_path: &Path,
    key_path: &Path,
    ca_pem: &str,
) -> anyhow::Result<Option<MeshIdentity>> {
    if !cert_path.exists() && !key_path.exists() {
        return Ok(None);
    }
    let read = |path: &Path| {
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
    };
    let identity = MeshIdentity {
        node: node.to_owned(),
        cert_pem: read(cert_path)?,
        key_pem: read(key_path)?,
        ca_pem: ca_pem.to_owned(),
    };
    let now = UnixTime::now().as_secs();
    verify(
        &identity,
        UnixTime::since_unix_epoch(Duration::from_secs(now)),
    )?;
    verify(
        &identity,
        UnixTime::since_unix_epoch(Duration::from_secs(now) + RENEW_BEFORE),
    )
    .context("the stored certificate expires within a day")?;
    Ok(Some(identity))
}

/// Checks that `identity`'s certificate chains to its CA for its node at
/// `at`, for both serving and dialling, and that its key matches.
fn verify(identity: &MeshIdentity, at: UnixTime) -> anyhow::Result<()> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs = CertificateDer::pem_slice_iter(identity.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .context("reading the certificate PEM")?;
    let Some((leaf, intermediates)) = certs.split_first() else {
        bail!("the certificate file holds no certificate");
    };
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(identity.ca_pem.as_bytes()) {
        roots
            .add(ca.context("reading the CA PEM")?)
            .context("adding the CA certificate")?;
    }
    let roots = Arc::new(roots);
    let server = rustls::client::WebPkiServerVerifier::builder_with_provider(
        roots.clone(),
        provider.clone(),
    )
    .build()
    .context("building a certificate verifier")?;
    let name = ServerName::try_from(identity.node.clone())
        .with_context(|| format!("node name {:?}", identity.node))?;
    server
        .verify_server_cert(leaf, intermediates, &name, &[], at)
        .context("the certificate does not verify for serving as the node")?;
    let client =
        rustls::server::WebPkiClientVerifier::builder_with_provider(roots, provider.clone())
            .build()
            .context("building a certificate verifier")?;
    client
        .verify_client_cert(leaf, intermediates, at)
        .context("the certificate does not verify for dialling as the node")?;
    let key = PrivateKeyDer::from_pem_slice(identity.key_pem.as_bytes())
        .context("reading the key PEM")?;
    rustls::sign::CertifiedKey::from_der(vec![leaf.clone().into_owned()], key, &provider)
        .and_then(|k| k.keys_match())
        .context("the key does not belong to the certificate")?;
    Ok(())
}

/// Writes `contents` to `path` through a temporary file and a rename, so a
/// crash never leaves half a file; `private` files are readable by their
/// owner only.
fn write_file(path: &Path, contents: &str, private: bool) -> anyhow::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if private {
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    }
    #[cfg(not(unix))]
    let _ = private;
    let write = || -> std::io::Result<()> {
        let mut file = options.open(&tmp)?;
        #[cfg(unix)]
        if private {
            // The mode only applies when the file is created.
            std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
        }
        file.write_all(contents.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_names_the_node() {
        let key = KeyPair::generate().unwrap();
        let pem = certificate_request("node-1", &key).unwrap();
        assert!(pem.starts_with("-----BEGIN CERTIFICATE REQUEST-----"));
        let parsed = rcgen::CertificateSigningRequestParams::from_pem(&pem).unwrap();
        let dn = &parsed.params.distinguished_name;
        assert_eq!(
            dn.get(&DnType::CommonName),
            Some(&rcgen::DnValue::Utf8String("system:node:node-1".into()))
        );
        assert_eq!(
            dn.get(&DnType::OrganizationName),
            Some(&rcgen::DnValue::Utf8String("system:nodes".into()))
        );
        assert_eq!(
            parsed.params.subject_alt_names,
            vec![SanType::DnsName("node-1".try_into().unwrap())]
        );
        assert!(certificate_request("not a name", &key).is_err());
    }
}
