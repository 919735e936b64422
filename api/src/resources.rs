//! The registry of resource types Skiff serves.

/// Whether objects of a type live in a namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Objects live in a namespace (`/api/v1/namespaces/NS/pods/NAME`).
    Namespaced,
    /// Objects are cluster-wide (`/api/v1/nodes/NAME`).
    Cluster,
}

/// One resource type: how it is named on the wire and in the store.
#[derive(Debug, PartialEq, Eq)]
pub struct ResourceType {
    /// API group; empty for the core group.
    pub group: &'static str,
    /// Version within the group.
    pub version: &'static str,
    /// Kind (`Deployment`).
    pub kind: &'static str,
    /// URL name (`deployments`).
    pub plural: &'static str,
    /// Singular name (`deployment`).
    pub singular: &'static str,
    /// Short names kubectl accepts (`deploy`).
    pub short_names: &'static [&'static str],
    /// Namespaced or cluster-wide.
    pub scope: Scope,
    /// Subresources served (`status`, `scale`, `log`, `binding`).
    pub subresources: &'static [&'static str],
    /// Categories (`all`), for `kubectl get all`.
    pub categories: &'static [&'static str],
}

impl ResourceType {
    /// `v1`, or `apps/v1` for a named group.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// The kind of a list of these (`DeploymentList`).
    pub fn list_kind(&self) -> String {
        format!("{}List", self.kind)
    }

    /// Whether objects live in namespaces.
    pub fn namespaced(&self) -> bool {
        self.scope == Scope::Namespaced
    }

    /// The store key prefix of all objects of this type, or of those in one
    /// namespace: `/registry/apps/deployments/` or
    /// `/registry/apps/deployments/default/`. Always ends in `/`, so one
    /// namespace's prefix never matches another's (`a/` vs `ab/`).
    pub fn prefix(&self, namespace: Option<&str>) -> String {
        let group = if self.group.is_empty() {
            "core"
        } else {
            self.group
        };
        match namespace.filter(|_| self.namespaced()) {
            Some(ns) => format!("/registry/{group}/{}/{ns}/", self.plural),
            None => format!("/registry/{group}/{}/", self.plural),
        }
    }

    /// The store key of one object.
    pub fn key(&self, namespace: Option<&str>, name: &str) -> String {
        format!("{}{name}", self.prefix(namespace))
    }

    /// The URL path of the collection, for `selfLink`-like uses and errors.
    pub fn collection_path(&self, namespace: Option<&str>) -> String {
        let base = if self.group.is_empty() {
            format!("/api/{}", self.version)
        } else {
            format!("/apis/{}/{}", self.group, self.version)
        };
        match namespace.filter(|_| self.namespaced()) {
            Some(ns) => format!("{base}/namespaces/{ns}/{}", self.plural),
            None => format!("{base}/{}", self.plural),
        }
    }
}

#[expect(clippy::too_many_arguments, reason = "one row of the registry table")]
const fn rt(
    group: &'static str,
    kind: &'static str,
    plural: &'static str,
    singular: &'static str,
    short_names: &'static [&'static str],
    scope: Scope,
    subresources: &'static [&'static str],
    categories: &'static [&'static str],
) -> ResourceType {
    ResourceType {
        group,
        version: "v1",
        kind,
        plural,
        singular,
        short_names,
        scope,
        subresources,
        categories,
    }
}

use Scope::{Cluster, Namespaced};

