//! `skiff push` and `skiff kubeconfig`: conveniences kubectl lacks for wasm.

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
