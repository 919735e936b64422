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
    Filter, include_object, read_list, set_resource_version, with_resource_version,
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
    // JSON watches get the stored text with its resourceVersion spliced
    // in: nothing is decoded.
    let line = move |kind: &str, stored: &[u8], revision: u64| -> Option<Bytes> {
        if table.is_none()
            && let Some(line) = raw_line(kind, stored, revision)
        {
            return Some(line);
        }
        let mut obj: Value = serde_json::from_slice(stored).ok()?;
        set_resource_version(&mut obj, revision);
        Some(encode(kind, obj))
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(64);
    let registered = state.watchers.open(rt);
    tokio::spawn(async move {
        let _registered = registered;
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        for kv in initial {
            let Some(line) = line("ADDED", &kv.value, kv.mod_revision) else {
                tracing::warn!(key = %kv.key, "a stored object is not valid JSON; not sent");
                continue;
            };
            if tx.send(line).await.is_err() {
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
                    let Some((kind, stored, revision)) = classify(&event, &filter) else {
                        continue;
                    };
                    let Some(line) = line(kind, stored, revision) else {
                        tracing::warn!(key = %event_key(&event), "a stored object is not valid JSON; not sent");
                        continue;
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

/// What a watcher with `filter` is told of a store event: the event type,
/// the stored object to send and its revision; `None` if it does not see
/// it. As in Kubernetes, an object that starts matching is ADDED and one
/// that stops matching is DELETED. Only what the selectors read of the
/// object and its previous version is decoded.
fn classify<'a>(event: &'a Event, filter: &Filter) -> Option<(&'static str, &'a Bytes, u64)> {
    match event {
        Event::Put { kv, prev } => {
            let was = prev
                .as_ref()
                .is_some_and(|p| filter.matches_stored(&p.value));
            let kind = match (was, filter.matches_stored(&kv.value)) {
                (false, true) => "ADDED",
                (true, true) => "MODIFIED",
                (true, false) => "DELETED",
                (false, false) => return None,
            };
            Some((kind, &kv.value, kv.mod_revision))
        }
        Event::Delete { prev, revision } => {
            filter
                .matches_stored(&prev.value)
                .then_some(("DELETED", &prev.value, *revision))
        }
    }
}

fn event_key(event: &Event) -> &str {
    match event {
        Event::Put { kv, .. } => &kv.key,
        Event::Delete { prev, .. } => &prev.key,
    }
}

/// A watch event's line from the stored object, with the resourceVersion
/// spliced in; `None` if the stored object has no metadata to carry it.
fn raw_line(kind: &str, stored: &[u8], revision: u64) -> Option<Bytes> {
    let object = with_resource_version(stored, revision)?;
    let mut line = Vec::with_capacity(object.len() + 32);
    line.extend_from_slice(b"{\"type\":\"");
    line.extend_from_slice(kind.as_bytes());
    line.extend_from_slice(b"\",\"object\":");
    line.extend_from_slice(&object);
    line.extend_from_slice(b"}\n");
    Some(Bytes::from(line))
}
