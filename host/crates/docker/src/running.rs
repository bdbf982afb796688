//! The running-container cache of [`DockerRuntime::list`](crate::DockerRuntime): what the last
//! inspect said of each container that was running, and when that may be trusted.
//!
//! The engine's container listing is served from a view that lags its event stream: right
//! after a `die` event the listing still says `running` for a few milliseconds (measured on
//! Docker 20.10: the first listing after `die` said `running`, inspect already `exited`). So
//! the listing's state alone never proves a container still runs. An entry is trusted only
//! while an event subscription of this runtime is live, and every event for a container
//! drops its entry before the event reaches the subscriber, so the pass an event wakes
//! inspects that container afresh. A subscription that starts, fails or ends clears the
//! cache (events may have been missed), and an inspect that raced an event is not cached
//! (the cache's generation moved on while it ran).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::model::ContainerInfo;

/// Shared by the clones of one runtime.
#[derive(Debug, Default, Clone)]
pub(crate) struct RunningCache {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Debug, Default)]
struct Inner {
    by_id: HashMap<String, ContainerInfo>,
    /// Bumped by every invalidation: an inspect that started before it is not cached.
    generation: u64,
    /// Live event subscriptions; the cache is used only while one is.
    subscriptions: usize,
}

/// One live event subscription; dropping it (the stream ended or was dropped) clears the
/// cache.
pub(crate) struct Subscription {
    cache: RunningCache,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut inner = self.cache.lock();
        inner.subscriptions = inner.subscriptions.saturating_sub(1);
        inner.clear();
    }
}

impl Inner {
    fn clear(&mut self) {
        self.by_id.clear();
        self.generation += 1;
    }
}

/// What `list` may take from the cache, decided under one lock.
pub(crate) struct Lookup {
    /// Containers listed running that the cache knows: not inspected again.
    pub known: Vec<(String, ContainerInfo)>,
    /// Everything else: inspected.
    pub to_inspect: Vec<String>,
    /// The generation the lookup saw; pass it to [`RunningCache::remember`].
    pub generation: u64,
}

impl RunningCache {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().expect("docker running cache lock")
    }

    /// Starts counting a subscription (call when the event stream is created, before any
    /// event of it is read).
    pub(crate) fn subscribe(&self) -> Subscription {
        let mut inner = self.lock();
        inner.subscriptions += 1;
        inner.clear();
        Subscription {
            cache: self.clone(),
        }
    }

    /// An event for `id` (or our own stop/remove of it): its entry is stale.
    pub(crate) fn forget(&self, id: &str) {
        let mut inner = self.lock();
        inner.by_id.remove(id);
        inner.generation += 1;
    }

    /// Any event may have been missed: nothing cached is trusted.
    pub(crate) fn forget_all(&self) {
        self.lock().clear();
    }

    /// Splits one listing (`(id, listed running)` per container) into what is known and what
    /// must be inspected, and drops entries of containers no longer listed.
    pub(crate) fn lookup(&self, listed: &[(String, bool)]) -> Lookup {
        let mut inner = self.lock();
        let ids: std::collections::HashSet<&str> =
            listed.iter().map(|(id, _)| id.as_str()).collect();
        inner.by_id.retain(|id, _| ids.contains(id.as_str()));
        let trusted = inner.subscriptions > 0;
        let mut known = Vec::new();
        let mut to_inspect = Vec::new();
        for (id, running) in listed {
            match inner.by_id.get(id) {
                Some(info) if trusted && *running => known.push((id.clone(), info.clone())),
                _ => {
                    inner.by_id.remove(id);
                    to_inspect.push(id.clone());
                }
            }
        }
        Lookup {
            known,
            to_inspect,
            generation: inner.generation,
        }
    }

    /// Caches what an inspect found running, unless something was invalidated since the
    /// lookup at `generation` or no subscription is live.
    pub(crate) fn remember(&self, generation: u64, running: Vec<ContainerInfo>) {
        let mut inner = self.lock();
        if inner.generation != generation || inner.subscriptions == 0 {
            return;
        }
        for info in running {
            inner.by_id.insert(info.id.clone(), info);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(id: &str) -> ContainerInfo {
        ContainerInfo {
            id: id.to_string(),
            name: id.to_string(),
            image: "img".into(),
            labels: Default::default(),
            state: crate::ContainerState::Running,
            ips: Default::default(),
            exit_code: None,
            oom_killed: false,
            created_unix: 0,
            started_at: None,
            finished_at: None,
        }
    }

    fn listed(ids: &[(&str, bool)]) -> Vec<(String, bool)> {
        ids.iter().map(|(id, r)| (id.to_string(), *r)).collect()
    }

    #[test]
    fn without_a_subscription_every_container_is_inspected() {
        let cache = RunningCache::default();
        let l = cache.lookup(&listed(&[("a", true)]));
        cache.remember(l.generation, vec![info("a")]);
        let l = cache.lookup(&listed(&[("a", true)]));
        assert!(l.known.is_empty());
        assert_eq!(l.to_inspect, ["a"]);
    }

    #[test]
    fn a_listed_running_container_is_known_while_subscribed() {
        let cache = RunningCache::default();
        let _sub = cache.subscribe();
        let l = cache.lookup(&listed(&[("a", true)]));
        cache.remember(l.generation, vec![info("a")]);
        let l = cache.lookup(&listed(&[("a", true), ("b", false)]));
        assert_eq!(l.known.len(), 1);
        assert_eq!(l.to_inspect, ["b"]);
    }

    #[test]
    fn an_event_makes_the_next_listing_inspect_even_if_it_still_says_running() {
        let cache = RunningCache::default();
        let _sub = cache.subscribe();
        let l = cache.lookup(&listed(&[("a", true)]));
        cache.remember(l.generation, vec![info("a")]);
        cache.forget("a");
        let l = cache.lookup(&listed(&[("a", true)]));
        assert_eq!(l.to_inspect, ["a"]);
    }

    #[test]
    fn an_inspect_racing_an_event_is_not_cached() {
        let cache = RunningCache::default();
        let _sub = cache.subscribe();
        let l = cache.lookup(&listed(&[("a", true)]));
        cache.forget("a");
        cache.remember(l.generation, vec![info("a")]);
        assert_eq!(cache.lookup(&listed(&[("a", true)])).to_inspect, ["a"]);
    }

    #[test]
    fn a_dropped_subscription_clears_the_cache() {
        let cache = RunningCache::default();
        let sub = cache.subscribe();
        let l = cache.lookup(&listed(&[("a", true)]));
        cache.remember(l.generation, vec![info("a")]);
        drop(sub);
        let _again = cache.subscribe();
        assert_eq!(cache.lookup(&listed(&[("a", true)])).to_inspect, ["a"]);
    }
}
