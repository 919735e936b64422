//! The agent's HTTPS endpoint (a kubelet's port 10250): container logs for
//! callers presenting the node token.
//!
//! `GET /containerLogs/{namespace}/{pod}/{container}` with `follow`,
//! `previous`, `timestamps`, `tailLines`, `sinceSeconds`, `sinceTime` and
//! `limitBytes`, as the API server forwards them from `pods/log`;
//! `GET /metrics` (the overlay's counters, Prometheus text); and
//! `GET /healthz`.

use std::convert::Infallible;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use bytes::Bytes;
use http::{Response, StatusCode, header};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::Frame;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::Digest;
use skiff_runtime::LogLine;
use tokio::sync::watch;

use super::Shared;
use super::logs::InstanceLog;

type Body = BoxBody<Bytes, Infallible>;

/// The agent's serving certificate and key, self-signed, kept in the data
/// directory so the pin in the Node object survives restarts.
pub(crate) struct Identity {
    cert_pem: String,
    key_pem: String,
}

impl Identity {
    pub(crate) fn load_or_create(dir: &Path, name: &str) -> anyhow::Result<Identity> {
        let (cert_path, key_path) = (dir.join("agent.crt"), dir.join("agent.key"));
        if let (Ok(cert_pem), Ok(key_pem)) = (
            std::fs::read_to_string(&cert_path),
            std::fs::read_to_string(&key_path),
        ) {
            return Ok(Identity { cert_pem, key_pem });
        }
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let certified = rcgen::generate_simple_self_signed(vec![
            "127.0.0.1".to_owned(),
            "localhost".to_owned(),
            name.to_owned(),
        ])
        .context("generating the agent's serving certificate")?;
        let identity = Identity {
            cert_pem: certified.cert.pem(),
            key_pem: certified.signing_key.serialize_pem(),
        };
        write_private(&key_path, &identity.key_pem)?;
        std::fs::write(&cert_path, &identity.cert_pem)
            .with_context(|| format!("cannot write {}", cert_path.display()))?;
        Ok(identity)
    }

    /// Lowercase hex SHA-256 of the certificate (DER).
    pub(crate) fn cert_sha256(&self) -> String {
        CertificateDer::pem_slice_iter(self.cert_pem.as_bytes())
            .next()
            .and_then(Result::ok)
            .map(|der| hex::encode(sha2::Sha256::digest(der.as_ref())))
            .unwrap_or_default()
    }

    fn tls(&self) -> anyhow::Result<Arc<rustls::ServerConfig>> {
        let certs = CertificateDer::pem_slice_iter(self.cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .context("reading the agent's certificate")?;
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes())
            .context("reading the agent's key")?;
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    file.write_all(contents.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Bounds a stuck TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves the endpoint until the agent stops.
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    identity: Identity,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let tls = match identity.tls() {
        Ok(tls) => tokio_rustls::TlsAcceptor::from(tls),
        Err(err) => {
            tracing::error!(error = %format!("{err:#}"), "cannot serve logs");
            return;
        }
    };
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = skiff_runtime::accept(&listener) => accepted,
            _ = stop.changed() => return,
        };
        let (tls, shared, stop) = (tls.clone(), shared.clone(), stop.clone());
        tokio::spawn(async move {
            let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.accept(tcp)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(err)) => {
                    tracing::debug!(%peer, error = %err, "TLS handshake failed");
                    return;
                }
                Err(_) => return,
            };
            let service = hyper::service::service_fn(move |request| {
                let (shared, stop) = (shared.clone(), stop.clone());
                async move { Ok::<_, Infallible>(handle(&shared, request, stop)) }
            });
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            if let Err(err) = builder
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%peer, error = %err, "log connection ended with an error");
            }
        });
    }
}

fn text(status: StatusCode, message: impl Into<String>) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(message.into())).boxed());
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

fn handle<B>(
    shared: &Shared,
    request: hyper::Request<B>,
    stop: watch::Receiver<bool>,
) -> Response<Body> {
    let authorized = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|token| constant_time_eq(token.trim(), &shared.config.token));
    if !authorized {
        return text(StatusCode::UNAUTHORIZED, "Unauthorized\n");
    }
    if request.method() != http::Method::GET {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET is served\n");
    }
    let path = request.uri().path();
    if path == "/healthz" {
        return text(StatusCode::OK, "ok");
    }
    if path == "/metrics" {
        let mut response = text(StatusCode::OK, shared.network.router.metrics().render());
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            http::HeaderValue::from_static("text/plain; version=0.0.4"),
        );
        return response;
    }
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let ["containerLogs", namespace, pod, container] = parts.as_slice() else {
        return text(StatusCode::NOT_FOUND, format!("no such endpoint {path}\n"));
    };
    let query: Vec<(String, String)> =
        form_urlencoded::parse(request.uri().query().unwrap_or_default().as_bytes())
            .into_owned()
            .collect();
    let params = match LogParams::parse(&query) {
        Ok(params) => params,
        Err(message) => return text(StatusCode::BAD_REQUEST, message),
    };
    let key = (
        namespace.to_string(),
        pod.to_string(),
        container.to_string(),
    );
    let Some(instance) = shared.logs.get(&key, params.previous) else {
        let message = if params.previous {
            format!("previous terminated container {container:?} in pod {pod:?} not found")
        } else {
            format!(
                "container {container:?} in pod {pod:?} is waiting to start or is not on this node"
            )
        };
        return text(StatusCode::BAD_REQUEST, message);
    };
    let mut response = Response::new(stream_log(instance, params, stop));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

