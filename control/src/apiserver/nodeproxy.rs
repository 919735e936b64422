//! `pods/NAME/log`, proxied to the node agent running the pod, as the
//! Kubernetes API server proxies it to the kubelet.
//!
//! The agent publishes where it listens in its Node object
//! (`status.addresses` InternalIP and `status.daemonEndpoints.
//! kubeletEndpoint.port`) and the SHA-256 of its serving certificate in the
//! annotation [`SERVING_CERT_ANNOTATION`]. The API server connects over TLS,
//! accepts exactly that certificate (the Node object can only be written by
//! node-authenticated or admin clients, so the pin is as trustworthy as the
//! node's registration), and presents the node token so the agent knows the
//! caller is the control plane. The agent's answer, a stream when
//! `follow=true`, is passed through unbuffered.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::http::{StatusCode, header};
use axum::response::Response;
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use serde_json::Value;
use sha2::Digest;
use skiff_api::resources::by_kind;

use super::objects::get_object;
use super::routes::{Req, Target};
use super::{ApiError, ApiResult, State};

/// The Node annotation holding `sha256:<hex>` of the agent's serving
/// certificate (DER).
pub const SERVING_CERT_ANNOTATION: &str = "skiff.dev/serving-cert-sha256";

/// How long connecting to an agent may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The query parameters of `pods/log` the agent understands.
const LOG_PARAMS: &[&str] = &[
    "follow",
    "previous",
    "timestamps",
    "tailLines",
    "sinceSeconds",
    "sinceTime",
    "limitBytes",
];

/// `GET pods/NAME/log`.
pub(super) async fn pod_log(state: &Arc<State>, req: &Req, t: &Target) -> ApiResult<Response> {
    let name = t.name.as_deref().unwrap_or_default();
    let namespace = t.namespace.as_deref().unwrap_or("default");
    let (pod, _) = get_object(state, t.rt, Some(namespace), name).await?;
    let container = container_name(&pod, name, req.param("container"))?;
    let node_name = pod
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "container {container:?} in pod {name:?} is waiting to start: the pod is not scheduled to a node yet"
            ))
        })?;
    let nodes = by_kind("v1", "Node").expect("Node is registered");
    let (node, _) = get_object(state, nodes, None, node_name)
        .await
        .map_err(|_| {
            ApiError::bad_request(format!(
                "pod {name:?} runs on node {node_name:?}, which is not registered"
            ))
        })?;
    let query = LOG_PARAMS
        .iter()
        .filter_map(|p| req.param(p).map(|v| (*p, v)));
    let path = with_query(
        format!("/containerLogs/{namespace}/{name}/{container}"),
        query,
    );
    fetch_from_agent(state, node_name, &node, &path).await
}

/// `GET nodes/NAME/proxy/PATH`: the node agent's own endpoints
/// (`/metrics`, `/healthz`, `/containerLogs/...`), as a kubelet's are
/// reached through the API server. Other methods are not proxied.
pub(super) async fn node_proxy(state: &Arc<State>, req: &Req, t: &Target) -> ApiResult<Response> {
    let node_name = t.name.as_deref().unwrap_or_default();
    let (node, _) = get_object(state, t.rt, None, node_name).await?;
    let mut query: Vec<(&str, &str)> = req
        .query
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    query.sort();
    let path = with_query(
        format!("/{}", t.proxy_path.as_deref().unwrap_or_default()),
        query,
    );
    fetch_from_agent(state, node_name, &node, &path).await
}

/// `path?query`, the query form-encoded (no `?` when it is empty).
fn with_query<'a>(mut path: String, query: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    let query = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(query)
        .finish();
    if !query.is_empty() {
        path.push('?');
        path.push_str(&query);
    }
    path
}

/// `GET path` from the agent of `node`, with the node token.
async fn fetch_from_agent(
    state: &Arc<State>,
    node_name: &str,
    node: &Value,
    path: &str,
) -> ApiResult<Response> {
    let endpoint = agent_endpoint(node).ok_or_else(|| {
        ApiError::unavailable(format!(
            "node {node_name:?} does not publish its agent endpoint (InternalIP, kubelet port and serving certificate)"
        ))
    })?;
    fetch(&endpoint, path, state.tokens.node())
        .await
        .map_err(|e| ApiError::unavailable(format!("node {node_name:?}: {e}")))
}

