//! Least-recently-used bookkeeping with in-use leases, bounded by bytes and inodes.
//!
//! Shared by the toolchain archive cache and the unpacked roots: both keep files on
//! disk keyed by archive id and must never evict what a job uses. Each entry costs
//! bytes and inodes ([`Cost`]) and the budget bounds both: a root of 50,000 empty
//! files is ~2 MB but 50,000 inodes, and a disk runs out of either (issue 27).
//! This type only decides; the owner deletes what it is told was evicted.

use std::collections::HashMap;
use std::ops::{Add, Sub};
use std::sync::Arc;

/// What an entry keeps on disk, or what a budget allows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cost {
    pub bytes: u64,
    pub inodes: u64,
}

impl Cost {
    /// A budget that bounds bytes only.
    pub const fn bytes_only(bytes: u64) -> Cost {
        Cost { bytes, inodes: u64::MAX }
    }

    /// One file of `bytes`.
    pub const fn file(bytes: u64) -> Cost {
        Cost { bytes, inodes: 1 }
    }

    /// Within `budget` in every dimension.
    pub fn fits(self, budget: Cost) -> bool {
        self.bytes <= budget.bytes && self.inodes <= budget.inodes
    }
}

impl Add for Cost {
    type Output = Cost;
    fn add(self, other: Cost) -> Cost {
        Cost { bytes: self.bytes.saturating_add(other.bytes), inodes: self.inodes.saturating_add(other.inodes) }
    }
}

impl Sub for Cost {
    type Output = Cost;
    fn sub(self, other: Cost) -> Cost {
        Cost { bytes: self.bytes.saturating_sub(other.bytes), inodes: self.inodes.saturating_sub(other.inodes) }
    }
}

#[derive(Debug)]
struct Entry {
    cost: Cost,
    last_used: u64,
    /// Cloned into every lease; `strong_count > 1` means some job still uses it.
    lease: Arc<()>,
}

#[derive(Debug)]
pub struct Lru {
    budget: Cost,
    used: Cost,
    clock: u64,
    entries: HashMap<String, Entry>,
}

/// Not enough unused entries could be evicted to make room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoRoom {
    pub needed: Cost,
    pub budget: Cost,
}

/// One entry as [`Lru::entries`] lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryView {
    pub id: String,
    pub cost: Cost,
    pub in_use: bool,
}

impl Lru {
    pub fn new(budget: Cost) -> Self {
        Lru { budget, used: Cost::default(), clock: 0, entries: HashMap::new() }
    }

    pub fn budget(&self) -> Cost {
        self.budget
    }

