//! The list-and-watch loops behind the controllers' caches. Each loop lists a resource, then
//! watches it from the list's resourceVersion for as long as the leadership term lasts, and owns
//! everything that can go wrong on the way: a refused attempt (403 while a restarted API server
//! warms its RBAC cache), 410 Gone (relist), a reset connection, a stream that stalls, an API
//! server that is down for minutes. Each failure is retried here after a capped backoff (at most
//! [`BACKOFF_MAX`]), logged, counted and reported to [`Health`]; none reaches the controllers,
//! which only ever see objects.
//!
//! Why not kube's `watcher`: it yields each error to its consumer and retries only when polled
//! again, and kube's `Controller` answers every error item by not polling *any* of its trigger
//! streams for a backoff that doubles from 0.8 s to 30 s and is reset only by the next object. An
//! API server restart produces a chain of errors (connection refused, then 403 while RBAC warms
//! up), each one doubling the pause of all the controller's watches, so they stayed silent for up
//! to a minute after the API server was back. It also never tells when a watch was established
//! again, so a quiet watch could not be told from a dead one; here every success confirms the
//! watch's freshness, and the watch asks the server to end it every [`WATCH_TIMEOUT_SECS`], so a
//! working watch is confirmed at least that often, and a stream silent for longer is cut.

use std::fmt::Debug;
use std::future::Future;
use std::time::{Duration, Instant};

use futures::stream::BoxStream;
use futures::{Stream, StreamExt};
use kube::api::{ListParams, ObjectList, WatchEvent, WatchParams};
use kube::runtime::watcher::{self, Event};
use kube::{Api, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::health::Health;
use crate::metrics::Metrics;

/// The API server ends each watch after this long and the loop starts the next one from the last
/// resourceVersion seen. The new watch's acceptance proves the loop current, so this is how
/// often a quiet, working watch is confirmed (kube-apiserver 1.20 also sends a bookmark 2 s before
/// the end). One request per minute per resource is nothing next to the Lease's one per 2 s.
pub const WATCH_TIMEOUT_SECS: u32 = 60;
/// A stream that delivers nothing (no event, bookmark or end) for this long past its timeout is
/// dead: a dropped connection that no one reset, a proxy that stalls.
const STALL_MARGIN: Duration = Duration::from_secs(10);
/// A list page or a watch start not answered within this is a failed attempt.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Objects per page of a list. Each page is read whole and decoded before it is slimmed, so the
/// page bounds the transient memory of a start with many objects (kube's default of 500 PVs is a
/// few MiB).
pub const LIST_PAGE: u32 = 100;

/// The first retry after a failure comes this soon; each further consecutive failure doubles it.
const BACKOFF_FIRST: Duration = Duration::from_millis(250);
/// A failing watch is tried at least this often, so it is back within seconds once the API
/// server answers again (client-go's reflector waits up to 30 s).
pub const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// The delay before retrying after `failures` consecutive failures (1 for the first), stretched
/// by `jitter` (0 to 1, up to +20 %) so that many clients of a restarted API server do not retry
/// in step: 250 ms, 500 ms, 1 s, 2 s, 4 s, then 5 s for good.
pub fn backoff_delay(failures: u32, jitter: f64) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    let base = BACKOFF_FIRST.saturating_mul(1 << doublings).min(BACKOFF_MAX);
    base.mul_f64(1.0 + 0.2 * jitter.clamp(0.0, 1.0)).min(BACKOFF_MAX)
}

fn jitter() -> f64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .subsec_nanos();
    f64::from(nanos % 1000) / 1000.0
}

/// What the loop needs of the API: one page of the list, and a watch from a resourceVersion.
/// [`Api`] is the real one; tests script their own.
pub trait Source<K: Clone>: Send + Sync + 'static {
    fn list_page(
        &self,
        continue_token: Option<String>,
    ) -> impl Future<Output = kube::Result<ObjectList<K>>> + Send;

    fn watch_from(
        &self,
        resource_version: &str,
    ) -> impl Future<Output = kube::Result<BoxStream<'static, kube::Result<WatchEvent<K>>>>> + Send;
}

impl<K> Source<K> for Api<K>
where
    K: Clone + Debug + DeserializeOwned + Send + Sync + 'static,
{
    async fn list_page(&self, continue_token: Option<String>) -> kube::Result<ObjectList<K>> {
        let mut params = ListParams::default().limit(LIST_PAGE);
        if let Some(token) = &continue_token {
            params = params.continue_token(token);
        }
        self.list(&params).await
    }

    async fn watch_from(
        &self,
        resource_version: &str,
    ) -> kube::Result<BoxStream<'static, kube::Result<WatchEvent<K>>>> {
        let params = WatchParams::default().timeout(WATCH_TIMEOUT_SECS);
        Ok(self.watch(&params, resource_version).await?.boxed())
    }
}

