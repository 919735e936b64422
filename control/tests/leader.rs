//! Leader election against the real API server: one leader at a time, a
//! standby takes over when the leader dies (without releasing) within the
//! lease duration, and at once when the leader shuts down cleanly.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use skiff_control::leader::{self, Election};
use support::{Cluster, eventually};

/// A candidate whose work counts how many copies of it are running.
struct Candidate {
    identity: String,
    running: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
    stop: tokio::sync::oneshot::Sender<()>,
}

fn election(identity: &str) -> Election {
    Election {
        identity: identity.into(),
        lease_duration: Duration::from_secs(3),
        renew_deadline: Duration::from_secs(2),
        retry_period: Duration::from_millis(200),
        ..Election::new("kube-system", "test-lease")
    }
}

/// How many candidates are leading right now, summed over all of them.
fn leading(all: &[Arc<AtomicUsize>], both: &Arc<AtomicUsize>) -> usize {
    let n = all.iter().map(|r| r.load(Ordering::SeqCst)).sum();
    both.fetch_max(n, Ordering::SeqCst);
    n
}

fn start(client: &kube::Client, identity: &str) -> Candidate {
    let running = Arc::new(AtomicUsize::new(0));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let counter = running.clone();
    let task = tokio::spawn(leader::run(
        client.clone(),
        election(identity),
        move || {
            let counter = counter.clone();
            async move {
                struct Running(Arc<AtomicUsize>);
                impl Drop for Running {
                    fn drop(&mut self) {
                        self.0.fetch_sub(1, Ordering::SeqCst);
                    }
                }
                counter.fetch_add(1, Ordering::SeqCst);
                let _running = Running(counter);
                std::future::pending::<()>().await;
                Ok(())
            }
        },
        async {
            let _ = stopped.await;
        },
    ));
    Candidate {
        identity: identity.into(),
        running,
        task,
        stop,
    }
}

async fn holder(client: &kube::Client) -> Option<String> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-system");
    leases
        .get_opt("test-lease")
        .await
        .unwrap()
        .and_then(|l| l.spec?.holder_identity)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_leader_and_a_standby_takes_over() {
    let cluster = Cluster::start().await;
    let client = cluster.client.clone();
    let most = Arc::new(AtomicUsize::new(0));
    let a = start(&client, "a");
    let b = start(&client, "b");
    let counters = [a.running.clone(), b.running.clone()];

    eventually(Duration::from_secs(10), "a leader", || async {
        (leading(&counters, &most) == 1).then_some(())
    })
    .await;
    // Watch for a while: never two leaders.
    for _ in 0..20 {
        leading(&counters, &most);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let first = holder(&client).await.expect("the lease names its holder");
    let (leader, standby) = if first == a.identity { (a, b) } else { (b, a) };
    assert_eq!(
        leader.running.load(Ordering::SeqCst),
        1,
        "the holder is the one working"
    );

    // Kill the leader without a goodbye: its work must stop with it, and
    // the standby must take over once the lease has expired.
    leader.task.abort();
    let _ = leader.task.await;
    // The work runs in a task of its own, aborted when the election is
    // dropped: it stops as soon as the runtime gets to it.
    eventually(
        Duration::from_secs(2),
        "the old leader's work to stop",
        || async { (leader.running.load(Ordering::SeqCst) == 0).then_some(()) },
    )
    .await;
    let killed_at = tokio::time::Instant::now();
    eventually(Duration::from_secs(10), "the standby to lead", || async {
        (standby.running.load(Ordering::SeqCst) == 1).then_some(())
    })
    .await;
    let took = killed_at.elapsed();
    assert_eq!(
        holder(&client).await.as_deref(),
        Some(standby.identity.as_str())
    );
    // Not before the lease could have expired (it was renewed at most one
    // retry period before the kill).
    assert!(
        took >= Duration::from_millis(2500),
        "took over after {took:?}, before the 3 s lease could expire"
    );
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-system");
    let lease = leases.get("test-lease").await.unwrap();
    assert_eq!(lease.spec.unwrap().lease_transitions, Some(1));

    // A clean shutdown releases the lease: a new candidate takes it at
    // once rather than after the lease duration.
    let c = start(&client, "c");
    let _ = standby.stop.send(());
    standby.task.await.unwrap();
    assert_eq!(standby.running.load(Ordering::SeqCst), 0);
    eventually(
        Duration::from_secs(2),
        "the new candidate to lead after a release",
        || async { (c.running.load(Ordering::SeqCst) == 1).then_some(()) },
    )
    .await;
    assert_eq!(holder(&client).await.as_deref(), Some("c"));
    assert_eq!(most.load(Ordering::SeqCst), 1, "two leaders at once");
    let _ = c.stop.send(());
    c.task.await.unwrap();
}
