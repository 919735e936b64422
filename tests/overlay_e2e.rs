//! End-to-end: the overlay across real processes. One `skiff server` and
//! three `skiff agent`s, each on its own loopback address (127.0.0.2-4;
//! the second test, running alongside, uses 127.0.1.2-4)
//! with its own QUIC mesh endpoint and NodePort listeners. Pods get
//! addresses from their node's podCIDR; a `fanout` pod calls a Service
//! whose pods all sit on other nodes, so every answer crossed the mesh;
//! the load spreads over every endpoint; a killed node's endpoints leave
//! the rotation. Egress, NetworkPolicy, LoadBalancer and readiness are
//! checked on the same kind of cluster. A third test puts each agent in its
//! own network namespace (test hosts on a bridge the test creates), cuts
//! one node's link and repairs it.
//!
//! No test here dials a pod or Service address: those are only ever named
//! inside the guests' own requests, which the agents route in userspace.
//! The host dials only loopback and the test hosts' own addresses.

mod support;

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;
use support::{Agent, Server, apply, condition, eventually, get_json, http_get_on};

/// Three nodes: name and address. Tests run in parallel, so each cluster
/// has its own addresses (NodePorts are the same numbers in both).
type Nodes = [(&'static str, &'static str); 3];

/// The first test's nodes.
const NODES_A: Nodes = [
    ("n1", "127.0.0.2"),
    ("n2", "127.0.0.3"),
    ("n3", "127.0.0.4"),
];

/// The second test's nodes.
const NODES_B: Nodes = [
    ("n1", "127.0.1.2"),
    ("n2", "127.0.1.3"),
    ("n3", "127.0.1.4"),
];

/// The Ingress entry point's port on every node.
fn start_cluster(nodes: &Nodes, ingress_port: u16) -> (Server, Vec<Agent>) {
    let server = Server::start_with_args(&[
        // Agents renew their Lease every 10 s: the grace must outlast that.
        "--node-monitor-grace-secs",
        "15",
        "--pod-eviction-timeout-secs",
        "2",
    ]);
    let agents = nodes
        .iter()
        .map(|(name, ip)| {
            Agent::start_named(
                &server,
                name,
                &[
                    "--node-ip",
                    ip,
                    "--node-port-address",
                    ip,
                    "--mesh-listen",
                    &format!("{ip}:0"),
                    "--ingress-http",
                    &format!("{ip}:{ingress_port}"),
                ],
            )
        })
        .collect();
    wait_nodes(&server, nodes);
    (server, agents)
}

/// Waits until every node is Ready, has a podCIDR and advertises its mesh
/// endpoint on its own address.
fn wait_nodes(server: &Server, nodes: &[(&str, &str)]) {
    for &(name, ip) in nodes {
        eventually(
            &format!("node {name} Ready with a podCIDR and a mesh endpoint"),
            || {
                let n = get_json(server, &["node", name])?;
                let ready = condition(&n, "Ready").is_some_and(|c| c["status"] == "True");
                let mesh = n["metadata"]["annotations"]["skiff.dev/mesh-endpoint"]
                    .as_str()
                    .is_some_and(|e| e.starts_with(&format!("{ip}:")));
                (ready && mesh && n["spec"]["podCIDR"].is_string())
                    .then_some(())
                    .ok_or_else(|| n.to_string())
            },
        );
    }
}

/// Ready pods of `selector`: name → (node, podIP).
fn ready_pods(
    server: &Server,
    namespace: &str,
    selector: &str,
) -> Result<BTreeMap<String, (String, String)>, String> {
    let s = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    Ok(
        support::ready_pods(server, &["-n", namespace, "-l", selector])?
            .iter()
            .map(|p| {
                (
                    s(&p["metadata"]["name"]),
                    (s(&p["spec"]["nodeName"]), s(&p["status"]["podIP"])),
                )
            })
            .collect(),
    )
}

fn wait_ready(
    server: &Server,
    namespace: &str,
    selector: &str,
    count: usize,
) -> BTreeMap<String, (String, String)> {
    eventually(
        &format!("{count} ready pods of {selector} in {namespace}"),
        || {
            let pods = ready_pods(server, namespace, selector)?;
            (pods.len() == count)
                .then_some(pods.clone())
                .ok_or(format!("{pods:?}"))
        },
    )
}

