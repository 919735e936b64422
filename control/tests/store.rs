//! The store's behaviour as the API server sees it: through `Arc<dyn Store>`.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use skiff_control::store::{Error, Event, EventStream, KeyValue, ListOptions, SledStore, Store};

/// Fails the test, naming what hung, if `future` takes longer than a minute.
async fn within<F: Future>(what: &str, future: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(60), future)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what} probably hung"))
}

fn open(dir: &Path) -> Arc<dyn Store> {
    Arc::new(SledStore::open(dir).expect("open store"))
}

fn bytes(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

/// Reads events from `watch` until one at `revision` (or the deadline).
async fn events_until(watch: &mut EventStream, revision: u64) -> Vec<Event> {
    let mut events = Vec::new();
    within(&format!("watch to reach revision {revision}"), async {
        while events
            .last()
            .is_none_or(|e: &Event| e.revision() < revision)
        {
            let event = watch.next().await.expect("watch ended early");
            events.push(event.expect("watch failed"));
        }
    })
    .await;
    events
}

#[tokio::test]
async fn crud_bumps_revisions_and_versions() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    within("crud", async {
        assert_eq!(store.current_revision().await.unwrap(), 0);
        assert_eq!(store.get("/a").await.unwrap(), None);

        let a = store.create("/a", bytes("1")).await.unwrap();
        assert_eq!(
            a,
            KeyValue {
                key: "/a".into(),
                value: bytes("1"),
                create_revision: 1,
                mod_revision: 1,
                version: 1
            }
        );
        let b = store.create("/b", bytes("x")).await.unwrap();
        assert_eq!((b.create_revision, b.mod_revision), (2, 2));

        let err = store.create("/a", bytes("again")).await.unwrap_err();
        assert!(
            matches!(&err, Error::AlreadyExists { key } if key == "/a"),
            "{err}"
        );
        assert_eq!(
            store.current_revision().await.unwrap(),
            2,
            "a failed write bumps nothing"
        );

        let a2 = store.update("/a", bytes("2"), None).await.unwrap();
        assert_eq!((a2.create_revision, a2.mod_revision, a2.version), (1, 3, 2));
        assert_eq!(store.get("/a").await.unwrap(), Some(a2.clone()));

        let err = store
            .update("/missing", bytes("v"), None)
            .await
            .unwrap_err();
        assert!(
            matches!(&err, Error::NotFound { key } if key == "/missing"),
            "{err}"
        );

        let deleted = store.delete("/a", None).await.unwrap();
        assert_eq!(deleted, a2, "delete returns the value it removed");
        assert_eq!(store.current_revision().await.unwrap(), 4);
        assert_eq!(store.get("/a").await.unwrap(), None);
        let err = store.delete("/a", None).await.unwrap_err();
        assert!(
            matches!(&err, Error::NotFound { key } if key == "/a"),
            "{err}"
        );

        let again = store.create("/a", bytes("3")).await.unwrap();
        assert_eq!(
            (again.create_revision, again.mod_revision, again.version),
            (5, 5, 1),
            "a re-created key starts a new life"
        );
        assert_eq!(store.current_revision().await.unwrap(), 5);
    })
    .await;
}

#[tokio::test]
async fn update_and_delete_compare_and_swap_on_mod_revision() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    within("compare-and-swap", async {
        let v1 = store.create("/k", bytes("1")).await.unwrap();
        let v2 = store
            .update("/k", bytes("2"), Some(v1.mod_revision))
            .await
            .unwrap();

        // A writer still holding v1 loses.
        let err = store
            .update("/k", bytes("stale"), Some(v1.mod_revision))
            .await
            .unwrap_err();
        match &err {
            Error::Conflict {
                key,
                expected,
                current,
            } => assert_eq!((key.as_str(), *expected, *current), ("/k", 1, 2)),
            other => panic!("expected a conflict, got {other}"),
        }
        assert_eq!(store.get("/k").await.unwrap(), Some(v2.clone()));

        let err = store.delete("/k", Some(v1.mod_revision)).await.unwrap_err();
        assert!(
            matches!(
                err,
                Error::Conflict {
                    expected: 1,
                    current: 2,
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(store.current_revision().await.unwrap(), 2);

        let err = store
            .update("/nope", bytes("x"), Some(1))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::NotFound { .. }), "{err}");

        assert_eq!(store.delete("/k", Some(v2.mod_revision)).await.unwrap(), v2);
        assert_eq!(store.get("/k").await.unwrap(), None);
    })
    .await;
}

