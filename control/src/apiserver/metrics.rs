//! `/metrics` in Prometheus' text format, named as kube-apiserver names
//! them. So far: `apiserver_registered_watchers`, the watches open per
//! resource type, which shows whether clients share their watches.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use skiff_api::ResourceType;

/// The open watches, by resource type.
#[derive(Debug, Default)]
pub(crate) struct Watchers(parking_lot::Mutex<BTreeMap<Key, u64>>);

/// Group, version, kind.
type Key = (&'static str, &'static str, &'static str);

fn key(rt: &ResourceType) -> Key {
    (rt.group, rt.version, rt.kind)
}

impl Watchers {
    /// Counts a watch on `rt` until the returned guard is dropped.
    pub(crate) fn open(self: &Arc<Self>, rt: &'static ResourceType) -> WatchGuard {
        *self.0.lock().entry(key(rt)).or_default() += 1;
        WatchGuard {
            watchers: self.clone(),
            rt,
        }
    }
}

/// One open watch; uncounted on drop.
pub(crate) struct WatchGuard {
    watchers: Arc<Watchers>,
    rt: &'static ResourceType,
}

impl Drop for WatchGuard {
    fn drop(&mut self) {
        if let Some(n) = self.watchers.0.lock().get_mut(&key(self.rt)) {
            *n = n.saturating_sub(1);
        }
    }
}

/// The metrics page.
pub(crate) fn render(watchers: &Watchers) -> Response {
    let mut out = String::from(
        "# HELP apiserver_registered_watchers Number of currently registered watchers for a given resources\n\
         # TYPE apiserver_registered_watchers gauge\n",
    );
    for ((group, version, kind), n) in watchers.0.lock().iter() {
        let _ = writeln!(
            out,
            "apiserver_registered_watchers{{group=\"{group}\",kind=\"{kind}\",version=\"{version}\"}} {n}"
        );
    }
    let mut response = (StatusCode::OK, out).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}
