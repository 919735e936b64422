//! Misbehaving guests are stopped by the right limit with the right error,
//! while a well-behaved guest keeps answering.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{get, load, runtime, runtime_with, within};
use skiff_runtime::{GuestError, Limits, Log, RuntimeConfig, Sandbox};

fn limited() -> Sandbox {
    Sandbox::default().limits(Limits {
        memory: Some(32 << 20),
        cpu: Some(Duration::from_millis(300)),
        deadline: Some(Duration::from_secs(5)),
    })
}

/// Serves `hello` in a loop until `stop` is set; returns how many requests
/// succeeded. Every request must succeed.
fn keep_serving_hello(
    runtime: &skiff_runtime::Runtime,
    stop: Arc<AtomicUsize>,
) -> tokio::task::JoinHandle<usize> {
    let hello = load(runtime, skiff_guests::HELLO);
    tokio::spawn(async move {
        let sandbox = Sandbox::default().env("POD_NAME", "neighbour");
        let mut served = 0;
        // Bounded: at most 10,000 requests, and the caller stops it.
        while stop.load(Ordering::Relaxed) == 0 && served < 10_000 {
            let (status, body) = get(&hello, "/", &sandbox)
                .await
                .expect("neighbour keeps serving");
            assert_eq!((status, body.as_str()), (200, "Hello from neighbour!\n"));
            served += 1;
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        served
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_guests_are_stopped_by_the_right_limit_while_a_neighbour_serves() {
    within(120, "misbehaving HTTP guests", async {
        let runtime = runtime();
        let stop = Arc::new(AtomicUsize::new(0));
        let neighbour = keep_serving_hello(&runtime, stop.clone());
        let bad = load(&runtime, skiff_guests::HTTP_TEST);
        let sandbox = limited();

        assert_eq!(get(&bad, "/ok", &sandbox).await.unwrap(), (200, "ok".to_string()));

        let err = get(&bad, "/loop", &sandbox).await.unwrap_err();
        assert_eq!(err, GuestError::CpuLimit { limit: Duration::from_millis(300) });
        assert_eq!(err.reason(), "DeadlineExceeded");

        // With no CPU budget, the wall-clock deadline stops the loop.
        let deadline_only = Sandbox::default().limits(Limits {
            deadline: Some(Duration::from_millis(300)),
            ..Limits::default()
        });
        let err = get(&bad, "/loop", &deadline_only).await.unwrap_err();
        assert_eq!(err, GuestError::Deadline { limit: Duration::from_millis(300) });

        let err = get(&bad, "/oom", &sandbox).await.unwrap_err();
        assert!(
            matches!(err, GuestError::MemoryLimit { limit, requested } if limit == 32 << 20 && requested > limit),
            "{err:?}"
        );
        assert_eq!(err.reason(), "OOMKilled");

        assert_eq!(get(&bad, "/stack", &sandbox).await.unwrap_err(), GuestError::StackOverflow);

        let err = get(&bad, "/trap", &sandbox).await.unwrap_err();
        assert!(matches!(&err, GuestError::Trap { reason } if reason.contains("unreachable")), "{err:?}");

        // The same guest still serves after all that: every request gets a
        // fresh instance.
        assert_eq!(get(&bad, "/ok", &sandbox).await.unwrap(), (200, "ok".to_string()));

        stop.store(1, Ordering::Relaxed);
        let served = neighbour.await.expect("neighbour task");
        assert!(served > 0, "the neighbour served {served} requests");
    })
    .await;
}

#[tokio::test]
async fn a_failed_guest_becomes_a_clear_5xx() {
    within(60, "5xx mapping", async {
        let runtime = runtime();
        let bad = load(&runtime, skiff_guests::HTTP_TEST);
        let request = hyper::Request::get("http://t/trap")
            .body(skiff_runtime::body(""))
            .unwrap();
        let response = bad.serve(request, &limited()).await;
        assert_eq!(response.status(), 500);
        assert_eq!(response.headers()["x-skiff-error"], "Error");
        let body = http_body_util::BodyExt::collect(response.into_body())
            .await
            .unwrap()
            .to_bytes();
        let body = String::from_utf8_lossy(&body);
        assert!(
            body.starts_with("skiff: component ") && body.contains("trapped"),
            "{body}"
        );

        let request = hyper::Request::get("http://t/sleep?ms=5000")
            .body(skiff_runtime::body(""))
            .unwrap();
        let sandbox = Sandbox::default().limits(Limits {
            deadline: Some(Duration::from_millis(200)),
            ..Limits::default()
        });
        let response = bad.serve(request, &sandbox).await;
        assert_eq!(response.status(), 504);
    })
    .await;
}

#[tokio::test]
async fn command_guests_are_stopped_by_the_right_limit() {
    within(120, "misbehaving command guests", async {
        let runtime = runtime();
        let bad = load(&runtime, skiff_guests::MISBEHAVE);
        let run = |mode: &'static [&'static str]| {
            let bad = bad.clone();
            async move {
                let args = std::iter::once("misbehave").chain(mode.iter().copied());
                bad.run(&limited().args(args)).await
            }
        };
        assert_eq!(
            run(&["loop"]).await.unwrap_err(),
            GuestError::CpuLimit {
                limit: Duration::from_millis(300)
            }
        );
        assert!(matches!(
            run(&["oom"]).await.unwrap_err(),
            GuestError::MemoryLimit { .. }
        ));
        assert_eq!(
            run(&["stack"]).await.unwrap_err(),
            GuestError::StackOverflow
        );
        assert!(matches!(
            run(&["trap"]).await.unwrap_err(),
            GuestError::Trap { .. }
        ));
        assert_eq!(run(&["exit", "3"]).await.unwrap().code, 3);
        assert_eq!(run(&["exit", "0"]).await.unwrap().code, 0);
        // A sleeping guest uses no CPU: only the deadline stops it.
        let sandbox = Sandbox::default()
            .args(["misbehave", "sleep", "10000"])
            .limits(Limits {
                cpu: Some(Duration::from_millis(50)),
                deadline: Some(Duration::from_millis(300)),
                ..Limits::default()
            });
        assert_eq!(
            bad.run(&sandbox).await.unwrap_err(),
            GuestError::Deadline {
                limit: Duration::from_millis(300)
            }
        );
    })
    .await;
}

#[tokio::test]
async fn a_flood_of_output_is_capped_and_rotated() {
    within(120, "log flood", async {
        let runtime = runtime();
        let bad = load(&runtime, skiff_guests::MISBEHAVE);
        let log = Log::new(64 << 10);
        let status = bad
            .run(
                &Sandbox::default()
                    .args(["misbehave", "log", "50000"])
                    .log(log.clone()),
            )
            .await
            .unwrap();
        assert!(status.success());
        assert!(log.retained_bytes() <= 64 << 10, "{}", log.retained_bytes());
        assert!(log.dropped() > 40_000, "dropped {}", log.dropped());
        let tail = log.tail(2);
        assert!(tail[1].text.starts_with("line 49999"), "{:?}", tail);
    })
    .await;
}

#[tokio::test]
async fn instances_per_component_are_capped() {
    within(60, "instance cap", async {
        let runtime = runtime_with(RuntimeConfig {
            max_instances_per_component: 1,
            queue_timeout: Duration::from_millis(200),
            ..RuntimeConfig::default()
        });
        let slow = load(&runtime, skiff_guests::HTTP_TEST);
        let first = {
            let slow = slow.clone();
            tokio::spawn(async move { get(&slow, "/sleep?ms=1500", &Sandbox::default()).await })
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(slow.running(), 1);
        assert_eq!(
            get(&slow, "/ok", &Sandbox::default()).await.unwrap_err(),
            GuestError::Busy { limit: 1 }
        );
        assert_eq!(first.await.unwrap().unwrap(), (200, "slept".to_string()));
        assert_eq!(slow.running(), 0);
        assert_eq!(get(&slow, "/ok", &Sandbox::default()).await.unwrap().0, 200);
    })
    .await;
}

#[tokio::test]
async fn a_worker_runs_until_stopped() {
    within(60, "worker", async {
        let runtime = runtime();
        let bad = load(&runtime, skiff_guests::MISBEHAVE);
        let log = Log::default();
        let mut worker = bad.spawn(
            Sandbox::default()
                .args(["misbehave", "tick", "20"])
                .log(log.clone()),
        );
        let mut changes = log.subscribe();
        while !log.text().contains("tick 3") {
            changes.changed().await.unwrap();
        }
        assert!(!worker.is_finished());
        worker.stop();
        assert_eq!(worker.wait().await.unwrap_err(), GuestError::Stopped);

        // A worker busy computing stops too: it yields every epoch tick.
        let mut worker = bad.spawn(Sandbox::default().args(["misbehave", "loop"]));
        tokio::time::sleep(Duration::from_millis(100)).await;
        worker.stop();
        assert_eq!(worker.wait().await.unwrap_err(), GuestError::Stopped);
    })
    .await;
}
