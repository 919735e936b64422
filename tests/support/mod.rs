//! Starting real `skiff` processes and driving them with the real kubectl.
#![allow(dead_code, reason = "each test binary uses a different subset")]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

/// A `skiff server` process on a loopback port (or the address given with
/// `--bind`), stopped (by pid) on drop.
pub struct Server {
    child: Child,
    pub dir: tempfile::TempDir,
    /// The address the API is served on.
    pub host: String,
    pub port: u16,
    cache: tempfile::TempDir,
    lines: mpsc::Receiver<String>,
}

impl Server {
    /// Starts `skiff server` on a free loopback port and waits for its
    /// ready line.
    pub fn start() -> Server {
        let dir = tempfile::tempdir().unwrap();
        Self::start_in(dir)
    }

    /// Starts `skiff server` with extra arguments.
    pub fn start_with_args(args: &[&str]) -> Server {
        Self::launch(tempfile::tempdir().unwrap(), args)
    }

    pub fn start_in(dir: tempfile::TempDir) -> Server {
        Self::launch(dir, &[])
    }

    /// Starts `skiff server` over `dir` on a given port (to come back
    /// where its clients expect it after a restart).
    pub fn start_on(dir: tempfile::TempDir, port: u16) -> Server {
        Self::launch(dir, &["--api-port", &port.to_string()])
    }

    fn launch(dir: tempfile::TempDir, args: &[&str]) -> Server {
        let port_args: &[&str] = if args.contains(&"--api-port") {
            &[]
        } else {
            &["--api-port", "0"]
        };
        let mut child = Command::new(env!("CARGO_BIN_EXE_skiff"))
            .arg("server")
            .args(port_args)
            .arg("--data-dir")
            .arg(dir.path())
            .args(args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .spawn()
            .expect("skiff starts");
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in stdout.lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        let (host, port) = loop {
            let line = lines
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .expect("skiff server printed its ready line");
            if let Some(rest) = line.split("API server ready at https://").nth(1) {
                let addr = rest.split(';').next().unwrap();
                let (host, port) = addr.rsplit_once(':').unwrap();
                break (host.to_owned(), port.parse::<u16>().unwrap());
            }
        };
        Server {
            child,
            dir,
            host,
            port,
            cache: tempfile::tempdir().unwrap(),
            lines,
        }
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("kubeconfig")
    }

    /// A kubectl command against this server, with its own discovery cache.
    pub fn kubectl_command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("kubectl");
        cmd.arg("--kubeconfig")
            .arg(self.kubeconfig())
            .arg("--cache-dir")
            .arg(self.cache.path())
            .args(args)
            .env_remove("KUBECONFIG");
        cmd
    }

    /// Runs kubectl to completion (bounded to 60 s).
    pub fn kubectl(&self, args: &[&str]) -> Output {
        self.kubectl_stdin(args, None)
    }

    /// Runs kubectl with `input` on stdin.
    pub fn kubectl_stdin(&self, args: &[&str], input: Option<&str>) -> Output {
        let mut child = self
            .kubectl_command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kubectl runs");
        if let Some(input) = input {
            use std::io::Write;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(input.as_bytes())
                .unwrap();
        }
        drop(child.stdin.take());
        let pid = child.id();
        let (done_tx, done_rx) = mpsc::channel();
        let waiter = std::thread::spawn(move || {
            let out = child.wait_with_output();
            let _ = done_tx.send(());
            out
        });
        if done_rx.recv_timeout(Duration::from_secs(60)).is_err() {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            panic!("kubectl {args:?} did not finish in 60 s");
        }
        waiter.join().unwrap().unwrap()
    }

