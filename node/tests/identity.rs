//! A node obtains its mesh certificate from a real API server and the
//! csrsigning controller, then reuses it from disk.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
use kube::Api;
use kube::api::ListParams;
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use skiff_control::apiserver::{ApiServer, Config};
use skiff_control::controllers::csrsigning::Signer;
use skiff_control::controllers::{Context, Options};
use skiff_node::overlay::identity::{self, MeshIdentity};

fn chains_to_ca(identity: &MeshIdentity, ca_pem: &str) {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs: Vec<CertificateDer<'_>> =
        CertificateDer::pem_slice_iter(identity.cert_pem.as_bytes())
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
            &ServerName::try_from(identity.node.clone()).unwrap(),
            &[],
            UnixTime::now(),
        )
        .expect("the mesh certificate chains to the cluster CA");
}

async fn csr_count(api: &Api<CertificateSigningRequest>) -> usize {
    api.list(&ListParams::default()).await.unwrap().items.len()
}

#[tokio::test]
async fn mesh_identity_is_issued_then_reused() {
    tokio::time::timeout(Duration::from_secs(120), async {
        let dir = tempfile::tempdir().unwrap();
        let server = ApiServer::start(Config::new(dir.path(), "127.0.0.1:0".parse().unwrap()))
            .await
            .unwrap();
        let client = skiff_control::client::from_kubeconfig(server.kubeconfig())
            .await
            .unwrap();
        let signer = Signer::load(&dir.path().join("pki")).unwrap();
        let ca_pem = signer.ca_pem().to_owned();
        let ctx = Context {
            options: Arc::new(Options {
                signer: Some(Arc::new(signer)),
                ..Default::default()
            }),
            ..Context::new(client.clone())
        };
        let controller = tokio::spawn(skiff_control::controllers::csrsigning::run(ctx));
        let api: Api<CertificateSigningRequest> = Api::all(client.clone());
        let wait = Duration::from_secs(30);
        let node_dir = tempfile::tempdir().unwrap();

        let first =
            identity::mesh_identity(client.clone(), "node-a", node_dir.path(), &ca_pem, wait)
                .await
                .unwrap();
        assert_eq!(first.node, "node-a");
        assert_eq!(first.ca_pem, ca_pem);
        chains_to_ca(&first, &ca_pem);
        assert_eq!(csr_count(&api).await, 1);
        let requests = api.list(&ListParams::default()).await.unwrap().items;
        let name = requests[0].metadata.name.clone().unwrap();
        assert!(name.starts_with("node-mesh-"), "{name}");
        assert_eq!(requests[0].spec.signer_name, identity::NODE_MESH_SIGNER);
        assert_eq!(
            std::fs::read_to_string(node_dir.path().join(identity::CERT_FILE)).unwrap(),
            first.cert_pem
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(node_dir.path().join(identity::KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "the key is private");
        }

        // Reused from disk: same certificate, no new request.
        let again =
            identity::mesh_identity(client.clone(), "node-a", node_dir.path(), &ca_pem, wait)
                .await
                .unwrap();
        assert_eq!(again.cert_pem, first.cert_pem);
        assert_eq!(again.key_pem, first.key_pem);
        assert_eq!(csr_count(&api).await, 1);

        // Files issued to another node are not reused: a new request.
        let other =
            identity::mesh_identity(client.clone(), "node-b", node_dir.path(), &ca_pem, wait)
                .await
                .unwrap();
        chains_to_ca(&other, &ca_pem);
        assert_ne!(other.cert_pem, first.cert_pem);
        assert_eq!(csr_count(&api).await, 2);

        // Without a signer nothing is issued: the wait is bounded.
        controller.abort();
        let fresh = tempfile::tempdir().unwrap();
        let err = identity::mesh_identity(
            client.clone(),
            "node-c",
            fresh.path(),
            &ca_pem,
            Duration::from_millis(500),
        )
        .await
        .unwrap_err();
        assert!(
            format!("{err:#}").contains("was not signed within"),
            "{err:#}"
        );
        assert!(!fresh.path().join(identity::KEY_FILE).exists());

        // A denial reaches the caller with its message.
        let known: Vec<String> = api
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter_map(|c| c.metadata.name)
            .collect();
        let denier = {
            let api = api.clone();
            tokio::spawn(async move {
                loop {
                    let all = api.list(&ListParams::default()).await.unwrap().items;
                    if let Some(mut csr) = all
                        .into_iter()
                        .find(|c| c.metadata.name.as_ref().is_some_and(|n| !known.contains(n)))
                    {
                        let name = csr.metadata.name.clone().unwrap();
                        csr.status.get_or_insert_with(Default::default).conditions = Some(vec![
                            k8s_openapi::api::certificates::v1::CertificateSigningRequestCondition {
                                type_: "Denied".into(),
                                status: "True".into(),
                                reason: Some("Test".into()),
                                message: Some("node-d is not welcome".into()),
                                ..Default::default()
                            },
                        ]);
                        api.replace_subresource("approval", &name, &Default::default(), &csr)
                            .await
                            .unwrap();
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            })
        };
        let err = identity::mesh_identity(client.clone(), "node-d", fresh.path(), &ca_pem, wait)
            .await
            .unwrap_err();
        denier.await.unwrap();
        assert!(
            format!("{err:#}").contains("node-d is not welcome"),
            "{err:#}"
        );
        assert!(format!("{err:#}").contains("denied"), "{err:#}");

        server.shutdown(Duration::from_secs(5)).await;
    })
    .await
    .expect("mesh identity test deadlocked");
}