/// Every resource type served, in discovery order.
pub static RESOURCES: &[ResourceType] = &[
    rt(
        "",
        "Namespace",
        "namespaces",
        "namespace",
        &["ns"],
        Cluster,
        &["status", "finalize"],
        &[],
    ),
    rt(
        "",
        "Pod",
        "pods",
        "pod",
        &["po"],
        Namespaced,
        &["status", "binding", "log"],
        &["all"],
    ),
    rt(
        "",
        "Service",
        "services",
        "service",
        &["svc"],
        Namespaced,
        &["status"],
        &["all"],
    ),
    rt(
        "",
        "Endpoints",
        "endpoints",
        "endpoints",
        &["ep"],
        Namespaced,
        &[],
        &[],
    ),
    rt(
        "",
        "ConfigMap",
        "configmaps",
        "configmap",
        &["cm"],
        Namespaced,
        &[],
        &[],
    ),
    rt("", "Secret", "secrets", "secret", &[], Namespaced, &[], &[]),
    rt(
        "",
        "Node",
        "nodes",
        "node",
        &["no"],
        Cluster,
        &["status", "proxy"],
        &[],
    ),
    rt(
        "",
        "Event",
        "events",
        "event",
        &["ev"],
        Namespaced,
        &[],
        &[],
    ),
    rt(
        "",
        "ServiceAccount",
        "serviceaccounts",
        "serviceaccount",
        &["sa"],
        Namespaced,
        &["token"],
        &[],
    ),
    rt(
        "apps",
        "Deployment",
        "deployments",
        "deployment",
        &["deploy"],
        Namespaced,
        &["status", "scale"],
        &["all"],
    ),
    rt(
        "apps",
        "ReplicaSet",
        "replicasets",
        "replicaset",
        &["rs"],
        Namespaced,
        &["status", "scale"],
        &["all"],
    ),
    rt(
        "apps",
        "StatefulSet",
        "statefulsets",
        "statefulset",
        &["sts"],
        Namespaced,
        &["status", "scale"],
        &["all"],
    ),
    rt(
        "batch",
        "Job",
        "jobs",
        "job",
        &[],
        Namespaced,
        &["status"],
        &["all"],
    ),
    rt(
        "batch",
        "CronJob",
        "cronjobs",
        "cronjob",
        &["cj"],
        Namespaced,
        &["status"],
        &["all"],
    ),
    rt(
        "certificates.k8s.io",
        "CertificateSigningRequest",
        "certificatesigningrequests",
        "certificatesigningrequest",
        &["csr"],
        Cluster,
        &["status", "approval"],
        &[],
    ),
    rt(
        "coordination.k8s.io",
        "Lease",
        "leases",
        "lease",
        &[],
        Namespaced,
        &[],
        &[],
    ),
    rt(
        "discovery.k8s.io",
        "EndpointSlice",
        "endpointslices",
        "endpointslice",
        &[],
        Namespaced,
        &[],
        &[],
    ),
    rt(
        "networking.k8s.io",
        "Ingress",
        "ingresses",
        "ingress",
        &["ing"],
        Namespaced,
        &["status"],
        &[],
    ),
    rt(
        "networking.k8s.io",
        "NetworkPolicy",
        "networkpolicies",
        "networkpolicy",
        &["netpol"],
        Namespaced,
        &[],
        &[],
    ),
];

/// The type served at `group`/`version` under `plural`.
pub fn by_plural(group: &str, version: &str, plural: &str) -> Option<&'static ResourceType> {
    RESOURCES
        .iter()
        .find(|r| r.group == group && r.version == version && r.plural == plural)
}

/// The type of objects with this `apiVersion` and `kind`.
pub fn by_kind(api_version: &str, kind: &str) -> Option<&'static ResourceType> {
    RESOURCES
        .iter()
        .find(|r| r.kind == kind && r.api_version() == api_version)
}

/// The groups served, each with its one version, in discovery order (the
/// core group, `""`, first).
pub fn groups() -> Vec<(&'static str, &'static str)> {
    let mut groups: Vec<(&'static str, &'static str)> = Vec::new();
    for r in RESOURCES {
        if !groups.contains(&(r.group, r.version)) {
            groups.push((r.group, r.version));
        }
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_paths() {
        let deploy = by_plural("apps", "v1", "deployments").unwrap();
        assert_eq!(deploy.api_version(), "apps/v1");
        assert_eq!(
            deploy.key(Some("default"), "web"),
            "/registry/apps/deployments/default/web"
        );
        assert_eq!(deploy.prefix(None), "/registry/apps/deployments/");
        assert_eq!(
            deploy.collection_path(Some("ns1")),
            "/apis/apps/v1/namespaces/ns1/deployments"
        );
        let node = by_kind("v1", "Node").unwrap();
        assert_eq!(node.key(Some("ignored"), "n1"), "/registry/core/nodes/n1");
        assert_eq!(node.collection_path(None), "/api/v1/nodes");
        assert_eq!(groups()[0], ("", "v1"));
        assert!(groups().contains(&("networking.k8s.io", "v1")));
    }

    #[test]
    fn names_are_unique() {
        for (i, a) in RESOURCES.iter().enumerate() {
            for b in &RESOURCES[i + 1..] {
                assert!(
                    !(a.group == b.group && a.plural == b.plural),
                    "{}",
                    a.plural
                );
                assert!(!(a.group == b.group && a.kind == b.kind), "{}", a.kind);
            }
        }
    }
}
