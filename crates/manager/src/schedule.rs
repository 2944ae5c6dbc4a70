//! When the manager lists what: the store's groups (the root) and each group's `submissions/`
//! folder, so that idle request cost follows the active groups, not all groups.
//!
//! - Polling (no events): a listing that finds nothing new doubles that folder's interval, up
//!   to a bound (`--poll-max`, 30 s); one that finds something new (or a group's first listing)
//!   brings it back to the short interval (`--poll`).
//! - With events (file-system events, SQS): everything is listed at start-up, then again every
//!   `--reconcile` (5 min), so a lost event costs at most that; between those, only a group an
//!   event points at (a new group folder, a submission that failed to start) is listed, and a
//!   lost-events signal lists everything at once.
//!
//! Pure logic over [`Instant`]s, so its rules are tested without a store.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use caas_protocol::GroupName;

/// One folder's next listing and its interval.
#[derive(Debug, Clone, Copy)]
struct Slot {
    due: Instant,
    every: Duration,
}

/// The listing schedule of one manager.
#[derive(Debug)]
pub(crate) struct Schedule {
    events: bool,
    poll: Duration,
    max: Duration,
    reconcile: Duration,
    root: Slot,
    groups: HashMap<GroupName, Slot>,
}

impl Schedule {
    /// `events`: whether events announce new submissions (then `reconcile` applies), else
    /// polling backs off from `poll` to `max`.
    pub(crate) fn new(
        events: bool,
        poll: Duration,
        max: Duration,
        reconcile: Duration,
        now: Instant,
    ) -> Self {
        Self {
            events,
            poll,
            max: max.max(poll),
            reconcile: reconcile.max(Duration::from_millis(1)),
            root: Slot {
                due: now,
                every: poll,
            },
            groups: HashMap::new(),
        }
    }

    fn slower(&self, every: Duration) -> Duration {
        (every * 2).min(self.max)
    }

    /// Whether the groups are due to be listed.
    pub(crate) fn root_due(&self, now: Instant) -> bool {
        self.root.due <= now
    }

    /// The groups whose submissions are due to be listed.
    pub(crate) fn due_groups(&self, now: Instant) -> Vec<GroupName> {
        let mut v: Vec<GroupName> = self
            .groups
            .iter()
            .filter(|(_, s)| s.due <= now)
            .map(|(g, _)| g.clone())
            .collect();
        v.sort();
        v
    }

    /// The groups were listed: `groups` exist now. New ones are listed at once; with events, a
    /// listing of the groups is a reconcile and every group is listed.
    pub(crate) fn listed_root(&mut self, groups: &[GroupName], now: Instant) {
        let mut new = false;
        self.groups.retain(|g, _| groups.contains(g));
        for g in groups {
            let poll = self.poll;
            self.groups
                .entry(g.clone())
                .and_modify(|s| {
                    if self.events {
                        s.due = now;
                    }
                })
                .or_insert_with(|| {
                    new = true;
                    Slot {
                        due: now,
                        every: poll,
                    }
                });
        }
        self.root.every = if self.events {
            self.reconcile
        } else if new {
            self.poll
        } else {
            self.slower(self.root.every)
        };
        self.root.due = now + self.root.every;
    }

    /// Group `g`'s submissions were listed; `found` new ones.
    pub(crate) fn listed_group(&mut self, g: &GroupName, found: bool, now: Instant) {
        let (events, poll, reconcile) = (self.events, self.poll, self.reconcile);
        let every = match self.groups.get(g) {
            Some(s) if !events && !found => self.slower(s.every),
            _ => poll,
        };
        // With events, the next listing of a group is the next reconcile (or a poke).
        let wait = if events { reconcile } else { every };
        self.groups.insert(
            g.clone(),
            Slot {
                due: now + wait,
                every,
            },
        );
    }

    /// List group `g` at `at` at the latest (an event pointed at it: now; a submission of it
    /// failed to start: after the short interval), and poll it at the short interval again.
    pub(crate) fn poke(&mut self, g: &GroupName, at: Instant) {
        let poll = self.poll;
        let s = self.groups.entry(g.clone()).or_insert(Slot {
            due: at,
            every: poll,
        });
        s.due = s.due.min(at);
        s.every = poll;
    }

    /// The retry of a failed submission of `g`: a listing after the short interval.
    pub(crate) fn retry(&mut self, g: &GroupName, now: Instant) {
        let at = now + self.poll;
        self.poke(g, at);
    }