    pub fn used(&self) -> Cost {
        self.used
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn contains(&self, id: &str) -> bool {
        self.entries.contains_key(id)
    }

    /// Marks `id` as just used and returns a lease that pins it, if present.
    pub fn lease(&mut self, id: &str) -> Option<Arc<()>> {
        self.clock += 1;
        let entry = self.entries.get_mut(id)?;
        entry.last_used = self.clock;
        Some(entry.lease.clone())
    }

    /// Unleased entries, least recently used first: the eviction order.
    fn idle_oldest_first(&self) -> Vec<(String, Cost)> {
        let mut idle: Vec<(&String, &Entry)> =
            self.entries.iter().filter(|(_, e)| Arc::strong_count(&e.lease) == 1).collect();
        idle.sort_by_key(|(_, e)| e.last_used);
        idle.into_iter().map(|(id, e)| (id.clone(), e.cost)).collect()
    }

    /// Evicts least recently used, unleased entries until `cost` more fits.
    /// Returns the evicted ids; on failure nothing is evicted.
    pub fn make_room(&mut self, cost: Cost) -> Result<Vec<String>, NoRoom> {
        let no_room = NoRoom { needed: cost, budget: self.budget };
        if !cost.fits(self.budget) {
            return Err(no_room);
        }
        let mut left = self.used;
        let mut victims = Vec::new();
        for (id, victim) in self.idle_oldest_first() {
            if (left + cost).fits(self.budget) {
                break;
            }
            left = left - victim;
            victims.push(id);
        }
        if !(left + cost).fits(self.budget) {
            return Err(no_room);
        }
        for id in &victims {
            self.remove(id);
        }
        Ok(victims)
    }

    /// Records `id` and returns its lease. Recording an id again updates its cost
    /// and recency but keeps its lease, so leases already handed out still pin it.
    pub fn insert(&mut self, id: String, cost: Cost) -> Arc<()> {
        self.clock += 1;
        let lease = match self.entries.remove(&id) {
            Some(old) => {
                self.used = self.used - old.cost;
                old.lease
            }
            None => Arc::new(()),
        };
        self.used = self.used + cost;
        self.entries.insert(id, Entry { cost, last_used: self.clock, lease: lease.clone() });
        lease
    }

    /// Like [`Lru::make_room`], but evicts what it can when it cannot make enough
    /// room (for roots that must exist anyway: the job waiting for one needs it).
    pub fn make_room_best_effort(&mut self, cost: Cost) -> Vec<String> {
        let mut victims = Vec::new();
        for (id, _) in self.idle_oldest_first() {
            if (self.used + cost).fits(self.budget) {
                break;
            }
            self.remove(&id);
            victims.push(id);
        }
        victims
    }

    /// Evicts every unleased entry (garbage collection, or a disk below its reserve).
    pub fn evict_idle(&mut self) -> Vec<String> {
        let victims: Vec<String> = self.idle_oldest_first().into_iter().map(|(id, _)| id).collect();
        for id in &victims {
            self.remove(id);
        }
        victims
    }

    /// Every entry, most recently used first.
    pub fn entries(&self) -> Vec<EntryView> {
        let mut entries: Vec<(&String, &Entry)> = self.entries.iter().collect();
        entries.sort_by_key(|(_, e)| std::cmp::Reverse(e.last_used));
        entries
            .into_iter()
            .map(|(id, e)| EntryView { id: id.clone(), cost: e.cost, in_use: Arc::strong_count(&e.lease) > 1 })
            .collect()
    }

    pub fn remove(&mut self, id: &str) -> bool {
        match self.entries.remove(id) {
            Some(entry) => {
                self.used = self.used - entry.cost;
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(n: u64) -> Cost {
        Cost { bytes: n, inodes: 1 }
    }

    #[test]
    fn evicts_least_recent_first_and_never_a_leased_entry() {
        let mut lru = Lru::new(Cost::bytes_only(100));
        drop(lru.insert("a".into(), bytes(40)));
        drop(lru.insert("b".into(), bytes(40)));
        let pinned = lru.lease("a").unwrap(); // a is now the most recent, and in use
        assert_eq!(lru.make_room(bytes(30)).unwrap(), vec!["b".to_string()]);
        assert!(lru.contains("a") && !lru.contains("b"));
        // Only a is left and it is leased: no room for 70 more.
        assert_eq!(lru.make_room(bytes(70)), Err(NoRoom { needed: bytes(70), budget: Cost::bytes_only(100) }));
        assert!(lru.contains("a"));
        // Recording a again keeps the lease already handed out.
        drop(lru.insert("a".into(), bytes(40)));
        assert!(lru.make_room(bytes(70)).is_err(), "a is still pinned after a second insert");
        // Best effort evicts nothing pinned either, but whatever is free.
        drop(lru.insert("c".into(), bytes(10)));
        assert_eq!(lru.make_room_best_effort(bytes(100)), vec!["c".to_string()]);
        assert!(lru.contains("a"));
        drop(pinned);
        assert_eq!(lru.make_room(bytes(70)).unwrap(), vec!["a".to_string()]);
        assert_eq!(lru.used(), Cost::default());
        assert!(lru.make_room(bytes(101)).is_err());
    }

    /// The attack of issue 27: roots of many empty files are tiny in bytes. With
    /// inodes counted, the budget evicts them like large ones.
    #[test]
    fn inodes_are_a_budget_of_their_own() {
        let empty_files = Cost { bytes: 2_000_000, inodes: 50_001 };
        let mut lru = Lru::new(Cost { bytes: 1 << 30, inodes: 120_000 });
        drop(lru.insert("a".into(), empty_files));
        drop(lru.insert("b".into(), empty_files));
        // 4 MB of a GiB, but a third root would pass the inode budget: a goes.
        assert_eq!(lru.make_room(empty_files).unwrap(), vec!["a".to_string()]);
        drop(lru.insert("c".into(), empty_files));
        assert_eq!(lru.used(), Cost { bytes: 4_000_000, inodes: 100_002 });
        // One root larger than the whole inode budget never fits.
        assert!(lru.make_room(Cost { bytes: 1, inodes: 120_001 }).is_err());
        // Either dimension alone forces eviction, the oldest idle entry first.
        let _pinned = lru.lease("b").unwrap();
        assert_eq!(lru.make_room(Cost { bytes: (1 << 30) - 3_000_000, inodes: 1 }).unwrap(), vec!["c".to_string()]);
        assert!(lru.contains("b"));
        // Best effort leaves the pinned root and reports the overshoot to the caller.
        assert!(lru.make_room_best_effort(Cost { bytes: 0, inodes: 100_000 }).is_empty());
        assert!(!(lru.used() + Cost { bytes: 0, inodes: 100_000 }).fits(lru.budget()));
    }

    #[test]
    fn evict_idle_keeps_only_what_is_leased() {
        let mut lru = Lru::new(Cost::bytes_only(100));
        for id in ["a", "b", "c"] {
            drop(lru.insert(id.into(), bytes(10)));
        }
        let _pinned = lru.lease("b").unwrap();
        assert_eq!(lru.evict_idle(), vec!["a".to_string(), "c".to_string()]);
        assert_eq!(lru.used(), bytes(10));
        assert_eq!(lru.entries(), vec![EntryView { id: "b".into(), cost: bytes(10), in_use: true }]);
    }
}
