//! CertificateSigningRequest approval and signing: kube-controller-manager's
//! `csrapproving` and `csrsigning` controllers in one, issuing from the
//! cluster CA.
//!
//! Three signers are served:
//! - [`NODE_MESH_SIGNER`] (`skiff.dev/node-mesh`): the certificates nodes
//!   use for the QUIC overlay mesh (mTLS between agents). Requests are
//!   reviewed by [`review_node_mesh`] and auto-approved (`AutoApproved`) or
//!   denied with the reason, then signed.
//! - `kubernetes.io/kube-apiserver-client` and
//!   `kubernetes.io/kubelet-serving`: never auto-approved; signed once
//!   someone approves them (`kubectl certificate approve NAME`).
//!
//! An issued certificate keeps the request's public key, subject and
//! subjectAltNames; its key usages come from `spec.usages`, its lifetime
//! from `spec.expirationSeconds` (at least 10 minutes) or one year.
//! `status.certificate` is the issued certificate followed by the CA's.
//! Anything that stops an approved request from being signed is recorded
//! as a `Failed` condition.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::ByteString;
use k8s_openapi::api::certificates::v1::{
    CertificateSigningRequest, CertificateSigningRequestCondition, CertificateSigningRequestStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::Api;
use kube::api::PostParams;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use rcgen::{
    CertificateParams, CertificateSigningRequestParams, DnType, DnValue, ExtendedKeyUsagePurpose,
    IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};

use super::{Clock, Context, chain, events};

/// The signer of node mesh certificates (auto-approved after review).
pub const NODE_MESH_SIGNER: &str = "skiff.dev/node-mesh";
/// Kubernetes' signer of API server client certificates (manual approval).
pub const KUBE_APISERVER_CLIENT_SIGNER: &str = "kubernetes.io/kube-apiserver-client";
/// Kubernetes' signer of kubelet serving certificates (manual approval).
pub const KUBELET_SERVING_SIGNER: &str = "kubernetes.io/kubelet-serving";

/// The organisation every node certificate names.
pub const NODES_GROUP: &str = "system:nodes";
/// The prefix of a node certificate's common name (`system:node:NAME`).
pub const NODE_CN_PREFIX: &str = "system:node:";

/// Lifetime of a certificate whose request names no expirationSeconds.
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);
/// The shortest lifetime issued, whatever the request asks.
pub const MIN_LIFETIME: Duration = Duration::from_secs(600);
/// Certificates are valid from a little before signing, so a peer whose
/// clock is somewhat behind still accepts them (Kubernetes backdates 5 min).
const BACKDATE: Duration = Duration::from_secs(300);

const NODE_MESH_USAGES: &[&str] = &[
    "digital signature",
    "key encipherment",
    "server auth",
    "client auth",
];
const APISERVER_CLIENT_USAGES: &[&str] = &["digital signature", "key encipherment", "client auth"];
const KUBELET_SERVING_USAGES: &[&str] = &["digital signature", "key encipherment", "server auth"];