#[tokio::test]
async fn list_filters_by_prefix_and_paginates() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    within("paginated list", async {
        for i in 0..10 {
            let key = format!("/registry/pods/ns/p{i}");
            store.create(&key, bytes(&i.to_string())).await.unwrap();
        }
        // Neighbours that share part of the prefix must not show up.
        store
            .create("/registry/pods2/x", bytes("no"))
            .await
            .unwrap();
        store.create("/registry/pod", bytes("no")).await.unwrap();
        store
            .create("/registry/services/s", bytes("no"))
            .await
            .unwrap();
        let prefix = "/registry/pods/";
        let expected: Vec<String> = (0..10).map(|i| format!("/registry/pods/ns/p{i}")).collect();

        let all = store.list(prefix, ListOptions::default()).await.unwrap();
        let keys: Vec<String> = all.kvs.iter().map(|kv| kv.key.clone()).collect();
        assert_eq!(keys, expected);
        assert_eq!((all.revision, all.more), (13, false));

        // Three at a time, pinned to the first page's revision, with writes
        // in between that the later pages must not see.
        let mut seen = Vec::new();
        let mut options = ListOptions {
            limit: Some(3),
            ..ListOptions::default()
        };
        for page_number in 0.. {
            assert!(page_number < 10, "pagination does not end");
            let page = store.list(prefix, options.clone()).await.unwrap();
            assert!(page.kvs.len() <= 3);
            seen.extend(page.kvs.iter().map(|kv| kv.key.clone()));
            if page_number == 0 {
                store
                    .create("/registry/pods/ns/p99", bytes("late"))
                    .await
                    .unwrap();
                store.delete("/registry/pods/ns/p5", None).await.unwrap();
            }
            assert_eq!(page.revision, 13);
            if !page.more {
                break;
            }
            options.revision = Some(page.revision);
            options.start_after = Some(page.kvs.last().unwrap().key.clone());
        }
        assert_eq!(seen, expected);

        // start_after before the prefix, and etcd's "limit 0 = no limit".
        let from_start = store
            .list(
                prefix,
                ListOptions {
                    start_after: Some("/a".into()),
                    limit: Some(0),
                    ..ListOptions::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(from_start.kvs.len(), 10, "p5 deleted, p99 added");
        assert_eq!(from_start.revision, 15);
        assert!(!from_start.more);

        let exact = store
            .list(
                prefix,
                ListOptions {
                    limit: Some(10),
                    ..ListOptions::default()
                },
            )
            .await
            .unwrap();
        assert!(!exact.more, "a full last page has no more");
    })
    .await;
}

#[tokio::test]
async fn list_at_a_past_revision_shows_that_state() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    within("list at past revisions", async {
        store.create("/r/a", bytes("a1")).await.unwrap(); // 1
        store.create("/r/b", bytes("b1")).await.unwrap(); // 2
        store.update("/r/a", bytes("a2"), None).await.unwrap(); // 3
        store.delete("/r/b", None).await.unwrap(); // 4
        store.create("/r/c", bytes("c1")).await.unwrap(); // 5

        let at = |revision| {
            let store = Arc::clone(&store);
            async move {
                let list = store
                    .list(
                        "/r/",
                        ListOptions {
                            revision: Some(revision),
                            ..ListOptions::default()
                        },
                    )
                    .await
                    .unwrap();
                assert_eq!(list.revision, revision);
                list.kvs
                    .into_iter()
                    .map(|kv| {
                        (
                            kv.key,
                            String::from_utf8(kv.value.to_vec()).unwrap(),
                            kv.mod_revision,
                        )
                    })
                    .collect::<Vec<_>>()
            }
        };
        let s = |k: &str, v: &str, r| (k.to_owned(), v.to_owned(), r);
        assert_eq!(at(0).await, vec![]);
        assert_eq!(at(1).await, vec![s("/r/a", "a1", 1)]);
        assert_eq!(at(2).await, vec![s("/r/a", "a1", 1), s("/r/b", "b1", 2)]);
        assert_eq!(at(3).await, vec![s("/r/a", "a2", 3), s("/r/b", "b1", 2)]);
        assert_eq!(at(4).await, vec![s("/r/a", "a2", 3)]);
        assert_eq!(at(5).await, vec![s("/r/a", "a2", 3), s("/r/c", "c1", 5)]);

        // Paginating a past revision.
        let page = store
            .list(
                "/r/",
                ListOptions {
                    revision: Some(2),
                    limit: Some(1),
                    start_after: Some("/r/a".into()),
                },
            )
            .await
            .unwrap();
        assert_eq!(page.kvs.len(), 1);
        assert_eq!(page.kvs[0].key, "/r/b");
        assert!(!page.more);

        let err = store
            .list(
                "/r/",
                ListOptions {
                    revision: Some(6),
                    ..ListOptions::default()
                },
            )
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                Error::FutureRevision {
                    requested: 6,
                    current: 5,
                    ..
                }
            ),
            "{err}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_sees_concurrent_writes_once_in_order() {
    const WRITERS: usize = 8;
    const KEYS_PER_WRITER: usize = 25;
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    store
        .create("/other/x", bytes("not watched"))
        .await
        .unwrap();
    let mut all = store.watch("/w/", 0).await.unwrap();
    let mut one = store.watch("/w/3/", 0).await.unwrap();

    // Each writer creates its keys, updates each once, deletes every third.
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                let mut acked = Vec::new();
                for k in 0..KEYS_PER_WRITER {
                    let key = format!("/w/{w}/{k}");
                    let created = store.create(&key, bytes("1")).await.unwrap();
                    let updated = store
                        .update(&key, bytes("2"), Some(created.mod_revision))
                        .await
                        .unwrap();
                    acked.extend([created.mod_revision, updated.mod_revision]);
                    if k.is_multiple_of(3) {
                        store
                            .delete(&key, Some(updated.mod_revision))
                            .await
                            .unwrap();
                    }
                }
                acked
            })
        })
        .collect();
    // A watch opened mid-way replays history while writes keep landing,
    // then hands over to live events.
    let late = {
        let store = Arc::clone(&store);
        tokio::spawn(async move {
            within("writers to get going", async {
                while store.current_revision().await.unwrap() < 100 {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            })
            .await;
            store.watch("/w/", 0).await.unwrap()
        })
    };
    let mut late = within("opening a watch mid-way", late).await.unwrap();
    let mut acked = Vec::new();
    for writer in writers {
        acked.extend(within("a concurrent writer", writer).await.unwrap());
    }
    let last = store.current_revision().await.unwrap();
    let deletes = WRITERS * KEYS_PER_WRITER.div_ceil(3);
    assert_eq!(last as usize, 1 + WRITERS * KEYS_PER_WRITER * 2 + deletes);

    // Every revision after the unwatched first write, exactly once, in order.
    let events = events_until(&mut all, last).await;
    let revisions: Vec<u64> = events.iter().map(Event::revision).collect();
    assert_eq!(revisions, (2..=last).collect::<Vec<_>>());
    for revision in acked {
        assert!(
            revisions.binary_search(&revision).is_ok(),
            "acked revision {revision} unseen"
        );
    }

    // Replaying the events gives the final state.
    let mut state: BTreeMap<String, KeyValue> = BTreeMap::new();
    for event in &events {
        match event {
            Event::Put { kv, prev } => {
                assert_eq!(prev.as_ref(), state.get(&kv.key), "prev of {}", kv.key);
                state.insert(kv.key.clone(), kv.clone());
            }
            Event::Delete { prev, .. } => {
                assert_eq!(state.remove(&prev.key).as_ref(), Some(prev));
            }
        }
    }
    let list = store.list("/w/", ListOptions::default()).await.unwrap();
    assert_eq!(list.kvs, state.into_values().collect::<Vec<_>>());

    assert_eq!(
        events_until(&mut late, last).await,
        events,
        "watch opened mid-way"
    );

    // The narrower watch sees exactly its writer's changes, in order.
    let mine: Vec<Event> = events
        .iter()
        .filter(|e| e.key().starts_with("/w/3/"))
        .cloned()
        .collect();
    let last_mine = mine.last().unwrap().revision();
    assert_eq!(events_until(&mut one, last_mine).await, mine);
}