    /// When the next listing is due.
    pub(crate) fn next_due(&self) -> Instant {
        self.groups
            .values()
            .map(|s| s.due)
            .fold(self.root.due, Instant::min)
    }

    /// Events were lost: list everything at the next pass.
    pub(crate) fn rescan(&mut self, now: Instant) {
        self.root.due = now;
        for s in self.groups.values_mut() {
            s.due = now;
        }
    }

    /// The longest a group now waits between two listings.
    #[cfg(test)]
    pub(crate) fn group_interval(&self, g: &GroupName) -> Option<Duration> {
        self.groups.get(g).map(|s| s.every)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(s: &str) -> GroupName {
        s.parse().expect("a group name")
    }

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn idle_groups_are_listed_less_and_less_often_and_active_ones_at_once() {
        let t0 = Instant::now();
        let (poll, max) = (500 * MS, Duration::from_secs(30));
        let mut s = Schedule::new(false, poll, max, Duration::from_secs(300), t0);
        assert!(s.root_due(t0), "everything is listed at start-up");
        s.listed_root(&[g("idle"), g("busy")], t0);
        assert_eq!(s.due_groups(t0), vec![g("busy"), g("idle")]);
        let mut now = t0;
        for _ in 0..20 {
            for x in s.due_groups(now) {
                s.listed_group(&x, x == g("busy"), now);
            }
            now += poll;
        }
        assert_eq!(s.group_interval(&g("busy")), Some(poll));
        let idle = s.group_interval(&g("idle")).unwrap();
        assert!(idle > 8 * poll && idle <= max, "{idle:?}");
        // Listings of the idle group over an hour: bounded by the cap, not the poll.
        let mut lists = 0;
        let end = now + Duration::from_secs(3600);
        while now < end {
            for x in s.due_groups(now) {
                if x == g("idle") {
                    lists += 1;
                }
                s.listed_group(&x, false, now);
            }
            now += poll;
        }
        assert!((115..=125).contains(&lists), "{lists} listings in an hour");
        assert_eq!(s.group_interval(&g("idle")), Some(max));
        // A failed submission is looked at again after the short interval.
        s.retry(&g("idle"), now);
        assert_eq!(s.due_groups(now + poll), vec![g("idle")]);
        // Something new: back to the short interval.
        s.listed_group(&g("idle"), true, now);
        assert_eq!(s.group_interval(&g("idle")), Some(poll));
        // The root backs off too, and a new group brings it back.
        for _ in 0..10 {
            s.listed_root(&[g("idle"), g("busy")], now);
        }
        assert_eq!(s.root.every, max);
        s.listed_root(&[g("idle"), g("busy"), g("new")], now);
        assert_eq!(s.root.every, poll);
        assert!(s.due_groups(now).contains(&g("new")));
        // A group that is gone is forgotten.
        s.listed_root(&[g("new")], now);
        assert_eq!(s.group_interval(&g("idle")), None);
    }

    #[test]
    fn with_events_everything_is_listed_at_the_reconcile_interval_or_when_poked() {
        let t0 = Instant::now();
        let rec = Duration::from_secs(300);
        let mut s = Schedule::new(true, 500 * MS, Duration::from_secs(30), rec, t0);
        assert!(s.root_due(t0));
        s.listed_root(&[g("a"), g("b")], t0);
        for x in s.due_groups(t0) {
            s.listed_group(&x, false, t0);
        }
        let later = t0 + rec - MS;
        assert!(!s.root_due(later) && s.due_groups(later).is_empty());
        assert_eq!(s.next_due(), t0 + rec);
        s.poke(&g("b"), later);
        assert_eq!(s.next_due(), later);
        assert_eq!(s.due_groups(later), vec![g("b")]);
        s.listed_group(&g("b"), true, later);
        assert!(s.due_groups(later).is_empty());
        // The reconcile: the groups, then every group.
        let t1 = t0 + rec;
        assert!(s.root_due(t1));
        s.listed_root(&[g("a"), g("b")], t1);
        assert_eq!(s.due_groups(t1), vec![g("a"), g("b")]);
        // Lost events: everything now.
        for x in s.due_groups(t1) {
            s.listed_group(&x, false, t1);
        }
        s.rescan(t1 + MS);
        assert!(s.root_due(t1 + MS));
        assert_eq!(s.due_groups(t1 + MS).len(), 2);
    }
}