/// Why a signer could not be built or could not sign.
#[derive(Debug, thiserror::Error)]
pub enum SignerError {
    /// A CA file could not be read.
    #[error("reading {path}")]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
    /// The CA key is not a usable PEM private key.
    #[error("the CA key is not usable: {0}")]
    Key(#[source] rcgen::Error),
    /// The CA certificate is not a parsable PEM certificate.
    #[error("the CA certificate is not usable: {0}")]
    CaCertificate(#[source] rcgen::Error),
    /// The request asks for a usage this signer cannot put in a certificate.
    #[error("unsupported key usage {0:?}")]
    Usage(String),
    /// Encoding or signing the certificate failed.
    #[error("signing failed: {0}")]
    Sign(#[source] rcgen::Error),
}

/// The cluster CA as a signer: its certificate and key.
pub struct Signer {
    ca_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer").finish_non_exhaustive()
    }
}

impl Signer {
    /// A signer issuing from the CA certificate `ca_cert_pem` with its key
    /// `ca_key_pem`. This errors if either does not parse; it does not
    /// check that the key belongs to the certificate.
    pub fn new(ca_cert_pem: &str, ca_key_pem: &str) -> Result<Signer, SignerError> {
        let key = KeyPair::from_pem(ca_key_pem).map_err(SignerError::Key)?;
        let issuer =
            Issuer::from_ca_cert_pem(ca_cert_pem, key).map_err(SignerError::CaCertificate)?;
        Ok(Signer {
            ca_pem: ca_cert_pem.to_owned(),
            issuer,
        })
    }

    /// The signer of the CA kept in an API server's PKI directory
    /// (`DATA_DIR/pki`, holding `ca.crt` and `ca.key`).
    pub fn load(pki_dir: &Path) -> Result<Signer, SignerError> {
        let read = |name: &str| {
            let path = pki_dir.join(name);
            std::fs::read_to_string(&path).map_err(|source| SignerError::Io { path, source })
        };
        Signer::new(&read("ca.crt")?, &read("ca.key")?)
    }

    /// The CA certificate, PEM.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// Issues a certificate for `request` with `usages` (Kubernetes usage
    /// names), valid from shortly before `now` for `lifetime`. Returns the
    /// certificate followed by the CA certificate, PEM.
    pub fn sign(
        &self,
        request: &CertificateSigningRequestParams,
        usages: &[String],
        now: jiff::Timestamp,
        lifetime: Duration,
    ) -> Result<String, SignerError> {
        let mut params = CertificateParams::default();
        params.distinguished_name = request.params.distinguished_name.clone();
        params.subject_alt_names = request.params.subject_alt_names.clone();
        params.is_ca = IsCa::ExplicitNoCa;
        for usage in usages {
            match usage_of(usage)? {
                Usage::Key(k) if !params.key_usages.contains(&k) => params.key_usages.push(k),
                Usage::Extended(e) => params.insert_extended_key_usage(e),
                Usage::Key(_) => {}
            }
        }
        params.use_authority_key_identifier_extension = true;
        let mut serial = *uuid::Uuid::new_v4().as_bytes();
        serial[0] &= 0x7f; // a positive INTEGER
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        let epoch = rcgen::date_time_ymd(1970, 1, 1);
        let since_epoch = Duration::from_secs(u64::try_from(now.as_second()).unwrap_or(0));
        params.not_before = epoch + since_epoch.saturating_sub(BACKDATE);
        params.not_after = epoch + since_epoch + lifetime;
        let cert = CertificateSigningRequestParams {
            params,
            public_key: request.public_key.clone(),
        }
        .signed_by(&self.issuer)
        .map_err(SignerError::Sign)?;
        let mut pem = cert.pem();
        if !pem.ends_with('\n') {
            pem.push('\n');
        }
        pem.push_str(&self.ca_pem);
        Ok(pem)
    }
}

enum Usage {
    Key(KeyUsagePurpose),
    Extended(ExtendedKeyUsagePurpose),
}

/// The X.509 usage a Kubernetes usage name stands for.
fn usage_of(name: &str) -> Result<Usage, SignerError> {
    use ExtendedKeyUsagePurpose as E;
    use KeyUsagePurpose as K;
    Ok(match name {
        "signing" | "digital signature" => Usage::Key(K::DigitalSignature),
        "content commitment" => Usage::Key(K::ContentCommitment),
        "key encipherment" => Usage::Key(K::KeyEncipherment),
        "key agreement" => Usage::Key(K::KeyAgreement),
        "data encipherment" => Usage::Key(K::DataEncipherment),
        "encipher only" => Usage::Key(K::EncipherOnly),
        "decipher only" => Usage::Key(K::DecipherOnly),
        "any" => Usage::Extended(E::Any),
        "server auth" => Usage::Extended(E::ServerAuth),
        "client auth" => Usage::Extended(E::ClientAuth),
        "code signing" => Usage::Extended(E::CodeSigning),
        "email protection" | "s/mime" => Usage::Extended(E::EmailProtection),
        "timestamping" => Usage::Extended(E::TimeStamping),
        "ocsp signing" => Usage::Extended(E::OcspSigning),
        // "cert sign" and "crl sign" would make a CA; the IPsec and SGC
        // purposes have no place in a cluster.
        other => return Err(SignerError::Usage(other.to_owned())),
    })
}

/// The text of a subject attribute, for the string types requests use.
fn dn_text(value: &DnValue) -> Option<&str> {
    match value {
        DnValue::Utf8String(s) => Some(s),
        DnValue::PrintableString(s) => Some(s.as_str()),
        DnValue::Ia5String(s) => Some(s.as_str()),
        DnValue::TeletexString(s) => Some(s.as_str()),
        _ => None,
    }
}

fn subject(request: &CertificateSigningRequestParams, ty: DnType) -> Option<&str> {
    request.params.distinguished_name.get(&ty).and_then(dn_text)
}

fn usages_within(usages: &[String], allowed: &[&str]) -> Result<(), String> {
    if usages.is_empty() {
        return Err("the request names no usages".into());
    }
    match usages.iter().find(|u| !allowed.contains(&u.as_str())) {
        Some(u) => Err(format!(
            "usage {u:?} is not allowed (allowed: {})",
            allowed.join(", ")
        )),
        None => Ok(()),
    }
}

/// The node a `system:node:NAME` / `O=system:nodes` subject names.
fn node_subject(request: &CertificateSigningRequestParams) -> Result<&str, String> {
    let org = subject(request, DnType::OrganizationName);
    if org != Some(NODES_GROUP) {
        return Err(format!(
            "the subject's organization must be {NODES_GROUP:?}, not {:?}",
            org.unwrap_or("")
        ));
    }
    let cn = subject(request, DnType::CommonName).unwrap_or("");
    match cn.strip_prefix(NODE_CN_PREFIX) {
        Some(node) if !node.is_empty() => Ok(node),
        _ => Err(format!(
            "the subject's common name must be {NODE_CN_PREFIX}NODE, not {cn:?}"
        )),
    }
}

fn not_a_ca(request: &CertificateSigningRequestParams) -> Result<(), String> {
    match request.params.is_ca {
        IsCa::Ca(_) => Err("the request asks for a CA certificate".into()),
        IsCa::NoCa | IsCa::ExplicitNoCa => Ok(()),
    }
}

/// Reviews a node mesh request: the subject is `CN=system:node:NAME,
/// O=system:nodes`, the subjectAltNames are exactly one DNS name, NAME (IP
/// addresses may be added), and the usages are within digital signature,
/// key encipherment, server auth and client auth. Returns the node's name,
/// or why the request must be denied.
pub fn review_node_mesh(
    request: &CertificateSigningRequestParams,
    usages: &[String],
) -> Result<String, String> {
    let node = node_subject(request)?;
    not_a_ca(request)?;
    let mut dns = Vec::new();
    for san in &request.params.subject_alt_names {
        match san {
            SanType::DnsName(name) => dns.push(name.as_str()),
            SanType::IpAddress(_) => {}
            other => {
                return Err(format!(
                    "only DNS and IP subjectAltNames are allowed, found {other:?}"
                ));
            }
        }
    }
    if dns != [node] {
        return Err(format!(
            "the subjectAltNames must hold exactly one DNS name, the node's ({node:?}), found {dns:?}"
        ));
    }
    usages_within(usages, NODE_MESH_USAGES)?;
    Ok(node.to_owned())
}

/// The checks a signer makes before issuing (Kubernetes'
/// `SignerValidationFailure`).
fn validate_for_signer(
    signer: &str,
    request: &CertificateSigningRequestParams,
    usages: &[String],
) -> Result<(), String> {
    match signer {
        NODE_MESH_SIGNER => review_node_mesh(request, usages).map(drop),
        KUBE_APISERVER_CLIENT_SIGNER => {
            not_a_ca(request)?;
            usages_within(usages, APISERVER_CLIENT_USAGES)
        }
        KUBELET_SERVING_SIGNER => {
            node_subject(request)?;
            not_a_ca(request)?;
            let mut names = 0;
            for san in &request.params.subject_alt_names {
                match san {
                    SanType::DnsName(_) | SanType::IpAddress(_) => names += 1,
                    other => {
                        return Err(format!(
                            "only DNS and IP subjectAltNames are allowed, found {other:?}"
                        ));
                    }
                }
            }
            if names == 0 {
                return Err("at least one DNS or IP subjectAltName is required".into());
            }
            usages_within(usages, KUBELET_SERVING_USAGES)
        }
        other => Err(format!("signer {other:?} is not served here")),
    }
}

/// Whether `signer` is one this controller issues for.
pub fn serves(signer: &str) -> bool {
    [
        NODE_MESH_SIGNER,
        KUBE_APISERVER_CLIENT_SIGNER,
        KUBELET_SERVING_SIGNER,
    ]
    .contains(&signer)
}

/// The lifetime a request asks for: `expirationSeconds` (at least
/// [`MIN_LIFETIME`]) or [`DEFAULT_LIFETIME`].
pub fn lifetime(expiration_seconds: Option<i32>) -> Duration {
    match expiration_seconds {
        Some(s) => Duration::from_secs(u64::try_from(s).unwrap_or(0)).max(MIN_LIFETIME),
        None => DEFAULT_LIFETIME,
    }
}

#[derive(Debug, thiserror::Error)]
enum Error {
    #[error("updating CertificateSigningRequest {name}")]
    Write {
        name: String,
        #[source]
        source: kube::Error,
    },
}

struct State {
    api: Api<CertificateSigningRequest>,
    signer: Arc<Signer>,
    clock: Arc<dyn Clock>,
    recorder: events::Recorder,
}

/// Watches CertificateSigningRequests, approves or denies node mesh
/// requests, and signs approved requests of the signers it serves. Without
/// a signer in the options (no CA key at hand) it does nothing.
pub async fn run(ctx: Context) -> anyhow::Result<()> {
    let Some(signer) = ctx.options.signer.clone() else {
        tracing::debug!("no CA signer configured: CSR signing is off");
        std::future::pending::<()>().await;
        return Ok(());
    };
    let api: Api<CertificateSigningRequest> = Api::all(ctx.client.clone());
    let state = Arc::new(State {
        api: api.clone(),
        signer,
        clock: ctx.clock.clone(),
        recorder: ctx.recorder("csrsigning-controller"),
    });
    Controller::new(api, watcher::Config::default())
        .run(reconcile, error_policy, state)
        .for_each(|result| async move {
            if let Err(error) = result {
                tracing::debug!(error = %chain(&error), "csr reconcile");
            }
        })
        .await;
    anyhow::bail!("the CertificateSigningRequest watch ended")
}

fn error_policy(csr: Arc<CertificateSigningRequest>, error: &Error, _: Arc<State>) -> Action {
    let Error::Write { source, .. } = error;
    super::retry_after_error(
        "CertificateSigningRequest",
        csr.metadata.name.as_deref().unwrap_or(""),
        error,
        Some(source),
    )
}

fn has_condition(csr: &CertificateSigningRequest, ty: &str) -> bool {
    csr.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == ty && c.status == "True"))
}