/// Lists and watches `K` through `source` until the returned stream is dropped, reporting its
/// freshness to `health` and its relists to `metrics`. The stream yields the events a kube
/// reflector expects (a list is `Init`, `InitApply`…, `InitDone`) and never an error; the
/// `Result` is only the reflector's signature.
pub fn watch<K, S>(
    source: S,
    health: Health,
    metrics: Metrics,
) -> impl Stream<Item = Result<Event<K>, watcher::Error>> + Send
where
    K: Resource<DynamicType = ()> + Clone + Debug + Send + Sync + 'static,
    S: Source<K>,
{
    // A channel of one: the loop reads the API server only as fast as the caches take objects.
    let (tx, rx) = mpsc::channel(1);
    let closed = tx.clone();
    let mut watch = Loop {
        resource: K::plural(&()).into_owned(),
        source,
        health,
        metrics,
        tx,
        failures: 0,
    };
    tokio::spawn(async move {
        tokio::select! {
            () = closed.closed() => {}
            () = watch.run() => {}
        }
    });
    futures::stream::unfold(rx, |mut rx| async move {
        let event = rx.recv().await?;
        Some((Ok(event), rx))
    })
}

struct Loop<K, S> {
    resource: String,
    source: S,
    health: Health,
    metrics: Metrics,
    tx: mpsc::Sender<Event<K>>,
    /// Consecutive failed attempts; reset once the API server delivers again.
    failures: u32,
}

/// How a watch stream ended.
enum Ended {
    /// The server closed it (its timeout) or the connection ended: watch again from here.
    Closed {
        delivered: bool,
        lasted: Duration,
    },
    /// The resourceVersion is too old (410 Gone): list again.
    Gone,
    Failed(String),
}

