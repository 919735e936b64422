//! Feeding the overlay's tables from watches: every table (Services,
//! EndpointSlices, pod addresses, NetworkPolicies, Ingresses) is kept by
//! [`watch_into`], which turns a kube watcher into [`Change`]s.

use std::fmt;
use std::time::Duration;

use futures::StreamExt;
use kube::Api;
use kube::runtime::watcher::{self, Event};
use tokio::task::JoinHandle;

/// How long a failed watch waits before it is retried.
const WATCH_RETRY: Duration = Duration::from_secs(1);

/// One change from a watch, as the feeders apply it.
pub(crate) enum Change<K> {
    /// Added or modified.
    Apply(K),
    /// Deleted.
    Delete(K),
    /// A complete (re)listing: everything of this kind is exactly these.
    Replace(Vec<K>),
}

/// Watches `api` and hands every change to `apply`. A (re)list is buffered
/// and handed over whole at its end, so the table never passes through an
/// empty state (for policies, an empty table would briefly allow
/// everything). Watch errors are retried after [`WATCH_RETRY`].
pub(crate) fn watch_into<K>(
    api: Api<K>,
    what: &'static str,
    mut apply: impl FnMut(Change<K>) + Send + 'static,
) -> JoinHandle<()>
where
    K: kube::Resource + Clone + fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
{
    tokio::spawn(async move {
        let mut stream = watcher::watcher(api, watcher::Config::default()).boxed();
        let mut listing: Option<Vec<K>> = None;
        while let Some(event) = stream.next().await {
            match event {
                Ok(Event::Init) => listing = Some(Vec::new()),
                Ok(Event::InitApply(object)) => match &mut listing {
                    Some(all) => all.push(object),
                    None => apply(Change::Apply(object)),
                },
                Ok(Event::InitDone) => apply(Change::Replace(listing.take().unwrap_or_default())),
                Ok(Event::Apply(object)) => apply(Change::Apply(object)),
                Ok(Event::Delete(object)) => apply(Change::Delete(object)),
                Err(error) => {
                    tracing::debug!(%error, what, "watch interrupted; retrying");
                    tokio::time::sleep(WATCH_RETRY).await;
                }
            }
        }
    })
}
