//! Watches: newline-delimited JSON events streamed over chunked HTTP.
//!
//! A watch without a resourceVersion (or with `0`) first sends the current
//! objects as synthetic `ADDED` events, then follows the store from the
//! revision it listed at; with a resourceVersion it follows from there.
//! Both ride on the store's watch, which never loses or reorders an event
//! between its history and live changes. An expired resourceVersion gets an
//! `ERROR` event carrying a 410 `Status`, as kubectl expects.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use futures::StreamExt;
use serde_json::{Value, json};
use skiff_api::ResourceType;

use super::objects::{
    Filter, from_kv, include_object, read_list, set_resource_version, with_resource_version,
};
use super::routes::{Req, Target};
use super::{ApiError, ApiResult, State};
use crate::store::Event;

/// A watch ends after this long unless the client asks otherwise; clients
/// re-watch from their last resourceVersion, as with Kubernetes' own
/// randomized 30–60 minute timeouts.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1800);

/// How often a BOOKMARK is sent to clients that allow them.
const BOOKMARK_EVERY: Duration = Duration::from_secs(30);

pub(super) async fn watch(state: &Arc<State>, req: &Req, t: &Target) -> ApiResult<Response> {
    let filter = Filter::from(req)?;
    let rt = t.rt;
    let from = match req.param("resourceVersion") {
        None | Some("0") => None,
        Some(rv) => Some(
            rv.parse::<u64>()
                .map_err(|_| ApiError::bad_request(format!("invalid resourceVersion {rv:?}")))?,
        ),
    };
    let (initial, from) = match from {
        Some(from) => (Vec::new(), from),
        None => {
            let (items, revision, _) = read_list(state, t, &filter, None, None, None).await?;
            (items, revision)
        }
    };
    let timeout = req
        .param("timeoutSeconds")
        .and_then(|s| s.parse::<u64>().ok())
        .map(Duration::from_secs)
        .unwrap_or(DEFAULT_TIMEOUT);
    let bookmarks = req.flag("allowWatchBookmarks");
    let table = req.wants_table().then(|| include_object(req));
    // Unfiltered JSON watches (every controller's) send each change as
    // stored, with its resourceVersion spliced in: no decoding per watcher.
    let raw = table.is_none() && filter.selects_everything();
    let prefix = rt.prefix(t.namespace.as_deref());
    let store = state.store.clone();
    let encode = move |kind: &str, obj: Value| -> Bytes {
        let obj = match table {
            Some(include) => skiff_api::table::table(
                rt,
                std::slice::from_ref(&obj),
                include,
                std::time::SystemTime::now(),
                json!({"resourceVersion": obj.pointer("/metadata/resourceVersion").cloned().unwrap_or(json!(""))}),
            ),
            None => obj,
        };
        let mut line = json!({"type": kind, "object": obj}).to_string();
        line.push('\n');
        Bytes::from(line)
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(64);
    let registered = state.watchers.open(rt);
    tokio::spawn(async move {
        let _registered = registered;
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        for obj in initial {
            if tx.send(encode("ADDED", obj)).await.is_err() {
                return;
            }
        }
        let mut events = match store.watch(&prefix, from).await {
            Ok(events) => events,
            Err(err) => {
                let _ = tx.send(encode("ERROR", expired(err, rt))).await;
                return;
            }
        };
        let mut last = from;
        let mut ticker = tokio::time::interval(BOOKMARK_EVERY);
        ticker.tick().await;
        loop {
            tokio::select! {
                _ = &mut deadline => return,
                _ = tx.closed() => return,
                _ = ticker.tick(), if bookmarks => {
                    let bookmark = json!({
                        "kind": rt.kind,
                        "apiVersion": rt.api_version(),
                        "metadata": {"resourceVersion": last.to_string()},
                    });
                    if tx.send(encode("BOOKMARK", bookmark)).await.is_err() {
                        return;
                    }
                }
                event = events.next() => {
                    let Some(event) = event else { return };
                    let event = match event {
                        Ok(event) => event,
                        Err(err) => {
                            let _ = tx.send(encode("ERROR", expired(err, rt))).await;
                            return;
                        }
                    };
                    last = event.revision();
                    let line = match raw.then(|| raw_line(&event)).flatten() {
                        Some(line) => line,
                        None => match translate(&event, &filter) {
                            Some((kind, obj)) => encode(kind, obj),
                            None => continue,
                        },
                    };
                    if tx.send(line).await.is_err() {
                        return;
                    }
                }
            }
        }
    });
    let stream = tokio_stream_from(rx);
    let mut response = Response::new(Body::from_stream(stream));
    *response.status_mut() = StatusCode::OK;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(response)
}

fn tokio_stream_from(
    mut rx: tokio::sync::mpsc::Receiver<Bytes>,
) -> impl futures::Stream<Item = Result<Bytes, std::convert::Infallible>> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx).map(|b| b.map(Ok)))
}

/// The ERROR event's Status for a store error (410 for compaction).
fn expired(err: crate::store::Error, rt: &ResourceType) -> Value {
    ApiError::from_store(err, rt.plural, rt.group, "").status()
}

/// A store event as an unfiltered watch event's line, built from the
/// stored bytes; `None` if the stored object has no metadata to carry the
/// resourceVersion (then [`translate`] says what is wrong with it).
fn raw_line(event: &Event) -> Option<Bytes> {
    let (kind, value, revision) = match event {
        Event::Put { kv, prev } => {
            let kind = if prev.is_some() { "MODIFIED" } else { "ADDED" };
            (kind, &kv.value, kv.mod_revision)
        }
        Event::Delete { prev, revision } => ("DELETED", &prev.value, *revision),
    };
    let object = with_resource_version(value, revision)?;
    let mut line = Vec::with_capacity(object.len() + 32);
    line.extend_from_slice(b"{\"type\":\"");
    line.extend_from_slice(kind.as_bytes());
    line.extend_from_slice(b"\",\"object\":");
    line.extend_from_slice(&object);
    line.extend_from_slice(b"}\n");
    Some(Bytes::from(line))
}

/// A store event as a watch event, applying the filter the way Kubernetes
/// does: an object that starts matching is ADDED, one that stops matching
/// is DELETED.
fn translate(event: &Event, filter: &Filter) -> Option<(&'static str, Value)> {
    match event {
        Event::Put { kv, prev } => {
            let obj = from_kv(kv).ok()?;
            let was = prev
                .as_ref()
                .and_then(|p| from_kv(p).ok())
                .is_some_and(|p| filter.matches(&p));
            match (was, filter.matches(&obj)) {
                (false, true) => Some(("ADDED", obj)),
                (true, true) => Some(("MODIFIED", obj)),
                (true, false) => Some(("DELETED", obj)),
                (false, false) => None,
            }
        }
        Event::Delete { prev, revision } => {
            let mut obj = from_kv(prev).ok()?;
            if !filter.matches(&obj) {
                return None;
            }
            set_resource_version(&mut obj, *revision);
            Some(("DELETED", obj))
        }
    }
}
