//! The real kubectl against a real `skiff server`.

mod support;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::Duration;

use support::Server;

const APP: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: demo
  labels: {app: web}
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: app
        image: hello:v1
        env:
        - {name: GREETING, value: Hello}
        ports:
        - containerPort: 8080
---
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: demo
spec:
  type: NodePort
  selector: {app: web}
  ports:
  - port: 80
    targetPort: 8080
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: settings
  namespace: demo
data:
  mode: fast
"#;

#[test]
fn kubectl_drives_the_api_server() {
    let server = Server::start();

    let version = server.ok(&["version", "-o", "json"]);
    let version: serde_json::Value = serde_json::from_str(&version).unwrap();
    assert!(
        version["serverVersion"]["gitVersion"]
            .as_str()
            .unwrap()
            .starts_with("v1.32."),
        "{version}"
    );

    // kubectl sends this one as protobuf.
    assert_eq!(
        server.ok(&["create", "namespace", "demo"]).trim(),
        "namespace/demo created"
    );
    let namespaces = server.ok(&["get", "namespaces"]);
    for ns in ["default", "kube-system", "demo"] {
        assert!(
            namespaces
                .lines()
                .any(|l| l.starts_with(ns) && l.contains("Active")),
            "{namespaces}"
        );
    }

    let applied = String::from_utf8(
        server
            .kubectl_stdin(&["apply", "-f", "-"], Some(APP))
            .stdout,
    )
    .unwrap();
    assert_eq!(
        applied.trim(),
        "deployment.apps/web created\nservice/web created\nconfigmap/settings created",
        "{applied}"
    );

    // A change goes out as a strategic merge patch.
    let changed = APP
        .replace("value: Hello", "value: Ahoy")
        .replace("mode: fast", "mode: slow");
    let out = server.kubectl_stdin(&["apply", "-f", "-"], Some(&changed));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("deployment.apps/web configured"),
        "{stdout}"
    );
    assert!(stdout.contains("service/web unchanged"), "{stdout}");
    let env = server.ok(&[
        "get",
        "deploy",
        "web",
        "-n",
        "demo",
        "-o",
        "jsonpath={.spec.template.spec.containers[0].env[0].value}",
    ]);
    assert_eq!(env, "Ahoy");
    assert_eq!(
        server.ok(&[
            "get",
            "deploy",
            "web",
            "-n",
            "demo",
            "-o",
            "jsonpath={.metadata.generation}"
        ]),
        "2"
    );

    // Server-side apply.
    let ssa = changed.replace("replicas: 2", "replicas: 4");
    let out = server.kubectl_stdin(
        &["apply", "--server-side", "--force-conflicts", "-f", "-"],
        Some(&ssa),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("deployment.apps/web serverside-applied")
    );
    assert_eq!(
        server.ok(&[
            "get",
            "deploy",
            "web",
            "-n",
            "demo",
            "-o",
            "jsonpath={.spec.replicas}"
        ]),
        "4"
    );

    // Tables, wide and the structured outputs.
    let wide = server.ok(&["get", "deployments", "-n", "demo", "-o", "wide"]);
    let header: Vec<&str> = wide.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        &header[..5],
        ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"],
        "{wide}"
    );
    assert!(header.contains(&"IMAGES"), "{wide}");
    let services = server.ok(&["get", "svc", "-n", "demo"]);
    let row: Vec<&str> = services
        .lines()
        .nth(1)
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(row[0], "web");
    assert_eq!(row[1], "NodePort");
    assert!(row[2].starts_with("10.43."), "{services}");
    assert!(
        row[4].starts_with("80:3") && row[4].ends_with("/TCP"),
        "{services}"
    );
    let yaml = server.ok(&["get", "configmap", "settings", "-n", "demo", "-o", "yaml"]);
    assert!(
        yaml.contains("mode: slow") && yaml.contains("resourceVersion:") && yaml.contains("uid:"),
        "{yaml}"
    );
    let json = server.ok(&["get", "deploy", "web", "-n", "demo", "-o", "json"]);
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(
        json["spec"]["strategy"]["type"], "RollingUpdate",
        "defaults were applied"
    );

    // get -w shows live events.
    let mut watch = server
        .kubectl_command(&[
            "get",
            "configmaps",
            "-n",
            "demo",
            "-w",
            "--output-watch-events",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(watch.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    assert!(
        first.contains("EVENT") || first.contains("ADDED"),
        "{first}"
    );
    let live = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: live\n  namespace: demo\ndata:\n  a: b\n";
    assert!(
        server
            .kubectl_stdin(&["apply", "-f", "-"], Some(live))
            .status
            .success()
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut seen = false;
    while std::time::Instant::now() < deadline {
        let line = lines.next().unwrap().unwrap();
        if line.contains("ADDED") && line.contains("live") {
            seen = true;
            break;
        }
    }
    watch.kill().unwrap();
    watch.wait().unwrap();
    assert!(seen, "kubectl get -w showed the new ConfigMap");

    let described = server.ok(&["describe", "deployment", "web", "-n", "demo"]);
    assert!(
        described.contains("Name:") && described.contains("web") && described.contains("hello:v1"),
        "{described}"
    );

    assert!(
        server
            .ok(&["scale", "deployment", "web", "-n", "demo", "--replicas=3"])
            .contains("scaled")
    );
    assert_eq!(
        server.ok(&[
            "get",
            "deploy",
            "web",
            "-n",
            "demo",
            "-o",
            "jsonpath={.spec.replicas}"
        ]),
        "3"
    );

    assert!(
        server
            .ok(&["delete", "configmap", "live", "-n", "demo"])
            .contains("deleted")
    );

    // Errors, as kubectl prints them.
    let err = server.fails(&["get", "deployment", "nope", "-n", "demo"]);
    assert!(
        err.contains(r#"Error from server (NotFound): deployments.apps "nope" not found"#),
        "{err}"
    );
    let err = server.fails(&["create", "namespace", "demo"]);
    assert!(
        err.contains(r#"Error from server (AlreadyExists): namespaces "demo" already exists"#),
        "{err}"
    );
    let bad = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: Bad_Name\n  namespace: demo\n";
    let out = server.kubectl_stdin(&["apply", "-f", "-"], Some(bad));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("is invalid") && err.contains("metadata.name"),
        "{err}"
    );
}

#[test]
fn unauthenticated_requests_are_refused() {
    let server = Server::start();
    let out = server.kubectl(&["get", "pods", "--token", "wrong"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("Unauthorized") || err.contains("provide credentials"),
        "{err}"
    );
}

#[test]
fn sigterm_stops_the_server_cleanly() {
    let server = Server::start();
    server.ok(&["create", "configmap", "before-stop", "--from-literal=k=v"]);
    let (status, dir) = server.terminate();
    assert!(status.success(), "{status:?}");
    let server = Server::start_in(dir);
    assert_eq!(
        server.ok(&[
            "get",
            "configmap",
            "before-stop",
            "-o",
            "jsonpath={.data.k}"
        ]),
        "v"
    );
}

#[test]
fn objects_survive_a_kill_and_restart() {
    let server = Server::start();
    server.ok(&["create", "configmap", "kept", "--from-literal=k=v"]);
    let dir = server.kill();
    let server = Server::start_in(dir);
    assert_eq!(
        server.ok(&["get", "configmap", "kept", "-o", "jsonpath={.data.k}"]),
        "v"
    );
}

#[test]
fn service_account_tokens_authenticate_until_the_account_goes() {
    let server = Server::start();
    server.ok(&["create", "serviceaccount", "robot"]);
    let token = server.ok(&["create", "token", "robot", "--duration=1h"]);
    let token = token.trim();
    assert!(token.starts_with("skiff-sa."), "{token}");
    server.ok(&["get", "configmaps", "--token", token]);
    // A tampered token is refused.
    let flipped = if token.ends_with('0') { '1' } else { '0' };
    let tampered = format!("{}{flipped}", &token[..token.len() - 1]);
    let err = server.fails(&["get", "configmaps", "--token", &tampered]);
    assert!(err.contains("Unauthorized"), "{err}");
    server.ok(&["delete", "serviceaccount", "robot"]);
    let err = server.fails(&["get", "configmaps", "--token", token]);
    assert!(err.contains("Unauthorized"), "{err}");
}

#[test]
fn a_second_server_on_the_same_data_dir_refuses_clearly() {
    let server = Server::start();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_skiff"))
        .args(["server", "--api-port", "0", "--data-dir"])
        .arg(server.data_dir())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("is in use by another skiff process")
            && stderr.contains(&format!("(pid {})", server.pid())),
        "{stderr}"
    );
    // The first one is unharmed.
    server.ok(&["get", "namespaces"]);
}
