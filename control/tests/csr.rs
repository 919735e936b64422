//! CertificateSigningRequests: the API (validation, the approval
//! subresource) and the csrsigning controller (auto-approval of node mesh
//! requests, signing from the cluster CA, manual approval of the Kubernetes
//! signers).

mod support;

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::certificates::v1::{
    CertificateSigningRequest, CertificateSigningRequestCondition, CertificateSigningRequestSpec,
};
use kube::Api;
use kube::api::{ObjectMeta, PostParams};
use rcgen::{CertificateParams, DnType, KeyPair, PublicKeyData, SanType};
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use skiff_control::controllers::csrsigning::{self, Signer};
use skiff_control::controllers::{Context, Options};
use support::{Cluster, eventually};

const WAIT: Duration = Duration::from_secs(30);

/// A cluster with the csrsigning controller running on its CA.
struct Signing {
    /// Kept for the server's lifetime.
    _cluster: Cluster,
    controller: tokio::task::JoinHandle<anyhow::Result<()>>,
    api: Api<CertificateSigningRequest>,
    ca_pem: String,
}

impl Drop for Signing {
    fn drop(&mut self) {
        self.controller.abort();
    }
}

async fn start() -> Signing {
    let cluster = Cluster::start().await;
    let pki = cluster.dir.path().join("pki");
    let signer = Signer::load(&pki).unwrap();
    let ca_pem = signer.ca_pem().to_owned();
    let ctx = Context {
        options: Arc::new(Options {
            signer: Some(Arc::new(signer)),
            ..Default::default()
        }),
        ..Context::new(cluster.client.clone())
    };
    let controller = tokio::spawn(csrsigning::run(ctx));
    let api = Api::all(cluster.client.clone());
    Signing {
        _cluster: cluster,
        controller,
        api,
        ca_pem,
    }
}

fn request_pem(cn: &str, org: &str, sans: &[&str]) -> (KeyPair, String) {
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, cn);
    params
        .distinguished_name
        .push(DnType::OrganizationName, org);
    params.subject_alt_names = sans
        .iter()
        .map(|s| match s.parse() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName((*s).try_into().unwrap()),
        })
        .collect();
    let key = KeyPair::generate().unwrap();
    let pem = params.serialize_request(&key).unwrap().pem().unwrap();
    (key, pem)
}

fn csr(name: &str, request: &str, signer: &str, usages: &[&str]) -> CertificateSigningRequest {
    CertificateSigningRequest {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            ..Default::default()
        },
        spec: CertificateSigningRequestSpec {
            request: ByteString(request.as_bytes().to_vec()),
            signer_name: signer.to_owned(),
            usages: Some(usages.iter().map(|u| u.to_string()).collect()),
            ..Default::default()
        },
        status: None,
    }
}

const MESH_USAGES: &[&str] = &[
    "digital signature",
    "key encipherment",
    "server auth",
    "client auth",
];

fn condition<'a>(
    csr: &'a CertificateSigningRequest,
    ty: &str,
) -> Option<&'a CertificateSigningRequestCondition> {
    csr.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == ty)
}

fn certificate(csr: &CertificateSigningRequest) -> Option<String> {
    let cert = csr.status.as_ref()?.certificate.as_ref()?;
    (!cert.0.is_empty()).then(|| String::from_utf8(cert.0.clone()).unwrap())
}

async fn wait_signed(api: &Api<CertificateSigningRequest>, name: &str) -> String {
    eventually(WAIT, &format!("{name} to be signed"), || async {
        certificate(&api.get(name).await.ok()?)
    })
    .await
}

/// Checks `chain_pem` chains to `ca_pem` for serving as `dns_name` and for
/// client auth, now.
fn verify_chain(chain_pem: &str, ca_pem: &str, dns_name: &str) {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs: Vec<CertificateDer<'_>> = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .collect::<Result<_, _>>()
        .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap())
        .unwrap();
    let roots = Arc::new(roots);
    rustls::client::WebPkiServerVerifier::builder_with_provider(roots.clone(), provider.clone())
        .build()
        .unwrap()
        .verify_server_cert(
            &certs[0],
            &certs[1..],
            &ServerName::try_from(dns_name.to_owned()).unwrap(),
            &[],
            UnixTime::now(),
        )
        .expect("the certificate verifies for serving against the cluster CA");
    rustls::server::WebPkiClientVerifier::builder_with_provider(roots, provider)
        .build()
        .unwrap()
        .verify_client_cert(&certs[0], &certs[1..], UnixTime::now())
        .expect("the certificate verifies for client auth against the cluster CA");
}

async fn timeout<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(120), f)
        .await
        .unwrap_or_else(|_| panic!("{what} deadlocked"))
}

