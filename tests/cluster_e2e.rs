//! End-to-end: a whole cluster of real processes (`skiff server` with its
//! scheduler and controllers, two `skiff agent`s) driven with the real
//! kubectl the way a user drives Kubernetes: Deployments scale, roll out and
//! roll back, a Service answers on its NodePort, a Job completes and its
//! logs read back, deletes cascade, and a dead node's pods come back on the
//! healthy one.

mod support;

use std::collections::BTreeSet;

use serde_json::Value;
use support::{Agent, Server, apply, condition, eventually, get_json, http_get_on};

fn ok(server: &Server, args: &[&str]) -> String {
    server.ok(args)
}

/// The pods of `selector` that are Ready, with their nodes.
fn ready_pods(server: &Server, selector: &str) -> Result<Vec<(String, String)>, String> {
    let name = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    Ok(support::ready_pods(server, &["-l", selector])?
        .iter()
        .map(|p| (name(&p["metadata"]["name"]), name(&p["spec"]["nodeName"])))
        .collect())
}

fn body(response: &str) -> &str {
    response.split("\r\n\r\n").nth(1).unwrap_or_default()
}

/// `kubectl rollout status`, bounded; on failure the deployment, its
/// ReplicaSets and pods are printed to say why.
fn rollout(server: &Server, deployment: &str) {
    let out = server.kubectl(&["rollout", "status", deployment, "--timeout=50s"]);
    if !out.status.success() {
        let state = server.kubectl(&["get", "deploy,rs,pods,endpoints", "-o", "wide"]);
        let describe = server.kubectl(&["describe", deployment]);
        panic!(
            "rollout of {deployment} did not finish: {}\n{}\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&state.stdout),
            String::from_utf8_lossy(&describe.stdout)
        );
    }
}

