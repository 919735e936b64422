//! How each field of the built-in kinds merges: the `patchStrategy` and
//! `patchMergeKey` Go struct tags of `k8s.io/api` (which `k8s-openapi` does
//! not carry), written down as static trees.
//!
//! Strategic merge patch reads list strategies and `retainKeys` from here;
//! server-side apply reads the same merge keys as its associative list keys,
//! and `atomic` for maps Kubernetes marks `x-kubernetes-map-type: atomic`.
//! A field missing from a tree is a plain field: maps merge key by key and
//! lists are replaced whole.

/// How a list field merges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum List {
    /// Replaced whole (no `patchStrategy`, or `replace`).
    Atomic,
    /// `patchStrategy:"merge"` over scalars: a set.
    Set,
    /// `patchStrategy:"merge" patchMergeKey:"<key>"`: a map keyed by one field
    /// of its elements.
    Map(&'static str),
}

/// One field of a struct.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Field {
    /// The struct type of the value (of each element, for a list), if it has
    /// fields with strategies of their own.
    pub ty: Option<&'static Ty>,
    /// How the field merges when it is a list.
    pub list: List,
    /// `patchStrategy:"retainKeys"`: the value is a union whose unset
    /// members a patch may clear with `$retainKeys`.
    #[expect(
        dead_code,
        reason = "the client writes `$retainKeys` from this strategy and the server honours it anywhere, as Kubernetes does; kept so the schema says what the Go tags say"
    )]
    pub retain_keys: bool,
    /// `x-kubernetes-map-type: atomic` (or `+structType=atomic`):
    /// server-side apply owns the map as one value. On a list merged by key,
    /// each element is owned that way (`OwnerReference`,
    /// `LocalObjectReference`).
    pub atomic: bool,
}

/// A struct type: its fields that need more than the default.
#[derive(Debug)]
pub(crate) struct Ty {
    pub fields: &'static [(&'static str, Field)],
}

impl Ty {
    /// The field `name`, or the default for fields without strategies.
    pub fn field(&self, name: &str) -> Field {
        self.fields
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, f)| *f)
            .unwrap_or(PLAIN)
    }
}

/// The field a schema lookup gives for a field it does not know, or below a
/// type without a schema.
pub(crate) const PLAIN: Field = Field {
    ty: None,
    list: List::Atomic,
    retain_keys: false,
    atomic: false,
};

/// A struct-valued field (or a list of structs replaced whole).
const fn obj(ty: &'static Ty) -> Field {
    Field {
        ty: Some(ty),
        ..PLAIN
    }
}

/// A list of structs merged by `key`.
const fn keyed(key: &'static str, ty: Option<&'static Ty>) -> Field {
    Field {
        ty,
        list: List::Map(key),
        ..PLAIN
    }
}

/// A list of scalars merged as a set.
const SET: Field = Field {
    list: List::Set,
    ..PLAIN
};

/// A map (or struct) owned whole by server-side apply.
const ATOMIC_MAP: Field = Field {
    atomic: true,
    ..PLAIN
};

/// A list merged by `name`, of elements without strategies of their own.
const BY_NAME: Field = keyed("name", None);

/// `status.conditions` everywhere: merged by `type`.
const CONDITIONS: Field = keyed("type", None);

/// A list merged by `key` whose elements are atomic structs.
const fn keyed_atomic(key: &'static str) -> Field {
    Field {
        atomic: true,
        ..keyed(key, None)
    }
}

static OBJECT_META: Ty = Ty {
    fields: &[
        ("finalizers", SET),
        ("ownerReferences", keyed_atomic("uid")),
    ],
};

static CONTAINER: Ty = Ty {
    fields: &[
        ("ports", keyed("containerPort", None)),
        ("env", BY_NAME),
        ("volumeMounts", keyed("mountPath", None)),
        ("volumeDevices", keyed("devicePath", None)),
        ("resizePolicy", keyed("resourceName", None)),
    ],
};

static VOLUME: Ty = Ty { fields: &[] };

