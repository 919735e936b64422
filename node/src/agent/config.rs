//! What a container sees: its environment (values, ConfigMaps, Secrets, the
//! downward API) and its volumes (directories on the node preopened at the
//! mount paths).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Component as PathComponent, Path, PathBuf};

use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, Secret, Volume};
use kube::Api;

use super::quantity;

/// A problem with a container's configuration, shown as the waiting
/// message (`CreateContainerConfigError`) or a mount failure.
pub(crate) type ConfigResult<T> = Result<T, String>;

/// Reads ConfigMaps and Secrets of one namespace, each at most once per
/// resolution.
pub(crate) struct Sources {
    client: kube::Client,
    namespace: String,
    config_maps: HashMap<String, Option<BTreeMap<String, Vec<u8>>>>,
    secrets: HashMap<String, Option<BTreeMap<String, Vec<u8>>>>,
}

impl Sources {
    pub(crate) fn new(client: kube::Client, namespace: &str) -> Sources {
        Sources {
            client,
            namespace: namespace.to_owned(),
            config_maps: HashMap::new(),
            secrets: HashMap::new(),
        }
    }

    /// A ConfigMap's `data` and `binaryData`; `None` when it does not exist.
    pub(crate) async fn config_map(
        &mut self,
        name: &str,
    ) -> ConfigResult<Option<BTreeMap<String, Vec<u8>>>> {
        if let Some(found) = self.config_maps.get(name) {
            return Ok(found.clone());
        }
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), &self.namespace);
        let found = api
            .get_opt(name)
            .await
            .map_err(|e| format!("cannot read configmap {:?}: {e}", name))?
            .map(|cm| {
                let mut data: BTreeMap<String, Vec<u8>> = cm
                    .data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, v.into_bytes()))
                    .collect();
                for (k, v) in cm.binary_data.unwrap_or_default() {
                    data.insert(k, v.0);
                }
                data
            });
        self.config_maps.insert(name.to_owned(), found.clone());
        Ok(found)
    }

    /// A Secret's `data` (and `stringData`); `None` when it does not exist.
    pub(crate) async fn secret(
        &mut self,
        name: &str,
    ) -> ConfigResult<Option<BTreeMap<String, Vec<u8>>>> {
        if let Some(found) = self.secrets.get(name) {
            return Ok(found.clone());
        }
        let api: Api<Secret> = Api::namespaced(self.client.clone(), &self.namespace);
        let found = api
            .get_opt(name)
            .await
            .map_err(|e| format!("cannot read secret {:?}: {e}", name))?
            .map(|secret| {
                let mut data: BTreeMap<String, Vec<u8>> = secret
                    .data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, v.0))
                    .collect();
                for (k, v) in secret.string_data.unwrap_or_default() {
                    data.insert(k, v.into_bytes());
                }
                data
            });
        self.secrets.insert(name.to_owned(), found.clone());
        Ok(found)
    }
}

/// Facts about the pod and node the downward API exposes.
pub(crate) struct Downward<'a> {
    pub(crate) pod: &'a Pod,
    pub(crate) pod_ip: &'a str,
    pub(crate) host_ip: &'a str,
    pub(crate) node_cpu_millis: u64,
    pub(crate) node_memory: u64,
}