fn constant_time_eq(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// What a log request asks for.
#[derive(Debug, Default, Clone)]
pub(crate) struct LogParams {
    follow: bool,
    previous: bool,
    timestamps: bool,
    tail_lines: Option<usize>,
    since: Option<SystemTime>,
    limit_bytes: Option<u64>,
}

impl LogParams {
    fn parse(query: &[(String, String)]) -> Result<LogParams, String> {
        let mut params = LogParams::default();
        let flag = |v: &str| matches!(v, "true" | "1" | "");
        for (key, value) in query {
            match key.as_str() {
                "follow" => params.follow = flag(value),
                "previous" => params.previous = flag(value),
                "timestamps" => params.timestamps = flag(value),
                "tailLines" => {
                    let n: i64 = value
                        .parse()
                        .map_err(|_| format!("invalid tailLines {value:?}"))?;
                    params.tail_lines = Some(usize::try_from(n.max(0)).unwrap_or(usize::MAX));
                }
                "sinceSeconds" => {
                    let s: u64 = value
                        .parse()
                        .map_err(|_| format!("invalid sinceSeconds {value:?}"))?;
                    params.since = SystemTime::now().checked_sub(Duration::from_secs(s));
                }
                "sinceTime" => {
                    let t: jiff::Timestamp = value
                        .parse()
                        .map_err(|_| format!("invalid sinceTime {value:?}"))?;
                    params.since = Some(SystemTime::from(t));
                }
                "limitBytes" => {
                    params.limit_bytes = Some(
                        value
                            .parse()
                            .map_err(|_| format!("invalid limitBytes {value:?}"))?,
                    );
                }
                _ => {}
            }
        }
        Ok(params)
    }
}

fn render(line: &LogLine, timestamps: bool) -> String {
    if timestamps {
        let time = jiff::Timestamp::try_from(line.time)
            .map(|t| format!("{t:.9}"))
            .unwrap_or_default();
        format!("{time} {}\n", line.text)
    } else {
        format!("{}\n", line.text)
    }
}

/// The log as a body: what it holds now (after `tailLines` and `since`),
/// then, with `follow`, new lines until the instance ends or the agent
/// stops.
fn stream_log(instance: InstanceLog, params: LogParams, stop: watch::Receiver<bool>) -> Body {
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(16);
    tokio::spawn(async move {
        let log = &instance.log;
        let mut changes = log.subscribe();
        let mut ended = instance.ended();
        let mut stop = stop;
        let mut budget = params.limit_bytes.unwrap_or(u64::MAX);
        let mut lines = match params.tail_lines {
            Some(n) => log.tail(n),
            None => log.since(0),
        };
        if let Some(since) = params.since {
            lines.retain(|l| l.time >= since);
        }
        let mut next = lines.last().map_or_else(
            || log.tail(1).last().map_or(0, |l| l.seq + 1),
            |l| l.seq + 1,
        );
        loop {
            for line in &lines {
                let mut chunk = render(line, params.timestamps).into_bytes();
                if chunk.len() as u64 > budget {
                    chunk.truncate(usize::try_from(budget).unwrap_or(usize::MAX));
                }
                budget -= chunk.len() as u64;
                if tx.send(Bytes::from(chunk)).await.is_err() || budget == 0 {
                    return;
                }
            }
            if !params.follow {
                return;
            }
            let finished = *ended.borrow_and_update();
            if finished {
                // Whatever came in before the end.
                let rest = log.since(next);
                for line in &rest {
                    let _ = tx.send(Bytes::from(render(line, params.timestamps))).await;
                }
                return;
            }
            tokio::select! {
                changed = changes.changed() => if changed.is_err() { return },
                _ = ended.changed() => {}
                _ = stop.changed() => return,
                () = tx.closed() => return,
            }
            lines = log.since(next);
            if let Some(last) = lines.last() {
                next = last.seq + 1;
            }
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|chunk| (Ok::<_, Infallible>(Frame::data(chunk)), rx))
    });
    StreamBody::new(stream).boxed()
}