fn body(response: &str) -> &str {
    response.split("\r\n\r\n").nth(1).unwrap_or_default()
}

fn node_port(server: &Server, namespace: &str, service: &str) -> u16 {
    let svc = get_json(server, &["service", "-n", namespace, service]).unwrap();
    u16::try_from(svc["spec"]["ports"][0]["nodePort"].as_u64().unwrap()).unwrap()
}

/// Asks the fanout pod behind NodePort `port` on `host` to call `target`
/// `n` times; its JSON tally.
fn fanout(host: &str, port: u16, target: &str, n: u32) -> Result<Value, String> {
    let response = http_get_on(host, port, &format!("/?target={target}&n={n}"))?;
    if !response.starts_with("HTTP/1.1 200") {
        return Err(response);
    }
    serde_json::from_str(body(&response)).map_err(|e| format!("{e}: {response}"))
}

fn hello_and_fanout(namespace: &str, hello_nodes: &str, fanout_node: &str) -> String {
    format!(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {{name: hello, namespace: {namespace}}}
spec:
  replicas: 4
  selector: {{matchLabels: {{app: hello}}}}
  template:
    metadata: {{labels: {{app: hello}}}}
    spec:
      nodeSelector: {{tier: {hello_nodes}}}
      containers:
      - name: hello
        image: {hello}
        ports: [{{name: http, containerPort: 8080}}]
        env: [{{name: POD_NAME, valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}}}]
        readinessProbe: {{httpGet: {{path: /, port: 8080}}, periodSeconds: 1}}
---
apiVersion: v1
kind: Service
metadata: {{name: hello, namespace: {namespace}}}
spec:
  selector: {{app: hello}}
  ports: [{{port: 80, targetPort: http}}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: fanout, namespace: {namespace}}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: fanout}}}}
  template:
    metadata: {{labels: {{app: fanout}}}}
    spec:
      nodeSelector: {{kubernetes.io/hostname: {fanout_node}}}
      containers:
      - name: fanout
        image: {fanout}
        ports: [{{containerPort: 8080}}]
---
apiVersion: v1
kind: Service
metadata: {{name: fanout, namespace: {namespace}}}
spec:
  type: NodePort
  selector: {{app: fanout}}
  ports: [{{port: 80, targetPort: 8080}}]
"#,
        hello = skiff_guests::HELLO,
        fanout = skiff_guests::FANOUT,
    )
}

