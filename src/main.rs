//! The `skiff` binary: one command for every part of Skiff: components
//! run directly on the runtime (`skiff component`), the control plane
//! (`skiff server`, `skiff controllers`), the node agent (`skiff agent`)
//! and a whole cluster in one process (`skiff up`).
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod push;
mod up;
use clap::{Args, Parser, Subcommand};
use skiff_runtime::{
    AllowList, ComponentKind, Limits, Log, Origin, Runtime, RuntimeConfig, Sandbox, Stream,
};

#[derive(Parser)]
#[command(
    name = "skiff",
    version,
    about = "Kubernetes for WebAssembly components"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one component directly on the runtime, without a cluster.
    #[command(subcommand)]
    Component(ComponentCommand),
    /// Run the control plane: the API server, and the scheduler and
    /// controllers (with leader election).
    Server(ServerArgs),
    /// Run only the scheduler and controllers against an API server; any
    /// number may run, one leads (a standby takes over when it dies).
    Controllers(ControllersArgs),
    /// Run a node agent: register a Node and run the pods bound to it.
    Agent(AgentArgs),
    /// Run a whole cluster in one process: control plane and N nodes.
    Up(up::UpArgs),
    /// Push a component to the cluster's built-in registry.
    Push(push::PushArgs),
    /// Print the admin kubeconfig of a cluster.
    Kubeconfig(push::KubeconfigArgs),
    /// Run a component as a Deployment (and Service), waiting until ready.
    Run(push::RunArgs),
}

#[derive(Args)]
struct AgentArgs {
    /// The API server's URL.
    #[arg(long)]
    server: String,
    /// File holding the node token (the API server's `node-token`).
    #[arg(long)]
    token_file: PathBuf,
    /// The cluster CA certificate (PEM) to check the API server against.
    #[arg(long)]
    ca_file: Option<PathBuf>,
    /// The Node's name.
    #[arg(long)]
    name: String,
    /// Where images, compiled components, volumes and the agent's
    /// certificate live.
    #[arg(long, default_value = "skiff-agent")]
    data_dir: PathBuf,
    /// Accept `file://` and absolute-path images (development only).
    #[arg(long)]
    dev_local_images: bool,
    /// Allow pods to mount hostPath volumes.
    #[arg(long)]
    allow_host_path: bool,
    /// Pods this node accepts.
    #[arg(long, default_value_t = 110)]
    max_pods: u32,
    /// CPU this node offers, in millicores.
    #[arg(long, default_value_t = 4000)]
    cpu: u64,
    /// Memory this node offers, in bytes.
    #[arg(long, default_value_t = 8 << 30)]
    memory: u64,
    /// Address of the HTTPS endpoint (logs, metrics) the API server
    /// reaches; default: the node IP, a free port.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Address NodePort Services listen on (`none` to open none).
    #[arg(long, default_value = "0.0.0.0")]
    node_port_address: String,
    /// Value of the node.kubernetes.io/instance-type label.
    #[arg(long)]
    instance_type: Option<String>,
    /// The node's address: its InternalIP, its pods' hostIP, and the
    /// address its mesh endpoint is advertised at.
    #[arg(long, default_value = "127.0.0.1")]
    node_ip: std::net::IpAddr,
    /// UDP address of the QUIC mesh endpoint other nodes reach this node's
    /// pods through (`none` to run no mesh). Port 0 picks a free one,
    /// which peers learn from the Node object; set a fixed port where a
    /// firewall must let it through.
    #[arg(long, default_value = "0.0.0.0:0")]
    mesh_listen: String,
    /// Pod addresses to use until the control plane assigns this node a
    /// podCIDR (normally not needed).
    #[arg(long)]
    pod_cidr: Option<String>,
    /// Serve Ingresses over plain HTTP on this address (e.g. 0.0.0.0:80).
    #[arg(long)]
    ingress_http: Option<SocketAddr>,
    /// Serve Ingresses over TLS on this address (e.g. 0.0.0.0:443), with
    /// certificates from the Ingresses' TLS Secrets.
    #[arg(long)]
    ingress_https: Option<SocketAddr>,
    /// First restart backoff in milliseconds (doubles up to 30x, max 5 min).
    #[arg(long, default_value_t = 10_000, hide = true)]
    restart_backoff_ms: u64,
}

