//! Pod affinity and anti-affinity (kube's `InterPodAffinity`), by
//! `topologyKey`: the incoming pod's required terms and the existing pods'
//! required anti-affinity filter; preferred terms (both ways) and existing
//! pods' required affinity score.
//!
//! As in kube-scheduler, the counts per topology domain are computed once
//! per cycle ([`State::new`]) and each node's check is then a few lookups.

use std::collections::HashMap;

use k8s_openapi::api::core::v1::PodAffinityTerm;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};

use super::selector_matches;
use crate::scheduler::snapshot::{NodeInfo, PodInfo, Snapshot};

/// The reason for a node where the pod's affinity is not satisfied.
pub const AFFINITY: &str = "node(s) didn't match pod affinity rules";
/// The reason for a node where the pod's anti-affinity is violated.
pub const ANTI_AFFINITY: &str = "node(s) didn't match pod anti-affinity rules";
/// The reason for a node where an existing pod's anti-affinity forbids the
/// incoming pod.
pub const EXISTING_ANTI_AFFINITY: &str = "node(s) didn't satisfy existing pods anti-affinity rules";

/// The weight of an existing pod's *required* affinity towards the incoming
/// pod when scoring (kube's `hardPodAffinityWeight` default).
const HARD_POD_AFFINITY_WEIGHT: i64 = 1;

type Domain = (String, String);

/// Whether `term`, written in pod `owner`'s spec, selects pod `target`:
/// namespaces (the owner's own by default, a list and/or a namespace
/// selector) and label selector (a missing selector selects nothing),
/// with `matchLabelKeys`/`mismatchLabelKeys` taken from the owner's labels.
pub fn term_matches(
    term: &PodAffinityTerm,
    owner: &PodInfo,
    target: &PodInfo,
    snapshot: &Snapshot,
) -> bool {
    let namespaces = term.namespaces.as_deref().unwrap_or_default();
    let namespace_ok = if namespaces.is_empty() && term.namespace_selector.is_none() {
        target.namespace == owner.namespace
    } else {
        namespaces.contains(&target.namespace)
            || term.namespace_selector.as_ref().is_some_and(|selector| {
                let empty = Default::default();
                let labels = snapshot
                    .namespace_labels(&target.namespace)
                    .unwrap_or(&empty);
                selector_matches(selector, labels)
            })
    };
    if !namespace_ok {
        return false;
    }
    let Some(selector) = term.label_selector.as_ref() else {
        return false;
    };
    if !selector_matches(selector, target.labels()) {
        return false;
    }
    let keyed = |keys: &Option<Vec<String>>, operator: &str| -> bool {
        let requirements: Vec<LabelSelectorRequirement> = keys
            .iter()
            .flatten()
            .filter_map(|key| {
                let value = owner.labels().get(key)?;
                Some(LabelSelectorRequirement {
                    key: key.clone(),
                    operator: operator.to_owned(),
                    values: Some(vec![value.clone()]),
                })
            })
            .collect();
        requirements.is_empty()
            || selector_matches(
                &LabelSelector {
                    match_expressions: Some(requirements),
                    match_labels: None,
                },
                target.labels(),
            )
    };
    keyed(&term.match_label_keys, "In") && keyed(&term.mismatch_label_keys, "NotIn")
}

fn domain_of(node: &NodeInfo, key: &str) -> Option<Domain> {
    super::topology_value(node, key).map(|v| (key.to_owned(), v.to_owned()))
}

/// What the filter needs, counted once per cycle.
#[derive(Debug, Default)]
pub struct State {
    /// Domains where an existing pod's required anti-affinity selects the
    /// incoming pod.
    existing_anti: HashMap<Domain, u32>,
    /// Domains holding pods that match all the incoming pod's required
    /// affinity terms (counted per term's key).
    affinity: HashMap<Domain, u32>,
    /// Domains holding pods the incoming pod's required anti-affinity
    /// selects.
    anti: HashMap<Domain, u32>,
}

