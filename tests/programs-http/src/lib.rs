//! `skiff-test-http`: an HTTP guest whose behaviour is chosen by the request
//! path, so Skiff's runtime tests can provoke each way a request can succeed
//! or fail.
//!
//! | Request | Behaviour |
//! |---|---|
//! | `/ok` | `200`, body `ok` |
//! | `/loop` | spins on the CPU forever |
//! | `/oom` | allocates and touches 1 MiB chunks until memory runs out (then traps) |
//! | `/trap` | panics with `deliberate trap` (so the instance traps) |
//! | `/stack` | recurses until the wasm call stack is exhausted |
//! | `/sleep?ms=N` | sleeps N milliseconds, then `200`, body `slept` |
//! | `/fetch?url=URL` | `GET`s the percent-decoded URL; `200` with body `upstream {status code}: {body}`, or `502` with body `fetch failed: {error}` |
//! | `/log?lines=N` | prints N lines `request line {i}` (`i` from 0) to stdout; `200`, body `logged N lines` |
//! | `/env?name=X` | `200` with the value of environment variable X, or `404` if unset |
//! | anything else | `404`, body `not found` |
//!
//! A missing or unparsable query parameter is a `400`. All bodies are
//! `text/plain` without a trailing newline.

use std::time::Duration;

use skiff_guest::http::StatusCode;
use skiff_guest::{Request, config};
use skiff_test_programs::{exhaust_memory, recurse, spin};

skiff_guest::http_component!(handle);

fn handle(request: Request) -> (StatusCode, String) {
    let query = request.uri().query().unwrap_or("");
    match request.uri().path() {
        "/ok" => (StatusCode::OK, "ok".to_owned()),
        "/loop" => spin(),
        "/oom" => exhaust_memory(),
        "/trap" => panic!("deliberate trap"),
        "/stack" => {
            recurse(0);
            unreachable!("unbounded recursion returned")
        }
        "/sleep" => match skiff_guest::query_param(query, "ms").and_then(|ms| ms.parse().ok()) {
            Some(ms) => {
                std::thread::sleep(Duration::from_millis(ms));
                (StatusCode::OK, "slept".to_owned())
            }
            None => bad_request("/sleep needs ?ms=<milliseconds>"),
        },
        "/fetch" => match skiff_guest::query_param(query, "url") {
            Some(url) => match skiff_guest::get(&url) {
                Ok(response) => (
                    StatusCode::OK,
                    format!(
                        "upstream {}: {}",
                        response.status().as_u16(),
                        String::from_utf8_lossy(response.body())
                    ),
                ),
                Err(error) => (StatusCode::BAD_GATEWAY, format!("fetch failed: {error}")),
            },
            None => bad_request("/fetch needs ?url=<percent-encoded URL>"),
        },
        "/log" => {
            match skiff_guest::query_param(query, "lines").and_then(|n| n.parse::<u64>().ok()) {
                Some(lines) => {
                    for i in 0..lines {
                        println!("request line {i}");
                    }
                    (StatusCode::OK, format!("logged {lines} lines"))
                }
                None => bad_request("/log needs ?lines=<count>"),
            }
        }
        "/env" => match skiff_guest::query_param(query, "name") {
            Some(name) => match config::var(&name) {
                Some(value) => (StatusCode::OK, value),
                None => (StatusCode::NOT_FOUND, format!("{name} is not set")),
            },
            None => bad_request("/env needs ?name=<variable>"),
        },
        _ => (StatusCode::NOT_FOUND, "not found".to_owned()),
    }
}

fn bad_request(message: &str) -> (StatusCode, String) {
    (StatusCode::BAD_REQUEST, message.to_owned())
}
