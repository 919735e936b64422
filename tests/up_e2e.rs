//! End-to-end: `skiff up --demo`, the one-command cluster, walked with the
//! real kubectl and a plain HTTP client; killed with SIGKILL and started
//! again on the same data directory; refused when started twice.
//!
//! The command is the README's: `scripts/up` itself, with the extra
//! arguments the README shows (`--nodes 3 --data-dir DIR`). Its build step
//! finds everything built by `cargo test` (the two builds resolve the same
//! features; see the root Cargo.toml), so it costs seconds.

mod support;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use support::{eventually, http_get};

/// A `skiff up` process, killed (by pid) on drop.
struct Up {
    child: Child,
    node_port: u16,
}

impl Up {
    fn start(dir: &Path) -> Up {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        check_script();
        let mut script = Command::new(root.join("scripts/up"));
        // As from a user's shell: without the variables `cargo test` set for
        // this test (build scripts such as ring's watch CARGO_MANIFEST_DIR,
        // and the script's own `cargo build` would rebuild half the tree).
        for (name, _) in std::env::vars_os() {
            let name = name.to_string_lossy();
            if name == "CARGO"
                || name == "OUT_DIR"
                || (name.starts_with("CARGO_")
                    && !USER_CARGO_VARS.iter().any(|v| name.starts_with(v)))
            {
                script.env_remove(name.as_ref());
            }
        }
        let mut child = script
            .args(["--api-port", "0", "--nodes", "3", "--data-dir"])
            .arg(dir)
            .current_dir(root)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .spawn()
            .expect("skiff up starts");
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in stdout.lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        // The script's `cargo build` normally finds nothing to do; the
        // margin covers a machine where it has to relink.
        let deadline = Instant::now() + Duration::from_secs(600);
        let mut ready = false;
        let node_port = loop {
            let line = rx
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .expect("skiff up printed its ready lines");
            ready |= line.contains("cluster ready: 3 node(s)");
            if let Some(rest) = line.split("curl http://127.0.0.1:").nth(1) {
                assert!(ready, "the cluster line comes first");
                break rest.trim_end_matches('/').parse::<u16>().unwrap();
            }
        };
        Up { child, node_port }
    }
}

/// Cargo's variables a user may have set themselves (kept for the script).
const USER_CARGO_VARS: &[&str] = &[
    "CARGO_HOME",
    "CARGO_TARGET_DIR",
    "CARGO_INCREMENTAL",
    "CARGO_BUILD_",
    "CARGO_PROFILE_",
    "CARGO_TERM_",
    "CARGO_NET_",
    "CARGO_HTTP_",
    "CARGO_REGISTR",
];

/// `scripts/up` ends by running the binary `cargo test` built, with the
/// demo components where this test's build put them; `exec` keeps the pid,
/// so killing the child stops `skiff up` itself.
fn check_script() {
    let script =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/up")).unwrap();
    let exec = script
        .lines()
        .find_map(|l| l.trim().strip_prefix("exec target/debug/skiff "))
        .expect("scripts/up ends by exec'ing target/debug/skiff");
    let args: Vec<&str> = exec.split_whitespace().collect();
    assert_eq!(args.first(), Some(&"up"), "{exec}");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    assert_eq!(
        root.join("target/debug/skiff"),
        Path::new(env!("CARGO_BIN_EXE_skiff")),
        "scripts/up runs the binary this test was built with"
    );
    let guests = Path::new(skiff_guests::HELLO).parent().unwrap();
    let demo_dir = args.iter().skip_while(|a| **a != "--demo-dir").nth(1);
    assert_eq!(
        demo_dir.map(|d| root.join(d)).as_deref(),
        Some(guests),
        "scripts/up's --demo-dir is where the guests are built"
    );
}

impl Drop for Up {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn kubectl(dir: &Path, args: &[&str]) -> Result<String, String> {
    let out = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(dir.join("kubeconfig"))
        .args(args)
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn hello_answers(port: u16) -> String {
    eventually("hello on its NodePort", || {
        let r = http_get(port, "/")?;
        r.contains("Hello from hello-")
            .then_some(r.clone())
            .ok_or(r)
    })
}

#[test]
fn skiff_up_demo_walkthrough_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let up = Up::start(dir.path());
    hello_answers(up.node_port);

    let nodes = kubectl(dir.path(), &["get", "nodes", "-o", "name"]).unwrap();
    assert_eq!(nodes.lines().count(), 3, "{nodes}");
    kubectl(
        dir.path(),
        &[
            "wait",
            "--for=condition=complete",
            "job/pi",
            "--timeout=120s",
        ],
    )
    .unwrap();
    let logs = kubectl(dir.path(), &["logs", "job/pi"]).unwrap();
    assert!(logs.starts_with("3.14159"), "{logs}");

    // Scaling to 5 spreads the pods over the three nodes.
    kubectl(dir.path(), &["scale", "deployment/hello", "--replicas=5"]).unwrap();
    kubectl(
        dir.path(),
        &["rollout", "status", "deployment/hello", "--timeout=120s"],
    )
    .unwrap();
    let nodes = kubectl(
        dir.path(),
        &[
            "get",
            "pods",
            "-l",
            "app=hello",
            "-o",
            "jsonpath={range .items[*]}{.spec.nodeName}{\"\\n\"}{end}",
        ],
    )
    .unwrap();
    let distinct: std::collections::BTreeSet<&str> = nodes.lines().collect();
    assert_eq!(distinct.len(), 3, "pods per node: {nodes}");

