//! Watch streams feeding an in-memory cache, as client-go's informers:
//! shared by the endpoints, namespace, node-lifecycle and garbage
//! collector controllers.

use std::fmt::Debug;
use std::hash::Hash;

use futures::{Stream, StreamExt};
use kube::Resource;
use kube::runtime::reflector::store::Writer;
use kube::runtime::{WatchStreamExt, watcher};
use serde::de::DeserializeOwned;

/// The events of a watch (one of our own, `watcher(api, config)`, or a
/// shared one from [`crate::informers::Informers`]), after they are applied
/// to `writer`'s cache. Errors are logged and the watch resumes with
/// backoff, so the stream never ends on its own.
pub(crate) fn reflect<K, S>(
    events: S,
    writer: Writer<K>,
) -> impl Stream<Item = watcher::Event<K>> + Send
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Eq + Hash + Clone + Default,
    S: Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send,
{
    let what = K::plural(&Default::default()).into_owned();
    events
        .default_backoff()
        .reflect(writer)
        .filter_map(move |event| {
            let event = match event {
                Ok(event) => Some(event),
                Err(error) => {
                    tracing::warn!(resource = %what, %error, "watch failed; retrying");
                    None
                }
            };
            std::future::ready(event)
        })
}

/// The key of a namespaced object: namespace and name.
pub(crate) fn key_of<K: Resource>(obj: &K) -> (String, String) {
    (
        obj.meta().namespace.clone().unwrap_or_default(),
        obj.meta().name.clone().unwrap_or_default(),
    )
}

/// Whether `error` is an API error with HTTP status `code`.
pub(crate) fn is_status(error: &kube::Error, code: u16) -> bool {
    matches!(error, kube::Error::Api(status) if status.code == code)
}

/// The dynamic-API description of a served resource type.
pub(crate) fn api_resource(rt: &skiff_api::ResourceType) -> kube::discovery::ApiResource {
    kube::discovery::ApiResource {
        group: rt.group.to_owned(),
        version: rt.version.to_owned(),
        api_version: rt.api_version(),
        kind: rt.kind.to_owned(),
        plural: rt.plural.to_owned(),
    }
}
