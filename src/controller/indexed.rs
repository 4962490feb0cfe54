//! The indexes of the caches ([`crate::core::index`]), kept by the watches that feed the caches:
//! each watch event changes an index as the reflector changes its store, a relist included (the
//! listed objects fill a fresh index, which replaces the old one whole once the list is complete).
//!
//! An event reaches the index just before the store, so whatever a reconcile finds in a store is
//! in its index already: a PV's change, once cached, drops the reservation of its directory, and
//! from then on only the index keeps another claim out of that directory.

use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard};

use futures::StreamExt;
use kube::runtime::watcher;

use crate::core::index::Index;

/// An index, read by reconciles.
pub struct Indexed<I>(Arc<RwLock<I>>);

impl<I> Clone for Indexed<I> {
    fn clone(&self) -> Self {
        Indexed(Arc::clone(&self.0))
    }
}

impl<I> Indexed<I> {
    /// The index as it is now. Held briefly, never across an await: the watch waits for it.
    pub fn read(&self) -> RwLockReadGuard<'_, I> {
        self.0.read().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The one writer of an index: its watch.
pub struct IndexWriter<I> {
    live: Arc<RwLock<I>>,
    /// The index a relist is filling, from its `Init` to its `InitDone`.
    relisted: Option<I>,
}

/// `empty`, to be read through the first and changed through the second.
pub fn indexed<I>(empty: I) -> (Indexed<I>, IndexWriter<I>) {
    let live = Arc::new(RwLock::new(empty));
    let writer = IndexWriter {
        live: Arc::clone(&live),
        relisted: None,
    };
    (Indexed(live), writer)
}

impl<I> IndexWriter<I> {
    /// What the reflector does to its store on `event`, done to the index.
    pub fn apply<K>(&mut self, event: &watcher::Event<K>)
    where
        I: Index<K>,
    {
        match event {
            watcher::Event::Apply(object) => self.write().apply(object),
            watcher::Event::Delete(object) => self.write().delete(object),
            watcher::Event::Init => self.relisted = Some(self.empty()),
            watcher::Event::InitApply(object) => {
                // The store takes objects listed without an Init into a fresh buffer too.
                if self.relisted.is_none() {
                    self.relisted = Some(self.empty());
                }
                if let Some(relisted) = self.relisted.as_mut() {
                    relisted.apply(object);
                }
            }
            watcher::Event::InitDone => {
                let relisted = match self.relisted.take() {
                    Some(relisted) => relisted,
                    None => self.empty(),
                };
                *self.write() = relisted;
            }
        }
    }