/// The container's environment, in the order Kubernetes builds it:
/// `envFrom` sources first, then `env` (later entries win), with `$(VAR)`
/// references to earlier variables expanded.
pub(crate) async fn environment(
    sources: &mut Sources,
    container: &Container,
    downward: &Downward<'_>,
) -> ConfigResult<Vec<(String, String)>> {
    let mut env: Vec<(String, String)> = Vec::new();
    let set = |env: &mut Vec<(String, String)>, key: String, value: String| match env
        .iter_mut()
        .find(|(k, _)| *k == key)
    {
        Some(slot) => slot.1 = value,
        None => env.push((key, value)),
    };
    for from in container.env_from.iter().flatten() {
        let prefix = from.prefix.clone().unwrap_or_default();
        let (data, what, name, optional) = if let Some(cm) = &from.config_map_ref {
            (
                sources.config_map(&cm.name).await?,
                "configmap",
                &cm.name,
                cm.optional.unwrap_or(false),
            )
        } else if let Some(secret) = &from.secret_ref {
            (
                sources.secret(&secret.name).await?,
                "secret",
                &secret.name,
                secret.optional.unwrap_or(false),
            )
        } else {
            continue;
        };
        match data {
            Some(data) => {
                for (k, v) in data {
                    set(
                        &mut env,
                        format!("{prefix}{k}"),
                        String::from_utf8_lossy(&v).into_owned(),
                    );
                }
            }
            None if optional => {}
            None => return Err(format!("{what} {name:?} not found")),
        }
    }
    for var in container.env.iter().flatten() {
        let value = if let Some(value) = &var.value {
            Some(expand(value, &env))
        } else if let Some(from) = &var.value_from {
            if let Some(key) = &from.config_map_key_ref {
                let optional = key.optional.unwrap_or(false);
                match sources.config_map(&key.name).await? {
                    Some(data) => match data.get(&key.key) {
                        Some(v) => Some(String::from_utf8_lossy(v).into_owned()),
                        None if optional => None,
                        None => {
                            return Err(format!(
                                "couldn't find key {} in ConfigMap {}",
                                key.key, key.name
                            ));
                        }
                    },
                    None if optional => None,
                    None => return Err(format!("configmap {:?} not found", key.name)),
                }
            } else if let Some(key) = &from.secret_key_ref {
                let optional = key.optional.unwrap_or(false);
                match sources.secret(&key.name).await? {
                    Some(data) => match data.get(&key.key) {
                        Some(v) => Some(String::from_utf8_lossy(v).into_owned()),
                        None if optional => None,
                        None => {
                            return Err(format!(
                                "couldn't find key {} in Secret {}",
                                key.key, key.name
                            ));
                        }
                    },
                    None if optional => None,
                    None => return Err(format!("secret {:?} not found", key.name)),
                }
            } else if let Some(field) = &from.field_ref {
                Some(field_value(&field.field_path, downward)?)
            } else if let Some(resource) = &from.resource_field_ref {
                let target = match &resource.container_name {
                    Some(name) if !name.is_empty() => downward
                        .pod
                        .spec
                        .as_ref()
                        .and_then(|s| s.containers.iter().find(|c| c.name == *name))
                        .ok_or_else(|| format!("resourceFieldRef names no container {name:?}"))?,
                    _ => container,
                };
                Some(resource_value(
                    target,
                    &resource.resource,
                    resource.divisor.as_ref().map(|d| d.0.as_str()),
                    downward,
                )?)
            } else {
                None
            }
        } else {
            Some(String::new())
        };
        if let Some(value) = value {
            set(&mut env, var.name.clone(), value);
        }
    }
    Ok(env)
}