#[tokio::test]
async fn watch_from_a_list_revision_sees_exactly_the_later_writes() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    within("list then watch", async {
        for i in 0..5 {
            store
                .create(&format!("/p/{i}"), bytes("before"))
                .await
                .unwrap();
        }
        let list = store.list("/p/", ListOptions::default()).await.unwrap();
        assert_eq!(list.revision, 5);

        // Writes between the list and the watch, and after the watch.
        store.update("/p/0", bytes("between"), None).await.unwrap();
        store.delete("/p/1", None).await.unwrap();
        let mut watch = store.watch("/p/", list.revision).await.unwrap();
        store.create("/p/9", bytes("after")).await.unwrap();

        let events = events_until(&mut watch, 8).await;
        assert_eq!(events.len(), 3);
        assert!(matches!(&events[0], Event::Put { kv, prev: Some(prev) }
            if kv.key == "/p/0" && kv.value == "between" && prev.value == "before"));
        assert!(matches!(&events[1], Event::Delete { prev, revision: 7 } if prev.key == "/p/1"));
        assert!(matches!(&events[2], Event::Put { kv, prev: None }
            if kv.key == "/p/9" && kv.mod_revision == 8));

        // Nothing more is pending.
        let quiet = tokio::time::timeout(Duration::from_millis(200), watch.next()).await;
        assert!(quiet.is_err(), "unexpected extra event: {quiet:?}");

        // A watch from the future starts when the store gets there.
        let mut future = store.watch("/p/", 9).await.unwrap();
        store.create("/p/10", bytes("9")).await.unwrap();
        store.create("/p/11", bytes("10")).await.unwrap();
        let events = events_until(&mut future, 10).await;
        assert_eq!(events.iter().map(Event::revision).collect::<Vec<_>>(), [10]);
    })
    .await;
}