#[test]
fn services_balance_across_nodes_over_quic_and_fail_over() {
    let (server, mut agents) = start_cluster(&NODES_A, support::free_port());
    for node in ["n2", "n3"] {
        server.ok(&["label", "node", node, "tier=backend"]);
    }
    apply(&server, &hello_and_fanout("default", "backend", "n1"));
    let hello = wait_ready(&server, "default", "app=hello", 4);
    wait_ready(&server, "default", "app=fanout", 1);

    // Pod IPs: from each node's podCIDR, unique.
    let cidrs: BTreeMap<String, String> = NODES_A
        .iter()
        .map(|(n, _)| {
            let node = get_json(&server, &["node", n]).unwrap();
            (
                n.to_string(),
                node["spec"]["podCIDR"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let ips: BTreeSet<&str> = hello.values().map(|(_, ip)| ip.as_str()).collect();
    assert_eq!(ips.len(), 4, "pod IPs are unique: {hello:?}");
    for (pod, (node, ip)) in &hello {
        let prefix = cidrs[node].strip_suffix("0/24").unwrap();
        assert!(
            ip.starts_with(prefix),
            "{pod} on {node} has {ip}, outside {}",
            cidrs[node]
        );
    }
    let nodes: BTreeSet<&str> = hello.values().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        nodes,
        BTreeSet::from(["n2", "n3"]),
        "hello runs on both backends: {hello:?}"
    );

    // Every answer crossed the mesh (no hello pod on n1), and every
    // endpoint took its share.
    let port = node_port(&server, "default", "fanout");
    let tally = eventually("fanout reaches hello on every endpoint", || {
        let t = fanout(NODES_A[0].1, port, "http://hello", 40)?;
        (t["ok"] == 40 && t["answers"].as_object().map(|a| a.len()) == Some(4))
            .then_some(t.clone())
            .ok_or_else(|| t.to_string())
    });
    for pod in hello.keys() {
        let count = tally["answers"][format!("Hello from {pod}!")]
            .as_u64()
            .unwrap_or(0);
        assert!(count >= 5, "{pod} got {count} of 40 calls: {tally}");
    }

    // Every name a pod may use for a Service, its ClusterIP, a pod IP.
    let svc = get_json(&server, &["service", "hello"]).unwrap();
    let cluster_ip = svc["spec"]["clusterIP"].as_str().unwrap().to_owned();
    let (some_pod, (_, some_ip)) = hello.iter().next().unwrap();
    for (target, expect) in [
        ("http://hello.default".to_owned(), None),
        ("http://hello.default.svc".to_owned(), None),
        ("http://hello.default.svc.cluster.local".to_owned(), None),
        (format!("http://{cluster_ip}"), None),
        (format!("http://{some_ip}:8080"), Some(some_pod)),
    ] {
        let t = fanout(NODES_A[0].1, port, &target, 4).unwrap();
        assert_eq!(t["ok"], 4, "{target}: {t}");
        if let Some(pod) = expect {
            assert_eq!(
                t["answers"][format!("Hello from {pod}!")],
                4,
                "{target}: {t}"
            );
        }
    }
    // A Service that does not exist is an error the guest reads; a port the
    // Service lacks is a 503 naming it.
    let t = fanout(
        NODES_A[0].1,
        port,
        "http://nothing.default.svc.cluster.local",
        1,
    )
    .unwrap();
    assert_eq!(t["ok"], 0, "{t}");
    assert_eq!(t["errors"].as_object().map(|e| e.len()), Some(1), "{t}");
    let t = fanout(NODES_A[0].1, port, "http://hello:81", 1).unwrap();
    assert_eq!(t["statuses"]["503"], 1, "{t}");

    // The NodePort answers on every node; on n2 and n3 the request itself
    // crosses to n1, where fanout runs.
    for (_, ip) in NODES_A {
        let t = fanout(ip, port, "http://hello", 4).unwrap();
        assert_eq!(t["ok"], 4, "via {ip}: {t}");
    }
    let metrics = server.ok(&["get", "--raw", "/api/v1/nodes/n1/proxy/metrics"]);
    let remote: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("skiff_overlay_requests_remote_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no remote counter in n1's metrics:\n{metrics}"));
    assert!(
        remote >= 40,
        "n1 sent {remote} requests over QUIC:\n{metrics}"
    );

    // n3 dies: once its pods are marked not ready, only n2's answer, and
    // no call fails.
    let n3 = agents.pop().unwrap();
    drop(n3);
    eventually("only live endpoints answer after n3 died", || {
        let t = fanout(NODES_A[0].1, port, "http://hello", 20)?;
        let answered: BTreeSet<String> = t["answers"]
            .as_object()
            .map(|a| a.keys().cloned().collect())
            .unwrap_or_default();
        (t["ok"] == 20 && !answered.iter().any(|a| hello_on(&hello, a, "n3")))
            .then_some(())
            .ok_or_else(|| t.to_string())
    });
    drop(agents);
}

/// Whether the body `answer` came from a hello pod on `node`.
fn hello_on(hello: &BTreeMap<String, (String, String)>, answer: &str, node: &str) -> bool {
    hello
        .iter()
        .any(|(p, (n, _))| n == node && answer == format!("Hello from {p}!"))
}

#[test]
fn egress_network_policy_ingress_load_balancer_and_readiness() {
    let ingress_port = support::free_port();
    let (server, agents) = start_cluster(&NODES_B, ingress_port);
    for node in ["n2", "n3"] {
        server.ok(&["label", "node", node, "tier=backend"]);
    }
    server.ok(&["create", "namespace", "sealed"]);
    apply(&server, &hello_and_fanout("sealed", "backend", "n1"));
    apply(&server, &hello_and_fanout("default", "backend", "n1"));
    wait_ready(&server, "sealed", "app=hello", 4);
    wait_ready(&server, "sealed", "app=fanout", 1);
    wait_ready(&server, "default", "app=hello", 4);
    wait_ready(&server, "default", "app=fanout", 1);
    let sealed_port = node_port(&server, "sealed", "fanout");
    let default_port = node_port(&server, "default", "fanout");

    // Open by default, like Kubernetes: default's fanout reaches sealed's hello.
    eventually("default reaches sealed before any policy", || {
        let t = fanout(NODES_B[0].1, default_port, "http://hello.sealed", 4)?;
        (t["ok"] == 4).then_some(()).ok_or_else(|| t.to_string())
    });
    // Sealed: only pods of its own namespace reach its hello pods (its
    // fanout stays open, so the test can reach it through its NodePort).
    apply(
        &server,
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: same-namespace-only, namespace: sealed}
spec:
  podSelector: {matchLabels: {app: hello}}
  policyTypes: [Ingress]
  ingress: [{from: [{podSelector: {}}]}]
"#,
    );
    eventually("the policy blocks default → sealed", || {
        let t = fanout(NODES_B[0].1, default_port, "http://hello.sealed", 2)?;
        (t["ok"] == 0 && t["errors"].as_object().is_some_and(|e| !e.is_empty()))
            .then_some(())
            .ok_or_else(|| t.to_string())
    });
    let t = fanout(NODES_B[0].1, sealed_port, "http://hello", 4).unwrap();
    assert_eq!(t["ok"], 4, "sealed still reaches itself: {t}");
    let t = fanout(NODES_B[0].1, default_port, "http://hello", 4).unwrap();
    assert_eq!(t["ok"], 4, "default still reaches itself: {t}");

    // Egress: an outside host (a listener of this test, on loopback) is
    // denied until the pod's annotation lists it.
    let outside = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let outside_port = outside.local_addr().unwrap().port();
    outside.set_nonblocking(true).unwrap();
    let served = std::thread::spawn(move || {
        use std::io::{Read, Write};
        // Bounded in time; answers every request that comes.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
        while std::time::Instant::now() < deadline {
            match outside.accept() {
                Ok((mut conn, _)) => {
                    let _ = conn.set_nonblocking(false);
                    let mut buf = [0u8; 1024];
                    let _ = conn.read(&mut buf);
                    let _ = conn.write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 7\r\nconnection: close\r\n\r\noutside",
                    );
                }
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(20)),
            }
        }
    });
    let url = format!("http://127.0.0.1:{outside_port}/");
    let t = fanout(NODES_B[0].1, default_port, &url, 1).unwrap();
    assert_eq!(t["ok"], 0, "egress is denied by default: {t}");
    let denied = t["errors"]
        .as_object()
        .unwrap()
        .keys()
        .next()
        .cloned()
        .unwrap_or_default();
    assert!(
        denied.to_lowercase().contains("denied"),
        "the guest reads a denial: {t}"
    );
    // An ExternalName Service is its name for the caller, under the same
    // egress rule: `ext` names the outside host (by address, a valid DNS
    // subdomain), and is denied too.
    apply(
        &server,
        r#"
apiVersion: v1
kind: Service
metadata: {name: ext, namespace: default}
spec: {type: ExternalName, externalName: 127.0.0.1}
---
apiVersion: v1
kind: Service
metadata: {name: alias, namespace: default}
spec: {type: ExternalName, externalName: hello.default.svc.cluster.local}
"#,
    );
    // One naming a Service of the cluster is an alias of it (Kubernetes'
    // DNS answers with a CNAME): routed to its pods, no egress needed.
    eventually("the ExternalName alias reaches hello", || {
        let t = fanout(NODES_B[0].1, default_port, "http://alias", 2)?;
        (t["ok"] == 2).then_some(()).ok_or_else(|| t.to_string())
    });
    let ext_url = format!("http://ext:{outside_port}/");
    let t = eventually("the ExternalName Service is known on n1", || {
        let t = fanout(NODES_B[0].1, default_port, &ext_url, 1)?;
        let errors = t["errors"].to_string().to_lowercase();
        (errors.contains("denied"))
            .then_some(t.clone())
            .ok_or_else(|| t.to_string())
    });
    assert_eq!(t["ok"], 0, "ExternalName is subject to egress: {t}");
    server.ok(&[
        "patch",
        "deployment",
        "fanout",
        "--type=merge",
        "-p",
        &format!(r#"{{"spec":{{"template":{{"metadata":{{"annotations":{{"skiff.dev/egress":"127.0.0.1:{outside_port}"}}}}}}}}}}"#),
    ]);
    server.ok(&["rollout", "status", "deployment/fanout", "--timeout=60s"]);
    eventually("the annotated pod reaches the outside host", || {
        let t = fanout(NODES_B[0].1, default_port, &url, 1)?;
        (t["answers"]["outside"] == 1)
            .then_some(())
            .ok_or_else(|| t.to_string())
    });
    let t = fanout(NODES_B[0].1, default_port, &ext_url, 1).unwrap();
    assert_eq!(
        t["answers"]["outside"], 1,
        "the ExternalName Service reaches its host once allowed: {t}"
    );
    drop(served);
    let metrics = server.ok(&["get", "--raw", "/api/v1/nodes/n1/proxy/metrics"]);
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("skiff_egress_denied_total ") && !l.ends_with(" 0")),
        "the denial is counted:\n{metrics}"
    );

    // LoadBalancer: the Service's own port opens on every node and the
    // status lists the nodes.
    let lb_port = support::free_port();
    apply(
        &server,
        &format!(
            r#"
apiVersion: v1
kind: Service
metadata: {{name: hello-lb}}
spec:
  type: LoadBalancer
  selector: {{app: hello}}
  ports: [{{port: {lb_port}, targetPort: 8080}}]
"#
        ),
    );
    let ingress = eventually("the LoadBalancer status lists every node", || {
        let svc = get_json(&server, &["service", "hello-lb"])?;
        let ips: BTreeSet<String> = svc["status"]["loadBalancer"]["ingress"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|i| i["ip"].as_str().map(str::to_owned))
            .collect();
        (ips.len() == 3)
            .then_some(ips)
            .ok_or_else(|| svc.to_string())
    });
    assert_eq!(
        ingress,
        NODES_B.iter().map(|(_, ip)| ip.to_string()).collect()
    );
    for (_, ip) in NODES_B {
        let r = eventually(&format!("hello-lb on {ip}:{lb_port}"), || {
            let r = http_get_on(ip, lb_port, "/")?;
            r.starts_with("HTTP/1.1 200").then_some(r.clone()).ok_or(r)
        });
        assert!(body(&r).starts_with("Hello from hello-"), "{r}");
    }

    // Ingress: every node routes by host and path to the Service.
    apply(
        &server,
        r#"
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: demo}
spec:
  rules:
  - host: demo.test
    http:
      paths:
      - {path: /hello, pathType: Prefix, backend: {service: {name: hello, port: {number: 80}}}}