static POD_SPEC: Ty = Ty {
    fields: &[
        (
            "volumes",
            Field {
                retain_keys: true,
                ..keyed("name", Some(&VOLUME))
            },
        ),
        ("initContainers", keyed("name", Some(&CONTAINER))),
        ("containers", keyed("name", Some(&CONTAINER))),
        ("ephemeralContainers", keyed("name", Some(&CONTAINER))),
        ("imagePullSecrets", keyed_atomic("name")),
        ("hostAliases", keyed("ip", None)),
        ("nodeSelector", ATOMIC_MAP),
        ("topologySpreadConstraints", keyed("topologyKey", None)),
        ("resourceClaims", BY_NAME),
        ("schedulingGates", BY_NAME),
    ],
};

static POD_STATUS: Ty = Ty {
    fields: &[
        ("conditions", CONDITIONS),
        ("podIPs", keyed("ip", None)),
        ("hostIPs", keyed("ip", None)),
    ],
};

static POD_TEMPLATE_SPEC: Ty = Ty {
    fields: &[("metadata", obj(&OBJECT_META)), ("spec", obj(&POD_SPEC))],
};

static CONDITIONS_STATUS: Ty = Ty {
    fields: &[("conditions", CONDITIONS)],
};

static POD: Ty = Ty {
    fields: &[
        ("metadata", obj(&OBJECT_META)),
        ("spec", obj(&POD_SPEC)),
        ("status", obj(&POD_STATUS)),
    ],
};

static DEPLOYMENT_SPEC: Ty = Ty {
    fields: &[
        ("selector", ATOMIC_MAP),
        ("template", obj(&POD_TEMPLATE_SPEC)),
        (
            "strategy",
            Field {
                retain_keys: true,
                ..PLAIN
            },
        ),
    ],
};

static DEPLOYMENT: Ty = Ty {
    fields: &[
        ("metadata", obj(&OBJECT_META)),
        ("spec", obj(&DEPLOYMENT_SPEC)),
        ("status", obj(&CONDITIONS_STATUS)),
    ],
};

static REPLICA_SET_SPEC: Ty = Ty {
    fields: &[
        ("selector", ATOMIC_MAP),
        ("template", obj(&POD_TEMPLATE_SPEC)),
    ],
};

static REPLICA_SET: Ty = Ty {
    fields: &[
        ("metadata", obj(&OBJECT_META)),
        ("spec", obj(&REPLICA_SET_SPEC)),
        ("status", obj(&CONDITIONS_STATUS)),
    ],
};

static STATEFUL_SET_SPEC: Ty = Ty {
    fields: &[
        ("selector", ATOMIC_MAP),
        ("template", obj(&POD_TEMPLATE_SPEC)),
        ("volumeClaimTemplates", PLAIN),
    ],
};

static STATEFUL_SET: Ty = Ty {
    fields: &[
        ("metadata", obj(&OBJECT_META)),
        ("spec", obj(&STATEFUL_SET_SPEC)),
        ("status", obj(&CONDITIONS_STATUS)),
    ],
};

static JOB_SPEC: Ty = Ty {
    fields: &[
        ("selector", ATOMIC_MAP),
        ("template", obj(&POD_TEMPLATE_SPEC)),
    ],
};

static JOB: Ty = Ty {
    fields: &[
        ("metadata", obj(&OBJECT_META)),
        ("spec", obj(&JOB_SPEC)),
        ("status", obj(&CONDITIONS_STATUS)),
    ],
};

static JOB_TEMPLATE_SPEC: Ty = Ty {
    fields: &[("metadata", obj(&OBJECT_META)), ("spec", obj(&JOB_SPEC))],
};

static CRON_JOB_SPEC: Ty = Ty {
    fields: &[("jobTemplate", obj(&JOB_TEMPLATE_SPEC))],
};

static CRON_JOB: Ty = Ty {
    fields: &[
        ("metadata", obj(&OBJECT_META)),
        ("spec", obj(&CRON_JOB_SPEC)),
    ],
};

