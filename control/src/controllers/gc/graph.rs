//! The garbage collector's picture of ownership, built from watch events:
//! every object by uid, its owners, its dependents. Owners referenced but
//! not (yet) seen are kept as virtual nodes so their dependents are known.
//! The graph decides which uids need attention after each change; it does
//! no I/O.

use std::collections::{HashMap, HashSet};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

/// The orphaning finalizer (`propagationPolicy: Orphan`).
pub(crate) const ORPHAN: &str = "orphan";
/// The foreground deletion finalizer (`propagationPolicy: Foreground`).
pub(crate) const FOREGROUND: &str = "foregroundDeletion";

/// Which object a node stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Identity {
    pub(crate) api_version: String,
    pub(crate) kind: String,
    pub(crate) namespace: Option<String>,
    pub(crate) name: String,
    pub(crate) uid: String,
}

#[derive(Debug)]
pub(crate) struct Node {
    pub(crate) identity: Identity,
    /// False for an owner only known from a dependent's reference.
    pub(crate) observed: bool,
    pub(crate) owners: Vec<OwnerReference>,
    pub(crate) dependents: HashSet<String>,
    pub(crate) deleting: bool,
    pub(crate) finalizers: Vec<String>,
}

impl Node {
    fn deleting_dependents(&self) -> bool {
        self.deleting && self.finalizers.iter().any(|f| f == FOREGROUND)
    }
}

/// The graph.
#[derive(Debug, Default)]
pub(crate) struct Graph {
    pub(crate) nodes: HashMap<String, Node>,
}

impl Graph {
    /// Records an object as it is now; returns the uids to examine.
    pub(crate) fn upsert(&mut self, identity: Identity, meta: &ObjectMeta) -> Vec<String> {
        let mut enqueue = Vec::new();
        let uid = identity.uid.clone();
        let owners = meta.owner_references.clone().unwrap_or_default();
        let deleting = meta.deletion_timestamp.is_some();
        let finalizers = meta.finalizers.clone().unwrap_or_default();
        let node = self.nodes.entry(uid.clone()).or_insert_with(|| Node {
            identity: identity.clone(),
            observed: false,
            owners: Vec::new(),
            dependents: HashSet::new(),
            deleting: false,
            finalizers: Vec::new(),
        });
        let was_deleting_dependents = node.observed && node.deleting_dependents();
        let old_owners = std::mem::replace(&mut node.owners, owners.clone());
        node.identity = identity.clone();
        node.observed = true;
        node.deleting = deleting;
        node.finalizers = finalizers;
        let deleting_dependents = node.deleting_dependents();
        let orphaning = deleting && node.finalizers.iter().any(|f| f == ORPHAN);
        let dependents: Vec<String> = node.dependents.iter().cloned().collect();

        // Owners no longer referenced, or no longer blocked on: a
        // foreground deletion waiting on this object may proceed.
        for old in &old_owners {
            let kept = owners.iter().find(|o| o.uid == old.uid);
            let unblocked = match kept {
                None => true,
                Some(new) => blocks(old) && !blocks(new),
            };
            if !unblocked {
                continue;
            }
            if let Some(owner) = self.nodes.get_mut(&old.uid) {
                if kept.is_none() {
                    owner.dependents.remove(&uid);
                }
                if owner.deleting_dependents() {
                    enqueue.push(old.uid.clone());
                }
                if !owner.observed && owner.dependents.is_empty() {
                    self.nodes.remove(&old.uid);
                }
            }
        }
        for reference in &owners {
            let owner = self
                .nodes
                .entry(reference.uid.clone())
                .or_insert_with(|| Node {
                    identity: Identity {
                        api_version: reference.api_version.clone(),
                        kind: reference.kind.clone(),
                        namespace: identity.namespace.clone(),
                        name: reference.name.clone(),
                        uid: reference.uid.clone(),
                    },
                    observed: false,
                    owners: Vec::new(),
                    dependents: HashSet::new(),
                    deleting: false,
                    finalizers: Vec::new(),
                });
            owner.dependents.insert(uid.clone());
            // An owner never seen may not exist: the dependent checks.
            if !owner.observed {
                enqueue.push(uid.clone());
            }
        }
        if orphaning || deleting_dependents {
            enqueue.push(uid.clone());
        }
        if deleting_dependents && !was_deleting_dependents {
            enqueue.extend(dependents);
        }
        enqueue
    }

    /// Forgets a deleted object; returns the uids to examine (its
    /// dependents, and owners waiting for it).
    pub(crate) fn remove(&mut self, uid: &str) -> Vec<String> {
        let mut enqueue = Vec::new();
        let Some(node) = self.nodes.remove(uid) else {
            return enqueue;
        };
        for reference in &node.owners {
            if let Some(owner) = self.nodes.get_mut(&reference.uid) {
                owner.dependents.remove(uid);
                if owner.deleting_dependents() {
                    enqueue.push(reference.uid.clone());
                }
                if !owner.observed && owner.dependents.is_empty() {
                    self.nodes.remove(&reference.uid);
                }
            }
        }
        enqueue.extend(node.dependents.iter().cloned());
        if !node.dependents.is_empty() {
            // Dependents still point here: keep the edges, as a virtual node.
            self.nodes.insert(
                uid.to_owned(),
                Node {
                    observed: false,
                    owners: Vec::new(),
                    deleting: false,
                    finalizers: Vec::new(),
                    ..node
                },
            );
        }
        enqueue
    }