"#,
    );
    for (_, ip) in NODES_B {
        let r = eventually(&format!("the Ingress on {ip}:{ingress_port}"), || {
            let r = support::http_get_as(ip, ingress_port, "demo.test", "/hello/there")?;
            r.starts_with("HTTP/1.1 200").then_some(r.clone()).ok_or(r)
        });
        assert!(body(&r).starts_with("Hello from hello-"), "{r}");
    }
    let r = support::http_get_as(NODES_B[0].1, ingress_port, "other.test", "/hello").unwrap();
    assert!(r.starts_with("HTTP/1.1 404"), "no rule for other.test: {r}");

    // Readiness: a pod whose probe fails never takes traffic.
    apply(
        &server,
        &format!(
            r#"
apiVersion: v1
kind: Pod
metadata: {{name: slow, labels: {{app: mixed}}}}
spec:
  nodeSelector: {{tier: backend}}
  containers:
  - name: slow
    image: {slow}
    ports: [{{containerPort: 8080}}]
    readinessProbe: {{httpGet: {{path: "/sleep?ms=3000", port: 8080}}, timeoutSeconds: 1, periodSeconds: 1}}
---
apiVersion: v1
kind: Pod
metadata: {{name: quick, labels: {{app: mixed}}}}
spec:
  nodeSelector: {{tier: backend}}
  containers:
  - name: quick
    image: {quick}
    ports: [{{containerPort: 8080}}]
    env: [{{name: POD_NAME, value: quick}}]
    readinessProbe: {{httpGet: {{path: /, port: 8080}}, periodSeconds: 1}}
---
apiVersion: v1
kind: Service
metadata: {{name: mixed}}
spec:
  selector: {{app: mixed}}
  ports: [{{port: 80, targetPort: 8080}}]
"#,
            slow = skiff_guests::HTTP_TEST,
            quick = skiff_guests::HELLO,
        ),
    );
    wait_ready(&server, "default", "app=mixed", 1);
    let t = fanout(NODES_B[0].1, default_port, "http://mixed", 10).unwrap();
    assert_eq!(
        t["answers"]["Hello from quick!"], 10,
        "only the ready pod answers: {t}"
    );
    drop(agents);
}