#[test]
fn a_cluster_runs_scales_rolls_out_and_heals() {
    let server = Server::start_with_args(&[
        // Agents renew their Lease every 10 s: the grace must outlast that.
        "--node-monitor-grace-secs",
        "15",
        "--pod-eviction-timeout-secs",
        "2",
        "--leader-lease-secs",
        "4",
    ]);
    let n1 = Agent::start_named(&server, "n1", &["--node-port-address", "127.0.0.1"]);
    let n2 = Agent::start_named(&server, "n2", &["--node-port-address", "127.0.0.2"]);
    for node in ["n1", "n2"] {
        eventually(&format!("node {node} Ready with a pod CIDR"), || {
            let n = get_json(&server, &["node", node])?;
            let ready = condition(&n, "Ready").is_some_and(|c| c["status"] == "True");
            (ready && n["spec"]["podCIDR"].is_string())
                .then_some(())
                .ok_or_else(|| n.to_string())
        });
    }

    // A Deployment of hello, spread over both nodes by the scheduler.
    apply(
        &server,
        &format!(
            r#"
apiVersion: apps/v1
kind: Deployment
metadata: {{name: hello}}
spec:
  replicas: 2
  selector: {{matchLabels: {{app: hello}}}}
  strategy: {{rollingUpdate: {{maxUnavailable: 0, maxSurge: 1}}}}
  template:
    metadata: {{labels: {{app: hello}}}}
    spec:
      containers:
      - name: hello
        image: {image}
        ports: [{{containerPort: 8080}}]
        env: [{{name: POD_NAME, valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}}}]
        readinessProbe: {{httpGet: {{path: /, port: 8080}}, periodSeconds: 1}}
"#,
            image = skiff_guests::HELLO
        ),
    );
    rollout(&server, "deployment/hello");
    let pods = eventually("two ready hello pods", || {
        let pods = ready_pods(&server, "app=hello")?;
        (pods.len() == 2)
            .then_some(pods.clone())
            .ok_or(format!("{pods:?}"))
    });
    let nodes: BTreeSet<&str> = pods.iter().map(|(_, n)| n.as_str()).collect();
    assert_eq!(nodes.len(), 2, "the replicas share the nodes: {pods:?}");
    let rs = get_json(&server, &["replicasets", "-l", "app=hello"]).unwrap();
    assert_eq!(rs["items"].as_array().map(Vec::len), Some(1));

    // Behind a NodePort: every node answers on its own address.
    ok(
        &server,
        &[
            "expose",
            "deployment",
            "hello",
            "--type=NodePort",
            "--port=80",
            "--target-port=8080",
        ],
    );
    let svc = get_json(&server, &["service", "hello"]).unwrap();
    let node_port = svc["spec"]["ports"][0]["nodePort"].as_u64().unwrap() as u16;
    for host in ["127.0.0.1", "127.0.0.2"] {
        let response = eventually(&format!("hello on {host}:{node_port}"), || {
            let r = http_get_on(host, node_port, "/")?;
            r.starts_with("HTTP/1.1 200").then_some(r.clone()).ok_or(r)
        });
        assert!(
            body(&response).starts_with("Hello from hello-"),
            "{response}"
        );
    }
    // The Endpoints object follows the pods asynchronously (the nodes
    // route from EndpointSlices, which may come first).
    eventually("Endpoints hello with both pods", || {
        let endpoints = get_json(&server, &["endpoints", "hello"])?;
        let addresses = endpoints["subsets"][0]["addresses"]
            .as_array()
            .map(Vec::len);
        (addresses == Some(2))
            .then_some(())
            .ok_or(endpoints.to_string())
    });

    // Scale up, then roll out a new image and roll it back.
    ok(&server, &["scale", "deployment/hello", "--replicas=4"]);
    rollout(&server, "deployment/hello");
    eventually("four ready pods", || {
        let pods = ready_pods(&server, "app=hello")?;
        (pods.len() == 4).then_some(()).ok_or(format!("{pods:?}"))
    });
    ok(
        &server,
        &[
            "set",
            "image",
            "deployment/hello",
            &format!("hello={}", skiff_guests::ECHO),
        ],
    );
    rollout(&server, "deployment/hello");
    eventually("the echo image answering", || {
        let r = http_get_on("127.0.0.1", node_port, "/after-rollout")?;
        body(&r)
            .contains("\"path\":\"/after-rollout\"")
            .then_some(())
            .ok_or(r)
    });
    ok(&server, &["rollout", "undo", "deployment/hello"]);
    rollout(&server, "deployment/hello");
    eventually("hello again after the undo", || {
        let r = http_get_on("127.0.0.1", node_port, "/")?;
        body(&r).starts_with("Hello from").then_some(()).ok_or(r)
    });
    let rs = get_json(&server, &["replicasets", "-l", "app=hello"]).unwrap();
    assert_eq!(
        rs["items"].as_array().map(Vec::len),
        Some(2),
        "the undo reused the first ReplicaSet"
    );
    let history = ok(&server, &["rollout", "history", "deployment/hello"]);
    assert!(history.contains('3'), "{history}");

    // A Job runs to completion; its logs come back through the API.
    ok(
        &server,
        &[
            "create",
            "job",
            "pi",
            &format!("--image={}", skiff_guests::PI),
            "--",
            "pi",
            "50",
        ],
    );
    ok(
        &server,
        &[
            "wait",
            "--for=condition=complete",
            "job/pi",
            "--timeout=180s",
        ],
    );
    let logs = ok(&server, &["logs", "job/pi"]);
    assert!(logs.starts_with("3.14159265358979"), "{logs}");

    // A node dies: its pods are evicted and recreated on the other one.
    let on_n2 = ready_pods(&server, "app=hello")
        .unwrap()
        .into_iter()
        .filter(|(_, n)| n == "n2")
        .count();
    assert!(on_n2 > 0, "some hello pods run on n2");
    drop(n2);
    eventually("n2 NotReady and tainted", || {
        let n = get_json(&server, &["node", "n2"])?;
        let unknown = condition(&n, "Ready").is_some_and(|c| c["status"] == "Unknown");
        let tainted = n["spec"]["taints"].as_array().is_some_and(|t| {
            t.iter()
                .any(|t| t["key"] == "node.kubernetes.io/unreachable")
        });
        (unknown && tainted).then_some(()).ok_or(n.to_string())
    });
    eventually("four ready hello pods, all on n1", || {
        let pods = ready_pods(&server, "app=hello")?;
        (pods.len() == 4 && pods.iter().all(|(_, n)| n == "n1"))
            .then_some(())
            .ok_or(format!("{pods:?}"))
    });
    // The node's proxy hears of the new endpoints after the pods are Ready.
    let r = eventually("hello answering from n1", || {
        let r = http_get_on("127.0.0.1", node_port, "/")?;
        r.starts_with("HTTP/1.1 200").then_some(r.clone()).ok_or(r)
    });
    assert!(body(&r).starts_with("Hello from"), "{r}");

    // Deleting the Deployment takes its ReplicaSets and (live) pods along.
    ok(&server, &["delete", "deployment", "hello"]);
    eventually("the ReplicaSets garbage-collected", || {
        let rs = get_json(&server, &["replicasets", "-l", "app=hello"])?;
        (rs["items"].as_array().is_some_and(Vec::is_empty))
            .then_some(())
            .ok_or(rs.to_string())
    });
    eventually("hello's pods on n1 gone", || {
        let pods = get_json(&server, &["pods", "-l", "app=hello"])?;
        let left: Vec<&Value> = pods["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["spec"]["nodeName"] == "n1")
            .collect();
        left.is_empty().then_some(()).ok_or(format!("{left:?}"))
    });
    drop(n1);
}