#[tokio::test]
async fn compaction_makes_older_revisions_gone() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path());
        within("compaction", async {
            for i in 1..=10 {
                store.create(&format!("/c/{i:02}"), bytes("v")).await.unwrap();
            }
            let mut early = store.watch("/c/", 2).await.unwrap();
            store.compact(5).await.unwrap();

            let err = store.watch("/c/", 4).await.err().expect("watch below compaction");
            assert!(
                matches!(&err, Error::Compacted { key, requested: 4, compacted: 5 } if key == "/c/"),
                "{err}"
            );
            let err = store
                .list(
                    "/c/",
                    ListOptions {
                        revision: Some(4),
                        ..ListOptions::default()
                    },
                )
                .await
                .unwrap_err();
            assert!(matches!(err, Error::Compacted { requested: 4, compacted: 5, .. }), "{err}");

            // A watch opened before the compaction but not yet replayed fails
            // rather than skipping history.
            let first = early.next().await.expect("an item");
            assert!(
                matches!(first, Err(Error::Compacted { compacted: 5, .. })),
                "{first:?}"
            );
            assert!(early.next().await.is_none(), "the stream ends after an error");

            // At the compaction point, everything still works.
            let at5 = store
                .list(
                    "/c/",
                    ListOptions {
                        revision: Some(5),
                        ..ListOptions::default()
                    },
                )
                .await
                .unwrap();
            assert_eq!(at5.kvs.len(), 5);
            let mut watch = store.watch("/c/", 5).await.unwrap();
            let events = events_until(&mut watch, 10).await;
            assert_eq!(
                events.iter().map(Event::revision).collect::<Vec<_>>(),
                [6, 7, 8, 9, 10]
            );

            store.compact(3).await.expect("compacting below the point is a no-op");
            let err = store.compact(11).await.unwrap_err();
            assert!(matches!(err, Error::FutureRevision { requested: 11, .. }), "{err}");
            // Compact everything: the revision must survive an empty history.
            store.compact(10).await.unwrap();
        })
        .await;
    }
    let store = open(dir.path());
    within("reopened compacted store", async {
        assert_eq!(store.current_revision().await.unwrap(), 10);
        let err = store.watch("/c/", 9).await.err().expect("still compacted");
        assert!(
            matches!(err, Error::Compacted { compacted: 10, .. }),
            "{err}"
        );
        assert_eq!(
            store
                .list("/c/", ListOptions::default())
                .await
                .unwrap()
                .kvs
                .len(),
            10
        );
        let next = store.create("/c/11", bytes("v")).await.unwrap();
        assert_eq!(next.mod_revision, 11);
    })
    .await;
}

