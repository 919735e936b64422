//! `skiff push`, `skiff run` and `skiff kubeconfig`: conveniences kubectl lacks for wasm.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use base64::Engine as _;
use clap::Args;

#[derive(Args)]
pub struct PushArgs {
    /// The component (`.wasm`) to push.
    file: PathBuf,
    /// Its name in the cluster's built-in registry (`NAME:TAG`); pods use
    /// it as their `image`.
    name: String,
    /// Kubeconfig of the cluster (its current context).
    #[arg(long, env = "KUBECONFIG", default_value = "skiff-data/kubeconfig")]
    kubeconfig: PathBuf,
}

/// Pushes a component to the built-in registry of the cluster the
/// kubeconfig's current context names, with that context's credentials.
pub async fn push(args: PushArgs) -> anyhow::Result<ExitCode> {
    let bytes = std::fs::read(&args.file)
        .with_context(|| format!("cannot read {}", args.file.display()))?;
    let registry = registry_of(&args.kubeconfig)?;
    reachable(&registry.url).await?;
    let digest = skiff_node::images::push(&registry, &args.name, &bytes)
        .await
        .map_err(anyhow::Error::msg)?;
    println!(
        "pushed {} as {} ({digest}); use `image: {}` in a pod",
        args.file.display(),
        args.name,
        args.name
    );
    Ok(ExitCode::SUCCESS)
}

/// The built-in registry of a kubeconfig's current context: the API
/// server's URL, the CA it names and the user's token.
fn registry_of(path: &Path) -> anyhow::Result<skiff_node::images::BuiltinRegistry> {
    let text = std::fs::read_to_string(path).with_context(|| {
        format!(
            "cannot read the kubeconfig {} (is the cluster up? `skiff up` writes DATA_DIR/kubeconfig)",
            path.display()
        )
    })?;
    let config: serde_json::Value = serde_yaml_ng::from_str(&text)
        .with_context(|| format!("{} is not a kubeconfig", path.display()))?;
    let named = |list: &str, name: &str, field: &str| -> Option<serde_json::Value> {
        config[list]
            .as_array()?
            .iter()
            .find(|e| e["name"] == name)
            .map(|e| e[field].clone())
    };
    let current = config["current-context"]
        .as_str()
        .context("the kubeconfig has no current context")?;
    let context = named("contexts", current, "context")
        .with_context(|| format!("the kubeconfig has no context {current:?}"))?;
    let cluster_name = context["cluster"].as_str().unwrap_or_default();
    let cluster = named("clusters", cluster_name, "cluster")
        .with_context(|| format!("the kubeconfig has no cluster {cluster_name:?}"))?;
    let user_name = context["user"].as_str().unwrap_or_default();
    let token = named("users", user_name, "user")
        .and_then(|u| u["token"].as_str().map(str::to_owned))
        .with_context(|| format!("the kubeconfig's user {user_name:?} has no token"))?;
    let server = cluster["server"]
        .as_str()
        .context("the kubeconfig's cluster has no server")?
        .to_owned();
    let ca_pem = match (
        cluster["certificate-authority-data"].as_str(),
        cluster["certificate-authority"].as_str(),
    ) {
        (Some(data), _) => base64::engine::general_purpose::STANDARD
            .decode(data.trim())
            .context("the kubeconfig's certificate-authority-data is not base64")?,
        (None, Some(file)) => {
            std::fs::read(file).with_context(|| format!("cannot read the CA {file}"))?
        }
        (None, None) => bail!("the kubeconfig names no certificate authority for {server}"),
    };
    Ok(skiff_node::images::BuiltinRegistry {
        url: server,
        ca_pem,
        token,
    })
}

#[derive(Args)]
pub struct KubeconfigArgs {
    /// The cluster's data directory.
    #[arg(long, default_value = "skiff-data")]
    data_dir: PathBuf,
}

/// Prints the admin kubeconfig of the cluster in `data_dir`.
pub fn kubeconfig(args: KubeconfigArgs) -> anyhow::Result<ExitCode> {
    let path = args.data_dir.join("kubeconfig");
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "no cluster in {}: start one with `skiff up --data-dir {}`",
            args.data_dir.display(),
            args.data_dir.display()
        )
    })?;
    print!("{text}");
    Ok(ExitCode::SUCCESS)
}

/// Fails with one clear sentence when nothing answers at `url` (a
/// kubeconfig pointing at a stopped cluster).
async fn reachable(url: &str) -> anyhow::Result<()> {
    let authority = url
        .strip_prefix("https://")
        .unwrap_or(url)
        .split('/')
        .next()
        .unwrap_or_default();
    let connect = tokio::net::TcpStream::connect(authority);
    match tokio::time::timeout(std::time::Duration::from_secs(5), connect).await {
        Ok(Ok(_)) => Ok(()),
        _ => bail!("no cluster answers at {url}: is it running (`skiff up`)?"),
    }
}

