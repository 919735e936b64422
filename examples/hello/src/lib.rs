//! `hello`: the smallest useful Skiff HTTP pod.
//!
//! Every request gets `200 OK`, `content-type: text/plain` and the body
//! `Hello from {POD_NAME}!\n`. `POD_NAME` defaults to `skiff`; setting
//! `GREETING` replaces `Hello`, so rolling out a new config is visible from
//! outside.

use skiff_guest::http::{self, header::CONTENT_TYPE};
use skiff_guest::{Request, config};

skiff_guest::http_component!(hello);

fn hello(_request: Request) -> Result<http::Response<String>, http::Error> {
    let greeting = config::var_or("GREETING", "Hello");
    let pod = config::var_or("POD_NAME", "skiff");
    http::Response::builder()
        .header(CONTENT_TYPE, "text/plain")
        .body(format!("{greeting} from {pod}!\n"))
}