/// Expands `$(NAME)` with variables defined so far; `$$` escapes a `$`;
/// unknown references stay as written (as Kubernetes does).
pub(crate) fn expand(value: &str, env: &[(String, String)]) -> String {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(after) = after.strip_prefix('$') {
            out.push('$');
            rest = after;
        } else if let Some(inner) = after.strip_prefix('(')
            && let Some(end) = inner.find(')')
        {
            let name = &inner[..end];
            match env.iter().rev().find(|(k, _)| k == name) {
                Some((_, v)) => out.push_str(v),
                None => {
                    out.push_str("$(");
                    out.push_str(name);
                    out.push(')');
                }
            }
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

fn field_value(path: &str, downward: &Downward<'_>) -> ConfigResult<String> {
    let meta = &downward.pod.metadata;
    let spec = downward.pod.spec.as_ref();
    let value = match path {
        "metadata.name" => meta.name.clone().unwrap_or_default(),
        "metadata.namespace" => meta.namespace.clone().unwrap_or_default(),
        "metadata.uid" => meta.uid.clone().unwrap_or_default(),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
        "spec.serviceAccountName" => spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_default(),
        "status.podIP" => downward.pod_ip.to_owned(),
        "status.hostIP" => downward.host_ip.to_owned(),
        "status.podIPs" => downward.pod_ip.to_owned(),
        "status.hostIPs" => downward.host_ip.to_owned(),
        other => {
            let lookup = |prefix: &str, map: &Option<BTreeMap<String, String>>| {
                other
                    .strip_prefix(prefix)
                    .and_then(|k| k.strip_suffix("']"))
                    .map(|k| {
                        map.as_ref()
                            .and_then(|m| m.get(k))
                            .cloned()
                            .unwrap_or_default()
                    })
            };
            match lookup("metadata.labels['", &meta.labels)
                .or_else(|| lookup("metadata.annotations['", &meta.annotations))
            {
                Some(v) => v,
                None => return Err(format!("unsupported fieldRef fieldPath {other:?}")),
            }
        }
    };
    Ok(value)
}

fn resource_value(
    container: &Container,
    resource: &str,
    divisor: Option<&str>,
    downward: &Downward<'_>,
) -> ConfigResult<String> {
    let resources = container.resources.as_ref();
    let get = |limits: bool, name: &str| {
        resources
            .and_then(|r| {
                if limits {
                    r.limits.as_ref()
                } else {
                    r.requests.as_ref()
                }
            })
            .and_then(|m| m.get(name))
            .map(|q| q.0.clone())
    };
    let (limits, name) = match resource.split_once('.') {
        Some(("limits", name)) => (true, name),
        Some(("requests", name)) => (false, name),
        _ => {
            return Err(format!(
                "unsupported resourceFieldRef resource {resource:?}"
            ));
        }
    };
    // Unset limits read as the node's allocatable, as on a kubelet.
    let value = get(limits, name).or_else(|| if limits { None } else { get(true, name) });
    match name {
        "cpu" => {
            let millis = match value {
                Some(v) => quantity::milli(&v).ok_or_else(|| format!("invalid quantity {v:?}"))?,
                None if limits => downward.node_cpu_millis,
                None => 0,
            };
            let divisor = match divisor {
                Some(d) => quantity::milli(d).filter(|d| *d > 0),
                None => Some(1000),
            }
            .ok_or_else(|| "invalid resourceFieldRef divisor".to_owned())?;
            Ok(millis.div_ceil(divisor).to_string())
        }
        "memory" | "ephemeral-storage" => {
            let bytes = match value {
                Some(v) => quantity::units(&v).ok_or_else(|| format!("invalid quantity {v:?}"))?,
                None if limits => downward.node_memory,
                None => 0,
            };
            let divisor = match divisor {
                Some(d) => quantity::units(d).filter(|d| *d > 0),
                None => Some(1),
            }
            .ok_or_else(|| "invalid resourceFieldRef divisor".to_owned())?;
            Ok(bytes.div_ceil(divisor).to_string())
        }
        other => Err(format!("unsupported resourceFieldRef resource {other:?}")),
    }
}

/// How a pod volume lives on the node.
#[derive(Debug, Clone)]
pub(crate) struct VolumeDir {
    /// The directory on the node.
    pub(crate) host: PathBuf,
    /// Whether containers may only read it (ConfigMaps and Secrets).
    pub(crate) read_only: bool,
    /// `emptyDir.sizeLimit` in bytes.
    pub(crate) size_limit: Option<u64>,
    /// Files written from a ConfigMap or Secret, kept in step with it.
    pub(crate) projected: Option<Projected>,
}

/// A ConfigMap or Secret volume's source.
#[derive(Debug, Clone)]
pub(crate) struct Projected {
    secret: bool,
    name: String,
    items: Option<Vec<(String, String)>>,
    optional: bool,
    /// Files this agent wrote, relative to the volume directory.
    written: HashSet<PathBuf>,
}

/// Where volumes live on this node.
pub(crate) struct VolumeRoots<'a> {
    /// This pod's directory (`data_dir/pods/<uid>`).
    pub(crate) pod_dir: &'a Path,
    /// `data_dir`.
    pub(crate) data_dir: &'a Path,
    /// Whether `hostPath` volumes are allowed.
    pub(crate) allow_host_path: bool,
}

/// Creates the pod's volumes; errors name the volume.
pub(crate) async fn prepare_volumes(
    sources: &mut Sources,
    namespace: &str,
    volumes: &[Volume],
    roots: &VolumeRoots<'_>,
) -> ConfigResult<HashMap<String, VolumeDir>> {
    let mut out = HashMap::new();
    for volume in volumes {
        let own = roots.pod_dir.join("volumes").join(&volume.name);
        let mut dir = VolumeDir {
            host: own.clone(),
            read_only: false,
            size_limit: None,
            projected: None,
        };
        if let Some(empty) = &volume.empty_dir {
            dir.size_limit = empty
                .size_limit
                .as_ref()
                .and_then(|q| quantity::units(&q.0));
        } else if let Some(cm) = &volume.config_map {
            dir.read_only = true;
            dir.projected = Some(Projected {
                secret: false,
                name: cm.name.clone(),
                items: cm.items.as_ref().map(|items| {
                    items
                        .iter()
                        .map(|i| (i.key.clone(), i.path.clone()))
                        .collect()
                }),
                optional: cm.optional.unwrap_or(false),
                written: HashSet::new(),
            });
        } else if let Some(secret) = &volume.secret {
            dir.read_only = true;
            dir.projected = Some(Projected {
                secret: true,
                name: secret.secret_name.clone().unwrap_or_default(),
                items: secret.items.as_ref().map(|items| {
                    items
                        .iter()
                        .map(|i| (i.key.clone(), i.path.clone()))
                        .collect()
                }),
                optional: secret.optional.unwrap_or(false),
                written: HashSet::new(),
            });
        } else if let Some(host) = &volume.host_path {
            if !roots.allow_host_path {
                return Err(format!(
                    "volume {:?}: hostPath volumes are not allowed on this node (the agent runs without --allow-host-path)",
                    volume.name
                ));
            }
            dir.host = PathBuf::from(&host.path);
            if host.type_.as_deref() == Some("DirectoryOrCreate") {
                create_dir(&dir.host, &volume.name).await?;
            } else if !dir.host.is_dir() {
                return Err(format!(
                    "volume {:?}: hostPath {} is not a directory",
                    volume.name, host.path
                ));
            }
        } else if let Some(claim) = &volume.persistent_volume_claim {
            safe_name(&claim.claim_name, &volume.name)?;
            dir.host = roots
                .data_dir
                .join("volumes")
                .join(namespace)
                .join(&claim.claim_name);
            dir.read_only = claim.read_only.unwrap_or(false);
        } else {
            return Err(format!(
                "volume {:?}: only emptyDir, configMap, secret, hostPath and persistentVolumeClaim volumes are supported",
                volume.name
            ));
        }
        if volume.host_path.is_none() {
            create_dir(&dir.host, &volume.name).await?;
        }
        if let Some(projected) = &mut dir.projected {
            refresh(sources, projected, &dir.host, &volume.name).await?;
        }
        out.insert(volume.name.clone(), dir);
    }
    Ok(out)
}

/// Rewrites a ConfigMap or Secret volume's files from the current object.
/// Returns whether any file changed.
pub(crate) async fn refresh(
    sources: &mut Sources,
    projected: &mut Projected,
    dir: &Path,
    volume: &str,
) -> ConfigResult<bool> {
    let what = if projected.secret {
        "secret"
    } else {
        "configmap"
    };
    let data = if projected.secret {
        sources.secret(&projected.name).await?
    } else {
        sources.config_map(&projected.name).await?
    };
    let data = match data {
        Some(data) => data,
        None if projected.optional => BTreeMap::new(),
        None => {
            return Err(format!(
                "volume {volume:?}: {what} {:?} not found",
                projected.name
            ));
        }
    };
    let mut files: BTreeMap<PathBuf, Vec<u8>> = BTreeMap::new();
    match &projected.items {
        Some(items) => {
            for (key, path) in items {
                let rel = relative(path)
                    .ok_or_else(|| format!("volume {volume:?}: invalid item path {path:?}"))?;
                match data.get(key) {
                    Some(bytes) => {
                        files.insert(rel, bytes.clone());
                    }
                    None if projected.optional => {}
                    None => {
                        return Err(format!(
                            "volume {volume:?}: key {key:?} not found in {what} {:?}",
                            projected.name
                        ));
                    }
                }
            }
        }
        None => {
            for (key, bytes) in data {
                if let Some(rel) = relative(&key) {
                    files.insert(rel, bytes);
                }
            }
        }
    }
    let mut changed = false;
    for (rel, bytes) in &files {
        let path = dir.join(rel);
        if tokio::fs::read(&path).await.ok().as_deref() == Some(bytes.as_slice()) {
            continue;
        }
        if let Some(parent) = path.parent() {
            create_dir(parent, volume).await?;
        }
        // Written aside and renamed into place, so a reader sees the old
        // file or the new one, never half of one.
        let tmp = path.with_file_name(format!(
            ".{}.tmp",
            path.file_name().and_then(|n| n.to_str()).unwrap_or("file")
        ));
        tokio::fs::write(&tmp, bytes)
            .await
            .map_err(|e| format!("volume {volume:?}: writing {}: {e}", path.display()))?;
        tokio::fs::rename(&tmp, &path)
            .await
            .map_err(|e| format!("volume {volume:?}: writing {}: {e}", path.display()))?;
        changed = true;
    }
    let stale: Vec<PathBuf> = projected
        .written
        .iter()
        .filter(|p| !files.contains_key(*p))
        .cloned()
        .collect();
    for rel in stale {
        let _ = tokio::fs::remove_file(dir.join(&rel)).await;
        changed = true;
    }
    projected.written = files.into_keys().collect();
    Ok(changed)
}

/// A key or item path as a path inside the volume: relative, without `..`.
fn relative(path: &str) -> Option<PathBuf> {
    let p = Path::new(path);
    let ok = !path.is_empty()
        && p.components()
            .all(|c| matches!(c, PathComponent::Normal(_)));
    ok.then(|| p.to_path_buf())
}

fn safe_name(name: &str, volume: &str) -> ConfigResult<()> {
    if relative(name).is_some_and(|p| p.components().count() == 1) {
        Ok(())
    } else {
        Err(format!("volume {volume:?}: invalid claim name {name:?}"))
    }
}

async fn create_dir(path: &Path, volume: &str) -> ConfigResult<()> {
    tokio::fs::create_dir_all(path)
        .await
        .map_err(|e| format!("volume {volume:?}: cannot create {}: {e}", path.display()))
}

/// Bytes used by the files under `dir` (a blocking walk).
pub(crate) fn disk_usage(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            match entry.metadata() {
                Ok(meta) if meta.is_dir() => stack.push(entry.path()),
                Ok(meta) => total += meta.len(),
                Err(_) => {}
            }
        }
    }
    total
}

