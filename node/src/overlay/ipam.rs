//! Pod IP address management on one node.
//!
//! The node IPAM controller gives every Node a slice of the cluster CIDR
//! (`spec.podCIDR`, a /24 of `10.42.0.0/16` by default); the agent hands
//! out addresses from it, one per pod, so pod IPs are unique cluster-wide
//! without the nodes talking to each other. Like CNI's `host-local`
//! plugin, allocation walks forward from the last address handed out, so
//! an address just released is not reused at once (a caller that still
//! holds it reaches nothing rather than the wrong pod).
//!
//! The addresses are virtual: they name pods inside the overlay and never
//! reach the host's network stack.

use std::collections::HashMap;
use std::net::Ipv4Addr;

use skiff_api::cidr::Cidr;

/// Why a CIDR cannot serve as a pod range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    /// Not `a.b.c.d/len`.
    #[error("{0:?} is not an IPv4 CIDR (a.b.c.d/len)")]
    Syntax(String),
    /// Too small to hold a pod next to the network, gateway and broadcast
    /// addresses.
    #[error("{0} is too small for pods (at most /29)")]
    TooSmall(String),
}

/// The pod addresses of one node.
#[derive(Debug, Clone)]
pub struct PodIpam {
    cidr: String,
    range: Cidr,
    /// Pod uid → address.
    by_pod: HashMap<String, Ipv4Addr>,
    taken: HashMap<Ipv4Addr, String>,
    /// Offset of the last address handed out.
    last: u64,
}

impl PodIpam {
    /// A range over `cidr` (`10.42.3.0/24`). The network address, the
    /// first host address (kept for the node itself, as a CNI bridge
    /// would) and the broadcast address are never handed out.
    pub fn new(cidr: &str) -> Result<PodIpam, CidrError> {
        let range: Cidr = cidr
            .trim()
            .parse()
            .map_err(|_| CidrError::Syntax(cidr.to_owned()))?;
        if range.prefix > 29 {
            return Err(CidrError::TooSmall(cidr.to_owned()));
        }
        Ok(PodIpam {
            cidr: cidr.trim().to_owned(),
            range,
            by_pod: HashMap::new(),
            taken: HashMap::new(),
            // As if the last usable address had just been handed out:
            // allocation starts at the first.
            last: range.size() - 2,
        })
    }

    /// The range, as given.
    pub fn cidr(&self) -> &str {
        &self.cidr
    }