impl<K, S> Loop<K, S>
where
    K: Resource<DynamicType = ()> + Clone + Debug + Send + Sync + 'static,
    S: Source<K>,
{
    async fn run(&mut self) -> ! {
        let mut listed_before = false;
        loop {
            let Some(mut version) = self.list().await else {
                continue;
            };
            if listed_before {
                self.metrics.watch_relisted(&self.resource);
            }
            listed_before = true;
            // Watch from `version` until the API server no longer has it.
            loop {
                match self.watch_once(&mut version).await {
                    Ended::Gone => {
                        info!(watch = %self.resource, "resourceVersion expired (410 Gone); listing again");
                        break;
                    }
                    Ended::Failed(error) => self.failed(error).await,
                    Ended::Closed { delivered, lasted } => {
                        // A stream that ends at once without a word, again and again, would
                        // otherwise be a busy loop.
                        if !delivered && lasted < Duration::from_secs(1) {
                            self.failed("the API server ended the watch at once".into()).await;
                        }
                    }
                }
            }
        }
    }

    /// A whole list, as the reflector's `Init` … `InitDone`; the list's resourceVersion, or None
    /// after a failed attempt (already reported and waited for).
    async fn list(&mut self) -> Option<String> {
        self.send(Event::Init).await;
        let mut continue_token = None;
        loop {
            let page =
                match tokio::time::timeout(REQUEST_TIMEOUT, self.source.list_page(continue_token)).await {
                    Ok(Ok(page)) => page,
                    Ok(Err(error)) => {
                        self.failed(format!("list: {}", describe(&error))).await;
                        return None;
                    }
                    Err(_) => {
                        self.failed(format!("list: no answer within {}s", REQUEST_TIMEOUT.as_secs()))
                            .await;
                        return None;
                    }
                };
            for object in page.items {
                self.send(Event::InitApply(object)).await;
            }
            continue_token = page.metadata.continue_.filter(|t| !t.is_empty());
            if continue_token.is_none() {
                let Some(version) = page.metadata.resource_version.filter(|v| !v.is_empty()) else {
                    self.failed("list: the API server gave no resourceVersion".into())
                        .await;
                    return None;
                };
                self.send(Event::InitDone).await;
                self.confirmed();
                self.failures = 0;
                return Some(version);
            }
        }
    }

    /// One watch from `version`, which follows the events it delivers.
    async fn watch_once(&mut self, version: &mut String) -> Ended {
        let mut stream = match tokio::time::timeout(REQUEST_TIMEOUT, self.source.watch_from(version)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(kube::Error::Api(status))) if status.code == 410 => return Ended::Gone,
            Ok(Err(error)) => return Ended::Failed(format!("watch: {}", describe(&error))),
            Err(_) => {
                return Ended::Failed(format!("watch: no answer within {}s", REQUEST_TIMEOUT.as_secs()));
            }
        };
        self.confirmed();
        let started = Instant::now();
        let stall = Duration::from_secs(u64::from(WATCH_TIMEOUT_SECS)) + STALL_MARGIN;
        let mut delivered = false;
        loop {
            let item = match tokio::time::timeout(stall, stream.next()).await {
                Ok(Some(item)) => item,
                Ok(None) => {
                    return Ended::Closed {
                        delivered,
                        lasted: started.elapsed(),
                    };
                }
                Err(_) => {
                    return Ended::Failed(format!(
                        "watch stalled: nothing from the API server for {}s",
                        stall.as_secs()
                    ));
                }
            };
            let (event, object_version) = match item {
                Ok(WatchEvent::Added(object) | WatchEvent::Modified(object)) => {
                    let v = object.resource_version();
                    (Event::Apply(object), v)
                }
                Ok(WatchEvent::Deleted(object)) => {
                    let v = object.resource_version();
                    (Event::Delete(object), v)
                }
                Ok(WatchEvent::Bookmark(bookmark)) => {
                    *version = bookmark.metadata.resource_version;
                    self.delivered(&mut delivered);
                    continue;
                }
                Ok(WatchEvent::Error(status)) if status.code == 410 => return Ended::Gone,
                Ok(WatchEvent::Error(status)) => {
                    return Ended::Failed(format!("watch: {} ({})", status.message, status.code));
                }
                Err(error) => return Ended::Failed(format!("watch stream: {}", describe(&error))),
            };
            match object_version.filter(|v| !v.is_empty()) {
                Some(v) => *version = v,
                // Without it the next watch could not resume here; a list can.
                None => return Ended::Gone,
            }
            self.delivered(&mut delivered);
            self.send(event).await;
        }
    }

    fn delivered(&mut self, delivered: &mut bool) {
        *delivered = true;
        self.failures = 0;
        self.confirmed();
    }

    async fn send(&self, event: Event<K>) {
        // A closed channel means the term is over; the task is being dropped.
        let _ = self.tx.send(event).await;
    }

    fn confirmed(&self) {
        if let Some(spell) = self.health.watch_confirmed(&self.resource) {
            info!(watch = %self.resource, broken_for = ?spell, "watch working again");
        }
    }

    /// Reports a failed attempt and waits before the next one.
    async fn failed(&mut self, error: String) {
        self.failures = self.failures.saturating_add(1);
        let delay = backoff_delay(self.failures, jitter());
        if self.health.watch_failed(&self.resource, &error) {
            warn!(watch = %self.resource, %error, retry_in = ?delay, "watch failed; retrying until it works");
        } else {
            debug!(watch = %self.resource, %error, attempt = self.failures, retry_in = ?delay, "watch still failing");
        }
        tokio::time::sleep(delay).await;
    }
}