    // `skiff push` a new image to the built-in registry, roll out to it,
    // and undo.
    let pushed = Command::new(env!("CARGO_BIN_EXE_skiff"))
        .args(["push", skiff_guests::ECHO, "echo:v2", "--kubeconfig"])
        .arg(dir.path().join("kubeconfig"))
        .output()
        .unwrap();
    assert!(
        pushed.status.success(),
        "{}",
        String::from_utf8_lossy(&pushed.stderr)
    );
    kubectl(
        dir.path(),
        &["set", "image", "deployment/hello", "hello=echo:v2"],
    )
    .unwrap();
    kubectl(
        dir.path(),
        &["rollout", "status", "deployment/hello", "--timeout=120s"],
    )
    .unwrap();
    eventually("echo answering after the rollout", || {
        let r = http_get(up.node_port, "/echoed")?;
        r.contains("\"path\":\"/echoed\"").then_some(()).ok_or(r)
    });
    kubectl(dir.path(), &["rollout", "undo", "deployment/hello"]).unwrap();
    kubectl(
        dir.path(),
        &["rollout", "status", "deployment/hello", "--timeout=120s"],
    )
    .unwrap();
    hello_answers(up.node_port);
    let printed = Command::new(env!("CARGO_BIN_EXE_skiff"))
        .args(["kubeconfig", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&printed.stdout).contains("server: https://127.0.0.1:"));

    // `skiff run` a file as a Deployment behind a NodePort, with progress.
    let run = Command::new(env!("CARGO_BIN_EXE_skiff"))
        .args([
            "run",
            "web",
            "--file",
            skiff_guests::ECHO,
            "--replicas",
            "2",
            "--expose",
        ])
        .arg("--kubeconfig")
        .arg(dir.path().join("kubeconfig"))
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(said.contains("2/2 ready"), "{said}");
    let web_port: u16 = said
        .split("web ready: curl http://127.0.0.1:")
        .nth(1)
        .and_then(|r| r.trim().trim_end_matches('/').parse().ok())
        .unwrap_or_else(|| panic!("{said}"));
    let r = http_get(web_port, "/from-run").unwrap();
    assert!(r.contains("\"path\":\"/from-run\""), "{r}");
    // And deleted: its pods go, its NodePort closes.
    kubectl(
        dir.path(),
        &["delete", "deployment/web", "service/web", "--wait=true"],
    )
    .unwrap();
    eventually("web's pods gone", || {
        let pods = kubectl(dir.path(), &["get", "pods", "-l", "app=web", "-o", "name"])?;
        pods.trim().is_empty().then_some(()).ok_or(pods)
    });
    eventually("web's NodePort closed", || match http_get(web_port, "/") {
        Err(e) => Ok(e),
        Ok(r) => Err(r),
    });

    // Errors a newcomer hits are one clear sentence: an image that is not
    // there (at once, not after the wait), a port already taken.
    let missing = Command::new(env!("CARGO_BIN_EXE_skiff"))
        .args([
            "run",
            "missing",
            "--image",
            "nothing-here:v1",
            "--kubeconfig",
        ])
        .arg(dir.path().join("kubeconfig"))
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&missing.stderr);
    assert!(!missing.status.success(), "{said}");
    assert!(
        said.contains("missing cannot start") && said.contains("not found"),
        "{said}"
    );
    let api_port = kubectl(
        dir.path(),
        &[
            "config",
            "view",
            "-o",
            "jsonpath={.clusters[0].cluster.server}",
        ],
    )
    .unwrap()
    .rsplit(':')
    .next()
    .unwrap()
    .to_owned();
    let other = tempfile::tempdir().unwrap();
    let taken = Command::new(env!("CARGO_BIN_EXE_skiff"))
        .args(["up", "--api-port", &api_port, "--data-dir"])
        .arg(other.path())
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&taken.stderr);
    assert!(!taken.status.success(), "{said}");
    assert!(
        said.contains(&format!("port {api_port} is already in use")),
        "{said}"
    );

    // A second `skiff up` on the same data directory refuses, clearly.
    let second = Command::new(env!("CARGO_BIN_EXE_skiff"))
        .args(["up", "--api-port", "0", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!second.status.success());
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(
        stderr.contains("is in use by another skiff process"),
        "{stderr}"
    );

    // SIGKILL, then the same command again: everything comes back.
    let port = up.node_port;
    drop(up);
    // The kubeconfig now points at a stopped cluster: said plainly.
    let stopped = Command::new(env!("CARGO_BIN_EXE_skiff"))
        .arg("push")
        .arg(skiff_guests::ECHO)
        .args(["echo:v2", "--kubeconfig"])
        .arg(dir.path().join("kubeconfig"))
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&stopped.stderr);
    assert!(!stopped.status.success(), "{said}");
    assert!(said.contains("is it running"), "{said}");
    let up = Up::start(dir.path());
    assert_eq!(up.node_port, port, "the Service kept its NodePort");
    hello_answers(up.node_port);
    let replicas = kubectl(
        dir.path(),
        &[
            "get",
            "deployment",
            "hello",
            "-o",
            "jsonpath={.spec.replicas}",
        ],
    )
    .unwrap();
    assert_eq!(replicas, "5");
    eventually("five ready hello pods again", || {
        let ready = kubectl(
            dir.path(),
            &[
                "get",
                "deployment",
                "hello",
                "-o",
                "jsonpath={.status.readyReplicas}",
            ],
        )?;
        (ready == "5").then_some(()).ok_or(ready)
    });
}
