//! `skiff up`: a whole cluster in one process — the API server, the
//! scheduler and controllers, and N node agents, each a real API client
//! with its own identity — over one data directory, so that restarting it
//! brings the same cluster back with its workloads.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Node, Service};
use kube::Api;
use kube::api::{Patch, PatchParams};
use skiff_control::apiserver::{ApiServer, Config, ServerError};
use skiff_node::agent::{Agent, AgentConfig};
use skiff_node::overlay::proxy::LocalPods;

/// The demo workloads `--demo` applies (images from the built-in registry).
const DEMO: &str = include_str!("../examples/demo.yaml");

/// The components `--demo` pushes to the built-in registry, by file name.
const DEMO_IMAGES: &[(&str, &str)] = &[
    ("hello.wasm", "hello:v1"),
    ("echo.wasm", "echo:v1"),
    ("fanout.wasm", "fanout:v1"),
    ("pi.wasm", "pi:v1"),
];

#[derive(Args)]
pub struct UpArgs {
    /// Where the cluster lives (store, certificates, nodes' state).
    #[arg(long, default_value = "skiff-data")]
    data_dir: PathBuf,
    /// Port for the Kubernetes API (HTTPS); 0 picks a free one.
    #[arg(long, default_value_t = 6443)]
    api_port: u16,
    /// Address the API and the first node's NodePorts listen on.
    #[arg(long, default_value = "127.0.0.1")]
    bind: IpAddr,
    /// How many node agents to run.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=200))]
    nodes: u16,
    /// Apply the example workloads: hello behind a NodePort Service, a
    /// Job of pi.
    #[arg(long)]
    demo: bool,
    /// Where the built example components are (`cargo build -p skiff-guests`).
    #[arg(long, default_value = "target/guests/wasm32-wasip2/release")]
    demo_dir: PathBuf,
}

/// The node names of a `skiff up` cluster.
fn node_name(i: u16) -> String {
    format!("skiff-node-{}", i + 1)
}

/// Where node `i` opens NodePorts: the first node on the bind address;
/// with a loopback bind, the others on their own loopback address
/// (127.0.0.2, ...), so each node has its own, as separate machines would.
fn node_port_address(bind: IpAddr, i: u16) -> Option<IpAddr> {
    match (i, bind) {
        (0, _) => Some(bind),
        (i, IpAddr::V4(v4)) if v4.is_loopback() => {
            let [a, b, c, _] = v4.octets();
            let last = u8::try_from(u32::from(i) + 1).ok()?;
            Some(IpAddr::V4(Ipv4Addr::new(a, b, c, last)))
        }
        _ => None,
    }
}

