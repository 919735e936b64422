//! The overlay: pod IPs and Service addresses are virtual and never reach
//! the host's network stack; requests are routed at the HTTP layer by the
//! agents (see DESIGN.md, "Overlay").
//!
//! [`services`] is the routing table each agent keeps from its watches of
//! Services and EndpointSlices; [`proxy`] feeds it and serves NodePorts.

pub(crate) mod feed;
pub mod identity;
pub mod ingress;
pub mod ipam;
pub mod mesh;
pub mod policy;
pub mod proxy;
pub mod router;
pub mod services;