/// The acceptance across network namespaces: each agent in its own
/// namespace on its own veth address, the API server on the host's bridge
/// address. Load spreads over the mesh; cutting one node's link takes its
/// endpoints out of rotation while the others keep answering; repairing it
/// brings the node and its endpoints back, over a new or resumed QUIC
/// connection.
#[test]
fn across_network_namespaces_a_cut_link_and_its_repair() {
    let hosts = support::Hosts::create(3);
    let server = Server::start_with_args(&[
        "--bind",
        &hosts.gateway(),
        "--node-monitor-grace-secs",
        "15",
        // The cut node's pods must outlive the cut, to come back with it.
        "--pod-eviction-timeout-secs",
        "600",
    ]);
    let names = ["n1", "n2", "n3"];
    let addresses: Vec<String> = (0..3).map(|i| hosts.address(i)).collect();
    let nodes: Vec<(&str, &str)> = names
        .iter()
        .zip(&addresses)
        .map(|(n, a)| (*n, a.as_str()))
        .collect();
    let agents: Vec<Agent> = (0..3)
        .map(|i| {
            let address = &addresses[i];
            Agent::start_in_netns(
                &server,
                &hosts.netns(i),
                names[i],
                &[
                    "--node-ip",
                    address,
                    "--node-port-address",
                    address,
                    "--mesh-listen",
                    &format!("{address}:0"),
                ],
            )
        })
        .collect();
    wait_nodes(&server, &nodes);
    for node in ["n2", "n3"] {
        server.ok(&["label", "node", node, "tier=backend"]);
    }
    apply(&server, &hello_and_fanout("default", "backend", "n1"));
    let hello = wait_ready(&server, "default", "app=hello", 4);
    wait_ready(&server, "default", "app=fanout", 1);
    let on: BTreeSet<&str> = hello.values().map(|(n, _)| n.as_str()).collect();
    assert_eq!(on, BTreeSet::from(["n2", "n3"]), "{hello:?}");
    let port = node_port(&server, "default", "fanout");
    let n1 = addresses[0].as_str();

    let all_four = |what: &str| {
        eventually(what, || {
            let t = fanout(n1, port, "http://hello", 40)?;
            (t["ok"] == 40 && t["answers"].as_object().map(|a| a.len()) == Some(4))
                .then_some(())
                .ok_or_else(|| t.to_string())
        })
    };
    all_four("fanout on n1 reaches all four hello pods on n2 and n3");
    // The NodePort answers from the host on every test host's address.
    for address in &addresses {
        let t = fanout(address, port, "http://hello", 4).unwrap();
        assert_eq!(t["ok"], 4, "via {address}: {t}");
    }

    // Cut n3 off: n3's endpoints leave the rotation (its node goes silent,
    // its pods are marked not Ready) and n2's pods answer every call.
    hosts.set_link(2, false);
    eventually("with n3 cut off, n2 answers every call", || {
        let t = fanout(n1, port, "http://hello", 20)?;
        let from_n3 = t["answers"]
            .as_object()
            .is_some_and(|a| a.keys().any(|answer| hello_on(&hello, answer, "n3")));
        (t["ok"] == 20 && !from_n3)
            .then_some(())
            .ok_or_else(|| t.to_string())
    });
    let n3 = get_json(&server, &["node", "n3"]).unwrap();
    assert_ne!(
        condition(&n3, "Ready").map(|c| c["status"].clone()),
        Some("True".into()),
        "n3 is cut off: {n3}"
    );
    assert!(
        fanout(&addresses[2], port, "http://hello", 1).is_err(),
        "n3 cannot be reached from the host while its link is down"
    );

    // Repair: n3 reports again, its pods are Ready again and take their
    // share of the calls from n1.
    hosts.set_link(2, true);
    wait_nodes(&server, &nodes[2..]);
    all_four("after the repair, n3's pods answer again");
    drop(agents);
}