impl State {
    /// Counts the domains for `pod` over the whole snapshot. Costs nothing
    /// when neither the pod nor any existing pod has required terms.
    pub fn new(pod: &PodInfo, snapshot: &Snapshot) -> State {
        let mut state = State::default();
        if snapshot.anti_affinity_pods() > 0 {
            for node in snapshot
                .nodes()
                .iter()
                .filter(|n| n.anti_affinity_pods() > 0)
            {
                for existing in node.pods() {
                    for term in existing.required_anti_affinity() {
                        if let Some(domain) = domain_of(node, &term.topology_key)
                            && term_matches(term, existing, pod, snapshot)
                        {
                            *state.existing_anti.entry(domain).or_default() += 1;
                        }
                    }
                }
            }
        }
        let affinity = pod.required_affinity();
        let anti = pod.required_anti_affinity();
        if affinity.is_empty() && anti.is_empty() {
            return state;
        }
        for node in snapshot.nodes() {
            for existing in node.pods() {
                if !affinity.is_empty()
                    && affinity
                        .iter()
                        .all(|t| term_matches(t, pod, existing, snapshot))
                {
                    for term in affinity {
                        if let Some(domain) = domain_of(node, &term.topology_key) {
                            *state.affinity.entry(domain).or_default() += 1;
                        }
                    }
                }
                for term in anti {
                    if let Some(domain) = domain_of(node, &term.topology_key)
                        && term_matches(term, pod, existing, snapshot)
                    {
                        *state.anti.entry(domain).or_default() += 1;
                    }
                }
            }
        }
        state
    }

    /// Fails a node where the pod's affinity or anti-affinity, or an
    /// existing pod's anti-affinity, would be violated.
    pub fn filter(
        &self,
        pod: &PodInfo,
        node: &NodeInfo,
        snapshot: &Snapshot,
    ) -> Result<(), &'static str> {
        // kube's order: the pod's affinity, its anti-affinity, then the
        // existing pods' anti-affinity.
        self.satisfies_affinity(pod, node, snapshot)?;
        for term in pod.required_anti_affinity() {
            if let Some(domain) = domain_of(node, &term.topology_key)
                && self.anti.get(&domain).is_some_and(|&c| c > 0)
            {
                return Err(ANTI_AFFINITY);
            }
        }
        if !self.existing_anti.is_empty()
            && super::topology_pairs(node).any(|(k, v)| {
                self.existing_anti
                    .get(&(k.to_owned(), v.to_owned()))
                    .is_some_and(|&c| c > 0)
            })
        {
            return Err(EXISTING_ANTI_AFFINITY);
        }
        Ok(())
    }

    fn satisfies_affinity(
        &self,
        pod: &PodInfo,
        node: &NodeInfo,
        snapshot: &Snapshot,
    ) -> Result<(), &'static str> {
        let affinity = pod.required_affinity();
        if affinity.is_empty() {
            return Ok(());
        }
        let mut pods_exist = true;
        for term in affinity {
            match domain_of(node, &term.topology_key) {
                None => return Err(AFFINITY),
                Some(domain) => {
                    if !self.affinity.contains_key(&domain) {
                        pods_exist = false;
                    }
                }
            }
        }
        // The first pod of a group with affinity to itself may go anywhere
        // with the right topology labels.
        if pods_exist
            || (self.affinity.is_empty()
                && affinity.iter().all(|t| term_matches(t, pod, pod, snapshot)))
        {
            Ok(())
        } else {
            Err(AFFINITY)
        }
    }
}

/// Preferred (anti-)affinity scores per domain, counted once per cycle.
#[derive(Debug, Default)]
pub struct Scores {
    domains: HashMap<Domain, i64>,
}