#[derive(Args)]
struct ServerArgs {
    /// Where the store, certificates, tokens and kubeconfig live.
    #[arg(long, default_value = "skiff-data")]
    data_dir: PathBuf,
    /// Port for the Kubernetes API (HTTPS); 0 picks a free one.
    #[arg(long, default_value_t = 6443)]
    api_port: u16,
    /// Address to bind the API to.
    #[arg(long, default_value = "127.0.0.1")]
    bind: std::net::IpAddr,
    /// Seconds between compactions of the store's history.
    #[arg(long, default_value_t = 300, hide = true)]
    compaction_interval_secs: u64,
    /// Run only the API server (scheduler and controllers run elsewhere,
    /// with `skiff controllers`).
    #[arg(long)]
    disable_controllers: bool,
    #[command(flatten)]
    control: ControlArgs,
}

#[derive(Args)]
struct ControllersArgs {
    /// Kubeconfig of the cluster to control.
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: PathBuf,
    #[command(flatten)]
    control: ControlArgs,
}

#[derive(Args, Clone)]
struct ControlArgs {
    /// Seconds a node may go without renewing its Lease before it is
    /// marked NotReady.
    #[arg(long, default_value_t = 40)]
    node_monitor_grace_secs: u64,
    /// Seconds pods stay on an unreachable node before they are evicted
    /// (unless they tolerate it for longer).
    #[arg(long, default_value_t = 30)]
    pod_eviction_timeout_secs: u64,
    /// Seconds a silent leader keeps its Lease (the standby waits this long).
    #[arg(long, default_value_t = 15)]
    leader_lease_secs: u64,
    /// The range pod addresses come from (virtual: never on the host's
    /// network).
    #[arg(long, default_value = "10.42.0.0/16", value_parser = parse_cidr)]
    cluster_cidr: skiff_control::controllers::nodeipam::Cidr,
    /// The prefix length of each node's slice of the cluster CIDR (a /24
    /// holds 253 pods; dense nodes need a shorter one, e.g. 18).
    #[arg(long, default_value_t = 24, value_parser = clap::value_parser!(u8).range(8..=29))]
    node_cidr_mask_size: u8,
}

fn parse_cidr(s: &str) -> Result<skiff_control::controllers::nodeipam::Cidr, String> {
    s.parse()
}

impl ControlArgs {
    fn config(&self) -> skiff_control::manager::ManagerConfig {
        use skiff_control::manager::{ElectionTimings, ManagerConfig};
        let lease = Duration::from_secs(self.leader_lease_secs.max(2));
        ManagerConfig {
            controllers: skiff_control::controllers::Options {
                node_monitor_grace: Duration::from_secs(self.node_monitor_grace_secs.max(1)),
                pod_eviction_timeout: Duration::from_secs(self.pod_eviction_timeout_secs),
                cluster_cidr: self.cluster_cidr,
                node_cidr_mask: self.node_cidr_mask_size,
                ..Default::default()
            },
            election: Some(ElectionTimings {
                lease_duration: lease,
                renew_deadline: lease * 2 / 3,
                retry_period: (lease / 7).max(Duration::from_millis(200)),
            }),
            ..Default::default()
        }
    }
}

#[derive(Subcommand)]
enum ComponentCommand {
    /// Serve HTTP with a component exporting wasi:http/incoming-handler.
    Serve {
        #[command(flatten)]
        common: Common,
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
    },
    /// Run a component exporting wasi:cli/run to exit; exits with its code.
    Run {
        #[command(flatten)]
        common: Common,
        /// Arguments for the guest (after `--`).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Compile a component into the cache and report what it is.
    Compile {
        #[command(flatten)]
        common: Common,
    },
}

#[derive(Args)]
struct Common {
    /// The component file (.wasm).
    file: PathBuf,
    /// Directory for compiled components, reused across runs.
    #[arg(long, env = "SKIFF_CACHE_DIR")]
    cache_dir: Option<PathBuf>,
    /// Environment variable for the guest, KEY=VALUE (repeatable).
    #[arg(long = "env", short = 'e', value_parser = parse_env)]
    env: Vec<(String, String)>,
    /// Host directory for the guest, HOST:GUEST[:ro] (repeatable).
    #[arg(long = "dir", value_parser = parse_dir)]
    dirs: Vec<(PathBuf, String, bool)>,
    /// Memory cap per instance, in MiB.
    #[arg(long)]
    memory_mib: Option<u64>,
    /// Wall-clock deadline per request or run, in milliseconds.
    #[arg(long)]
    timeout_ms: Option<u64>,
    /// CPU budget per request or run, in milliseconds.
    #[arg(long)]
    cpu_ms: Option<u64>,
    /// Host the guest may send HTTP requests to, `host` or `host:port`
    /// (repeatable; `*` for any). Without it all outbound HTTP is denied.
    #[arg(long = "allow-outbound")]
    allow_outbound: Vec<String>,
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("`{s}` is not KEY=VALUE"))
}