static SERVICE_SPEC: Ty = Ty {
    fields: &[("ports", keyed("port", None)), ("selector", ATOMIC_MAP)],
};

static SERVICE: Ty = Ty {
    fields: &[
        ("metadata", obj(&OBJECT_META)),
        ("spec", obj(&SERVICE_SPEC)),
        ("status", obj(&CONDITIONS_STATUS)),
    ],
};

static NODE_SPEC: Ty = Ty {
    fields: &[("podCIDRs", SET)],
};

static NODE_STATUS: Ty = Ty {
    fields: &[
        ("conditions", CONDITIONS),
        ("addresses", keyed("type", None)),
    ],
};

static NODE: Ty = Ty {
    fields: &[
        ("metadata", obj(&OBJECT_META)),
        ("spec", obj(&NODE_SPEC)),
        ("status", obj(&NODE_STATUS)),
    ],
};

static NAMESPACE: Ty = Ty {
    fields: &[
        ("metadata", obj(&OBJECT_META)),
        ("status", obj(&CONDITIONS_STATUS)),
    ],
};

static SERVICE_ACCOUNT: Ty = Ty {
    fields: &[
        ("metadata", obj(&OBJECT_META)),
        ("secrets", keyed_atomic("name")),
    ],
};

static EVENT: Ty = Ty {
    fields: &[
        ("metadata", obj(&OBJECT_META)),
        ("involvedObject", ATOMIC_MAP),
        ("related", ATOMIC_MAP),
    ],
};

/// Kinds whose only strategies are in `metadata`: every list in them is
/// atomic (Endpoints' subsets, EndpointSlice's endpoints and ports,
/// Ingress' rules and TLS, Lease, ConfigMap, Secret).
static METADATA_ONLY: Ty = Ty {
    fields: &[("metadata", obj(&OBJECT_META))],
};

/// The schema of a built-in kind, or `None` for a kind Skiff does not know
/// (strategic merge patch refuses those, as Kubernetes does for custom
/// resources).
pub(crate) fn of_kind(kind: &str) -> Option<&'static Ty> {
    Some(match kind {
        "Pod" => &POD,
        "Deployment" => &DEPLOYMENT,
        "ReplicaSet" => &REPLICA_SET,
        "StatefulSet" => &STATEFUL_SET,
        "Job" => &JOB,
        "CronJob" => &CRON_JOB,
        "Service" => &SERVICE,
        "Node" => &NODE,
        "Namespace" => &NAMESPACE,
        "ServiceAccount" => &SERVICE_ACCOUNT,
        "Event" => &EVENT,
        "Endpoints"
        | "ConfigMap"
        | "Secret"
        | "Lease"
        | "EndpointSlice"
        | "Ingress"
        | "NetworkPolicy"
        | "CertificateSigningRequest" => &METADATA_ONLY,
        _ => return None,
    })
}

/// The schema for a kind under server-side apply: a kind without one has
/// only plain fields (maps merge, lists are atomic).
pub(crate) fn of_kind_or_plain(kind: &str) -> &'static Ty {
    static EMPTY: Ty = Ty { fields: &[] };
    of_kind(kind).unwrap_or(&EMPTY)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::RESOURCES;

    #[test]
    fn every_registered_kind_has_a_schema() {
        for r in RESOURCES {
            assert!(of_kind(r.kind).is_some(), "{} has no patch schema", r.kind);
        }
    }

    #[test]
    fn pod_template_inside_a_cron_job() {
        let cron = of_kind("CronJob").unwrap();
        let containers = cron
            .field("spec")
            .ty
            .unwrap()
            .field("jobTemplate")
            .ty
            .unwrap()
            .field("spec")
            .ty
            .unwrap()
            .field("template")
            .ty
            .unwrap()
            .field("spec")
            .ty
            .unwrap()
            .field("containers");
        assert_eq!(containers.list, List::Map("name"));
        assert_eq!(containers.ty.unwrap().field("env").list, List::Map("name"));
        assert_eq!(containers.ty.unwrap().field("envFrom").list, List::Atomic);
    }
}
