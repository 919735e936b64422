//! Guest-side SDK for Skiff pods.
//!
//! A Skiff HTTP pod is a WebAssembly component (target `wasm32-wasip2`) that
//! exports `wasi:http/incoming-handler`. With this crate, writing one is a
//! function plus one macro:
//!
//! ```no_run
//! use skiff_guest::{Request, config, http};
//!
//! skiff_guest::http_component!(handle);
//!
//! /// Greets the caller, and fetches `/upstream` from the URL in `UPSTREAM`.
//! fn handle(req: Request) -> Result<http::Response<String>, String> {
//!     if req.uri().path() == "/upstream" {
//!         let url = config::var("UPSTREAM").ok_or("UPSTREAM is not set")?;
//!         let upstream = skiff_guest::get(&url).map_err(|e| e.to_string())?;
//!         let body = String::from_utf8_lossy(upstream.body()).into_owned();
//!         return Ok(http::Response::new(body));
//!     }
//!     let name = config::var_or("POD_NAME", "skiff");
//!     http::Response::builder()
//!         .header(http::header::CONTENT_TYPE, "text/plain")
//!         .body(format!("Hello from {name}!\n"))
//!         .map_err(|e| e.to_string())
//! }
//! ```
//!
//! Build it as a `cdylib` for `wasm32-wasip2`
//! (`[lib] crate-type = ["cdylib"]`, then
//! `cargo build --release --target wasm32-wasip2`); the `.wasm` file is the
//! component Skiff runs.
//!
//! Where to begin:
//!
//! - [`http_component!`] exports a handler `fn(Request) -> impl IntoResponse`.
//!   The request body is read completely before the handler runs, and the
//!   response body is written completely after it returns.
//! - [`IntoResponse`] lists what a handler may return: strings, `http`
//!   responses, `(StatusCode, String)`, and `Result`s of those (an `Err`
//!   becomes a `500` carrying the error text).
//! - [`fetch`] and [`get`] make outbound HTTP requests through
//!   `wasi:http/outgoing-handler`; the host decides which are allowed and
//!   reports a denial as a [`FetchError`].
//! - [`config`] reads the pod's configuration, which Skiff passes as
//!   environment variables.
//!
//! A panic in a handler traps the component instance: the caller sees the
//! host's error response, not a `500` from the guest.

mod body;
pub mod config;
mod fetch;
mod fields;
mod query;
mod response;
mod serve;

/// The [`http`] crate, re-exported so pods need not depend on it themselves.
pub use http;

pub use fetch::{FetchError, fetch, get};
pub use query::{percent_decode, query_param};
pub use response::IntoResponse;

/// An incoming request as a handler sees it: the body has been read fully.
pub type Request = http::Request<Vec<u8>>;

/// A complete response, as produced by [`IntoResponse::into_response`].
pub type Response = http::Response<Vec<u8>>;

/// Exports a handler function as the component's
/// `wasi:http/incoming-handler`.
///
/// The handler must be callable as `fn(Request) -> impl IntoResponse`; pass
/// its path (or a closure):
///
/// ```no_run
/// skiff_guest::http_component!(handle);
///
/// fn handle(_req: skiff_guest::Request) -> &'static str {
///     "ok"
/// }
/// ```
///
/// Use the macro once per component (a second use is a duplicate-symbol
/// error), in a `cdylib` crate built for `wasm32-wasip2`. If the incoming
/// request cannot be represented as an [`http::Request`] (an invalid method,
/// URI or header, or a body that fails mid-read), the handler is not called
/// and the caller gets a `400` naming the problem.
#[macro_export]
macro_rules! http_component {
    ($handler:expr $(,)?) => {
        const _: () = {
            // `wasip2`'s export macro takes an identifier naming a type that
            // implements the generated `Guest` trait, so wrap the function in
            // a private unit struct. Spans inside the generated glue come from
            // `wasip2`'s macros, so its `unsafe` export attributes do not trip
            // the workspace's `unsafe_code = "forbid"` in the pod crate.
            struct SkiffHttpComponent;

            impl $crate::__private::wasip2::exports::http::incoming_handler::Guest
                for SkiffHttpComponent
            {
                fn handle(
                    request: $crate::__private::wasip2::http::types::IncomingRequest,
                    response_out: $crate::__private::wasip2::http::types::ResponseOutparam,
                ) {
                    $crate::__private::serve(request, response_out, $handler);
                }
            }

            // Only wasm has a component to export into. On other targets
            // (`cargo build --workspace`, host `cargo test`) the export's
            // symbol name, `wasi:http/incoming-handler@0.2.12#handle`, is not
            // valid in an ELF linker version script, so a host cdylib would
            // fail to link; there, only keep the handler alive so it is not
            // reported as dead code.
            #[cfg(target_arch = "wasm32")]
            $crate::__private::wasip2::http::proxy::export!(SkiffHttpComponent);
            #[cfg(not(target_arch = "wasm32"))]
            const _: fn(
                $crate::__private::wasip2::http::types::IncomingRequest,
                $crate::__private::wasip2::http::types::ResponseOutparam,
            ) = <SkiffHttpComponent as $crate::__private::wasip2::exports::http::incoming_handler::Guest>::handle;
        };
    };
}

/// Items used by [`http_component!`]'s expansion; not a stable API.
#[doc(hidden)]
pub mod __private {
    pub use crate::serve::serve;
    pub use wasip2;
}