    /// Whether `ip` lies in the range.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        self.range.contains(ip)
    }

    /// The address of pod `uid`, allocating one if it has none; `None`
    /// when the range is full.
    pub fn allocate(&mut self, uid: &str) -> Option<Ipv4Addr> {
        if let Some(ip) = self.by_pod.get(uid) {
            return Some(*ip);
        }
        // Offsets 2 ..= size-2: skip network, node and broadcast.
        let usable = self.range.size() - 3;
        for step in 1..=usable {
            let offset = 2 + (self.last - 2 + step) % usable;
            let ip = self.range.nth(offset)?;
            if !self.taken.contains_key(&ip) {
                self.last = offset;
                self.take(uid, ip);
                return Some(ip);
            }
        }
        None
    }

    /// Gives pod `uid` the address it had before (an agent restarting
    /// keeps its pods' addresses). Refused when the address is outside the
    /// range, reserved, or held by another pod.
    pub fn restore(&mut self, uid: &str, ip: Ipv4Addr) -> bool {
        match self.range.offset(ip) {
            Some(offset) if offset >= 2 && offset < self.range.size() - 1 => {}
            _ => return false,
        }
        match self.taken.get(&ip) {
            Some(holder) => holder == uid,
            None => {
                if let Some(old) = self.by_pod.remove(uid) {
                    self.taken.remove(&old);
                }
                self.take(uid, ip);
                true
            }
        }
    }

    /// Releases pod `uid`'s address.
    pub fn release(&mut self, uid: &str) -> Option<Ipv4Addr> {
        let ip = self.by_pod.remove(uid)?;
        self.taken.remove(&ip);
        Some(ip)
    }

    /// The address of pod `uid`, if it has one.
    pub fn get(&self, uid: &str) -> Option<Ipv4Addr> {
        self.by_pod.get(uid).copied()
    }

    /// How many addresses are in use.
    pub fn in_use(&self) -> usize {
        self.by_pod.len()
    }

    fn take(&mut self, uid: &str, ip: Ipv4Addr) {
        self.by_pod.insert(uid.to_owned(), ip);
        self.taken.insert(ip, uid.to_owned());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hands_out_host_addresses_in_order_without_reuse() {
        let mut ipam = PodIpam::new("10.42.3.0/24").unwrap();
        assert_eq!(ipam.allocate("a"), Some(Ipv4Addr::new(10, 42, 3, 2)));
        assert_eq!(ipam.allocate("b"), Some(Ipv4Addr::new(10, 42, 3, 3)));
        // The same pod keeps its address.
        assert_eq!(ipam.allocate("a"), Some(Ipv4Addr::new(10, 42, 3, 2)));
        assert_eq!(ipam.release("a"), Some(Ipv4Addr::new(10, 42, 3, 2)));
        // Released addresses wait until the range wraps around.
        assert_eq!(ipam.allocate("c"), Some(Ipv4Addr::new(10, 42, 3, 4)));
        assert_eq!(ipam.in_use(), 2);
    }

    #[test]
    fn a_full_range_says_so_and_wraps_after_release() {
        let mut ipam = PodIpam::new("10.0.0.8/29").unwrap();
        let got: Vec<_> = (0..5).map(|i| ipam.allocate(&i.to_string())).collect();
        assert_eq!(
            got,
            [10, 11, 12, 13, 14].map(|o| Some(Ipv4Addr::new(10, 0, 0, o)))
        );
        assert_eq!(ipam.allocate("full"), None);
        ipam.release("1");
        assert_eq!(ipam.allocate("next"), Some(Ipv4Addr::new(10, 0, 0, 11)));
        assert!(!ipam.contains(Ipv4Addr::new(10, 0, 0, 16)));
        assert!(ipam.contains(Ipv4Addr::new(10, 0, 0, 15)));
    }

    #[test]
    fn restore_keeps_addresses_across_restarts_and_refuses_clashes() {
        let mut ipam = PodIpam::new("10.42.0.0/24").unwrap();
        assert!(ipam.restore("a", Ipv4Addr::new(10, 42, 0, 7)));
        assert!(ipam.restore("a", Ipv4Addr::new(10, 42, 0, 7)));
        assert!(!ipam.restore("b", Ipv4Addr::new(10, 42, 0, 7)));
        assert!(!ipam.restore("b", Ipv4Addr::new(10, 42, 1, 7)));
        assert!(!ipam.restore("b", Ipv4Addr::new(10, 42, 0, 1)));
        assert!(!ipam.restore("b", Ipv4Addr::new(10, 42, 0, 255)));
        // Allocation steps around restored addresses.
        for _ in 0..5 {
            let ip = ipam.allocate(&format!("n{}", ipam.in_use())).unwrap();
            assert_ne!(ip, Ipv4Addr::new(10, 42, 0, 7));
        }
        assert_eq!(ipam.get("a"), Some(Ipv4Addr::new(10, 42, 0, 7)));
    }

    #[test]
    fn bad_ranges_are_named() {
        assert_eq!(
            PodIpam::new("10.42.0.0").unwrap_err().to_string(),
            "\"10.42.0.0\" is not an IPv4 CIDR (a.b.c.d/len)"
        );
        assert!(matches!(
            PodIpam::new("10.42.0.0/30"),
            Err(CidrError::TooSmall(_))
        ));
        assert!(PodIpam::new("fd00::/64").is_err());
        // A host address inside the range is accepted as the range.
        assert!(
            PodIpam::new("10.42.5.9/24")
                .unwrap()
                .contains(Ipv4Addr::new(10, 42, 5, 1))
        );
    }
}