#[tokio::test]
async fn reopening_keeps_data_and_revision() {
    let dir = tempfile::tempdir().unwrap();
    let before = {
        let store = open(dir.path());
        within("writes before reopening", async {
            store.create("/x/a", bytes("1")).await.unwrap();
            store.create("/x/b", bytes("2")).await.unwrap();
            store.update("/x/a", bytes("3"), None).await.unwrap();
            store.delete("/x/b", None).await.unwrap();
            store.list("/x/", ListOptions::default()).await.unwrap()
        })
        .await
    };
    let store = open(dir.path());
    within("reads after reopening", async {
        assert_eq!(store.current_revision().await.unwrap(), 4);
        assert_eq!(
            store.list("/x/", ListOptions::default()).await.unwrap(),
            before
        );
        let b = store.create("/x/b", bytes("again")).await.unwrap();
        assert_eq!((b.create_revision, b.version), (5, 1));
        // The history survived too.
        let mut watch = store.watch("/x/", 0).await.unwrap();
        let events = events_until(&mut watch, 5).await;
        assert_eq!(
            events.iter().map(Event::revision).collect::<Vec<_>>(),
            [1, 2, 3, 4, 5]
        );
    })
    .await;
}

#[tokio::test]
async fn watch_ends_when_the_store_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let mut watch = store.watch("/", 0).await.unwrap();
    within("a write", store.create("/k", bytes("v")))
        .await
        .unwrap();
    drop(store);
    let first = within("the buffered event", watch.next()).await;
    assert_eq!(first.unwrap().unwrap().revision(), 1);
    assert!(
        within("the watch to end", watch.next()).await.is_none(),
        "a watch on a dropped store ends"
    );
    // Once the last watch is gone the database can be opened again.
    drop(watch);
    let store = open(dir.path());
    assert_eq!(store.current_revision().await.unwrap(), 1);
}

/// When set, [`crash_child`] runs as the writer process of
/// [`kill_9_loses_no_acknowledged_write`], with its store in this directory.
const CRASH_CHILD_DIR: &str = "SKIFF_STORE_CRASH_CHILD_DIR";
const CRASH_WRITERS: usize = 8;
const CRASH_WRITES_PER_WRITER: usize = 5_000;
const CRASH_ACKS_BEFORE_KILL: usize = 200;

