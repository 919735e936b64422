//! End-to-end: a real `skiff server`, a real `skiff agent` against it, and
//! pods driven with the real kubectl.

mod support;

use support::{Agent, Server, apply, condition, eventually, free_port, get_json, http_get, phase};

#[test]
fn node_registers_and_runs_http_and_command_pods() {
    let server = Server::start();
    let agent = Agent::start(&server);

    // The Node is registered, Ready, and describes a wasm node.
    let node = eventually("node n1 Ready", || {
        let node = get_json(&server, &["node", "n1"])?;
        match condition(&node, "Ready") {
            Some(c) if c["status"] == "True" => Ok(node),
            _ => Err(node.to_string()),
        }
    });
    assert_eq!(node["metadata"]["labels"]["kubernetes.io/os"], "wasi");
    assert_eq!(node["metadata"]["labels"]["kubernetes.io/arch"], "wasm32");
    assert_eq!(
        node["status"]["nodeInfo"]["kubeletVersion"],
        "v1.32.4-skiff"
    );
    assert_eq!(node["status"]["allocatable"]["pods"], "110");
    assert!(node["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"].as_u64() > Some(0));
    let lease = eventually("the node's lease", || {
        get_json(&server, &["lease", "n1", "-n", "kube-node-lease"])
    });
    assert_eq!(lease["spec"]["holderIdentity"], "n1");
    assert_eq!(lease["spec"]["leaseDurationSeconds"], 40);

    // An HTTP pod serves on its hostPort, with the downward API in its env.
    let port = free_port();
    apply(
        &server,
        &format!(
            r#"
apiVersion: v1
kind: Pod
metadata: {{name: hello}}
spec:
  nodeName: n1
  containers:
  - name: web
    image: {image}
    ports: [{{containerPort: 8080, hostPort: {port}}}]
    env:
    - name: POD_NAME
      valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}
    readinessProbe:
      httpGet: {{path: /, port: 8080}}
      periodSeconds: 1
"#,
            image = skiff_guests::HELLO
        ),
    );
    let pod = eventually("hello Running and Ready", || {
        let pod = get_json(&server, &["pod", "hello"])?;
        match condition(&pod, "Ready") {
            Some(c) if c["status"] == "True" && phase(&pod) == "Running" => Ok(pod),
            _ => Err(pod["status"].to_string()),
        }
    });
    let status = &pod["status"]["containerStatuses"][0];
    assert_eq!(status["ready"], true);
    assert!(status["state"]["running"]["startedAt"].is_string());
    assert!(status["imageID"].as_str().unwrap().starts_with("sha256:"));
    // The pod's address is virtual, from the node's podCIDR; the host's is
    // the node's.
    let cidr = get_json(&server, &["node", "n1"]).unwrap()["spec"]["podCIDR"]
        .as_str()
        .unwrap()
        .to_owned();
    let pod_ip = pod["status"]["podIP"].as_str().unwrap();
    assert!(
        pod_ip.starts_with(cidr.strip_suffix("0/24").unwrap()) && pod_ip != "127.0.0.1",
        "{pod_ip} in {cidr}"
    );
    assert_eq!(pod["status"]["podIPs"][0]["ip"], pod_ip);
    assert_eq!(pod["status"]["hostIP"], "127.0.0.1");
    let answer = eventually("hello answering on its hostPort", || http_get(port, "/"));
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("Hello from hello!"), "{answer}");

    // A command pod runs to completion.
    apply(
        &server,
        &format!(
            r#"
apiVersion: v1
kind: Pod
metadata: {{name: pi}}
spec:
  nodeName: n1
  restartPolicy: Never
  containers:
  - name: pi
    image: {image}
    args: ["50"]
"#,
            image = skiff_guests::PI
        ),
    );
    let pod = eventually("pi Succeeded", || {
        let pod = get_json(&server, &["pod", "pi"])?;
        if phase(&pod) == "Succeeded" {
            Ok(pod)
        } else {
            Err(pod["status"].to_string())
        }
    });
    let terminated = &pod["status"]["containerStatuses"][0]["state"]["terminated"];
    assert_eq!(terminated["exitCode"], 0);
    assert_eq!(terminated["reason"], "Completed");
    // Its output, through the API server's pods/log proxy to the agent.
    let logs = server.ok(&["logs", "pi"]);
    assert!(logs.starts_with("3.14159265358979323846"), "{logs}");

    // Deleting the HTTP pod stops it and removes it for good.
    server.ok(&["delete", "pod", "hello", "--timeout=60s"]);
    let gone = server.kubectl(&["get", "pod", "hello"]);
    assert!(!gone.status.success(), "hello still exists");
    eventually("hello's hostPort closed", || match http_get(port, "/") {
        Err(e) => Ok(e),
        Ok(answer) => Err(answer),
    });

    // SIGTERM stops the agent cleanly and leaves the Node.
    assert!(agent.terminate().success());
    get_json(&server, &["node", "n1"]).expect("the node stays registered");
}

