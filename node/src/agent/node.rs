//! The Node object and the heartbeat: registration, Lease renewal, and the
//! Ready condition.

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use tokio::sync::watch;

use super::Shared;

/// How long the Lease says the holder stays valid without renewal.
const LEASE_DURATION_SECONDS: i32 = 40;

/// How often the Lease is renewed: a quarter of its duration, as a kubelet
/// does, so three renewals can be lost before the node counts as gone.
const LEASE_RENEW: Duration = Duration::from_secs(10);

/// How often the Node's status (the Ready condition's heartbeat) is
/// written when nothing changed: the Lease carries the frequent heartbeat,
/// so this write stays rare.
const STATUS_REFRESH: Duration = Duration::from_secs(40);

/// The annotation the API server reads the serving certificate's pin from.
const SERVING_CERT_ANNOTATION: &str = "skiff.dev/serving-cert-sha256";

/// Registers the Node and keeps it alive.
pub(crate) struct Registration {
    shared: Arc<Shared>,
    cert_sha256: String,
    /// When the Ready condition last became True.
    ready_since: jiff::Timestamp,
    boot_id: String,
}

impl Registration {
    pub(crate) fn new(shared: Arc<Shared>, cert_sha256: String) -> Registration {
        use sha2::Digest;
        let boot_id = hex::encode(sha2::Sha256::digest(format!(
            "{}-{:?}-{}",
            shared.config.name,
            std::time::SystemTime::now(),
            std::process::id()
        )));
        Registration {
            shared,
            cert_sha256,
            ready_since: jiff::Timestamp::now(),
            boot_id: boot_id[..32].to_owned(),
        }
    }