/// Not a test on its own: the child half of
/// [`kill_9_loses_no_acknowledged_write`], which re-executes this binary
/// with [`CRASH_CHILD_DIR`] set. Without it, it does nothing.
#[test]
fn crash_child() {
    let Some(dir) = std::env::var_os(CRASH_CHILD_DIR) else {
        return;
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let store = open(Path::new(&dir));
        let writers: Vec<_> = (0..CRASH_WRITERS)
            .map(|w| {
                let store = Arc::clone(&store);
                tokio::spawn(async move {
                    for n in 0..CRASH_WRITES_PER_WRITER {
                        let key = format!("/crash/{w}/{n}");
                        let value = format!("value-{w}-{n}");
                        store.create(&key, bytes(&value)).await.unwrap();
                        // Printed only once the write is acknowledged.
                        println!("ack {key} {value}");
                    }
                })
            })
            .collect();
        // Bounded: the parent kills us long before this.
        tokio::time::timeout(Duration::from_secs(60), futures::future::join_all(writers))
            .await
            .expect("crash child ran out of time");
    });
}

#[tokio::test]
async fn kill_9_loses_no_acknowledged_write() {
    use std::os::unix::process::ExitStatusExt;
    use std::process::Stdio;
    use tokio::io::{AsyncBufReadExt, BufReader};

    let dir = tempfile::tempdir().unwrap();
    let mut child = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
        .env(CRASH_CHILD_DIR, dir.path())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start the crash child");
    let mut stdout = BufReader::new(child.stdout.take().unwrap());

    // Only whole lines count: a line cut short by the kill was not printed.
    let mut acked: Vec<(String, String)> = Vec::new();
    let mut read_ack = async |stdout: &mut BufReader<_>| -> Option<()> {
        let mut line = String::new();
        loop {
            line.clear();
            let n = stdout
                .read_line(&mut line)
                .await
                .expect("read child stdout");
            if n == 0 || !line.ends_with('\n') {
                return None;
            }
            if let Some(ack) = line.strip_prefix("ack ") {
                let (key, value) = ack.trim_end().split_once(' ').expect("ack line");
                acked.push((key.to_owned(), value.to_owned()));
                return Some(());
            }
        }
    };
    within("the crash child to acknowledge writes", async {
        for _ in 0..CRASH_ACKS_BEFORE_KILL {
            read_ack(&mut stdout)
                .await
                .expect("the crash child stopped before being killed");
        }
    })
    .await;

    child.start_kill().expect("SIGKILL the crash child"); // by pid
    let status = within("the killed child to exit", child.wait())
        .await
        .unwrap();
    assert_eq!(
        status.signal(),
        Some(9),
        "the child must die by SIGKILL: {status}"
    );
    // Acks printed before the kill landed.
    within("draining the child's output", async {
        while read_ack(&mut stdout).await.is_some() {}
    })
    .await;
    assert!(acked.len() >= CRASH_ACKS_BEFORE_KILL);
    assert!(
        acked.len() < CRASH_WRITERS * CRASH_WRITES_PER_WRITER,
        "the child finished before the kill: nothing was tested"
    );

    let store = open(dir.path());
    within("checking the reopened store", async {
        let revision = store.current_revision().await.unwrap();
        assert!(
            revision as usize >= acked.len(),
            "revision {revision} < {} acknowledged writes",
            acked.len()
        );
        for (key, value) in &acked {
            let kv = store.get(key).await.unwrap();
            let kv = kv.unwrap_or_else(|| panic!("acknowledged {key} lost"));
            assert_eq!(kv.value, value.as_bytes(), "{key}");
            assert!(kv.mod_revision <= revision);
        }
        let next = store.create("/after-crash", bytes("v")).await.unwrap();
        assert_eq!(next.mod_revision, revision + 1);
        let history = store.watch("/crash/", 0).await.unwrap();
        let replayed = within(
            "replaying the recovered history",
            history.take(revision as usize).count(),
        )
        .await;
        assert_eq!(
            replayed, revision as usize,
            "history is contiguous after a crash"
        );
    })
    .await;
}