/// One line for an API error: the server's own message and code where it sent one.
fn describe(error: &kube::Error) -> String {
    match error {
        kube::Error::Api(status) => format!("{} ({})", status.message, status.code),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::{Arc, Mutex};

    use k8s_openapi::api::core::v1::ConfigMap;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ListMeta, ObjectMeta};
    use kube::core::Status;

    use super::*;

    #[test]
    fn backoff_doubles_to_a_few_seconds_and_stays_there() {
        let delays: Vec<u128> = (1..=8).map(|n| backoff_delay(n, 0.0).as_millis()).collect();
        assert_eq!(delays, [250, 500, 1000, 2000, 4000, 5000, 5000, 5000]);
        assert_eq!(backoff_delay(1, 1.0), Duration::from_millis(300));
        assert_eq!(backoff_delay(u32::MAX, 1.0), BACKOFF_MAX);
    }

    type Page = kube::Result<ObjectList<ConfigMap>>;
    type Watch = kube::Result<Vec<kube::Result<WatchEvent<ConfigMap>>>>;

    /// Answers lists and watches from scripts; once a script runs out, lists fail and watches
    /// hang, as an API server that stopped answering.
    #[derive(Clone, Default)]
    struct Scripted {
        lists: Arc<Mutex<VecDeque<Page>>>,
        watches: Arc<Mutex<VecDeque<Watch>>>,
        calls: Arc<Mutex<Vec<(tokio::time::Instant, String)>>>,
    }

    fn forbidden() -> kube::Error {
        kube::Error::Api(
            Status::failure("persistentvolumes is forbidden", "Forbidden")
                .with_code(403)
                .boxed(),
        )
    }

    fn gone() -> kube::Error {
        kube::Error::Api(
            Status::failure("too old resource version", "Expired")
                .with_code(410)
                .boxed(),
        )
    }

    fn object(name: &str, version: &str) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("ns".into()),
                resource_version: Some(version.into()),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn page(names: &[&str], version: &str) -> Page {
        Ok(ObjectList {
            types: Default::default(),
            metadata: ListMeta {
                resource_version: Some(version.into()),
                ..Default::default()
            },
            items: names.iter().map(|n| object(n, version)).collect(),
        })
    }

    impl Source<ConfigMap> for Scripted {
        async fn list_page(&self, _continue_token: Option<String>) -> Page {
            self.calls
                .lock()
                .unwrap()
                .push((tokio::time::Instant::now(), "list".into()));
            let next = self.lists.lock().unwrap().pop_front();
            next.unwrap_or_else(|| Err(forbidden()))
        }

        async fn watch_from(
            &self,
            version: &str,
        ) -> kube::Result<BoxStream<'static, kube::Result<WatchEvent<ConfigMap>>>> {
            self.calls
                .lock()
                .unwrap()
                .push((tokio::time::Instant::now(), format!("watch {version}")));
            let next = self.watches.lock().unwrap().pop_front();
            match next {
                Some(Ok(events)) => Ok(futures::stream::iter(events).boxed()),
                Some(Err(error)) => Err(error),
                None => Ok(futures::stream::pending().boxed()),
            }
        }
    }

    fn names(event: &Event<ConfigMap>) -> String {
        match event {
            Event::Init => "Init".into(),
            Event::InitApply(o) => format!("InitApply {}", o.name_any()),
            Event::InitDone => "InitDone".into(),
            Event::Apply(o) => format!("Apply {}", o.name_any()),
            Event::Delete(o) => format!("Delete {}", o.name_any()),
        }
    }

    /// The watch over `source`, and the metrics and health record it reports to.
    fn start(
        source: &Scripted,
    ) -> (
        Metrics,
        Health,
        impl Stream<Item = Result<Event<ConfigMap>, watcher::Error>> + Unpin,
    ) {
        let metrics = Metrics::new();
        let health = Health::new(metrics.clone());
        let stream = Box::pin(watch::<ConfigMap, _>(
            source.clone(),
            health.clone(),
            metrics.clone(),
        ));
        (metrics, health, stream)
    }

    async fn take(
        stream: &mut (impl Stream<Item = Result<Event<ConfigMap>, watcher::Error>> + Unpin),
        n: usize,
    ) -> Vec<String> {
        let mut out = Vec::new();
        for _ in 0..n {
            let event = stream
                .next()
                .await
                .expect("the stream never ends")
                .expect("never an error");
            out.push(names(&event));
        }
        out
    }

    #[tokio::test(start_paused = true)]
    async fn errors_are_retried_within_seconds_and_never_reach_the_consumer() {
        let source = Scripted::default();
        {
            let mut lists = source.lists.lock().unwrap();
            // Down, then 403 while RBAC warms up, then a list.
            for _ in 0..6 {
                lists.push_back(Err(forbidden()));
            }
            lists.push_back(page(&["a"], "10"));
        }
        source.watches.lock().unwrap().push_back(Ok(vec![
            Ok(WatchEvent::Added(object("b", "11"))),
            Ok(WatchEvent::Deleted(object("a", "12"))),
        ]));
        let (_, health, mut stream) = start(&source);

        let t0 = tokio::time::Instant::now();
        let events = take(&mut stream, 11).await;
        let mut expected = vec!["Init"; 7];
        expected.extend(["InitApply a", "InitDone", "Apply b", "Delete a"]);
        assert_eq!(
            events, expected,
            "every failed list starts over; no error reaches the stream"
        );
        // Six failures: 0.25 + 0.5 + 1 + 2 + 4 + 5 s, each at most 20 % longer, capped at 5 s.
        let waited = t0.elapsed();
        assert!(
            waited <= Duration::from_millis(300 + 600 + 1200 + 2400 + 4800 + 5000),
            "{waited:?}"
        );
        assert!(health.watches_current(&["configmaps"]));

        // The next watch resumes from the last event's resourceVersion.
        tokio::time::sleep(Duration::from_millis(1)).await;
        let calls = source.calls.lock().unwrap().clone();
        let watches: Vec<&str> = calls
            .iter()
            .map(|(_, c)| c.as_str())
            .filter(|c| c.starts_with("watch"))
            .collect();
        assert_eq!(watches, ["watch 10", "watch 12"]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_gone_watch_lists_again_and_a_stalled_one_is_cut() {
        let source = Scripted::default();
        {
            let mut lists = source.lists.lock().unwrap();
            lists.push_back(page(&["a"], "10"));
            lists.push_back(page(&["a", "c"], "20"));
        }
        {
            let mut watches = source.watches.lock().unwrap();
            watches.push_back(Err(gone()));
            // After the relist: one that stalls (never ends) comes last, from the script's end.
        }
        let (metrics, health, mut stream) = start(&source);
        let events = take(&mut stream, 7).await;
        assert_eq!(
            events,
            [
                "Init",
                "InitApply a",
                "InitDone",
                "Init",
                "InitApply a",
                "InitApply c",
                "InitDone"
            ]
        );
        assert!(
            metrics
                .encode()
                .contains(r#"nfs_subdir_provisioner_watch_relists_total{resource="configmaps"} 1"#)
        );

        // The watch after the relist never delivers: it is cut once it is silent past its bound,
        // the watch is broken from then on, and the next attempt starts.
        let stall = Duration::from_secs(u64::from(WATCH_TIMEOUT_SECS)) + STALL_MARGIN;
        tokio::time::sleep(stall + Duration::from_millis(10)).await;
        let snapshot = health.snapshot();
        let record = &snapshot.watches["configmaps"];
        let broken = record.broken.as_ref().expect("a stalled watch is broken");
        assert!(broken.error.contains("stalled"), "{}", broken.error);
        tokio::time::sleep(BACKOFF_MAX).await;
        let calls = source.calls.lock().unwrap().clone();
        let kinds: Vec<&str> = calls.iter().map(|(_, c)| c.as_str()).collect();
        assert_eq!(kinds, ["list", "watch 10", "list", "watch 20", "watch 20"]);
    }

    #[tokio::test(start_paused = true)]
    async fn the_loop_ends_with_its_stream() {
        let source = Scripted::default();
        source.lists.lock().unwrap().push_back(page(&[], "1"));
        let metrics = Metrics::new();
        let stream = watch::<ConfigMap, _>(source.clone(), Health::new(metrics.clone()), metrics);
        drop(stream);
        tokio::time::sleep(Duration::from_secs(600)).await;
        let calls = source.calls.lock().unwrap().len();
        assert!(
            calls <= 2,
            "the loop went on after its stream was dropped: {calls} calls"
        );
    }

    /// Why errors must never reach kube's `Controller` (the bug this module fixes): after each
    /// error item it stops polling all of its trigger streams for 0.8 s, 1.6 s, 3.2 s … (up to
    /// 30 s, with jitter), so five errors in a row hold back the next object by about 25 s.
    #[tokio::test(start_paused = true)]
    async fn kube_controller_pauses_all_triggers_after_error_items() {
        use kube::runtime::Controller;
        use kube::runtime::controller::Action;
        use kube::runtime::reflector;

        let (store, mut writer) = reflector::store::<ConfigMap>();
        writer.apply_watcher_event(&Event::InitDone);
        writer.apply_watcher_event(&Event::Apply(object("a", "1")));
        let refused = || watcher::Error::InitialListFailed(forbidden());
        let triggers = futures::stream::iter(vec![
            Err(refused()),
            Err(refused()),
            Err(refused()),
            Err(refused()),
            Err(refused()),
            Ok(object("a", "1")),
        ])
        .chain(futures::stream::pending());
        let t0 = tokio::time::Instant::now();
        let reconciled: Arc<Mutex<Option<Duration>>> = Arc::default();
        let seen = Arc::clone(&reconciled);
        let controller = Controller::for_stream(triggers, store).run(
            move |_, _| {
                *seen.lock().unwrap() = Some(t0.elapsed());
                async { Ok::<_, kube::Error>(Action::await_change()) }
            },
            |_, _, _| Action::await_change(),
            Arc::new(()),
        );
        let _ = tokio::time::timeout(Duration::from_secs(120), controller.for_each(|_| async {})).await;
        let after = reconciled.lock().unwrap().expect("reconciled in the end");
        assert!(
            after >= Duration::from_secs(20),
            "the object waited only {after:?}"
        );
    }
}