    /// Registers the Node, retrying with backoff until it works or the
    /// agent stops.
    pub(crate) async fn register_until_ok(&self, mut stop: watch::Receiver<bool>) {
        let mut delay = Duration::from_millis(500);
        loop {
            match self.register().await {
                Ok(()) => return,
                Err(err) => tracing::warn!(
                    node = %self.shared.config.name,
                    error = %format!("{err:#}"),
                    "cannot register the node; retrying in {delay:?}"
                ),
            }
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = stop.changed() => return,
            }
            delay = (delay * 2).min(Duration::from_secs(30));
        }
    }

    async fn register(&self) -> anyhow::Result<()> {
        let config = &self.shared.config;
        let api: Api<Node> = Api::all(self.shared.client.clone());
        let meta = self.metadata();
        let existing = api.get_opt(&config.name).await?;
        if existing.is_none() {
            let node: Node = serde_json::from_value(json!({
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": { "name": config.name, "labels": meta["labels"], "annotations": meta["annotations"] },
            }))?;
            match api.create(&PostParams::default(), &node).await {
                Ok(_) => tracing::info!(node = %config.name, "registered the node"),
                Err(kube::Error::Api(status)) if status.code == 409 => {}
                Err(err) => return Err(err.into()),
            }
        }
        // Labels and annotations are merged, so those others set stay.
        api.patch(
            &config.name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "metadata": meta })),
        )
        .await?;
        self.write_status().await
    }

    fn metadata(&self) -> Value {
        let config = &self.shared.config;
        let mut labels = json!({
            "kubernetes.io/hostname": config.name,
            "kubernetes.io/os": "wasi",
            "kubernetes.io/arch": "wasm32",
            "beta.kubernetes.io/os": "wasi",
            "beta.kubernetes.io/arch": "wasm32",
        });
        if let Some(kind) = &config.instance_type {
            labels["node.kubernetes.io/instance-type"] = json!(kind);
        }
        let mut annotations =
            json!({ SERVING_CERT_ANNOTATION: format!("sha256:{}", self.cert_sha256) });
        if let Some(endpoint) = self.shared.network.mesh_endpoint.get() {
            annotations[super::network::MESH_ANNOTATION] = json!(endpoint.to_string());
        }
        json!({ "labels": labels, "annotations": annotations })
    }

    fn status(&self) -> Value {
        let config = &self.shared.config;
        let now = jiff::Timestamp::now().to_string();
        let cpu = if config.cpu_millis.is_multiple_of(1000) {
            (config.cpu_millis / 1000).to_string()
        } else {
            format!("{}m", config.cpu_millis)
        };
        let resources = json!({
            "cpu": cpu,
            "memory": config.memory_bytes.to_string(),
            "pods": config.max_pods.to_string(),
        });
        let condition = |kind: &str, status: &str, reason: &str, message: &str| {
            json!({
                "type": kind,
                "status": status,
                "reason": reason,
                "message": message,
                "lastHeartbeatTime": now,
                "lastTransitionTime": self.ready_since.to_string(),
            })
        };
        json!({
            "capacity": resources,
            "allocatable": resources,
            "conditions": [
                condition("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
                condition("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
                condition("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
                condition("Ready", "True", "KubeletReady", "kubelet is posting ready status"),
            ],
            "addresses": [
                { "type": "InternalIP", "address": config.node_ip.to_string() },
                { "type": "Hostname", "address": config.name },
            ],
            "daemonEndpoints": { "kubeletEndpoint": { "Port": self.shared.port } },
            "nodeInfo": {
                "machineID": self.boot_id,
                "systemUUID": self.boot_id,
                "bootID": self.boot_id,
                "kernelVersion": std::env::consts::OS,
                "osImage": "Skiff (WASI preview 2)",
                "containerRuntimeVersion": format!("skiff://{}", env!("CARGO_PKG_VERSION")),
                "kubeletVersion": super::KUBELET_VERSION,
                "kubeProxyVersion": "",
                "operatingSystem": "wasi",
                "architecture": "wasm32",
            },
        })
    }

    async fn write_status(&self) -> anyhow::Result<()> {
        let api: Api<Node> = Api::all(self.shared.client.clone());
        api.patch_status(
            &self.shared.config.name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": self.status() })),
        )
        .await?;
        Ok(())
    }

    async fn renew_lease(&self) -> anyhow::Result<()> {
        let config = &self.shared.config;
        let api: Api<Lease> = Api::namespaced(self.shared.client.clone(), "kube-node-lease");
        let now = MicroTime(jiff::Timestamp::now());
        match api.get_opt(&config.name).await? {
            Some(mut lease) => {
                let spec = lease.spec.get_or_insert_with(Default::default);
                spec.holder_identity = Some(config.name.clone());
                spec.lease_duration_seconds = Some(LEASE_DURATION_SECONDS);
                spec.renew_time = Some(now);
                api.replace(&config.name, &PostParams::default(), &lease)
                    .await?;
            }
            None => {
                let node: Node = Api::<Node>::all(self.shared.client.clone())
                    .get(&config.name)
                    .await?;
                let lease: Lease = serde_json::from_value(json!({
                    "apiVersion": "coordination.k8s.io/v1",
                    "kind": "Lease",
                    "metadata": {
                        "name": config.name,
                        "namespace": "kube-node-lease",
                        "ownerReferences": [{
                            "apiVersion": "v1",
                            "kind": "Node",
                            "name": config.name,
                            "uid": node.metadata.uid,
                        }],
                    },
                    "spec": {
                        "holderIdentity": config.name,
                        "leaseDurationSeconds": LEASE_DURATION_SECONDS,
                        "renewTime": now,
                    },
                }))?;
                api.create(&PostParams::default(), &lease).await?;
            }
        }
        Ok(())
    }

    /// Renews the Lease every 10 s and rewrites the Node's status every
    /// 40 s until the agent stops; re-registers if the Node was deleted.
    pub(crate) async fn heartbeat(self, mut stop: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(LEASE_RENEW);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut status_due = Instant::now() + STATUS_REFRESH;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => return,
            }
            if let Err(err) = self.renew_lease().await {
                tracing::warn!(node = %self.shared.config.name, error = %format!("{err:#}"), "cannot renew the node's lease");
            }
            if Instant::now() >= status_due {
                let result = match self.write_status().await {
                    Err(err) if is_not_found(&err) => self.register().await,
                    other => other,
                };
                match result {
                    Ok(()) => status_due = Instant::now() + STATUS_REFRESH,
                    Err(err) => tracing::warn!(
                        node = %self.shared.config.name,
                        error = %format!("{err:#}"),
                        "cannot update the node's status"
                    ),
                }
            }
        }
    }
}

fn is_not_found(err: &anyhow::Error) -> bool {
    matches!(err.downcast_ref::<kube::Error>(), Some(kube::Error::Api(s)) if s.code == 404)
}
