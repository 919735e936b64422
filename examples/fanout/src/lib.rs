//! `fanout`: a Skiff HTTP pod that calls another Service many times and
//! reports who answered, to see the overlay's load balancing at work.
//!
//! `GET /?target=URL&n=N` calls `URL` (default: `$TARGET`, else
//! `http://hello`) `N` times (default 10, at most 1000) one after the
//! other, and answers `200 application/json`:
//!
//! ```json
//! {"target":"http://hello","calls":4,"ok":4,
//!  "answers":{"Hello from hello-a!":2,"Hello from hello-b!":2},
//!  "statuses":{"200":4},"errors":{}}
//! ```
//!
//! `answers` counts the bodies of `2xx` responses (trimmed), `statuses`
//! every status, `errors` the calls that got no response at all (a
//! denied or unreachable destination), by error text.

use std::collections::BTreeMap;

use skiff_guest::http::{self, header::CONTENT_TYPE};
use skiff_guest::{Request, config, http_component};

http_component!(fanout);

/// The most calls one request may ask for.
const MAX_CALLS: u32 = 1000;

fn fanout(request: Request) -> Result<http::Response<Vec<u8>>, http::Error> {
    let query = request.uri().query().unwrap_or("");
    let target = skiff_guest::query_param(query, "target")
        .unwrap_or_else(|| config::var_or("TARGET", "http://hello"));
    let calls = match skiff_guest::query_param(query, "n").map(|n| n.parse::<u32>()) {
        None => 10,
        Some(Ok(n)) if n <= MAX_CALLS => n,
        Some(_) => {
            return http::Response::builder()
                .status(http::StatusCode::BAD_REQUEST)
                .body(format!("n must be a number from 0 to {MAX_CALLS}\n").into_bytes());
        }
    };
    let mut tally = Tally::default();
    for _ in 0..calls {
        tally.record(skiff_guest::get(&target).map(|response| {
            let status = response.status().as_u16();
            (
                status,
                String::from_utf8_lossy(response.body()).trim().to_owned(),
            )
        }));
    }
    http::Response::builder()
        .header(CONTENT_TYPE, "application/json")
        .body(tally.report(&target, calls).to_string().into_bytes())
}

/// What the calls got back.
#[derive(Debug, Default)]
struct Tally {
    ok: u32,
    answers: BTreeMap<String, u32>,
    statuses: BTreeMap<String, u32>,
    errors: BTreeMap<String, u32>,
}

impl Tally {
    fn record<E: std::fmt::Display>(&mut self, outcome: Result<(u16, String), E>) {
        match outcome {
            Ok((status, body)) => {
                *self.statuses.entry(status.to_string()).or_default() += 1;
                if (200..300).contains(&status) {
                    self.ok += 1;
                    *self.answers.entry(body).or_default() += 1;
                }
            }
            Err(error) => *self.errors.entry(error.to_string()).or_default() += 1,
        }
    }

    fn report(&self, target: &str, calls: u32) -> serde_json::Value {
        serde_json::json!({
            "target": target,
            "calls": calls,
            "ok": self.ok,
            "answers": self.answers,
            "statuses": self.statuses,
            "errors": self.errors,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tally_counts_answers_statuses_and_errors() {
        let mut tally = Tally::default();
        tally.record::<String>(Ok((200, "a".into())));
        tally.record::<String>(Ok((200, "a".into())));
        tally.record::<String>(Ok((503, "none ready".into())));
        tally.record(Err("denied"));
        let report = tally.report("http://web", 4);
        assert_eq!(report["ok"], 2);
        assert_eq!(report["answers"]["a"], 2);
        assert_eq!(report["statuses"]["503"], 1);
        assert_eq!(report["errors"]["denied"], 1);
        assert_eq!(report["target"], "http://web");
    }
}