#[tokio::test]
async fn node_mesh_request_is_approved_and_signed() {
    timeout("node mesh signing", async {
        let s = start().await;
        let (key, pem) = request_pem("system:node:n1", "system:nodes", &["n1", "10.1.2.3"]);
        s.api
            .create(
                &PostParams::default(),
                &csr("n1-mesh", &pem, csrsigning::NODE_MESH_SIGNER, MESH_USAGES),
            )
            .await
            .unwrap();
        let chain = wait_signed(&s.api, "n1-mesh").await;
        let got = s.api.get("n1-mesh").await.unwrap();
        let approved = condition(&got, "Approved").expect("an Approved condition");
        assert_eq!(approved.status, "True");
        assert_eq!(approved.reason.as_deref(), Some("AutoApproved"));
        assert!(condition(&got, "Denied").is_none());

        assert!(chain.ends_with(&s.ca_pem), "the chain ends with the CA");
        verify_chain(&chain, &s.ca_pem, "n1");

        let leaf = CertificateDer::pem_slice_iter(chain.as_bytes())
            .next()
            .unwrap()
            .unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(&leaf).unwrap();
        let cn: Vec<_> = cert
            .subject()
            .iter_common_name()
            .map(|a| a.as_str().unwrap())
            .collect();
        assert_eq!(cn, ["system:node:n1"]);
        let org: Vec<_> = cert
            .subject()
            .iter_organization()
            .map(|a| a.as_str().unwrap())
            .collect();
        assert_eq!(org, ["system:nodes"]);
        let san = cert.subject_alternative_name().unwrap().unwrap();
        let names: Vec<String> = san
            .value
            .general_names
            .iter()
            .map(|n| match n {
                x509_parser::extensions::GeneralName::DNSName(d) => d.to_string(),
                x509_parser::extensions::GeneralName::IPAddress(ip) => format!("ip:{ip:?}"),
                other => format!("{other:?}"),
            })
            .collect();
        assert_eq!(names, ["n1".to_string(), "ip:[10, 1, 2, 3]".to_string()]);
        assert_eq!(
            cert.public_key().raw,
            key.subject_public_key_info().as_slice(),
            "the certificate keeps the requested key"
        );
        assert!(!cert.is_ca());
        let lifetime =
            cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp();
        assert_eq!(
            lifetime,
            365 * 24 * 3600 + 300,
            "one year, backdated 5 minutes"
        );
    })
    .await;
}

#[tokio::test]
async fn expiration_seconds_sets_the_lifetime() {
    timeout("expiration", async {
        let s = start().await;
        let (_, pem) = request_pem("system:node:n2", "system:nodes", &["n2"]);
        let mut short = csr("n2-mesh", &pem, csrsigning::NODE_MESH_SIGNER, MESH_USAGES);
        short.spec.expiration_seconds = Some(3600);
        s.api.create(&PostParams::default(), &short).await.unwrap();
        let chain = wait_signed(&s.api, "n2-mesh").await;
        let leaf = CertificateDer::pem_slice_iter(chain.as_bytes())
            .next()
            .unwrap()
            .unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(&leaf).unwrap();
        let lifetime =
            cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp();
        assert_eq!(lifetime, 3600 + 300);
    })
    .await;
}

#[tokio::test]
async fn mismatched_node_mesh_requests_are_denied() {
    timeout("denial", async {
        let s = start().await;
        let (_, other_san) = request_pem("system:node:n1", "system:nodes", &["n2"]);
        s.api
            .create(
                &PostParams::default(),
                &csr(
                    "wrong-san",
                    &other_san,
                    csrsigning::NODE_MESH_SIGNER,
                    MESH_USAGES,
                ),
            )
            .await
            .unwrap();
        let (_, admin) = request_pem("admin", "system:masters", &["n1"]);
        s.api
            .create(
                &PostParams::default(),
                &csr("admin", &admin, csrsigning::NODE_MESH_SIGNER, MESH_USAGES),
            )
            .await
            .unwrap();
        for (name, why) in [("wrong-san", "subjectAltNames"), ("admin", "organization")] {
            let denied = eventually(WAIT, &format!("{name} to be denied"), || async {
                let got = s.api.get(name).await.ok()?;
                condition(&got, "Denied").cloned()
            })
            .await;
            assert_eq!(denied.status, "True");
            let message = denied.message.unwrap_or_default();
            assert!(message.contains(why), "{name}: {message}");
            let got = s.api.get(name).await.unwrap();
            assert!(condition(&got, "Approved").is_none());
            assert!(certificate(&got).is_none(), "{name} was not signed");
        }
    })
    .await;
}

