//! The API server: durable creates per second at 1, 16 and 64 concurrent
//! clients; watch fan-out to 100 watchers; control-plane RSS idle and under
//! load. Every create is acknowledged only once durable (the store flushes
//! before answering), so creates/s is durable creates/s.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::Api;
use kube::api::{ObjectMeta, PostParams};
use kube::runtime::watcher;

use crate::proc::{SkiffServer, mib};
use crate::report::{Report, table};
use crate::stats::{Latencies, fmt};

/// Sizes of one run.
pub struct Sizes {
    /// Creates per concurrency level.
    pub creates: usize,
    /// Time bound per concurrency level.
    pub time_limit: Duration,
    /// Watchers for the fan-out test.
    pub watchers: usize,
    /// Objects written while they watch.
    pub fanout_objects: usize,
}

impl Sizes {
    /// Full or smoke sizes.
    pub fn new(smoke: bool) -> Sizes {
        if smoke {
            Sizes {
                creates: 64,
                time_limit: Duration::from_secs(10),
                watchers: 10,
                fanout_objects: 5,
            }
        } else {
            Sizes {
                creates: 10_000,
                time_limit: Duration::from_secs(30),
                watchers: 100,
                fanout_objects: 100,
            }
        }
    }
}

fn config_map(name: String) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name),
            ..ObjectMeta::default()
        },
        data: Some([("key".to_owned(), "value".to_owned())].into()),
        ..ConfigMap::default()
    }
}

async fn namespace(client: &kube::Client, name: &str) -> anyhow::Result<()> {
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    };
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await?;
    Ok(())
}

/// Runs the API server benchmark and adds its sections to `report`.
pub async fn run(skiff: &Path, sizes: &Sizes, report: &mut Report) -> anyhow::Result<()> {
    let server = SkiffServer::start(skiff, &[])?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle_rss = server.process.rss();
    let client = server.client().await?;
    let peak = Arc::new(AtomicU64::new(idle_rss));
    let sampler = {
        let peak = peak.clone();
        let pid = server.process.pid();
        tokio::spawn(async move {
            loop {
                peak.fetch_max(crate::proc::rss(pid), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };

    let mut rows = Vec::new();
    for clients in [1usize, 16, 64] {
        let ns = format!("creates-{clients}");
        namespace(&client, &ns).await?;
        let api: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
        let next = Arc::new(AtomicU64::new(0));
        let deadline = Instant::now() + sizes.time_limit;
        let started = Instant::now();
        let workers = (0..clients).map(|_| {
            let api = api.clone();
            let next = next.clone();
            let total = sizes.creates as u64;
            async move {
                let mut latencies = Vec::new();
                let mut errors = 0usize;
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= total || Instant::now() > deadline {
                        break;
                    }
                    let t = Instant::now();
                    match api
                        .create(&PostParams::default(), &config_map(format!("cm-{i}")))
                        .await
                    {
                        Ok(_) => latencies.push(t.elapsed()),
                        Err(_) => errors += 1,
                    }
                }
                (latencies, errors)
            }
        });
        let results = futures::future::join_all(workers).await;
        let elapsed = started.elapsed();
        let errors: usize = results.iter().map(|r| r.1).sum();
        let latencies = Latencies::new(results.into_iter().flat_map(|r| r.0).collect());
        let done = latencies.len();
        rows.push(vec![
            clients.to_string(),
            done.to_string(),
            format!("{:.0}", done as f64 / elapsed.as_secs_f64()),
            fmt(latencies.percentile(50.0)),
            fmt(latencies.percentile(99.0)),
            errors.to_string(),
        ]);
    }
    report.section(
        "API server: durable creates (ConfigMaps, kube-rs client, HTTPS)",
        table(
            &["clients", "creates", "creates/s", "p50", "p99", "errors"],
            &rows,
        ),
    );

    // Watch fan-out: every watcher must see every object; latency is from
    // the create request to delivery at each watcher.
    namespace(&client, "fanout").await?;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "fanout");
    let sent: Arc<parking::Times> = Arc::new(parking::Times::default());
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(String, Instant)>();
    let mut watchers = Vec::new();
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    for _ in 0..sizes.watchers {
        let api = api.clone();
        let tx = tx.clone();
        let ready = ready_tx.clone();
        watchers.push(tokio::spawn(async move {
            let mut stream = watcher(api, watcher::Config::default()).boxed();
            while let Some(Ok(event)) = stream.next().await {
                match event {
                    watcher::Event::InitDone => {
                        let _ = ready.send(());
                    }
                    watcher::Event::Apply(cm) => {
                        let _ = tx.send((cm.metadata.name.unwrap_or_default(), Instant::now()));
                    }
                    _ => {}
                }
            }
        }));
    }
    for _ in 0..sizes.watchers {
        tokio::time::timeout(Duration::from_secs(60), ready_rx.recv()).await?;
    }
    let started = Instant::now();
    for i in 0..sizes.fanout_objects {
        let name = format!("fan-{i}");
        sent.set(name.clone(), Instant::now());
        api.create(&PostParams::default(), &config_map(name))
            .await?;
    }
    let expected = sizes.watchers * sizes.fanout_objects;
    let mut delivered = Vec::with_capacity(expected);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while delivered.len() < expected {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some((name, at))) => delivered.push((name, at)),
            _ => break,
        }
    }
    let all_delivered = started.elapsed();
    let latencies = Latencies::new(
        delivered
            .iter()
            .filter_map(|(name, at)| sent.get(name).map(|s| at.saturating_duration_since(s)))
            .collect(),
    );
    for w in watchers {
        w.abort();
    }
    report.section(
        "API server: watch fan-out",
        table(
            &[
                "watchers",
                "objects",
                "events delivered",
                "all delivered in",
                "p50 delivery",
                "p99 delivery",
            ],
            &[vec![
                sizes.watchers.to_string(),
                sizes.fanout_objects.to_string(),
                format!("{}/{expected}", delivered.len()),
                fmt(all_delivered),
                fmt(latencies.percentile(50.0)),
                fmt(latencies.percentile(99.0)),
            ]],
        ),
    );
    sampler.abort();
    report.section(
        "API server: resident memory (control plane process)",
        table(
            &["idle (fresh)", "peak under the load above"],
            &[vec![mib(idle_rss), mib(peak.load(Ordering::Relaxed))]],
        ),
    );
    Ok(())
}

/// Send times by object name, shared between the writer and the checker.
mod parking {
    use std::collections::HashMap;
    use std::sync::Mutex;
    use std::time::Instant;

    #[derive(Default)]
    pub struct Times(Mutex<HashMap<String, Instant>>);

    impl Times {
        pub fn set(&self, name: String, at: Instant) {
            self.0
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(name, at);
        }
        pub fn get(&self, name: &str) -> Option<Instant> {
            self.0
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(name)
                .copied()
        }
    }
}