pub async fn up(
    args: UpArgs,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<ExitCode> {
    std::fs::create_dir_all(&args.data_dir).with_context(|| {
        format!(
            "cannot create the data directory {}",
            args.data_dir.display()
        )
    })?;
    let listen = SocketAddr::new(args.bind, args.api_port);
    let server = match ApiServer::start(Config::new(&args.data_dir, listen)).await {
        Ok(server) => server,
        Err(ServerError::Bind { addr, source })
            if source.kind() == std::io::ErrorKind::AddrInUse =>
        {
            bail!(
                "port {} is already in use on {} (another skiff or Kubernetes?); choose another with --api-port",
                addr.port(),
                addr.ip()
            )
        }
        Err(err) => return Err(err.into()),
    };
    let kubeconfig = server.kubeconfig().to_owned();
    let client = skiff_control::client::from_kubeconfig(&kubeconfig).await?;
    let (stop_manager, manager_stopped) = tokio::sync::oneshot::channel::<()>();
    let manager = tokio::spawn(skiff_control::manager::run(
        client.clone(),
        skiff_control::manager::ManagerConfig {
            controllers: skiff_control::controllers::Options {
                // This process holds the CA key: it signs node certificates.
                signer: Some(std::sync::Arc::new(
                    skiff_control::controllers::csrsigning::Signer::load(
                        &args.data_dir.join("pki"),
                    )
                    .context("loading the cluster CA to sign certificate requests")?,
                )),
                ..Default::default()
            },
            ..Default::default()
        },
        async {
            let _ = manager_stopped.await;
        },
    ));

    let url = format!("https://{}", display(server.addr()));
    let token = std::fs::read_to_string(args.data_dir.join("node-token"))
        .context("reading the node token the server wrote")?;
    let runtime = skiff_runtime::Runtime::new(skiff_runtime::RuntimeConfig {
        cache_dir: Some(args.data_dir.join("components")),
        ..Default::default()
    })
    .context("starting the wasm runtime")?;
    let local_pods = LocalPods::default();
    let mut agents = Vec::new();
    for i in 0..args.nodes {
        let name = node_name(i);
        let mut config =
            AgentConfig::new(&url, &token, &name, args.data_dir.join("nodes").join(&name));
        config.ca_file = Some(args.data_dir.join("pki").join("ca.crt"));
        config.node_port_address = node_port_address(args.bind, i);
        if let Some(ip) = config.node_port_address.filter(|ip| ip.is_loopback()) {
            config.node_ip = ip;
        }
        config.mesh_listen = Some(std::net::SocketAddr::new(config.node_ip, 0));
        config.listen = std::net::SocketAddr::new(config.node_ip, 0);
        config.local_pods = local_pods.clone();
        let agent_client = config.client().await?;
        let agent = Agent::start_with_runtime(config, agent_client, runtime.clone())
            .await
            .with_context(|| format!("starting node {name}"))?;
        agents.push(agent);
    }
    wait_for_nodes(&client, args.nodes).await?;

    if args.demo {
        demo(&client, &args, &url).await?;
    }
    println!(
        "skiff: cluster ready: {} node(s), API at {url}; use it with: export KUBECONFIG={}",
        args.nodes,
        kubeconfig.display()
    );
    if args.demo {
        let svc: Service = Api::namespaced(client.clone(), "default")
            .get("hello")
            .await?;
        let port = svc
            .spec
            .and_then(|s| s.ports?.first()?.node_port)
            .context("the demo Service has no NodePort")?;
        let host = match args.bind {
            IpAddr::V4(v4) if v4.is_unspecified() => "127.0.0.1".to_owned(),
            ip => display_ip(ip),
        };
        println!("skiff: demo ready: curl http://{host}:{port}/");
    }

    shutdown.await;
    eprintln!(
        "skiff: stopping (pods stop gracefully; the cluster's state stays in {})",
        args.data_dir.display()
    );
    for agent in agents {
        agent.shutdown().await;
    }
    let _ = stop_manager.send(());
    let _ = manager.await;
    server.shutdown(Duration::from_secs(10)).await;
    Ok(ExitCode::SUCCESS)
}

async fn wait_for_nodes(client: &kube::Client, count: u16) -> anyhow::Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let ready = nodes
            .list(&Default::default())
            .await?
            .items
            .iter()
            .filter(|n| {
                n.metadata
                    .name
                    .as_deref()
                    .is_some_and(|name| (0..count).any(|i| node_name(i) == name))
            })
            .filter(|n| {
                n.status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
            })
            .count();
        if ready == usize::from(count) {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            bail!("only {ready} of {count} nodes became Ready within a minute");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Pushes the example components to the built-in registry and creates the
/// demo workloads if they are missing, then waits for hello to be
/// available.
async fn demo(client: &kube::Client, args: &UpArgs, url: &str) -> anyhow::Result<()> {
    let registry = skiff_node::images::BuiltinRegistry {
        url: url.to_owned(),
        ca_pem: std::fs::read(args.data_dir.join("pki").join("ca.crt"))?,
        token: std::fs::read_to_string(args.data_dir.join("admin-token"))?
            .trim()
            .to_owned(),
    };
    for (file, image) in DEMO_IMAGES {
        let path = args.demo_dir.join(file);
        let bytes = read_component(&path)?;
        skiff_node::images::push(&registry, image, &bytes)
            .await
            .map_err(anyhow::Error::msg)
            .with_context(|| format!("pushing {} as {image}", path.display()))?;
    }
    // Applied once: on a restart the user's changes (scale, new images)
    // stay as they are.
    let params = PatchParams::apply("skiff-up");
    for doc in serde_yaml_ng::Deserializer::from_str(DEMO) {
        let value: serde_json::Value = serde::Deserialize::deserialize(doc)?;
        let name = value["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        match value["kind"].as_str() {
            Some("Deployment") => create_once::<Deployment>(client, &name, &value, &params).await?,
            Some("Service") => create_once::<Service>(client, &name, &value, &params).await?,
            Some("Job") => create_once::<Job>(client, &name, &value, &params).await?,
            other => bail!("examples/demo.yaml: unexpected kind {other:?}"),
        }
    }
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let d = deployments.get("hello").await?;
        let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        let available = d
            .status
            .as_ref()
            .and_then(|s| s.available_replicas)
            .unwrap_or(0);
        if available >= want {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            bail!(
                "the demo Deployment hello has {available} of {want} pods available after two minutes; see `kubectl describe deployment hello`"
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Applies `value` as `default/name` unless that object exists already.
async fn create_once<K>(
    client: &kube::Client,
    name: &str,
    value: &serde_json::Value,
    params: &PatchParams,
) -> anyhow::Result<()>
where
    K: kube::Resource<Scope = kube::core::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), "default");
    if api.get_opt(name).await?.is_none() {
        api.patch(name, params, &Patch::Apply(value)).await?;
    }
    Ok(())
}

fn read_component(path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| {
        format!(
            "cannot read {}: build the examples first (rustup target add wasm32-wasip2 && cargo build -p skiff-guests), or point --demo-dir at them",
            path.display()
        )
    })
}

fn display(addr: SocketAddr) -> String {
    if addr.ip().is_unspecified() {
        format!("127.0.0.1:{}", addr.port())
    } else {
        format!("{}:{}", display_ip(addr.ip()), addr.port())
    }
}

fn display_ip(ip: IpAddr) -> String {
    match ip {
        IpAddr::V6(v6) => format!("[{v6}]"),
        IpAddr::V4(v4) => v4.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_node_gets_its_own_loopback_address() {
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        assert_eq!(node_port_address(lo, 0), Some(lo));
        assert_eq!(node_port_address(lo, 2), "127.0.0.3".parse().ok());
        let any: IpAddr = "0.0.0.0".parse().unwrap();
        assert_eq!(node_port_address(any, 0), Some(any));
        assert_eq!(node_port_address(any, 1), None);
    }
}