    /// Runs kubectl and returns stdout, failing the test on error.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(
            out.status.success(),
            "kubectl {args:?} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs kubectl expecting failure; returns stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(
            !out.status.success(),
            "kubectl {args:?} should fail: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// Stops the server with SIGKILL (by pid) and returns its data dir.
    pub fn kill(mut self) -> tempfile::TempDir {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap())
    }

    /// Stops the server with SIGTERM (by pid) and returns its exit status
    /// and data dir; fails the test if it takes over 20 s.
    pub fn terminate(mut self) -> (std::process::ExitStatus, tempfile::TempDir) {
        let pid = self.child.id().to_string();
        assert!(
            Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap()
                .success()
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "skiff server did not exit on SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
        (status, dir)
    }

    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Generous bound for anything the agent does (compiling a guest the first
/// time takes seconds on a busy machine).
pub const WAIT: Duration = Duration::from_secs(120);

/// A `skiff agent` process registered as node `n1`, stopped (by pid) on
/// drop.
pub struct Agent {
    child: Child,
    _dir: tempfile::TempDir,
}

impl Agent {
    pub fn start(server: &Server) -> Agent {
        Agent::start_named(server, "n1", &[])
    }

    /// Starts `skiff agent --name NAME` with extra arguments.
    pub fn start_named(server: &Server, name: &str, extra: &[&str]) -> Agent {
        Agent::launch(
            Command::new(env!("CARGO_BIN_EXE_skiff")),
            server,
            name,
            extra,
        )
    }

    /// Starts the agent inside network namespace `netns` (`ip netns exec`
    /// execs the agent, so the child's pid is the agent's).
    pub fn start_in_netns(server: &Server, netns: &str, name: &str, extra: &[&str]) -> Agent {
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", netns])
            .arg(env!("CARGO_BIN_EXE_skiff"));
        Agent::launch(command, server, name, extra)
    }

    fn launch(mut command: Command, server: &Server, name: &str, extra: &[&str]) -> Agent {
        let dir = tempfile::tempdir().unwrap();
        let data = server.data_dir();
        let mut child = command
            .args(["agent", "--name", name, "--dev-local-images"])
            .args(if extra.contains(&"--node-port-address") {
                &[][..]
            } else {
                &["--node-port-address", "127.0.0.1"][..]
            })
            .args(if extra.contains(&"--mesh-listen") {
                &[][..]
            } else {
                &["--mesh-listen", "127.0.0.1:0"][..]
            })
            .args(extra)
            .args(["--restart-backoff-ms", "200"])
            .arg("--server")
            .arg(format!("https://{}:{}", server.host, server.port))
            .arg("--token-file")
            .arg(data.join("node-token"))
            .arg("--ca-file")
            .arg(data.join("pki").join("ca.crt"))
            .arg("--data-dir")
            .arg(dir.path())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .spawn()
            .expect("skiff agent starts");
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in stdout.lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + WAIT;
        loop {
            let line = rx
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .expect("skiff agent printed its ready line");
            if line.contains(&format!("node agent {name} ready")) {
                break;
            }
        }
        Agent { child, _dir: dir }
    }

    /// SIGTERM, then waits (bounded) for a clean exit.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        assert!(
            Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap()
                .success()
        );
        let deadline = Instant::now() + Duration::from_secs(40);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "skiff agent ignored SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `check` every 200 ms until it returns `Some`, or panics after
/// `WAIT` naming `what` and the last thing seen.
pub fn eventually<T>(what: &str, mut check: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        match check() {
            Ok(value) => return value,
            Err(last) if Instant::now() > deadline => {
                panic!("timed out waiting for {what}; last seen: {last}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

pub fn get_json(server: &Server, args: &[&str]) -> Result<Value, String> {
    let mut all = vec!["get"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["-o", "json"]);
    let out = server.kubectl(&all);
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())
}

pub fn apply(server: &Server, manifest: &str) {
    let out = server.kubectl_stdin(&["apply", "-f", "-"], Some(manifest));
    assert!(
        out.status.success(),
        "kubectl apply failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A free loopback port (bound and released: good enough for a test).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `GET path` on 127.0.0.1:port; the whole response as text.
pub fn http_get(port: u16, path: &str) -> Result<String, String> {
    http_get_on("127.0.0.1", port, path)
}

/// `GET path` on `host:port` (a loopback address or a test host's: tests
/// dial nothing else); the whole response as text.
pub fn http_get_on(host: &str, port: u16, path: &str) -> Result<String, String> {
    http_get_as(host, port, "pod", path)
}

/// `GET path` on `host:port` (loopback or a test host) with
/// `Host: virtual_host`.
pub fn http_get_as(
    host: &str,
    port: u16,
    virtual_host: &str,
    path: &str,
) -> Result<String, String> {
    let addr: std::net::IpAddr = host.parse().map_err(|e| format!("{host}: {e}"))?;
    assert!(
        addr.is_loopback() || TEST_HOSTS.lock().unwrap().contains(&addr),
        "tests dial loopback and their own test hosts only, not {addr}"
    );
    let mut stream = TcpStream::connect_timeout(&(addr, port).into(), Duration::from_secs(5))
        .map_err(|e| format!("connect: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .map_err(|e| e.to_string())?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {virtual_host}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .map_err(|e| e.to_string())?;
    Ok(response)
}

/// The pods `kubectl get pods ARGS` lists that are Ready and not being
/// deleted.
pub fn ready_pods(server: &Server, args: &[&str]) -> Result<Vec<Value>, String> {
    let pods = get_json(server, &[&["pods"], args].concat())?;
    Ok(pods["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .filter(|p| condition(p, "Ready").is_some_and(|c| c["status"] == "True"))
        .cloned()
        .collect())
}

pub fn phase(pod: &Value) -> &str {
    pod["status"]["phase"].as_str().unwrap_or_default()
}

pub fn condition<'a>(obj: &'a Value, kind: &str) -> Option<&'a Value> {
    obj["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == kind)
}

/// Addresses of test hosts (network namespaces a test created): besides
/// loopback, the only addresses `http_get_as` dials.
static TEST_HOSTS: std::sync::Mutex<Vec<std::net::IpAddr>> = std::sync::Mutex::new(Vec::new());

/// Test hosts in network namespaces this test creates: one per node, each
/// with a veth pair whose host end is enslaved to a bridge on the host; the
/// bridge carries the host's address (`gateway`, for the API server). The
/// host reaches the namespaces only over that bridge. Everything is removed
/// on drop. Needs root and iproute2.
pub struct Hosts {
    /// Prefix of every name (interfaces, namespaces), unique per process.
    tag: String,
    /// The /24's first three octets.
    subnet: String,
    count: usize,
}

impl Hosts {
    pub fn create(count: usize) -> Hosts {
        let pid = std::process::id();
        let in_use = String::from_utf8(
            Command::new("ip")
                .args(["-o", "addr"])
                .output()
                .expect("iproute2's `ip` is installed (scripts/test installs it)")
                .stdout,
        )
        .unwrap();
        let subnet = (0..200)
            .map(|k| format!("10.233.{}", (pid as usize + k) % 200 + 20))
            .find(|net| !in_use.contains(&format!(" {net}.")))
            .expect("a free 10.233.x.0/24");
        let hosts = Hosts {
            tag: format!("sk{pid}"),
            subnet,
            count,
        };
        let bridge = hosts.bridge();
        ip(&["link", "add", &bridge, "type", "bridge"]);
        ip(&[
            "addr",
            "add",
            &format!("{}/24", hosts.gateway()),
            "dev",
            &bridge,
        ]);
        ip(&["link", "set", &bridge, "up"]);
        for i in 0..count {
            let ns = hosts.netns(i);
            let veth = hosts.veth(i);
            ip(&["netns", "add", &ns]);
            ip(&[
                "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ]);
            ip(&["link", "set", &veth, "master", &bridge, "up"]);
            let address = format!("{}/24", hosts.address(i));
            ip(&["-n", &ns, "addr", "add", &address, "dev", "eth0"]);
            ip(&["-n", &ns, "link", "set", "eth0", "up"]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
            TEST_HOSTS
                .lock()
                .unwrap()
                .push(hosts.address(i).parse().unwrap());
        }
        hosts
    }

    fn bridge(&self) -> String {
        format!("{}br", self.tag)
    }

    /// The host's end of node `i`'s link.
    fn veth(&self, i: usize) -> String {
        format!("{}v{i}", self.tag)
    }

    /// Node `i`'s network namespace.
    pub fn netns(&self, i: usize) -> String {
        format!("{}n{i}", self.tag)
    }

    /// The host's address on the bridge.
    pub fn gateway(&self) -> String {
        format!("{}.1", self.subnet)
    }

    /// Node `i`'s address, inside its namespace.
    pub fn address(&self, i: usize) -> String {
        format!("{}.{}", self.subnet, 11 + i)
    }

    /// Cuts (`up` false) or repairs node `i`'s only link.
    pub fn set_link(&self, i: usize, up: bool) {
        ip(&["link", "set", &self.veth(i), if up { "up" } else { "down" }]);
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        // Deleting a namespace deletes its veth end, and with it the pair.
        for i in 0..self.count {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.netns(i)])
                .status();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge()])
            .status();
    }
}

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("iproute2's `ip` runs");
    assert!(
        out.status.success(),
        "ip {}: {} (network namespaces need root)",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
}
