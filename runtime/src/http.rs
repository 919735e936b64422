//! Serving HTTP with components that export `wasi:http/incoming-handler`.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Body;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use wasmtime_wasi_http::WasiHttpView;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

use crate::sandbox::with_deadline;
use crate::{Component, GuestError, Sandbox};

/// A response body streamed from a guest.
pub type ResponseBody = HyperOutgoingBody;

/// A `text/plain` response made on the host: `status` with `message` and
/// a newline.
pub fn text_response(
    status: http::StatusCode,
    message: impl std::fmt::Display,
) -> hyper::Response<ResponseBody> {
    let mut response = hyper::Response::new(body(format!("{message}\n")));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// A whole body made on the host, for requests the host sends a guest
/// (probes, embedders, tests) and for responses it makes itself.
pub fn body(bytes: impl Into<Bytes>) -> ResponseBody {
    Full::new(bytes.into())
        .map_err(|never: Infallible| match never {})
        .boxed_unsync()
}

impl Component {
    /// Handles one request in a fresh instance: instantiate from the
    /// pre-linked component, call the handler, and return the response as
    /// soon as the guest sets it; the body streams while the guest goes on
    /// writing it.
    ///
    /// The instance runs under `sandbox`'s limits; the deadline covers the
    /// whole exchange, body included. Errors name the limit or trap that
    /// stopped the guest; [`Component::serve`] turns them into 5xx responses.
    pub async fn handle<B>(
        &self,
        request: hyper::Request<B>,
        sandbox: &Sandbox,
    ) -> Result<hyper::Response<ResponseBody>, GuestError>
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<wasmtime_wasi_http::Error>,
    {
        let Some(pre) = self.inner.http.clone() else {
            return Err(GuestError::Host {
                reason: self.wrong_kind("serve HTTP").to_string(),
            });
        };
        let deadline = sandbox.limits.deadline;
        let permit = self.slot(deadline).await?;
        let runtime = &self.inner.runtime;
        let host_error = |err: &dyn std::fmt::Display| GuestError::Host {
            reason: err.to_string(),
        };
        let mut store = sandbox
            .store(runtime.engine(), runtime.max_memory())
            .map_err(|e| host_error(&e))?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let (request, out) = {
            let mut http = store.data_mut().http();
            let request = http
                .new_incoming_request(Scheme::Http, request)
                .map_err(|e| host_error(&e))?;
            (
                request,
                http.new_response_outparam(tx).map_err(|e| host_error(&e))?,
            )
        };
        let name = self.inner.name.clone();
        let task = tokio::spawn(async move {
            let call = async {
                let proxy = pre
                    .instantiate_async(&mut store)
                    .await
                    .map_err(GuestError::from_wasmtime)?;
                proxy
                    .wasi_http_incoming_handler()
                    .call_handle(&mut store, request, out)
                    .await
                    .map_err(GuestError::from_wasmtime)
            };
            let result = with_deadline(deadline, call).await;
            drop(permit);
            if let Err(err) = &result {
                tracing::warn!(component = %name, reason = err.reason(), "guest {err}");
            }
            result
        });
        match rx.await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(code)) => Err(GuestError::Trap {
                reason: format!("the guest answered with error code {code:?}"),
            }),
            // The guest finished (or failed) without setting a response.
            Err(_) => match task.await {
                Ok(Ok(())) => Err(GuestError::NoResponse),
                Ok(Err(err)) => Err(err),
                Err(join) => Err(GuestError::Host {
                    reason: format!("instance task failed: {join}"),
                }),
            },
        }
    }

    /// Like [`Component::handle`], but never fails: a guest that trapped or
    /// hit a limit becomes a 5xx response naming the component and why
    /// (503 when it is at its instance cap, 504 past its deadline, 500
    /// otherwise).
    pub async fn serve<B>(
        &self,
        request: hyper::Request<B>,
        sandbox: &Sandbox,
    ) -> hyper::Response<ResponseBody>
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<wasmtime_wasi_http::Error>,
    {
        match self.handle(request, sandbox).await {
            Ok(response) => response,
            Err(err) => error_response(self.name(), &err),
        }
    }
}

/// The response sent in place of a guest that failed.
pub fn error_response(component: &str, err: &GuestError) -> hyper::Response<ResponseBody> {
    let status = match err {
        GuestError::Busy { .. } => http::StatusCode::SERVICE_UNAVAILABLE,
        GuestError::Deadline { .. } => http::StatusCode::GATEWAY_TIMEOUT,
        _ => http::StatusCode::INTERNAL_SERVER_ERROR,
    };
    // The first line only: a trap's wasm backtrace belongs in the log.
    let message = err.to_string();
    let message = message.lines().next().unwrap_or_default();
    let mut response = text_response(status, format!("skiff: component {component} {message}"));
    response.headers_mut().insert(
        "x-skiff-error",
        http::HeaderValue::from_static(err.reason()),
    );
    response
}

/// Serves `component` on `listener` (HTTP/1.1 and HTTP/2) until `shutdown`
/// resolves, then stops accepting and waits for open connections to finish.
///
/// Each request gets a fresh instance in `sandbox`. A connection's errors
/// are logged where its task ends; the accept loop keeps going.
pub async fn serve_listener(
    listener: TcpListener,
    component: Component,
    sandbox: Sandbox,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let shared = Arc::new((component, sandbox));
    serve_with(
        listener,
        move |request, _peer| {
            let shared = shared.clone();
            async move {
                let (component, sandbox) = &*shared;
                component.serve(request, sandbox).await
            }
        },
        shutdown,
    )
    .await
}

/// Accepts the next TCP connection, ready to serve: with `TCP_NODELAY`,
/// since responses are written head first and the body after (a guest's
/// as it produces it), and Nagle would hold the body back until the
/// client's delayed ACK (40 ms). A failed accept (out of file descriptors
/// and the like) is logged and retried after a short pause rather than
/// spun on. Cancel-safe, for use in `select!`.
pub async fn accept(listener: &TcpListener) -> (TcpStream, SocketAddr) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                return (stream, peer);
            }
            Err(err) => {
                tracing::warn!(error = %err, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

/// Serves HTTP/1.1 and HTTP/2 on `listener`, answering each request with
/// `handler(request, peer address)`, until `shutdown` resolves; then stops
/// accepting and waits for open connections to finish. The accept loop
/// survives failed accepts (out of file descriptors) and broken
/// connections.
pub async fn serve_with<H, F>(
    listener: TcpListener,
    handler: H,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()>
where
    H: Fn(hyper::Request<hyper::body::Incoming>, SocketAddr) -> F + Send + Sync + 'static,
    F: Future<Output = hyper::Response<ResponseBody>> + Send + 'static,
{
    let graceful = GracefulShutdown::new();
    let handler = Arc::new(handler);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = accept(&listener) => accepted,
            () = &mut shutdown => break,
        };
        let handler = handler.clone();
        let service =
            hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                let response = handler(request, peer);
                async move { Ok::<_, Infallible>(response.await) }
            });
        let builder = auto::Builder::new(TokioExecutor::new());
        let connection = builder
            .serve_connection(TokioIo::new(stream), service)
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(%peer, error = %err, "connection ended with an error");
            }
        });
    }
    graceful.shutdown().await;
    Ok(())
}