#[test]
fn crashing_and_memory_hungry_guests() {
    let server = Server::start();
    let _agent = Agent::start(&server);
    apply(
        &server,
        &format!(
            r#"
apiVersion: v1
kind: Pod
metadata: {{name: crash}}
spec:
  nodeName: n1
  containers:
  - name: crash
    image: {image}
    args: ["exit", "3"]
---
apiVersion: v1
kind: Pod
metadata: {{name: bomb}}
spec:
  nodeName: n1
  restartPolicy: Never
  containers:
  - name: bomb
    image: {image}
    args: ["oom"]
    resources:
      limits: {{memory: 16Mi}}
"#,
            image = skiff_guests::MISBEHAVE
        ),
    );
    let status = eventually("crash in CrashLoopBackOff after restarts", || {
        let pod = get_json(&server, &["pod", "crash"])?;
        let status = pod["status"]["containerStatuses"][0].clone();
        let waiting = status["state"]["waiting"]["reason"] == "CrashLoopBackOff";
        if waiting && status["restartCount"].as_i64() >= Some(2) {
            Ok(status)
        } else {
            Err(pod["status"].to_string())
        }
    });
    assert_eq!(status["lastState"]["terminated"]["exitCode"], 3);
    assert_eq!(status["lastState"]["terminated"]["reason"], "Error");
    assert_eq!(status["ready"], false);
    // The count keeps rising.
    let first = status["restartCount"].as_i64().unwrap();
    eventually("crash restarted again", || {
        let pod = get_json(&server, &["pod", "crash"])?;
        let count = pod["status"]["containerStatuses"][0]["restartCount"].as_i64();
        if count > Some(first) {
            Ok(())
        } else {
            Err(format!("{count:?}"))
        }
    });

    let pod = eventually("bomb OOMKilled", || {
        let pod = get_json(&server, &["pod", "bomb"])?;
        if phase(&pod) == "Failed" {
            Ok(pod)
        } else {
            Err(pod["status"].to_string())
        }
    });
    let terminated = &pod["status"]["containerStatuses"][0]["state"]["terminated"];
    assert_eq!(terminated["reason"], "OOMKilled", "{terminated}");
    assert_eq!(terminated["exitCode"], 137);
}

