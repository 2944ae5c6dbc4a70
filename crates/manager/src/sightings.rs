//! Which submission versions this manager has handled, so that a listing, an event and the
//! HTTP API hand one version to a claim once, and so that nothing is skipped for good unless
//! its handling ended. A version is skipped only while a task handles it ([`Handling`]) or
//! once a task's handling of it ended well (claimed and run, refused, or claimed by another
//! manager); a handling that failed, panicked or was dropped frees the version again, so the
//! next listing (the reconcile, with events) hands it over again, whatever the event path did.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

/// The versions handled and being handled.
#[derive(Debug, Default)]
pub(crate) struct Sightings {
    /// Versions whose handling ended well (or that a claim in the store shows handled).
    done: HashSet<String>,
    /// Versions a task handles now.
    live: HashSet<String>,
}

impl Sightings {
    /// Versions already handled (claims found in the store at start-up).
    pub(crate) fn with_done(done: HashSet<String>) -> Arc<Mutex<Self>> {
        Arc::new(Mutex::new(Self {
            done,
            live: HashSet::new(),
        }))
    }

    /// How many versions are known handled.
    #[cfg(test)]
    pub(crate) fn done_len(this: &Mutex<Self>) -> usize {
        lock(this).done.len()
    }

    /// Begin handling `id`, unless it is handled or being handled: the caller then owns the
    /// version until it calls [`Handling::done`] or drops the handle.
    pub(crate) fn begin(this: &Arc<Mutex<Self>>, id: &str) -> Option<Handling> {
        let mut s = lock(this);
        if s.done.contains(id) || !s.live.insert(id.to_string()) {
            return None;
        }
        Some(Handling {
            sightings: this.clone(),
            id: id.to_string(),
            ended: false,
        })
    }
}

/// The sets, even if a task panicked holding the lock: each change is one insert or remove,
/// so they are consistent, and refusing them would skip every submission from then on.
fn lock(this: &Mutex<Sightings>) -> std::sync::MutexGuard<'_, Sightings> {
    this.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// One version being handled; dropped without [`Handling::done`], the version is free again.
#[derive(Debug)]
#[must_use = "dropping the handle frees the version for the next listing"]
pub(crate) struct Handling {
    sightings: Arc<Mutex<Sightings>>,
    id: String,
    ended: bool,
}

impl Handling {
    /// The handling ended well: never hand this version over again.
    pub(crate) fn done(mut self) {
        self.ended = true;
    }
}

impl Drop for Handling {
    fn drop(&mut self) {
        let mut s = lock(&self.sightings);
        s.live.remove(&self.id);
        if self.ended {
            s.done.insert(std::mem::take(&mut self.id));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_version_is_skipped_only_while_handled_or_once_handled_well() {
        let s = Sightings::with_done(["old".to_string()].into());
        assert!(
            Sightings::begin(&s, "old").is_none(),
            "claimed before start"
        );
        let h = Sightings::begin(&s, "a").unwrap();
        assert!(Sightings::begin(&s, "a").is_none(), "being handled");
        drop(h); // failed: free again
        let h = Sightings::begin(&s, "a").expect("a failed handling is handed over again");
        h.done();
        assert!(Sightings::begin(&s, "a").is_none(), "handled");
        // A task that panics while handling frees its version too.
        let s2 = s.clone();
        let r = std::thread::spawn(move || {
            let _h = Sightings::begin(&s2, "b").unwrap();
            panic!("the handling task panicked");
        })
        .join();
        assert!(r.is_err());
        assert!(Sightings::begin(&s, "b").is_some());
        assert_eq!(Sightings::done_len(&s), 2);
    }
}