fn with_condition(
    csr: &CertificateSigningRequest,
    ty: &str,
    reason: &str,
    message: &str,
    now: jiff::Timestamp,
) -> CertificateSigningRequest {
    let mut csr = csr.clone();
    let status = csr.status.get_or_insert_with(Default::default);
    status
        .conditions
        .get_or_insert_with(Vec::new)
        .push(CertificateSigningRequestCondition {
            type_: ty.to_owned(),
            status: "True".to_owned(),
            reason: Some(reason.to_owned()),
            message: Some(message.to_owned()),
            last_update_time: Some(Time(now)),
            last_transition_time: Some(Time(now)),
        });
    csr
}

async fn reconcile(
    csr: Arc<CertificateSigningRequest>,
    state: Arc<State>,
) -> Result<Action, Error> {
    let name = csr.metadata.name.clone().unwrap_or_default();
    let signer_name = csr.spec.signer_name.as_str();
    let issued = csr
        .status
        .as_ref()
        .and_then(|s| s.certificate.as_ref())
        .is_some_and(|c| !c.0.is_empty());
    if !serves(signer_name)
        || issued
        || csr.metadata.deletion_timestamp.is_some()
        || has_condition(&csr, "Denied")
        || has_condition(&csr, "Failed")
    {
        return Ok(Action::await_change());
    }
    let reference = events::reference(csr.as_ref());
    let now = state.clock.now();
    let usages = csr.spec.usages.clone().unwrap_or_default();
    let request = skiff_api::admission::parse_request(&csr.spec.request.0);
    let write = |source| Error::Write {
        name: name.clone(),
        source,
    };

    if !has_condition(&csr, "Approved") {
        if signer_name != NODE_MESH_SIGNER {
            // Someone must approve it (kubectl certificate approve).
            return Ok(Action::await_change());
        }
        let review = request
            .as_ref()
            .map_err(Clone::clone)
            .and_then(|r| review_node_mesh(r, &usages));
        let (updated, approved, message) = match review {
            Ok(node) => {
                let message = format!("Auto approving the mesh certificate of node {node}");
                let csr = with_condition(&csr, "Approved", "AutoApproved", &message, now);
                (csr, true, message)
            }
            Err(why) => {
                let message = format!("Denied: {why}");
                let csr = with_condition(&csr, "Denied", "NodeMeshPolicy", &message, now);
                (csr, false, message)
            }
        };
        state
            .api
            .replace_subresource("approval", &name, &PostParams::default(), &updated)
            .await
            .map_err(write)?;
        if approved {
            tracing::info!(csr = %name, "approved");
            state
                .recorder
                .normal(&reference, "AutoApproved", &message)
                .await;
        } else {
            tracing::info!(csr = %name, %message, "denied");
            state.recorder.warning(&reference, "Denied", &message).await;
        }
        // The write is seen by the watch, which brings us back to sign.
        return Ok(Action::await_change());
    }

    let outcome = request
        .map_err(|why| ("SignerValidationFailure", why))
        .and_then(|r| {
            validate_for_signer(signer_name, &r, &usages)
                .map_err(|why| ("SignerValidationFailure", why))?;
            state
                .signer
                .sign(&r, &usages, now, lifetime(csr.spec.expiration_seconds))
                .map_err(|e| ("SignerFailure", chain(&e)))
        });
    let updated = match &outcome {
        Ok(chain_pem) => {
            let mut csr = csr.as_ref().clone();
            csr.status
                .get_or_insert_with(CertificateSigningRequestStatus::default)
                .certificate = Some(ByteString(chain_pem.clone().into_bytes()));
            csr
        }
        Err((reason, why)) => with_condition(&csr, "Failed", reason, why, now),
    };
    state
        .api
        .replace_status(&name, &PostParams::default(), &updated)
        .await
        .map_err(write)?;
    match outcome {
        Ok(_) => {
            tracing::info!(csr = %name, signer = signer_name, "issued a certificate");
            state
                .recorder
                .normal(
                    &reference,
                    "Issued",
                    &format!("Issued a certificate signed by {signer_name}"),
                )
                .await;
        }
        Err((reason, why)) => {
            tracing::warn!(csr = %name, reason, %why, "signing failed");
            state.recorder.warning(&reference, reason, &why).await;
        }
    }
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;

    fn request(cn: &str, org: &str, sans: &[&str]) -> CertificateSigningRequestParams {
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, cn);
        params
            .distinguished_name
            .push(DnType::OrganizationName, org);
        params.subject_alt_names = sans
            .iter()
            .map(|s| match s.parse::<IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName((*s).try_into().unwrap()),
            })
            .collect();
        let key = KeyPair::generate().unwrap();
        let csr = params.serialize_request(&key).unwrap();
        skiff_api::admission::parse_request(csr.pem().unwrap().as_bytes()).unwrap()
    }

    fn usages(u: &[&str]) -> Vec<String> {
        u.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn node_mesh_review() {
        let all = usages(NODE_MESH_USAGES);
        let ok = request("system:node:n1", NODES_GROUP, &["n1", "10.0.0.1"]);
        assert_eq!(review_node_mesh(&ok, &all).unwrap(), "n1");
        let other_san = request("system:node:n1", NODES_GROUP, &["n2"]);
        assert!(
            review_node_mesh(&other_san, &all)
                .unwrap_err()
                .contains("n1")
        );
        let two = request("system:node:n1", NODES_GROUP, &["n1", "n1.example"]);
        assert!(review_node_mesh(&two, &all).is_err());
        let none = request("system:node:n1", NODES_GROUP, &[]);
        assert!(review_node_mesh(&none, &all).is_err());
        let org = request("system:node:n1", "system:masters", &["n1"]);
        assert!(
            review_node_mesh(&org, &all)
                .unwrap_err()
                .contains("organization")
        );
        let cn = request("admin", NODES_GROUP, &["n1"]);
        assert!(
            review_node_mesh(&cn, &all)
                .unwrap_err()
                .contains("common name")
        );
        let bad_usage = usages(&["client auth", "code signing"]);
        assert!(
            review_node_mesh(&ok, &bad_usage)
                .unwrap_err()
                .contains("code signing")
        );
    }

    #[test]
    fn lifetimes() {
        assert_eq!(lifetime(None), DEFAULT_LIFETIME);
        assert_eq!(lifetime(Some(60)), MIN_LIFETIME);
        assert_eq!(lifetime(Some(-5)), MIN_LIFETIME);
        assert_eq!(lifetime(Some(7200)), Duration::from_secs(7200));
    }

    #[test]
    fn signs_what_was_asked() {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::default();
        ca.distinguished_name.push(DnType::CommonName, "test-ca");
        ca.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let signer = Signer::new(&ca_cert.pem(), &ca_key.serialize_pem()).unwrap();
        let req = request("system:node:n1", NODES_GROUP, &["n1"]);
        let pem = signer
            .sign(
                &req,
                &usages(&["digital signature", "server auth"]),
                jiff::Timestamp::now(),
                DEFAULT_LIFETIME,
            )
            .unwrap();
        assert_eq!(pem.matches("BEGIN CERTIFICATE").count(), 2);
        assert!(pem.ends_with(&ca_cert.pem()));
        let err = signer
            .sign(
                &req,
                &usages(&["cert sign"]),
                jiff::Timestamp::now(),
                MIN_LIFETIME,
            )
            .unwrap_err();
        assert!(matches!(err, SignerError::Usage(u) if u == "cert sign"));
    }
}