#[tokio::test]
async fn kubelet_serving_waits_for_manual_approval() {
    timeout("manual approval", async {
        let s = start().await;
        let (_, pem) = request_pem("system:node:n3", "system:nodes", &["n3", "127.0.0.1"]);
        s.api
            .create(
                &PostParams::default(),
                &csr(
                    "n3-serving",
                    &pem,
                    csrsigning::KUBELET_SERVING_SIGNER,
                    &["digital signature", "key encipherment", "server auth"],
                ),
            )
            .await
            .unwrap();
        // A node mesh request made afterwards is handled by the same
        // controller; once it is signed, the serving one has been seen too.
        let (_, mesh) = request_pem("system:node:n3", "system:nodes", &["n3"]);
        s.api
            .create(
                &PostParams::default(),
                &csr("n3-mesh", &mesh, csrsigning::NODE_MESH_SIGNER, MESH_USAGES),
            )
            .await
            .unwrap();
        wait_signed(&s.api, "n3-mesh").await;
        let pending = s.api.get("n3-serving").await.unwrap();
        assert!(
            condition(&pending, "Approved").is_none(),
            "never auto-approved"
        );
        assert!(certificate(&pending).is_none());

        // What `kubectl certificate approve` does: GET, append, PUT approval.
        let mut approve = pending.clone();
        approve
            .status
            .get_or_insert_with(Default::default)
            .conditions
            .get_or_insert_with(Vec::new)
            .push(CertificateSigningRequestCondition {
                type_: "Approved".into(),
                status: "True".into(),
                reason: Some("KubectlApprove".into()),
                message: Some("This CSR was approved by kubectl certificate approve.".into()),
                ..Default::default()
            });
        // The approval subresource changes conditions only.
        approve.status.as_mut().unwrap().certificate = Some(ByteString(b"forged".to_vec()));
        approve
            .metadata
            .labels
            .get_or_insert_with(Default::default)
            .insert("changed".into(), "yes".into());
        let approved = s
            .api
            .replace_subresource("approval", "n3-serving", &PostParams::default(), &approve)
            .await
            .unwrap();
        assert!(condition(&approved, "Approved").is_some());
        assert!(
            approved
                .metadata
                .labels
                .as_ref()
                .is_none_or(|l| !l.contains_key("changed"))
        );
        assert!(certificate(&approved).is_none_or(|c| c != "forged"));

        let chain = wait_signed(&s.api, "n3-serving").await;
        verify_chain_server_only(&chain, &s.ca_pem, "n3");
    })
    .await;
}

/// Like [`verify_chain`] for a serving-only certificate.
fn verify_chain_server_only(chain_pem: &str, ca_pem: &str, dns_name: &str) {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs: Vec<CertificateDer<'_>> = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .collect::<Result<_, _>>()
        .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap())
        .unwrap();
    rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .unwrap()
        .verify_server_cert(
            &certs[0],
            &certs[1..],
            &ServerName::try_from(dns_name.to_owned()).unwrap(),
            &[],
            UnixTime::now(),
        )
        .expect("the serving certificate verifies against the cluster CA");
}

fn invalid_fields(err: kube::Error) -> Vec<String> {
    match err {
        kube::Error::Api(s) => {
            assert_eq!(s.code, 422, "{s:?}");
            s.details
                .map(|d| d.causes.into_iter().map(|c| c.field).collect())
                .unwrap_or_default()
        }
        other => panic!("expected 422, got {other}"),
    }
}

#[tokio::test]
async fn invalid_requests_are_refused() {
    timeout("validation", async {
        let cluster = Cluster::start().await;
        let api: Api<CertificateSigningRequest> = Api::all(cluster.client.clone());
        let pp = PostParams::default();

        let garbage = csr(
            "garbage",
            "this is not PEM",
            csrsigning::NODE_MESH_SIGNER,
            MESH_USAGES,
        );
        let fields = invalid_fields(api.create(&pp, &garbage).await.unwrap_err());
        assert_eq!(fields, ["spec.request"]);

        let (_, cert_pem) = {
            let key = KeyPair::generate().unwrap();
            let cert = CertificateParams::new(vec!["x".to_string()])
                .unwrap()
                .self_signed(&key)
                .unwrap();
            (key, cert.pem())
        };
        let wrong_block = csr("cert", &cert_pem, csrsigning::NODE_MESH_SIGNER, MESH_USAGES);
        let err = api.create(&pp, &wrong_block).await.unwrap_err();
        assert!(err.to_string().contains("CERTIFICATE REQUEST"), "{err}");

        let (_, pem) = request_pem("system:node:n1", "system:nodes", &["n1"]);
        let mut missing = csr("missing", &pem, "", &[]);
        missing.spec.usages = None;
        let mut fields = invalid_fields(api.create(&pp, &missing).await.unwrap_err());
        fields.sort();
        assert_eq!(fields, ["spec.signerName", "spec.usages"]);

        let mut empty = csr("empty", "", csrsigning::NODE_MESH_SIGNER, MESH_USAGES);
        empty.spec.request = ByteString(Vec::new());
        let fields = invalid_fields(api.create(&pp, &empty).await.unwrap_err());
        assert_eq!(fields, ["spec.request"]);

        let bad_usage = csr("usage", &pem, csrsigning::NODE_MESH_SIGNER, &["flying"]);
        let fields = invalid_fields(api.create(&pp, &bad_usage).await.unwrap_err());
        assert_eq!(fields, ["spec.usages[0]"]);

        // A valid one is accepted, and cluster-scoped.
        let ok = api
            .create(
                &pp,
                &csr("ok", &pem, csrsigning::NODE_MESH_SIGNER, MESH_USAGES),
            )
            .await
            .unwrap();
        assert!(ok.metadata.namespace.is_none());
        assert!(ok.status.is_none_or(|s| s.certificate.is_none()));
    })
    .await;
}