impl Scores {
    /// Weighs the domains for `pod`: its preferred terms towards existing
    /// pods, and existing pods' required affinity and preferred terms
    /// towards it.
    pub fn new(pod: &PodInfo, snapshot: &Snapshot) -> Scores {
        let mut scores = Scores::default();
        let preferred = pod.preferred_affinity();
        let preferred_anti = pod.preferred_anti_affinity();
        let own_terms = !preferred.is_empty() || !preferred_anti.is_empty();
        for node in snapshot.nodes() {
            if !own_terms && node.affinity_pods() == 0 {
                continue;
            }
            let mut add = |key: &str, weight: i64| {
                if let Some(domain) = domain_of(node, key) {
                    *scores.domains.entry(domain).or_default() += weight;
                }
            };
            for existing in node.pods() {
                for w in preferred {
                    if term_matches(&w.pod_affinity_term, pod, existing, snapshot) {
                        add(&w.pod_affinity_term.topology_key, i64::from(w.weight));
                    }
                }
                for w in preferred_anti {
                    if term_matches(&w.pod_affinity_term, pod, existing, snapshot) {
                        add(&w.pod_affinity_term.topology_key, -i64::from(w.weight));
                    }
                }
                if !existing.has_pod_affinity() {
                    continue;
                }
                for term in existing.required_affinity() {
                    if term_matches(term, existing, pod, snapshot) {
                        add(&term.topology_key, HARD_POD_AFFINITY_WEIGHT);
                    }
                }
                for w in existing.preferred_affinity() {
                    if term_matches(&w.pod_affinity_term, existing, pod, snapshot) {
                        add(&w.pod_affinity_term.topology_key, i64::from(w.weight));
                    }
                }
                for w in existing.preferred_anti_affinity() {
                    if term_matches(&w.pod_affinity_term, existing, pod, snapshot) {
                        add(&w.pod_affinity_term.topology_key, -i64::from(w.weight));
                    }
                }
            }
        }
        scores
    }

    /// The node's raw score: the sum over its labels' domains.
    pub fn score(&self, node: &NodeInfo) -> i64 {
        if self.domains.is_empty() {
            return 0;
        }
        super::topology_pairs(node)
            .filter_map(|(k, v)| self.domains.get(&(k.to_owned(), v.to_owned())))
            .sum()
    }

