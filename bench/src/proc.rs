//! Processes the benchmarks start (stopped by pid when dropped) and what
//! the machine is.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// A child process killed (by pid) when dropped, whose stdout lines can be
/// awaited.
pub struct Process {
    child: Child,
    lines: mpsc::Receiver<String>,
    name: String,
}

impl Process {
    /// Starts `command` with stdout piped.
    pub fn spawn(name: &str, mut command: Command) -> anyhow::Result<Process> {
        let mut child = command
            .stdout(Stdio::piped())
            .stdin(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        let stdout = BufReader::new(child.stdout.take().context("stdout is piped")?);
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in stdout.lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Process {
            child,
            lines,
            name: name.to_owned(),
        })
    }

    /// Waits for a stdout line containing `needle`, returning it.
    pub fn wait_for_line(&self, needle: &str, timeout: Duration) -> anyhow::Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return Ok(line),
                Ok(_) => {}
                Err(_) => bail!("{} did not print {needle:?} within {timeout:?}", self.name),
            }
        }
    }

    /// Waits until something accepts connections on 127.0.0.1:`port`;
    /// fails at once, with its exit status, if the process exits first
    /// (its stderr is the harness's).
    pub fn wait_for_port(&mut self, port: u16, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(());
            }
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "{} exited ({status}) before listening on 127.0.0.1:{port}",
                    self.name
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!(
            "{} does not listen on 127.0.0.1:{port} after {timeout:?}",
            self.name
        )
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident set size now, in bytes (from /proc).
    pub fn rss(&self) -> u64 {
        rss(self.pid())
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// VmRSS of `pid` in bytes, 0 if unknown.
pub fn rss(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// A free loopback TCP port (bound and released).
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A `skiff server` (or a whole `skiff up` cluster) on a free loopback
/// port over a fresh data directory.
pub struct SkiffServer {
    /// The process.
    pub process: Process,
    /// Its data directory.
    pub dir: tempfile::TempDir,
    /// The API server's URL (`https://127.0.0.1:PORT`).
    pub url: String,
}

impl SkiffServer {
    /// Starts `skiff server` and waits for its ready line.
    pub fn start(skiff: &Path, extra: &[&str]) -> anyhow::Result<SkiffServer> {
        let dir = tempfile::tempdir()?;
        let mut command = Command::new(skiff);
        command
            .args(["server", "--api-port", "0", "--data-dir"])
            .arg(dir.path())
            .args(extra)
            .env("RUST_LOG", "error");
        let process = Process::spawn("skiff server", command)?;
        let line = process.wait_for_line("https://127.0.0.1:", Duration::from_secs(60))?;
        Ok(SkiffServer {
            url: api_url(&line)?,
            process,
            dir,
        })
    }

    /// Starts `skiff up --nodes N` (control plane and N node agents in one
    /// process, NodePorts of the first node on 127.0.0.1) and waits until
    /// it reports the cluster ready.
    pub fn up(skiff: &Path, nodes: u16) -> anyhow::Result<SkiffServer> {
        let dir = tempfile::tempdir()?;
        let mut command = Command::new(skiff);
        command
            .args(["up", "--api-port", "0", "--bind", "127.0.0.1", "--nodes"])
            .arg(nodes.to_string())
            .arg("--data-dir")
            .arg(dir.path())
            .env("RUST_LOG", "error");
        let process = Process::spawn("skiff up", command)?;
        let line = process.wait_for_line("cluster ready", Duration::from_secs(120))?;
        Ok(SkiffServer {
            url: api_url(&line)?,
            process,
            dir,
        })
    }

    /// Starts a `skiff agent` process for this server, named `name`, over
    /// `data_dir` (kept by the caller, so a restarted agent finds its
    /// images and compiled components), with NodePorts on 127.0.0.1.
    pub fn agent(
        &self,
        skiff: &Path,
        name: &str,
        data_dir: &Path,
        extra: &[&str],
    ) -> anyhow::Result<Process> {
        let mut command = Command::new(skiff);
        command
            .args(["agent", "--server", &self.url, "--name", name])
            .arg("--token-file")
            .arg(self.dir.path().join("node-token"))
            .arg("--ca-file")
            .arg(self.dir.path().join("pki").join("ca.crt"))
            .arg("--data-dir")
            .arg(data_dir)
            .args([
                "--listen",
                "127.0.0.1:0",
                "--node-port-address",
                "127.0.0.1",
                "--mesh-listen",
                "127.0.0.1:0",
            ])
            .args(extra)
            .env("RUST_LOG", "error");
        let process = Process::spawn("skiff agent", command)?;
        process.wait_for_line("node agent", Duration::from_secs(60))?;
        Ok(process)
    }

    /// Pushes the component `file` to the built-in registry as `image`
    /// with `skiff push`.
    pub fn push(&self, skiff: &Path, file: &Path, image: &str) -> anyhow::Result<()> {
        let out = Command::new(skiff)
            .arg("push")
            .arg(file)
            .arg(image)
            .arg("--kubeconfig")
            .arg(self.kubeconfig())
            .env("RUST_LOG", "error")
            .stdin(Stdio::null())
            .output()
            .context("running skiff push")?;
        if !out.status.success() {
            bail!(
                "skiff push {} {image} failed: {}",
                file.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }

    /// The admin kubeconfig.
    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("kubeconfig")
    }

    /// An admin client.
    pub async fn client(&self) -> anyhow::Result<kube::Client> {
        use kube::config::{KubeConfigOptions, Kubeconfig};
        let kubeconfig = Kubeconfig::read_from(self.kubeconfig())?;
        let config =
            kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
        Ok(kube::Client::try_from(config)?)
    }
}

/// The `https://...` URL in a ready line, without trailing punctuation.
fn api_url(line: &str) -> anyhow::Result<String> {
    let start = line.find("https://").context("no URL in the ready line")?;
    let url: String = line[start..]
        .chars()
        .take_while(|c| !c.is_whitespace() && *c != ';' && *c != ',')
        .collect();
    Ok(url)
}

/// `2 cores, 23.4 GiB` and the CPU model.
pub fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0 / 1024.0);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_default();
    format!("{cores} cores ({model}), {mem:.1} GiB")
}

/// `MiB` with one decimal.
pub fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / 1024.0 / 1024.0)
}