#[test]
fn config_maps_reach_env_and_files() {
    let server = Server::start();
    let _agent = Agent::start(&server);
    apply(
        &server,
        &format!(
            r#"
apiVersion: v1
kind: ConfigMap
metadata: {{name: settings}}
data: {{greeting: first, colour: blue}}
---
apiVersion: v1
kind: Pod
metadata: {{name: env}}
spec:
  nodeName: n1
  restartPolicy: Never
  containers:
  - name: env
    image: {image}
    args: ["env"]
    env:
    - name: GREETING
      valueFrom: {{configMapKeyRef: {{name: settings, key: greeting}}}}
    - name: MISSING
      valueFrom: {{configMapKeyRef: {{name: nope, key: x, optional: true}}}}
    envFrom:
    - configMapRef: {{name: settings}}
      prefix: CFG_
---
apiVersion: v1
kind: Pod
metadata: {{name: reader}}
spec:
  nodeName: n1
  containers:
  - name: reader
    image: {image}
    args: ["cat", "/config/greeting"]
    volumeMounts:
    - {{name: config, mountPath: /config}}
  volumes:
  - name: config
    configMap: {{name: settings}}
"#,
            image = skiff_guests::MISBEHAVE
        ),
    );
    eventually("env Succeeded", || {
        let pod = get_json(&server, &["pod", "env"])?;
        if phase(&pod) == "Succeeded" {
            Ok(())
        } else {
            Err(pod["status"].to_string())
        }
    });
    let logs = server.ok(&["logs", "env"]);
    let lines: Vec<&str> = logs.lines().collect();
    assert!(lines.contains(&"GREETING=first"), "{logs}");
    assert!(lines.contains(&"CFG_colour=blue"), "{logs}");
    assert!(!logs.contains("MISSING="), "{logs}");

    eventually("reader printing the mounted file", || {
        let out = server.kubectl(&["logs", "reader"]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if text.trim() == "first" {
            Ok(())
        } else {
            Err(text + &String::from_utf8_lossy(&out.stderr))
        }
    });
    server.ok(&[
        "patch",
        "configmap",
        "settings",
        "--type=merge",
        "-p",
        r#"{"data":{"greeting":"second"}}"#,
    ]);
    eventually("reader printing the changed file", || {
        let out = server.kubectl(&["logs", "reader"]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if text.trim() == "second" {
            Ok(())
        } else {
            Err(text + &String::from_utf8_lossy(&out.stderr))
        }
    });
}

#[test]
fn pods_keep_serving_while_the_api_server_is_down_and_are_not_restarted() {
    let server = Server::start();
    let api_port = server.port;
    let agent = Agent::start(&server);
    let port = free_port();
    apply(
        &server,
        &format!(
            r#"
apiVersion: v1
kind: Pod
metadata: {{name: steady}}
spec:
  nodeName: n1
  containers:
  - name: web
    image: {image}
    ports: [{{containerPort: 8080, hostPort: {port}}}]
"#,
            image = skiff_guests::HELLO
        ),
    );
    let started = eventually("steady Running", || {
        let pod = get_json(&server, &["pod", "steady"])?;
        let s = &pod["status"]["containerStatuses"][0];
        match s["state"]["running"]["startedAt"].as_str() {
            Some(at) if phase(&pod) == "Running" => Ok(at.to_owned()),
            _ => Err(pod["status"].to_string()),
        }
    });
    eventually("steady answering", || http_get(port, "/"));

    // The API server dies (SIGKILL) for 30 s: the pod keeps answering.
    let dir = server.kill();
    let down = std::time::Instant::now();
    let mut answered = 0;
    while down.elapsed() < std::time::Duration::from_secs(30) {
        let r = http_get(port, "/").expect("the pod answers while the API is down");
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
        answered += 1;
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    assert!(answered >= 30);

    // Back on the same port: the agent reconnects and reconciles, and the
    // container was never restarted.
    let server = Server::start_on(dir, api_port);
    eventually("the node Ready again", || {
        let node = get_json(&server, &["node", "n1"])?;
        let beat = condition(&node, "Ready")
            .and_then(|c| c["lastHeartbeatTime"].as_str())
            .unwrap_or_default()
            .to_owned();
        let lease = get_json(&server, &["lease", "n1", "-n", "kube-node-lease"])?;
        let renewed = lease["spec"]["renewTime"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        (renewed.as_str() > started.as_str() && !beat.is_empty())
            .then_some(())
            .ok_or(format!("{renewed} {beat}"))
    });
    let pod = get_json(&server, &["pod", "steady"]).unwrap();
    let s = &pod["status"]["containerStatuses"][0];
    assert_eq!(s["restartCount"], 0, "{s}");
    assert_eq!(
        s["state"]["running"]["startedAt"].as_str(),
        Some(started.as_str())
    );
    assert!(http_get(port, "/").unwrap().starts_with("HTTP/1.1 200"));
    drop(agent);
}
