//! What `GET /tasks` remembers between requests, so listing thousands of tasks does not read
//! every task's records each time: per task document, its name and tags (the filters) and,
//! once reached, its final TES state.
//!
//! It stays right under concurrent writes because nothing in it can go stale: the store's
//! listing is read on every request (new and deleted tasks show at once); an entry is keyed by
//! the task document's key *and* its modification time, size and e-tag (a rewritten document
//! misses); and a state is only kept once it is final (its job ended and, when it succeeded,
//! its outputs were delivered), which never changes. Every server process keeps its own, so
//! several servers on one store need no coordination.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use chrono::{DateTime, Utc};

use caas_manager::tes::TesTask;

/// Entries kept at most; past it the index starts again empty (entries of deleted tasks
/// are dropped that way too).
const MAX_ENTRIES: usize = 200_000;

/// Which version of a task document an entry describes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stamp {
    /// The document's modification time.
    pub modified: DateTime<Utc>,
    /// Its size in bytes.
    pub size: u64,
    /// Its e-tag, where the store gives one.
    pub e_tag: Option<String>,
}

/// The parts of a task the listing filters on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filters {
    /// The task's name.
    pub name: Option<String>,
    /// The task's tags.
    pub tags: BTreeMap<String, String>,
}

impl From<&TesTask> for Filters {
    fn from(t: &TesTask) -> Self {
        Self {
            name: t.name.clone(),
            tags: t.tags.clone(),
        }
    }
}

#[derive(Debug, Default)]
struct Entry {
    stamp: Option<Stamp>,
    filters: Option<Filters>,
    final_state: Option<&'static str>,
}

/// The index (one per server process).
#[derive(Debug, Default)]
pub struct TesIndex {
    map: Mutex<HashMap<String, Entry>>,
}

impl TesIndex {
    fn with<T>(&self, f: impl FnOnce(&mut HashMap<String, Entry>) -> T) -> T {
        let mut m = self.map.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut m)
    }

    /// The filters and final state remembered for the document `key` at `stamp`.
    pub fn get(&self, key: &str, stamp: &Stamp) -> (Option<Filters>, Option<&'static str>) {
        self.with(|m| match m.get(key) {
            Some(e) if e.stamp.as_ref() == Some(stamp) => (e.filters.clone(), e.final_state),
            _ => (None, None),
        })
    }

    fn entry<'a>(m: &'a mut HashMap<String, Entry>, key: &str, stamp: &Stamp) -> &'a mut Entry {
        if m.len() >= MAX_ENTRIES && !m.contains_key(key) {
            m.clear();
        }
        let e = m.entry(key.to_string()).or_default();
        if e.stamp.as_ref() != Some(stamp) {
            *e = Entry {
                stamp: Some(stamp.clone()),
                ..Entry::default()
            };
        }
        e
    }

    /// Remember the filters of the document `key` at `stamp`.
    pub fn put_filters(&self, key: &str, stamp: &Stamp, filters: Filters) {
        self.with(|m| Self::entry(m, key, stamp).filters = Some(filters));
    }

    /// Remember that the task of the document `key` at `stamp` reached `state` for good.
    pub fn put_final(&self, key: &str, stamp: &Stamp, state: &'static str) {
        self.with(|m| Self::entry(m, key, stamp).final_state = Some(state));
    }

    /// How many tasks it describes.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.with(|m| m.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp(secs: i64, size: u64) -> Stamp {
        Stamp {
            modified: DateTime::from_timestamp(secs, 0).unwrap_or_default(),
            size,
            e_tag: None,
        }
    }

    #[test]
    fn a_rewritten_document_misses_and_forgets_its_state() {
        let ix = TesIndex::default();
        let f = Filters {
            name: Some("a".into()),
            tags: BTreeMap::new(),
        };
        ix.put_filters("g/configs/t.json", &stamp(1, 10), f.clone());
        ix.put_final("g/configs/t.json", &stamp(1, 10), "COMPLETE");
        assert_eq!(
            ix.get("g/configs/t.json", &stamp(1, 10)),
            (Some(f), Some("COMPLETE"))
        );
        // Same time, other size; other time, same size: both are another document.
        assert_eq!(ix.get("g/configs/t.json", &stamp(1, 11)), (None, None));
        assert_eq!(ix.get("g/configs/t.json", &stamp(2, 10)), (None, None));
        ix.put_final("g/configs/t.json", &stamp(2, 10), "CANCELED");
        assert_eq!(
            ix.get("g/configs/t.json", &stamp(2, 10)),
            (None, Some("CANCELED"))
        );
        assert_eq!(ix.get("g/configs/t.json", &stamp(1, 10)), (None, None));
        assert_eq!(ix.get("other/configs/t.json", &stamp(2, 10)), (None, None));
    }

    #[test]
    fn it_stays_bounded() {
        let ix = TesIndex::default();
        for i in 0..(MAX_ENTRIES as u64 + 5) {
            ix.put_final(&format!("g/configs/{i}.json"), &stamp(1, i), "COMPLETE");
        }
        assert!(ix.len() <= MAX_ENTRIES);
        assert_eq!(
            ix.get(
                &format!("g/configs/{}.json", MAX_ENTRIES + 4),
                &stamp(1, MAX_ENTRIES as u64 + 4)
            ),
            (None, Some("COMPLETE"))
        );
    }
}
