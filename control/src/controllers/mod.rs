//! The controllers: loops that move the cluster's actual state towards the
//! desired state written in its objects, exactly as Kubernetes' controller
//! manager does. Each is a plain API client ([`kube::Client`]); none reaches
//! into the store.
//!
//! Every controller module exposes `pub async fn run(ctx: Context) ->
//! anyhow::Result<()>`, which runs until the task is aborted (losing
//! leadership) or a fatal error. [`Context`] carries the client, the clock
//! (injectable, so tests can move time) and the options.

use std::sync::Arc;
use std::time::Duration;

use crate::informers::Informers;

pub mod events;

pub mod cronjob;
pub mod csrsigning;
pub mod deployment;
pub mod endpoints;
pub mod gc;
pub mod job;
pub mod namespace;
pub mod nodeipam;
pub mod nodelifecycle;
pub mod replicaset;
pub mod servicelb;
pub mod statefulset;

/// Settings shared by the controllers.
#[derive(Debug, Clone)]
pub struct Options {
    /// How long a node may stay silent (no Lease renewal) before it is
    /// marked NotReady and tainted `node.kubernetes.io/unreachable`.
    /// Kubernetes' default is 40 s.
    pub node_monitor_grace: Duration,
    /// How long pods on an unreachable node are kept before eviction, for
    /// pods without their own toleration (Kubernetes: 300 s; Skiff keeps it
    /// short because wasm pods restart in milliseconds).
    pub pod_eviction_timeout: Duration,
    /// How often every controller re-examines all its objects even without
    /// a change (the resync period).
    pub resync: Duration,
    /// The cluster CA, for the CertificateSigningRequest signer; `None`
    /// (no CA key in this process) turns CSR approval and signing off.
    pub signer: Option<Arc<csrsigning::Signer>>,
    /// The range pod addresses come from (`--cluster-cidr`).
    pub cluster_cidr: skiff_api::cidr::Cidr,
    /// The prefix length of each node's slice of it
    /// (`--node-cidr-mask-size`): a /24 holds 253 pods.
    pub node_cidr_mask: u8,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            node_monitor_grace: Duration::from_secs(40),
            pod_eviction_timeout: Duration::from_secs(30),
            resync: Duration::from_secs(300),
            signer: None,
            cluster_cidr: nodeipam::CLUSTER_CIDR
                .parse()
                .expect("the default cluster CIDR is valid"),
            node_cidr_mask: nodeipam::NODE_MASK,
        }
    }
}

/// The source of "now" for controllers: the system clock in production, a
/// hand-moved clock in tests (CronJob schedules, backoffs, deadlines).
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// The current time.
    fn now(&self) -> jiff::Timestamp;
}

/// The wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> jiff::Timestamp {
        jiff::Timestamp::now()
    }
}

/// A clock the test moves by hand; starts at the time it was made.
#[derive(Debug)]
pub struct ManualClock(parking_lot::Mutex<jiff::Timestamp>);

impl ManualClock {
    /// A clock reading `now` until moved.
    pub fn new(now: jiff::Timestamp) -> ManualClock {
        ManualClock(parking_lot::Mutex::new(now))
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        let mut now = self.0.lock();
        *now = now
            .checked_add(jiff::SignedDuration::try_from(by).unwrap_or(jiff::SignedDuration::MAX))
            .unwrap_or(jiff::Timestamp::MAX);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> jiff::Timestamp {
        *self.0.lock()
    }
}

/// What every controller is given.
#[derive(Clone)]
pub struct Context {
    /// The API client.
    pub client: kube::Client,
    /// "Now".
    pub clock: Arc<dyn Clock>,
    /// Settings.
    pub options: Arc<Options>,
    /// The process's shared watches.
    pub informers: Informers,
}

impl Context {
    /// A context on the system clock with default options.
    pub fn new(client: kube::Client) -> Context {
        Context {
            informers: Informers::new(client.clone()),
            client,
            clock: Arc::new(SystemClock),
            options: Arc::new(Options::default()),
        }
    }

    /// An event recorder reporting as `component` (`deployment-controller`).
    pub fn recorder(&self, component: &str) -> events::Recorder {
        events::Recorder::new(self.client.clone(), component, self.clock.clone())
    }
}

/// What the Job, CronJob and StatefulSet reconcilers hold: the client, the
/// clock, their event recorder and the resync period.
pub(crate) struct Reconciler {
    pub(crate) client: kube::Client,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) recorder: events::Recorder,
    pub(crate) resync: Duration,
}

impl Reconciler {
    /// The reconciler state of the controller called `component`.
    pub(crate) fn new(ctx: &Context, component: &str) -> Arc<Reconciler> {
        Arc::new(Reconciler {
            client: ctx.client.clone(),
            clock: ctx.clock.clone(),
            recorder: ctx.recorder(component),
            resync: ctx.options.resync,
        })
    }
}

/// When to retry a failed reconcile: a write conflict (409, the cache was
/// behind) almost at once, anything else after 2 s; only the latter is
/// worth a warning.
pub(crate) fn retry_after_error(
    kind: &str,
    name: &str,
    error: &dyn std::error::Error,
    source: Option<&kube::Error>,
) -> kube::runtime::controller::Action {
    let conflict = matches!(source, Some(kube::Error::Api(s)) if s.code == 409);
    if !conflict {
        tracing::warn!(kind, name, error = %chain(error), "reconcile failed");
    }
    kube::runtime::controller::Action::requeue(if conflict {
        Duration::from_millis(100)
    } else {
        Duration::from_secs(2)
    })
}

/// An error and its sources, one line (`a: b: c`), for logs.
pub(crate) fn chain(error: &dyn std::error::Error) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
