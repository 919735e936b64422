//! Each example component, run through the runtime.

mod common;

use common::{get, load, request, runtime, within};
use skiff_runtime::{ComponentKind, Log, Sandbox};

#[tokio::test]
async fn hello_greets_with_the_pod_name() {
    within(60, "hello", async {
        let runtime = runtime();
        let hello = load(&runtime, skiff_guests::HELLO);
        assert_eq!(hello.kind(), ComponentKind::Http);
        let sandbox = Sandbox::default().env("POD_NAME", "hello-7d4f9");
        assert_eq!(
            get(&hello, "/", &sandbox).await.unwrap(),
            (200, "Hello from hello-7d4f9!\n".to_string())
        );
        let sandbox = sandbox.env("GREETING", "Ahoy");
        assert_eq!(
            get(&hello, "/any/path", &sandbox).await.unwrap().1,
            "Ahoy from hello-7d4f9!\n"
        );
        // Without POD_NAME it falls back to a default rather than failing.
        assert_eq!(
            get(&hello, "/", &Sandbox::default()).await.unwrap().1,
            "Hello from skiff!\n"
        );
    })
    .await;
}

#[tokio::test]
async fn echo_returns_the_request() {
    within(60, "echo", async {
        let runtime = runtime();
        let echo = load(&runtime, skiff_guests::ECHO);
        let (status, body) = request(
            &echo,
            "POST",
            "/submit?x=1&y=two",
            "payload ✓",
            &Sandbox::default(),
        )
        .await
        .unwrap();
        assert_eq!(status, 200);
        let json: serde_json::Value = serde_json::from_str(&body).expect("echo answers JSON");
        assert_eq!(json["method"], "POST");
        assert_eq!(json["path"], "/submit?x=1&y=two");
        assert_eq!(json["headers"]["x-test"], "yes");
        assert_eq!(json["body"], "payload ✓");
    })
    .await;
}

#[tokio::test]
async fn pi_prints_its_digits_and_exits_zero() {
    within(60, "pi", async {
        let runtime = runtime();
        let pi = load(&runtime, skiff_guests::PI);
        assert_eq!(pi.kind(), ComponentKind::Command);
        let log = Log::default();
        let sandbox = Sandbox::default().args(["pi", "50"]).log(log.clone());
        let status = pi.run(&sandbox).await.expect("pi runs");
        assert!(status.success(), "{status:?}");
        assert_eq!(
            log.text().trim(),
            "3.14159265358979323846264338327950288419716939937510"
        );
        // The default is 100 digits; a longer run checks the arithmetic.
        let log = Log::default();
        pi.run(&Sandbox::default().args(["pi", "1000"]).log(log.clone()))
            .await
            .unwrap();
        let digits = log.text();
        assert_eq!(digits.trim().len(), 1002, "3, the point, and 1000 decimals");
        assert!(digits.trim().ends_with("2164201989"), "{digits}");
    })
    .await;
}

#[tokio::test]
async fn an_http_component_cannot_be_run_and_a_command_cannot_serve() {
    within(60, "wrong kinds", async {
        let runtime = runtime();
        let hello = load(&runtime, skiff_guests::HELLO);
        let pi = load(&runtime, skiff_guests::PI);
        let err = hello.run(&Sandbox::default()).await.unwrap_err();
        assert!(
            err.to_string().contains("cannot run to completion"),
            "{err}"
        );
        let err = get(&pi, "/", &Sandbox::default()).await.unwrap_err();
        assert!(err.to_string().contains("cannot serve HTTP"), "{err}");
    })
    .await;
}