fn parse_dir(s: &str) -> Result<(PathBuf, String, bool), String> {
    let (spec, read_only) = match s.strip_suffix(":ro") {
        Some(spec) => (spec, true),
        None => (s, false),
    };
    let (host, guest) = spec
        .split_once(':')
        .ok_or_else(|| format!("`{s}` is not HOST:GUEST[:ro]"))?;
    Ok((PathBuf::from(host), guest.to_string(), read_only))
}

impl Common {
    fn runtime(&self) -> anyhow::Result<Runtime> {
        Ok(Runtime::new(RuntimeConfig {
            cache_dir: self.cache_dir.clone(),
            ..RuntimeConfig::default()
        })?)
    }

    fn sandbox(&self, log: Log) -> Sandbox {
        let mut sandbox = Sandbox::default()
            .log(log)
            .limits(Limits {
                memory: self.memory_mib.map(|m| m << 20),
                cpu: self.cpu_ms.map(Duration::from_millis),
                deadline: self.timeout_ms.map(Duration::from_millis),
            })
            .outbound(AllowList::new(self.allow_outbound.clone()));
        sandbox.env = self.env.clone();
        for (host, guest, read_only) in &self.dirs {
            sandbox = sandbox.dir(host, guest, *read_only);
        }
        sandbox
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("skiff: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("skiff: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Component(command) => component(command).await,
        Command::Server(args) => server(args).await,
        Command::Controllers(args) => controllers(args).await,
        Command::Agent(args) => agent(args).await,
        Command::Up(args) => up::up(args, shutdown_signal()).await,
        Command::Push(args) => push::push(args).await,
        Command::Kubeconfig(args) => push::kubeconfig(args),
        Command::Run(args) => push::run(args).await,
    }
}

/// A flag's value that may be `none`: `None` then, else the parsed value.
fn none_or<T>(value: &str, flag: &str, what: &str) -> anyhow::Result<Option<T>>
where
    T: std::str::FromStr,
    T::Err: std::error::Error + Send + Sync + 'static,
{
    if value == "none" {
        return Ok(None);
    }
    value
        .parse()
        .map(Some)
        .with_context(|| format!("{flag} {value:?} is neither {what} nor `none`"))
}

async fn agent(args: AgentArgs) -> anyhow::Result<ExitCode> {
    use skiff_node::agent::{Agent, AgentConfig};
    let token = std::fs::read_to_string(&args.token_file)
        .with_context(|| format!("cannot read the node token {}", args.token_file.display()))?;
    let mut config = AgentConfig::new(&args.server, &token, &args.name, &args.data_dir);
    config.ca_file = args.ca_file;
    config.dev_local_images = args.dev_local_images;
    config.allow_host_path = args.allow_host_path;
    config.max_pods = args.max_pods;
    config.cpu_millis = args.cpu;
    config.memory_bytes = args.memory;
    config.listen = args
        .listen
        .unwrap_or_else(|| SocketAddr::new(args.node_ip, 0));
    let listen_ip = config.listen.ip();
    config.instance_type = args.instance_type;
    config.node_port_address = none_or(
        &args.node_port_address,
        "--node-port-address",
        "an IP address",
    )?;
    config.node_ip = args.node_ip;
    config.pod_cidr = args.pod_cidr;
    config.ingress_http = args.ingress_http;
    config.ingress_https = args.ingress_https;
    config.mesh_listen = none_or(&args.mesh_listen, "--mesh-listen", "an ip:port address")?;
    config.restart_backoff = Duration::from_millis(args.restart_backoff_ms.max(1));
    config.max_restart_backoff = (config.restart_backoff * 30).min(Duration::from_secs(300));
    let agent = Agent::start(config).await?;
    println!(
        "skiff: node agent {} ready; logs on https://{listen_ip}:{}",
        agent.name(),
        agent.port()
    );
    shutdown_signal().await;
    agent.shutdown().await;
    Ok(ExitCode::SUCCESS)
}

async fn server(args: ServerArgs) -> anyhow::Result<ExitCode> {
    use skiff_control::apiserver::{ApiServer, Config};
    std::fs::create_dir_all(&args.data_dir).with_context(|| {
        format!(
            "cannot create the data directory {}",
            args.data_dir.display()
        )
    })?;
    let mut config = Config::new(&args.data_dir, SocketAddr::new(args.bind, args.api_port));
    config.compaction_interval = Duration::from_secs(args.compaction_interval_secs.max(1));
    let server = ApiServer::start(config).await?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let manager = if args.disable_controllers {
        None
    } else {
        let client = skiff_control::client::from_kubeconfig(server.kubeconfig()).await?;
        let mut config = args.control.config();
        // This process holds the CA key: it signs CertificateSigningRequests.
        config.controllers.signer = Some(std::sync::Arc::new(
            skiff_control::controllers::csrsigning::Signer::load(&args.data_dir.join("pki"))
                .context("loading the cluster CA to sign certificate requests")?,
        ));
        Some(tokio::spawn(skiff_control::manager::run(
            client,
            config,
            async {
                let _ = stopped.await;
            },
        )))
    };
    println!(
        "skiff: API server ready at https://{}; use it with: export KUBECONFIG={}",
        server.addr(),
        server.kubeconfig().display()
    );
    shutdown_signal().await;
    // Controllers first, so they hand their Leases over while the API is up.
    let _ = stop.send(());
    if let Some(manager) = manager {
        let _ = manager.await;
    }
    server.shutdown(Duration::from_secs(10)).await;
    Ok(ExitCode::SUCCESS)
}

async fn controllers(args: ControllersArgs) -> anyhow::Result<ExitCode> {
    let client = skiff_control::client::from_kubeconfig(&args.kubeconfig).await?;
    client.apiserver_version().await.with_context(|| {
        format!(
            "cannot reach the API server of {}",
            args.kubeconfig.display()
        )
    })?;
    println!("skiff: scheduler and controllers running (leader election on)");
    skiff_control::manager::run(client, args.control.config(), shutdown_signal()).await;
    Ok(ExitCode::SUCCESS)
}

fn describe(origin: &Origin) -> String {
    match origin {
        Origin::Memory => "already loaded".into(),
        Origin::Disk => "loaded from cache".into(),
        Origin::Compiled => "compiled".into(),
        Origin::Recompiled { reason } => format!("recompiled (cache entry was corrupt: {reason})"),
    }
}

async fn component(command: ComponentCommand) -> anyhow::Result<ExitCode> {
    let common = match &command {
        ComponentCommand::Serve { common, .. }
        | ComponentCommand::Run { common, .. }
        | ComponentCommand::Compile { common } => common,
    };
    let runtime = common.runtime()?;
    let file = common.file.clone();
    let (component, origin) = {
        let runtime = runtime.clone();
        tokio::task::spawn_blocking(move || runtime.load_file(file)).await??
    };
    eprintln!(
        "skiff: {} is a {} component, {}",
        component.name(),
        component.kind(),
        describe(&origin)
    );
    match command {
        ComponentCommand::Compile { .. } => Ok(ExitCode::SUCCESS),
        ComponentCommand::Run { common, args } => {
            let log = Log::default();
            let name = common.file.display().to_string();
            let sandbox = common
                .sandbox(log.clone())
                .args(std::iter::once(name).chain(args));
            let printer = LogPrinter::start(log.clone());
            let result = component.run(&sandbox).await;
            printer.finish().await;
            match result {
                Ok(status) => Ok(ExitCode::from(u8::try_from(status.code).unwrap_or(1))),
                Err(err) => anyhow::bail!("{} {err}", component.name()),
            }
        }
        ComponentCommand::Serve { common, listen } => {
            anyhow::ensure!(
                component.kind() == ComponentKind::Http,
                "{} is a {} component; `serve` needs one exporting wasi:http/incoming-handler",
                component.name(),
                component.kind()
            );
            let log = Log::default();
            let sandbox = common.sandbox(log.clone());
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .with_context(|| format!("cannot listen on {listen}"))?;
            eprintln!(
                "skiff: serving {} on http://{}",
                component.name(),
                listener.local_addr()?
            );
            let printer = LogPrinter::start(log);
            skiff_runtime::serve_listener(listener, component, sandbox, shutdown_signal()).await?;
            printer.finish().await;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Copies a guest's log to this process's stdout and stderr as it grows.
struct LogPrinter {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl LogPrinter {
    fn start(log: Log) -> LogPrinter {
        let (stop, mut stopped) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            let mut changes = log.subscribe();
            let mut next = 0;
            loop {
                let last = tokio::select! {
                    changed = changes.changed() => changed.is_err(),
                    _ = &mut stopped => true,
                };
                for line in log.since(next) {
                    next = line.seq + 1;
                    match line.stream {
                        Stream::Stdout => println!("{}", line.text),
                        Stream::Stderr => eprintln!("{}", line.text),
                    }
                }
                if last {
                    break;
                }
            }
        });
        LogPrinter { stop, task }
    }

    /// Prints what is left and stops.
    async fn finish(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    eprintln!("skiff: shutting down");
}
