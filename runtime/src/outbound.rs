//! Outbound HTTP from guests: the `wasi:http/outgoing-handler` hook.
//!
//! A guest never reaches the network by itself. Every request it sends goes
//! to an [`Outbound`] policy: the default denies everything, [`AllowList`]
//! opens named hosts, and the node's overlay implements the trait to route
//! cluster traffic.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use http_body_util::BodyExt;
use wasmtime_wasi_http::{RequestOptions, WasiBody, WasiHttpHooks};

/// A future the runtime drives: `Send` and boxed.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// What a policy returns: the response, and a future that drives the
/// connection (sending the request body) until the exchange is done.
pub type OutboundResult = Result<
    (
        http::Response<WasiBody>,
        BoxFuture<Result<(), wasmtime_wasi_http::Error>>,
    ),
    wasmtime_wasi_http::Error,
>;

/// Decides what happens to each HTTP request a guest sends.
pub trait Outbound: Send + Sync + 'static {
    /// Sends (or refuses) `request`. Refusals return
    /// [`wasmtime_wasi_http::Error::HttpRequestDenied`], which the guest
    /// reads as the `HTTP-request-denied` error code.
    fn send(
        &self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
    ) -> BoxFuture<OutboundResult>;
}

/// The default policy: every outbound request is denied.
#[derive(Debug, Default, Clone, Copy)]
pub struct DenyAll;

impl Outbound for DenyAll {
    fn send(
        &self,
        request: http::Request<WasiBody>,
        _: Option<RequestOptions>,
    ) -> BoxFuture<OutboundResult> {
        tracing::info!(uri = %request.uri(), "outbound HTTP denied: no egress is allowed for this guest");
        Box::pin(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) })
    }
}

/// Allows requests to the listed hosts and denies the rest.
///
/// An entry is a host name or address (`api.example.com`, `127.0.0.1`),
/// optionally with a port (`127.0.0.1:8080`, which then must match too), or
/// `*` for any host. Host names compare case-insensitively.
#[derive(Debug, Clone, Default)]
pub struct AllowList {
    hosts: Vec<String>,
}

impl AllowList {
    /// An allow-list of the given entries.
    pub fn new<I, S>(hosts: I) -> AllowList
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        AllowList {
            hosts: hosts
                .into_iter()
                .map(|h| h.into().to_ascii_lowercase())
                .collect(),
        }
    }

    /// Whether a request to `uri` is allowed.
    pub fn allows(&self, uri: &http::Uri) -> bool {
        let Some(authority) = uri.authority() else {
            return false;
        };
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase();
        let port = authority.port_u16().unwrap_or(match uri.scheme_str() {
            Some("https") => 443,
            _ => 80,
        });
        self.hosts.iter().any(|entry| {
            if entry == "*" {
                return true;
            }
            match entry
                .rsplit_once(':')
                .filter(|(h, _)| !h.contains(':') || h.starts_with('['))
            {
                Some((h, p)) => {
                    h.trim_start_matches('[').trim_end_matches(']') == host && p.parse() == Ok(port)
                }
                None => *entry == host,
            }
        })
    }
}

impl Outbound for AllowList {
    fn send(
        &self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
    ) -> BoxFuture<OutboundResult> {
        if !self.allows(request.uri()) {
            return DenyAll.send(request, options);
        }
        Box::pin(async move {
            let (response, io) = wasmtime_wasi_http::default_send_request(request, options).await?;
            Ok((
                response.map(BodyExt::boxed_unsync),
                Box::pin(io) as BoxFuture<_>,
            ))
        })
    }
}

/// Adapts an [`Outbound`] policy to wasmtime-wasi-http's hooks.
pub(crate) struct Hooks(pub(crate) Arc<dyn Outbound>);

impl WasiHttpHooks for Hooks {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _body_sent: Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
    ) -> Box<
        dyn Future<
                Output = Result<
                    (
                        http::Response<WasiBody>,
                        Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
                    ),
                    wasmtime_wasi_http::Error,
                >,
            > + Send,
    > {
        let sent = self.0.send(request, options);
        Box::new(async move {
            let (response, io) = sent.await?;
            Ok((response, Box::new(io) as Box<dyn Future<Output = _> + Send>))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_list_matches_host_and_port() {
        let list = AllowList::new(["Example.com", "127.0.0.1:8080", "[::1]:9000"]);
        let allows = |u: &str| list.allows(&u.parse().unwrap());
        assert!(allows("http://example.com/x"));
        assert!(allows("https://EXAMPLE.com:8443/"));
        assert!(allows("http://127.0.0.1:8080/"));
        assert!(!allows("http://127.0.0.1:8081/"));
        assert!(!allows("http://127.0.0.1/"));
        assert!(allows("http://[::1]:9000/"));
        assert!(!allows("http://evil.com/"));
        assert!(!allows("http://example.com.evil.com/"));
        assert!(AllowList::new(["*"]).allows(&"http://anything:1/".parse().unwrap()));
        assert!(!AllowList::default().allows(&"http://example.com/".parse().unwrap()));
    }
}
