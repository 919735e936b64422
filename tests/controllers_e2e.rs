//! High availability of the controller manager: two `skiff controllers`
//! processes against one API server; the leader is killed (SIGKILL) and the
//! standby takes over within the lease duration, with no duplicate pods.

mod support;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::{Server, apply, eventually, get_json};

/// A `skiff controllers` process, killed (by pid) on drop.
struct Controllers(Child);

impl Controllers {
    fn start(server: &Server) -> Controllers {
        let child = Command::new(env!("CARGO_BIN_EXE_skiff"))
            .args(["controllers", "--leader-lease-secs", "3", "--kubeconfig"])
            .arg(server.kubeconfig())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("skiff controllers starts");
        Controllers(child)
    }
}

impl Drop for Controllers {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn holder(server: &Server) -> Result<String, String> {
    let lease = get_json(
        server,
        &["lease", "skiff-controller-manager", "-n", "kube-system"],
    )?;
    lease["spec"]["holderIdentity"]
        .as_str()
        .filter(|h| !h.is_empty())
        .map(str::to_owned)
        .ok_or_else(|| lease.to_string())
}

fn pods(server: &Server) -> Result<usize, String> {
    let pods = get_json(server, &["pods", "-l", "app=web"])?;
    Ok(pods["items"].as_array().map_or(0, Vec::len))
}

#[test]
fn a_standby_controller_manager_takes_over_without_duplicates() {
    let server = Server::start_with_args(&["--disable-controllers"]);
    let first = Controllers::start(&server);
    let leader = eventually("the first process to lead", || holder(&server));
    let standby = Controllers::start(&server);

    apply(
        &server,
        r#"
apiVersion: apps/v1
kind: ReplicaSet
metadata: {name: web}
spec:
  replicas: 3
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers: [{name: web, image: web:v1}]
"#,
    );
    eventually("three pods", || {
        let n = pods(&server)?;
        (n == 3).then_some(()).ok_or(n.to_string())
    });

    drop(first);
    let killed = Instant::now();
    let next = eventually("the standby to lead", || {
        let h = holder(&server)?;
        (h != leader).then_some(h.clone()).ok_or(h)
    });
    assert_ne!(next, leader);
    assert!(
        killed.elapsed() < Duration::from_secs(30),
        "took over after {:?}",
        killed.elapsed()
    );

    // The new leader acts: scale to 5 gives exactly 5 pods, and keeps it.
    server.ok(&["scale", "replicaset/web", "--replicas=5"]);
    eventually("five pods", || {
        let n = pods(&server)?;
        (n == 5).then_some(()).ok_or(n.to_string())
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(pods(&server).unwrap(), 5, "no duplicates after settling");
    drop(standby);
}