    fn empty<K>(&self) -> I
    where
        I: Index<K>,
    {
        self.live.read().unwrap_or_else(PoisonError::into_inner).empty()
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, I> {
        self.live.write().unwrap_or_else(PoisonError::into_inner)
    }
}

/// `events`, each applied to the index of `writer` on its way (to the store, next).
pub fn index_events<K, I, E>(
    events: impl futures::Stream<Item = Result<watcher::Event<K>, E>>,
    mut writer: IndexWriter<I>,
) -> impl futures::Stream<Item = Result<watcher::Event<K>, E>>
where
    I: Index<K>,
{
    events.inspect(move |event| {
        if let Ok(event) = event {
            writer.apply(event);
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::index::Reservations;
    use crate::core::index::VolumeIndex;
    use crate::core::index::tests::{
        EXPORTS, candidate, export, indexed as answer, nfs_pv, path, pv, scanned,
    };
    use crate::core::naming::VolumePath;
    use futures::FutureExt;
    use k8s_openapi::api::core::v1::PersistentVolume;
    use kube::runtime::reflector::{self, Store};
    use kube::runtime::{WatchStreamExt, watcher::Event};
    use proptest::prelude::*;
    use std::collections::HashMap;

    /// Feeds `events` through the index and then the store, as a cache's watch does, and after
    /// each one holds the index to the scan of the store, for each of `candidates`.
    fn follow(events: Vec<Event<PersistentVolume>>, candidates: &[VolumePath]) -> Result<(), TestCaseError> {
        let (store, store_writer) = reflector::store::<PersistentVolume>();
        let (index, index_writer) = indexed(VolumeIndex::default());
        let events = futures::stream::iter(events.into_iter().map(Ok::<_, watcher::Error>));
        let mut events = std::pin::pin!(index_events(events, index_writer).reflect(store_writer));
        // Nothing here waits: each event is there at once.
        while let Some(event) = events.next().now_or_never().expect("an event ready") {
            prop_assert!(event.is_ok());
            agree(&store, &index, candidates)?;
        }
        Ok(())
    }

    fn agree(
        store: &Store<PersistentVolume>,
        index: &Indexed<VolumeIndex>,
        candidates: &[VolumePath],
    ) -> Result<(), TestCaseError> {
        let pvs = store.state();
        for (server, p) in EXPORTS {
            let e = export(server, p);
            for candidate in candidates {
                prop_assert_eq!(
                    answer(&index.read(), &Reservations::default(), &e, candidate),
                    scanned(pvs.iter().map(AsRef::as_ref), &HashMap::new(), &e, candidate),
                    "{} {}",
                    e,
                    candidate
                );
            }
        }
        Ok(())
    }

    #[test]
    fn the_index_follows_its_store_through_changes_and_relists() {
        let (a, b, c) = (
            nfs_pv("a", "s1", "/export/team"),
            nfs_pv("b", "s1", "/export/team/data"),
            nfs_pv("c", "s1", "/export/other"),
        );
        let (index, mut writer) = indexed(VolumeIndex::default());
        let e = export("s1", "/export");
        let found = |index: &Indexed<VolumeIndex>| -> Vec<String> {
            let mut names: Vec<String> = index
                .read()
                .overlapping(&e, &path("team/data"))
                .into_iter()
                .map(|(n, _)| n.to_owned())
                .collect();
            names.extend(
                index
                    .read()
                    .overlapping(&e, &path("other"))
                    .into_iter()
                    .map(|(n, _)| n.to_owned()),
            );
            names.sort();
            names
        };
        writer.apply(&Event::Init);
        writer.apply(&Event::InitApply(a.clone()));
        assert!(found(&index).is_empty(), "a list counts once it is complete");
        writer.apply(&Event::InitDone);
        assert_eq!(found(&index), ["a"]);
        writer.apply(&Event::Apply(b.clone()));
        writer.apply(&Event::Apply(c.clone()));
        assert_eq!(found(&index), ["a", "b", "c"]);
        writer.apply(&Event::Delete(a.clone()));
        assert_eq!(found(&index), ["b", "c"]);
        // A relist (after 410 Gone): what it no longer lists is gone at its end, not before.
        writer.apply(&Event::Init);
        writer.apply(&Event::InitApply(a.clone()));
        writer.apply(&Event::InitApply(c.clone()));
        assert_eq!(found(&index), ["b", "c"]);
        writer.apply(&Event::InitDone);
        assert_eq!(found(&index), ["a", "c"]);
        // As the store: a list's end without its start empties, and a relist starts afresh.
        writer.apply(&Event::InitDone);
        assert!(found(&index).is_empty());
        writer.apply(&Event::InitApply(b.clone()));
        writer.apply(&Event::Init);
        writer.apply(&Event::InitApply(c));
        writer.apply(&Event::InitDone);
        assert_eq!(found(&index), ["c"]);
    }

    #[test]
    fn the_index_and_the_store_agree_after_each_event() {
        let (a, b) = (nfs_pv("a", "s1", "/export/a"), nfs_pv("b", "s1", "/export/a/b"));
        let events = vec![
            Event::Init,
            Event::InitApply(a.clone()),
            Event::InitApply(b.clone()),
            Event::InitDone,
            Event::Delete(b.clone()),
            Event::Apply(nfs_pv("a", "s1", "/export/b")),
            Event::Init,
            Event::InitApply(b),
            Event::InitDone,
        ];
        follow(events, &[path("a"), path("a/b"), path("b")]).unwrap();
    }

    /// A watch's events: changes, deletions, and relists, each listing any objects, some cut
    /// short (the list failed midway and is started again).
    fn events() -> impl Strategy<Value = Vec<Event<PersistentVolume>>> {
        prop::collection::vec(
            prop_oneof![
                4 => pv().prop_map(|pv| vec![Event::Apply(pv)]),
                2 => pv().prop_map(|pv| vec![Event::Delete(pv)]),
                2 => (prop::collection::vec(pv(), 0..8), prop::bool::weighted(0.3)).prop_map(|(pvs, cut)| {
                    let listed = pvs.into_iter().map(Event::InitApply);
                    let done = (!cut).then_some(Event::InitDone);
                    std::iter::once(Event::Init).chain(listed).chain(done).collect()
                }),
            ],
            1..30,
        )
        .prop_map(|events| events.into_iter().flatten().collect())
    }

    proptest! {
        /// Whatever the watch delivers, relists included: after each event the index answers the
        /// overlap check as the scan of the store does.
        #[test]
        fn the_index_answers_as_the_scan_of_its_store(
            events in events(),
            candidates in prop::collection::vec(candidate(), 1..4),
        ) {
            follow(events, &candidates)?;
        }
    }
}