/// The directories a container sees: one preopen per volume mount.
pub(crate) fn mounts(
    container: &Container,
    volumes: &HashMap<String, VolumeDir>,
) -> ConfigResult<Vec<skiff_runtime::Preopen>> {
    let mut out = Vec::new();
    for mount in container.volume_mounts.iter().flatten() {
        let volume = volumes
            .get(&mount.name)
            .ok_or_else(|| format!("volumeMount {:?} names no volume of the pod", mount.name))?;
        let mut host = volume.host.clone();
        if let Some(sub) = mount.sub_path.as_deref().filter(|s| !s.is_empty()) {
            let rel = relative(sub)
                .ok_or_else(|| format!("volumeMount {:?}: invalid subPath {sub:?}", mount.name))?;
            host = host.join(rel);
            std::fs::create_dir_all(&host).map_err(|e| {
                format!(
                    "volumeMount {:?}: cannot create {}: {e}",
                    mount.name,
                    host.display()
                )
            })?;
        }
        out.push(skiff_runtime::Preopen {
            host,
            guest: mount.mount_path.clone(),
            read_only: volume.read_only || mount.read_only.unwrap_or(false),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expands_references_like_kubernetes() {
        let env = vec![("A".to_owned(), "1".to_owned())];
        assert_eq!(expand("x$(A)y", &env), "x1y");
        assert_eq!(expand("$(B)", &env), "$(B)");
        assert_eq!(expand("$$(A)", &env), "$(A)");
        assert_eq!(expand("cost $5", &env), "cost $5");
    }

    #[test]
    fn item_paths_stay_inside_the_volume() {
        assert!(relative("a/b.txt").is_some());
        assert!(relative("../etc/passwd").is_none());
        assert!(relative("/abs").is_none());
        assert!(relative("").is_none());
    }
}