    /// The dependents of `uid`, and whether each blocks its deletion
    /// (`blockOwnerDeletion: true`).
    pub(crate) fn dependents(&self, uid: &str) -> Vec<(Identity, bool)> {
        let Some(node) = self.nodes.get(uid) else {
            return Vec::new();
        };
        node.dependents
            .iter()
            .filter_map(|d| self.nodes.get(d))
            .filter(|d| d.observed)
            .map(|d| {
                let blocking = d.owners.iter().any(|o| o.uid == uid && blocks(o));
                (d.identity.clone(), blocking)
            })
            .collect()
    }

    /// The observed nodes worth a periodic look: those with an owner never
    /// seen (it may not exist), and those being deleted with a finalizer
    /// the collector owns. Owners the watches show alive need no look: their
    /// deletion will be seen.
    pub(crate) fn resync(&self) -> Vec<String> {
        self.nodes
            .values()
            .filter(|n| n.observed)
            .filter(|n| {
                n.owners
                    .iter()
                    .any(|o| self.nodes.get(&o.uid).is_none_or(|owner| !owner.observed))
                    || (n.deleting && n.finalizers.iter().any(|f| f == ORPHAN || f == FOREGROUND))
            })
            .map(|n| n.identity.uid.clone())
            .collect()
    }

    /// The uids of observed nodes of one type.
    pub(crate) fn uids_of(&self, api_version: &str, kind: &str) -> Vec<String> {
        self.nodes
            .values()
            .filter(|n| {
                n.observed && n.identity.api_version == api_version && n.identity.kind == kind
            })
            .map(|n| n.identity.uid.clone())
            .collect()
    }
}

fn blocks(reference: &OwnerReference) -> bool {
    reference.block_owner_deletion == Some(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(kind: &str, name: &str) -> Identity {
        Identity {
            api_version: "v1".into(),
            kind: kind.into(),
            namespace: Some("default".into()),
            name: name.into(),
            uid: format!("uid-{name}"),
        }
    }

    fn meta(owners: &[&str], deleting: bool, finalizers: &[&str]) -> ObjectMeta {
        ObjectMeta {
            owner_references: Some(
                owners
                    .iter()
                    .map(|o| OwnerReference {
                        api_version: "v1".into(),
                        kind: "ConfigMap".into(),
                        name: (*o).into(),
                        uid: format!("uid-{o}"),
                        block_owner_deletion: Some(true),
                        controller: None,
                    })
                    .collect(),
            ),
            deletion_timestamp: deleting.then_some(
                k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::UNIX_EPOCH),
            ),
            finalizers: Some(finalizers.iter().map(|f| (*f).to_owned()).collect()),
            ..ObjectMeta::default()
        }
    }

    #[test]
    fn a_dependent_of_an_unseen_owner_is_examined_and_of_a_seen_one_is_not() {
        let mut g = Graph::default();
        assert_eq!(
            g.upsert(id("ConfigMap", "owner"), &meta(&[], false, &[])),
            Vec::<String>::new()
        );
        assert_eq!(
            g.upsert(id("Pod", "dep"), &meta(&["owner"], false, &[])),
            Vec::<String>::new()
        );
        assert_eq!(
            g.upsert(id("Pod", "lost"), &meta(&["ghost"], false, &[])),
            vec!["uid-lost"]
        );
        assert!(!g.nodes["uid-ghost"].observed);
    }

    #[test]
    fn deleting_an_owner_examines_its_dependents_and_keeps_the_edges() {
        let mut g = Graph::default();
        g.upsert(id("ConfigMap", "owner"), &meta(&[], false, &[]));
        g.upsert(id("Pod", "dep"), &meta(&["owner"], false, &[]));
        assert_eq!(g.remove("uid-owner"), vec!["uid-dep"]);
        assert!(!g.nodes["uid-owner"].observed);
        assert_eq!(g.remove("uid-dep"), Vec::<String>::new());
        assert!(
            g.nodes.is_empty(),
            "the virtual owner goes with its last dependent"
        );
    }

    #[test]
    fn foreground_deletion_examines_dependents_then_waits_for_the_blocking_ones() {
        let mut g = Graph::default();
        g.upsert(id("ConfigMap", "owner"), &meta(&[], false, &[]));
        g.upsert(id("Pod", "dep"), &meta(&["owner"], false, &[]));
        let mut e = g.upsert(id("ConfigMap", "owner"), &meta(&[], true, &[FOREGROUND]));
        e.sort();
        assert_eq!(e, vec!["uid-dep", "uid-owner"]);
        assert_eq!(g.dependents("uid-owner"), vec![(id("Pod", "dep"), true)]);
        assert_eq!(g.remove("uid-dep"), vec!["uid-owner"]);
        assert!(g.dependents("uid-owner").is_empty());
    }

    #[test]
    fn an_orphaning_owner_is_examined() {
        let mut g = Graph::default();
        g.upsert(id("ConfigMap", "owner"), &meta(&[], false, &[]));
        assert_eq!(
            g.upsert(id("ConfigMap", "owner"), &meta(&[], true, &[ORPHAN])),
            vec!["uid-owner"]
        );
    }
}