    /// Scales raw scores to `0..=100` between their minimum and maximum
    /// (all 0 when they are equal).
    pub fn normalize(scores: &mut [i64]) {
        let (Some(&min), Some(&max)) = (scores.iter().min(), scores.iter().max()) else {
            return;
        };
        let diff = max - min;
        for score in scores {
            *score = if diff > 0 {
                super::MAX_NODE_SCORE * (*score - min) / diff
            } else {
                0
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::plugins::testing::{labelled, map, node, on, pod};
    use k8s_openapi::api::core::v1::{
        Affinity, Pod, PodAffinity, PodAntiAffinity, WeightedPodAffinityTerm,
    };

    const ZONE: &str = "topology.kubernetes.io/zone";
    const HOST: &str = "kubernetes.io/hostname";

    fn term(app: &str, key: &str) -> PodAffinityTerm {
        PodAffinityTerm {
            label_selector: Some(LabelSelector {
                match_labels: Some(map(&[("app", app)])),
                match_expressions: None,
            }),
            topology_key: key.into(),
            ..Default::default()
        }
    }

    #[derive(Default)]
    struct Terms {
        affinity: Vec<PodAffinityTerm>,
        anti: Vec<PodAffinityTerm>,
        preferred: Vec<(i32, PodAffinityTerm)>,
        preferred_anti: Vec<(i32, PodAffinityTerm)>,
    }

    fn with(name: &str, app: &str, terms: Terms) -> Pod {
        let weighted = |v: Vec<(i32, PodAffinityTerm)>| {
            Some(
                v.into_iter()
                    .map(|(weight, pod_affinity_term)| WeightedPodAffinityTerm {
                        weight,
                        pod_affinity_term,
                    })
                    .collect(),
            )
        };
        let mut p = labelled(pod(name, "", ""), &[("app", app)]);
        p.spec.as_mut().unwrap().affinity = Some(Affinity {
            pod_affinity: Some(PodAffinity {
                required_during_scheduling_ignored_during_execution: Some(terms.affinity),
                preferred_during_scheduling_ignored_during_execution: weighted(terms.preferred),
            }),
            pod_anti_affinity: Some(PodAntiAffinity {
                required_during_scheduling_ignored_during_execution: Some(terms.anti),
                preferred_during_scheduling_ignored_during_execution: weighted(
                    terms.preferred_anti,
                ),
            }),
            ..Default::default()
        });
        p
    }

    /// Three nodes: n1, n2 in zone a, n3 in zone b.
    fn cluster(pods: Vec<Pod>) -> Snapshot {
        let mut s = Snapshot::new();
        for (name, zone) in [("n1", "a"), ("n2", "a"), ("n3", "b")] {
            s.set_node(node(name, "4", "4Gi", "10", &[(ZONE, zone), (HOST, name)]));
        }
        for p in pods {
            s.set_pod(p);
        }
        s
    }

    fn feasible(p: &Pod, s: &Snapshot) -> Vec<Result<(), &'static str>> {
        let info = PodInfo::new(p.clone());
        let state = State::new(&info, s);
        ["n1", "n2", "n3"]
            .iter()
            .map(|n| state.filter(&info, s.node(n).unwrap(), s))
            .collect()
    }

    #[test]
    fn required_terms_filter() {
        let web_on_n1 = on(labelled(pod("w", "", ""), &[("app", "web")]), "n1");
        let anti_web_on_n3 = on(
            with(
                "g",
                "guard",
                Terms {
                    anti: vec![term("web", HOST)],
                    ..Default::default()
                },
            ),
            "n3",
        );
        let cases = [
            (
                "affinity by zone",
                vec![web_on_n1.clone()],
                with(
                    "p",
                    "x",
                    Terms {
                        affinity: vec![term("web", ZONE)],
                        ..Default::default()
                    },
                ),
                [Ok(()), Ok(()), Err(AFFINITY)],
            ),
            (
                "affinity by host",
                vec![web_on_n1.clone()],
                with(
                    "p",
                    "x",
                    Terms {
                        affinity: vec![term("web", HOST)],
                        ..Default::default()
                    },
                ),
                [Ok(()), Err(AFFINITY), Err(AFFINITY)],
            ),
            (
                "affinity with nobody to match",
                vec![],
                with(
                    "p",
                    "x",
                    Terms {
                        affinity: vec![term("web", ZONE)],
                        ..Default::default()
                    },
                ),
                [Err(AFFINITY), Err(AFFINITY), Err(AFFINITY)],
            ),
            (
                "first pod of a self-affine group",
                vec![],
                with(
                    "p",
                    "web",
                    Terms {
                        affinity: vec![term("web", ZONE)],
                        ..Default::default()
                    },
                ),
                [Ok(()), Ok(()), Ok(())],
            ),
            (
                "affinity needs the topology label",
                vec![web_on_n1.clone()],
                with(
                    "p",
                    "x",
                    Terms {
                        affinity: vec![term("web", "rack")],
                        ..Default::default()
                    },
                ),
                [Err(AFFINITY), Err(AFFINITY), Err(AFFINITY)],
            ),
            (
                "anti-affinity by zone",
                vec![web_on_n1.clone()],
                with(
                    "p",
                    "x",
                    Terms {
                        anti: vec![term("web", ZONE)],
                        ..Default::default()
                    },
                ),
                [Err(ANTI_AFFINITY), Err(ANTI_AFFINITY), Ok(())],
            ),
            (
                "anti-affinity by host",
                vec![web_on_n1.clone()],
                with(
                    "p",
                    "x",
                    Terms {
                        anti: vec![term("web", HOST)],
                        ..Default::default()
                    },
                ),
                [Err(ANTI_AFFINITY), Ok(()), Ok(())],
            ),
            (
                "existing pod's anti-affinity",
                vec![anti_web_on_n3.clone()],
                labelled(pod("p", "", ""), &[("app", "web")]),
                [Ok(()), Ok(()), Err(EXISTING_ANTI_AFFINITY)],
            ),
            (
                "existing pod's anti-affinity selects others only",
                vec![anti_web_on_n3],
                labelled(pod("p", "", ""), &[("app", "db")]),
                [Ok(()), Ok(()), Ok(())],
            ),
        ];
        for (what, pods, p, want) in cases {
            assert_eq!(feasible(&p, &cluster(pods)), want, "{what}");
        }
    }

    #[test]
    fn terms_match_namespaces() {
        let mut s = cluster(vec![]);
        s.set_namespace("prod", map(&[("env", "prod")]));
        s.set_namespace("dev", map(&[("env", "dev")]));
        let in_ns = |ns: &str| {
            let mut p = labelled(pod("t", "", ""), &[("app", "web"), ("tier", "1")]);
            p.metadata.namespace = Some(ns.into());
            PodInfo::new(p)
        };
        let owner = in_ns("prod");
        let mut listed = term("web", HOST);
        listed.namespaces = Some(vec!["dev".into()]);
        let mut selected = term("web", HOST);
        selected.namespace_selector = Some(LabelSelector {
            match_labels: Some(map(&[("env", "dev")])),
            match_expressions: None,
        });
        let mut all = term("web", HOST);
        all.namespace_selector = Some(LabelSelector::default());
        let mut no_selector = term("web", HOST);
        no_selector.label_selector = None;
        let mut mismatch = term("web", HOST);
        mismatch.mismatch_label_keys = Some(vec!["tier".into()]);
        let cases = [
            ("own namespace by default", term("web", HOST), "prod", true),
            (
                "other namespace by default",
                term("web", HOST),
                "dev",
                false,
            ),
            ("listed", listed.clone(), "dev", true),
            ("not listed", listed, "prod", false),
            ("namespace selector", selected.clone(), "dev", true),
            ("namespace selector misses", selected, "prod", false),
            ("empty namespace selector is all", all, "other", true),
            (
                "no label selector matches nothing",
                no_selector,
                "prod",
                false,
            ),
            ("mismatchLabelKeys", mismatch, "prod", false),
        ];
        for (what, t, ns, want) in cases {
            assert_eq!(term_matches(&t, &owner, &in_ns(ns), &s), want, "{what}");
        }
    }

    #[test]
    fn preferred_terms_score() {
        let web_on_n1 = on(labelled(pod("w", "", ""), &[("app", "web")]), "n1");
        let likes_me_on_n3 = on(
            with(
                "l",
                "fan",
                Terms {
                    preferred: vec![(30, term("x", HOST))],
                    ..Default::default()
                },
            ),
            "n3",
        );
        let cases = [
            (
                "no terms",
                vec![web_on_n1.clone()],
                labelled(pod("p", "", ""), &[("app", "x")]),
                [0, 0, 0],
            ),
            (
                "preferred zone affinity",
                vec![web_on_n1.clone()],
                with(
                    "p",
                    "x",
                    Terms {
                        preferred: vec![(10, term("web", ZONE))],
                        ..Default::default()
                    },
                ),
                [100, 100, 0],
            ),
            (
                "preferred host anti-affinity",
                vec![web_on_n1.clone()],
                with(
                    "p",
                    "x",
                    Terms {
                        preferred_anti: vec![(10, term("web", HOST))],
                        ..Default::default()
                    },
                ),
                [0, 100, 100],
            ),
            (
                "existing pod prefers me",
                vec![likes_me_on_n3],
                labelled(pod("p", "", ""), &[("app", "x")]),
                [0, 0, 100],
            ),
        ];
        for (what, pods, p, want) in cases {
            let s = cluster(pods);
            let info = PodInfo::new(p);
            let scores = Scores::new(&info, &s);
            let mut raw: Vec<i64> = ["n1", "n2", "n3"]
                .iter()
                .map(|n| scores.score(s.node(n).unwrap()))
                .collect();
            Scores::normalize(&mut raw);
            assert_eq!(raw, want, "{what}");
        }
    }
}
