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

/// Waits until something accepts TCP connections on `127.0.0.1:port`.
pub fn wait_for_port(port: u16, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("nothing listens on 127.0.0.1:{port} after {timeout:?}")
}

/// A `skiff server` on a free loopback port over a fresh data directory.
pub struct SkiffServer {
    /// The process.
    pub process: Process,
    /// Its data directory.
    pub dir: tempfile::TempDir,
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
        process.wait_for_line("https://127.0.0.1:", Duration::from_secs(60))?;
        Ok(SkiffServer { process, dir })
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