/// The container to read: the one named, else the pod's only container.
fn container_name(pod: &Value, pod_name: &str, asked: Option<&str>) -> ApiResult<String> {
    let names = |path: &str| -> Vec<String> {
        pod.pointer(path)
            .and_then(Value::as_array)
            .map(|cs| {
                cs.iter()
                    .filter_map(|c| c["name"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let containers = names("/spec/containers");
    let init = names("/spec/initContainers");
    match asked {
        Some(c) if containers.iter().chain(&init).any(|n| n == c) => Ok(c.to_owned()),
        Some(c) => Err(ApiError::bad_request(format!(
            "container {c} is not valid for pod {pod_name}"
        ))),
        None if containers.len() == 1 => Ok(containers[0].clone()),
        None => Err(ApiError::bad_request(format!(
            "a container name must be specified for pod {pod_name}, choose one of: [{}]",
            containers.join(" ")
        ))),
    }
}

/// Where a node's agent serves, and the certificate it must present.
struct Endpoint {
    addr: SocketAddr,
    cert_sha256: Vec<u8>,
}

fn agent_endpoint(node: &Value) -> Option<Endpoint> {
    let ip: IpAddr = node
        .pointer("/status/addresses")?
        .as_array()?
        .iter()
        .find(|a| a["type"] == "InternalIP")?["address"]
        .as_str()?
        .parse()
        .ok()?;
    let port = node
        .pointer("/status/daemonEndpoints/kubeletEndpoint/Port")
        .and_then(Value::as_u64)
        .and_then(|p| u16::try_from(p).ok())
        .filter(|p| *p != 0)?;
    let pin = node
        .pointer("/metadata/annotations")?
        .get(SERVING_CERT_ANNOTATION)?
        .as_str()?
        .strip_prefix("sha256:")?;
    Some(Endpoint {
        addr: SocketAddr::new(ip, port),
        cert_sha256: hex::decode(pin).ok()?,
    })
}

async fn fetch(endpoint: &Endpoint, path: &str, token: &str) -> Result<Response, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(Pinned {
        sha256: endpoint.cert_sha256.clone(),
        provider: provider.clone(),
    });
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls));
    let tcp = tokio::time::timeout(
        CONNECT_TIMEOUT,
        tokio::net::TcpStream::connect(endpoint.addr),
    )
    .await
    .map_err(|_| format!("connecting to {} timed out", endpoint.addr))?
    .map_err(|e| format!("connecting to {}: {e}", endpoint.addr))?;
    let name = ServerName::IpAddress(endpoint.addr.ip().into());
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, connector.connect(name, tcp))
        .await
        .map_err(|_| format!("TLS handshake with {} timed out", endpoint.addr))?
        .map_err(|e| format!("TLS with {}: {e}", endpoint.addr))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%error, "log stream from a node agent ended");
        }
    });
    let request = hyper::Request::get(path)
        .header(header::HOST, endpoint.addr.to_string())
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status();
    if !status.is_success() {
        use http_body_util::BodyExt;
        let body = response
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let message = String::from_utf8_lossy(&body).trim().to_owned();
        return Err(
            if status == StatusCode::NOT_FOUND || status == StatusCode::BAD_REQUEST {
                message
            } else {
                format!("the node agent answered {status}: {message}")
            },
        );
    }
    let content_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .cloned()
        .unwrap_or(header::HeaderValue::from_static("text/plain"));
    let mut out = Response::new(axum::body::Body::new(response.into_body()));
    out.headers_mut().insert(header::CONTENT_TYPE, content_type);
    Ok(out)
}

/// Accepts exactly one certificate, by hash; signatures are still checked
/// so the peer must hold the certificate's key.
#[derive(Debug)]
struct Pinned {
    sha256: Vec<u8>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if sha2::Sha256::digest(end_entity.as_ref()).as_slice() == self.sha256.as_slice() {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(
                "the node agent's certificate does not match its Node's pinned certificate".into(),
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn container_defaults_to_the_only_one_and_names_the_choices() {
        let one = json!({"spec": {"containers": [{"name": "app"}]}});
        assert_eq!(container_name(&one, "p", None).unwrap(), "app");
        let two = json!({"spec": {"containers": [{"name": "a"}, {"name": "b"}], "initContainers": [{"name": "i"}]}});
        let err = container_name(&two, "p", None).unwrap_err();
        assert!(
            err.message.contains("choose one of: [a b]"),
            "{}",
            err.message
        );
        assert_eq!(container_name(&two, "p", Some("i")).unwrap(), "i");
        assert!(container_name(&two, "p", Some("x")).is_err());
    }

    #[test]
    fn endpoint_needs_address_port_and_pin() {
        let node = json!({
            "metadata": {"annotations": {SERVING_CERT_ANNOTATION: "sha256:00ff"}},
            "status": {
                "addresses": [{"type": "Hostname", "address": "n1"}, {"type": "InternalIP", "address": "127.0.0.1"}],
                "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}}
            }
        });
        let e = agent_endpoint(&node).unwrap();
        assert_eq!(e.addr, "127.0.0.1:10250".parse().unwrap());
        assert_eq!(e.cert_sha256, vec![0, 255]);
        let mut unpinned = node.clone();
        unpinned["metadata"]["annotations"] = json!({});
        assert!(agent_endpoint(&unpinned).is_none());
    }
}