#[derive(Args)]
pub struct RunArgs {
    /// Name of the Deployment (and Service).
    name: String,
    /// The image to run (`hello:v1` from the built-in registry, or a
    /// registry reference).
    #[arg(long, conflicts_with = "file", required_unless_present = "file")]
    image: Option<String>,
    /// A component file: pushed to the built-in registry first.
    #[arg(long)]
    file: Option<PathBuf>,
    /// The port the component serves HTTP on.
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// How many pods.
    #[arg(long, default_value_t = 1)]
    replicas: i32,
    /// Also create a NodePort Service in front of the pods.
    #[arg(long)]
    expose: bool,
    /// Kubeconfig of the cluster (its current context).
    #[arg(long, env = "KUBECONFIG", default_value = "skiff-data/kubeconfig")]
    kubeconfig: PathBuf,
}

/// Waiting reasons of a container whose image cannot be pulled.
const PULL_FAILURES: &[&str] = &[
    "ErrImagePull",
    "ImagePullBackOff",
    "ErrImageNeverPull",
    "InvalidImageName",
];

/// `skiff run`: a Deployment (and optionally a NodePort Service) of one
/// component, showing progress until its pods are ready.
pub async fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::core::v1::{Pod, Service};
    use kube::Api;
    use kube::api::{ListParams, Patch, PatchParams};

    let registry = registry_of(&args.kubeconfig)?;
    reachable(&registry.url).await?;
    let image = match (&args.image, &args.file) {
        (Some(image), _) => image.clone(),
        (None, Some(file)) => {
            use sha2::Digest;
            let bytes =
                std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
            let tag = hex::encode(&sha2::Sha256::digest(&bytes)[..6]);
            let image = format!("{}:{tag}", args.name);
            skiff_node::images::push(&registry, &image, &bytes)
                .await
                .map_err(anyhow::Error::msg)?;
            println!("pushed {} as {image}", file.display());
            image
        }
        (None, None) => bail!("give --image or --file"),
    };
    let client = skiff_control::client::from_kubeconfig(&args.kubeconfig).await?;
    let namespace = client.default_namespace().to_owned();
    let name = &args.name;
    let params = PatchParams::apply("skiff-run").force();
    let deployment = serde_json::json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "replicas": args.replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{
                    "name": name, "image": image,
                    "ports": [{"containerPort": args.port, "name": "http"}],
                    "env": [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
                    "readinessProbe": {"httpGet": {"path": "/", "port": args.port}, "periodSeconds": 2}
                }]}
            }
        }
    });
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &namespace);
    deployments
        .patch(name, &params, &Patch::Apply(&deployment))
        .await
        .with_context(|| format!("creating deployment {name}"))?;
    println!(
        "deployment {namespace}/{name} ({image}, {} replica(s))",
        args.replicas
    );
    let services: Api<Service> = Api::namespaced(client.clone(), &namespace);
    if args.expose {
        let service = serde_json::json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name},
            "spec": {"type": "NodePort", "selector": {"app": name},
                     "ports": [{"port": 80, "targetPort": args.port}]}
        });
        services
            .patch(name, &params, &Patch::Apply(&service))
            .await
            .with_context(|| format!("creating service {name}"))?;
    }

    // Progress until every replica is ready, naming what pods wait for.
    let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(180);
    let mut last = String::new();
    loop {
        let d = deployments.get(name).await?;
        let status = d.status.unwrap_or_default();
        let generation = d.metadata.generation.unwrap_or(0);
        let ready = status.ready_replicas.unwrap_or(0);
        let updated = status.updated_replicas.unwrap_or(0);
        let done = status.observed_generation.unwrap_or(0) >= generation
            && updated == args.replicas
            && ready == args.replicas
            && status.replicas.unwrap_or(0) == args.replicas;
        let mut waiting: Vec<String> = pods
            .list(&ListParams::default().labels(&format!("app={name}")))
            .await?
            .items
            .iter()
            .flat_map(|p| {
                p.status
                    .iter()
                    .flat_map(|s| s.container_statuses.iter().flatten())
            })
            .filter_map(|c| c.state.as_ref()?.waiting.clone())
            .map(|w| {
                let reason = w.reason.unwrap_or_default();
                // An image that cannot be pulled will not fix itself: say
                // so now rather than after three minutes.
                if PULL_FAILURES.contains(&reason.as_str()) {
                    bail!(
                        "{name} cannot start: {} ({reason}; the Deployment stays, fix it with `kubectl set image` or delete it)",
                        w.message.as_deref().unwrap_or("the image cannot be pulled")
                    );
                }
                Ok(match w.message {
                    Some(m) => format!("{reason}: {m}"),
                    None => reason,
                })
            })
            .collect::<anyhow::Result<_>>()?;
        waiting.sort();
        waiting.dedup();
        let line = format!(
            "{ready}/{} ready{}",
            args.replicas,
            if waiting.is_empty() {
                String::new()
            } else {
                format!(" (waiting: {})", waiting.join("; "))
            }
        );
        if line != last {
            println!("  {line}");
            last = line;
        }
        if done {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            bail!("{name} is not ready after three minutes: {last}");
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    if args.expose {
        let svc = services.get(name).await?;
        let port = svc
            .spec
            .and_then(|s| s.ports?.first()?.node_port)
            .context("the Service got no NodePort")?;
        let host = registry
            .url
            .trim_start_matches("https://")
            .rsplit_once(':')
            .map_or("127.0.0.1".to_owned(), |(h, _)| h.to_owned());
        println!("{name} ready: curl http://{host}:{port}/");
    } else {
        println!("{name} ready");
    }
    Ok(ExitCode::SUCCESS)
}
