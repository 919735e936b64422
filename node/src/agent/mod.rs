//! The node agent: registration, heartbeat, pod lifecycle, status.
