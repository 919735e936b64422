//! Each container's log: the current instance's and the previous one's.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use skiff_runtime::Log;
use tokio::sync::watch;

/// Bytes of output kept per container instance.
const LOG_CAPACITY: usize = skiff_runtime::DEFAULT_LOG_CAPACITY;

/// `(namespace, pod, container)`.
pub(crate) type ContainerKey = (String, String, String);

/// One instance's log and whether the instance has ended (so a follower
/// knows when to stop).
#[derive(Clone, Debug)]
pub(crate) struct InstanceLog {
    pub(crate) log: Log,
    ended: Arc<watch::Sender<bool>>,
}

impl InstanceLog {
    fn new() -> InstanceLog {
        InstanceLog {
            log: Log::new(LOG_CAPACITY),
            ended: Arc::new(watch::channel(false).0),
        }
    }

    /// Marks the instance as ended: followers drain and stop.
    pub(crate) fn end(&self) {
        self.log.flush();
        self.ended.send_replace(true);
    }

    /// Resolves once the instance has ended.
    pub(crate) fn ended(&self) -> watch::Receiver<bool> {
        self.ended.subscribe()
    }
}

#[derive(Default)]
struct ContainerLogs {
    current: Option<InstanceLog>,
    previous: Option<InstanceLog>,
}

/// Every container's logs on this node.
#[derive(Default)]
pub(crate) struct LogStore {
    containers: Mutex<HashMap<ContainerKey, ContainerLogs>>,
}

impl LogStore {
    /// A fresh log for a new instance of a container; the current one (if
    /// any) becomes the previous one.
    pub(crate) fn start_instance(&self, key: ContainerKey) -> InstanceLog {
        let instance = InstanceLog::new();
        let mut map = self.containers.lock();
        let entry = map.entry(key).or_default();
        if let Some(old) = entry.current.take() {
            old.end();
            entry.previous = Some(old);
        }
        entry.current = Some(instance.clone());
        instance
    }

    /// The current (or, with `previous`, the previous) instance's log.
    pub(crate) fn get(&self, key: &ContainerKey, previous: bool) -> Option<InstanceLog> {
        let map = self.containers.lock();
        let entry = map.get(key)?;
        if previous {
            entry.previous.clone()
        } else {
            entry.current.clone()
        }
    }

    /// Forgets every log of a pod (it is gone).
    pub(crate) fn remove_pod(&self, namespace: &str, pod: &str) {
        self.containers.lock().retain(|(ns, name, _), logs| {
            let keep = !(ns == namespace && name == pod);
            if !keep && let Some(current) = &logs.current {
                current.end();
            }
            keep
        });
    }
}
