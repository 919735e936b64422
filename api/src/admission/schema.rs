//! Checking a JSON body against its `k8s-openapi` type: bad types become a
//! `400 BadRequest` naming the field; fields the type does not know are
//! found by a decode/encode round trip.

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::k8s_openapi::api::{
    apps::v1 as apps, batch::v1 as batch, coordination::v1 as coordination, core::v1 as core,
    discovery::v1 as discovery, networking::v1 as networking,
};

fn through<T: DeserializeOwned + Serialize>(v: &Value) -> Result<Value, String> {
    let typed = T::deserialize(v).map_err(|e| e.to_string())?;
    serde_json::to_value(typed).map_err(|e| e.to_string())
}

/// Decodes `v` as the `k8s-openapi` type of `kind` and encodes it again.
/// `None` for a kind Skiff does not serve.
pub fn round_trip(kind: &str, v: &Value) -> Option<Result<Value, String>> {
    Some(match kind {
        "Namespace" => through::<core::Namespace>(v),
        "Pod" => through::<core::Pod>(v),
        "Service" => through::<core::Service>(v),
        "Endpoints" => through::<core::Endpoints>(v),
        "ConfigMap" => through::<core::ConfigMap>(v),
        "Secret" => through::<core::Secret>(v),
        "Node" => through::<core::Node>(v),
        "Event" => through::<core::Event>(v),
        "ServiceAccount" => through::<core::ServiceAccount>(v),
        "Deployment" => through::<apps::Deployment>(v),
        "ReplicaSet" => through::<apps::ReplicaSet>(v),
        "StatefulSet" => through::<apps::StatefulSet>(v),
        "Job" => through::<batch::Job>(v),
        "CronJob" => through::<batch::CronJob>(v),
        "Lease" => through::<coordination::Lease>(v),
        "CertificateSigningRequest" => {
            through::<crate::k8s_openapi::api::certificates::v1::CertificateSigningRequest>(v)
        }
        "EndpointSlice" => through::<discovery::EndpointSlice>(v),
        "Ingress" => through::<networking::Ingress>(v),
        "NetworkPolicy" => through::<networking::NetworkPolicy>(v),
        _ => return None,
    })
}

/// One step of a field path.
#[derive(Clone)]
enum Seg {
    Key(String),
    Index(usize),
}

fn render(path: &[Seg]) -> String {
    let mut out = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            Seg::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

fn get_mut<'a>(v: &'a mut Value, path: &[Seg]) -> Option<&'a mut Value> {
    path.iter().try_fold(v, |v, seg| match seg {
        Seg::Key(k) => v.get_mut(k.as_str()),
        Seg::Index(i) => v.get_mut(*i),
    })
}

/// The path of the field that makes decoding fail with `error`: the child
/// whose removal changes the error is descended into, until none does.
/// Serde reports the first bad field in key order, so removing an earlier
/// good field (even a required one, which k8s-openapi defaults) leaves the
/// error as it was.
pub fn locate(kind: &str, root: &Value, error: &str) -> String {
    let fails_same = |v: &Value| matches!(round_trip(kind, v), Some(Err(e)) if e == error);
    let mut path: Vec<Seg> = Vec::new();
    loop {
        let mut probe = root.clone();
        let children: Vec<Seg> = match get_mut(&mut probe, &path) {
            Some(Value::Object(m)) => m.keys().cloned().map(Seg::Key).collect(),
            Some(Value::Array(a)) => (0..a.len()).map(Seg::Index).collect(),
            _ => break,
        };
        let culprit = children.into_iter().find(|child| {
            let mut trial = root.clone();
            match (get_mut(&mut trial, &path), child) {
                (Some(Value::Object(m)), Seg::Key(k)) => {
                    m.remove(k);
                }
                (Some(Value::Array(a)), Seg::Index(i)) => {
                    a.remove(*i);
                }
                _ => return false,
            }
            !fails_same(&trial)
        });
        match culprit {
            Some(seg) => path.push(seg),
            None => break,
        }
    }
    render(&path)
}

/// Removes from `input` every field absent from `encoded` (the round-tripped
/// value) and returns the paths of the removed ones. Explicit `null`s are
/// removed too but not reported: Kubernetes reads them as "unset".
pub fn prune_unknown(input: &mut Value, encoded: &Value) -> Vec<String> {
    let mut out = Vec::new();
    let mut path = Vec::new();
    prune(input, encoded, &mut path, &mut out);
    out
}

fn prune(input: &mut Value, encoded: &Value, path: &mut Vec<Seg>, out: &mut Vec<String>) {
    match (input, encoded) {
        (Value::Object(a), Value::Object(b)) => {
            let keys: Vec<String> = a.keys().cloned().collect();
            for k in keys {
                path.push(Seg::Key(k.clone()));
                match (a.get_mut(&k), b.get(&k)) {
                    (Some(Value::Null), _) => {
                        a.remove(&k);
                    }
                    (Some(v), Some(bv)) => prune(v, bv, path, out),
                    (Some(_), None) => {
                        out.push(render(path));
                        a.remove(&k);
                    }
                    (None, _) => {}
                }
                path.pop();
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            for (i, (av, bv)) in a.iter_mut().zip(b).enumerate() {
                path.push(Seg::Index(i));
                prune(av, bv, path, out);
                path.pop();
            }
        }
        _ => {}
    }
}
