//! Byte-bounded least-recently-used bookkeeping with in-use leases.
//!
//! Shared by the toolchain archive cache and the unpacked roots: both keep files on
//! disk keyed by archive id, bounded by bytes, and must never evict what a job uses.
//! This type only decides; the owner deletes what it is told was evicted.

use std::collections::HashMap;
use std::sync::Arc;

#[derive(Debug)]
struct Entry {
    size: u64,
    last_used: u64,
    /// Cloned into every lease; `strong_count > 1` means some job still uses it.
    lease: Arc<()>,
}

#[derive(Debug)]
pub struct ByteLru {
    budget: u64,
    used: u64,
    clock: u64,
    entries: HashMap<String, Entry>,
}

/// Not enough unused entries could be evicted to make room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoRoom {
    pub needed: u64,
    pub budget: u64,
}

impl ByteLru {
    pub fn new(budget: u64) -> Self {
        ByteLru { budget, used: 0, clock: 0, entries: HashMap::new() }
    }

    pub fn budget(&self) -> u64 {
        self.budget
    }

    pub fn used(&self) -> u64 {
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

    /// Evicts least recently used, unleased entries until `size` more bytes fit.
    /// Returns the evicted ids; on failure nothing is evicted.
    pub fn make_room(&mut self, size: u64) -> Result<Vec<String>, NoRoom> {
        let no_room = NoRoom { needed: size, budget: self.budget };
        if size > self.budget {
            return Err(no_room);
        }
        let mut candidates: Vec<(&String, &Entry)> =
            self.entries.iter().filter(|(_, e)| Arc::strong_count(&e.lease) == 1).collect();
        candidates.sort_by_key(|(_, e)| e.last_used);
        let mut freed = 0;
        let mut victims = Vec::new();
        for (id, entry) in candidates {
            if self.used - freed + size <= self.budget {
                break;
            }
            freed += entry.size;
            victims.push(id.clone());
        }
        if self.used - freed + size > self.budget {
            return Err(no_room);
        }
        for id in &victims {
            self.remove(id);
        }
        Ok(victims)
    }

    /// Records `id` and returns its lease. Recording an id again updates its size
    /// and recency but keeps its lease, so leases already handed out still pin it.
    pub fn insert(&mut self, id: String, size: u64) -> Arc<()> {
        self.clock += 1;
        let lease = match self.entries.remove(&id) {
            Some(old) => {
                self.used -= old.size;
                old.lease
            }
            None => Arc::new(()),
        };
        self.used += size;
        self.entries.insert(id, Entry { size, last_used: self.clock, lease: lease.clone() });
        lease
    }

    /// Like [`ByteLru::make_room`], but evicts what it can when it cannot make enough
    /// room (for roots that must exist anyway: the job waiting for one needs it).
    pub fn make_room_best_effort(&mut self, size: u64) -> Vec<String> {
        let mut candidates: Vec<(String, u64, u64)> = self
            .entries
            .iter()
            .filter(|(_, e)| Arc::strong_count(&e.lease) == 1)
            .map(|(id, e)| (id.clone(), e.last_used, e.size))
            .collect();
        candidates.sort_by_key(|(_, last_used, _)| *last_used);
        let mut victims = Vec::new();
        for (id, _, _) in candidates {
            if self.used + size <= self.budget {
                break;
            }
            self.remove(&id);
            victims.push(id);
        }
        victims
    }

    /// Every entry as `(id, size, in use)`, most recently used first.
    pub fn entries(&self) -> Vec<(String, u64, bool)> {
        let mut entries: Vec<(&String, &Entry)> = self.entries.iter().collect();
        entries.sort_by_key(|(_, e)| std::cmp::Reverse(e.last_used));
        entries.into_iter().map(|(id, e)| (id.clone(), e.size, Arc::strong_count(&e.lease) > 1)).collect()
    }

    pub fn remove(&mut self, id: &str) -> bool {
        match self.entries.remove(id) {
            Some(entry) => {
                self.used -= entry.size;
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_least_recent_first_and_never_a_leased_entry() {
        let mut lru = ByteLru::new(100);
        drop(lru.insert("a".into(), 40));
        drop(lru.insert("b".into(), 40));
        let pinned = lru.lease("a").unwrap(); // a is now the most recent, and in use
        assert_eq!(lru.make_room(30).unwrap(), vec!["b".to_string()]);
        assert!(lru.contains("a") && !lru.contains("b"));
        // Only a is left and it is leased: no room for 70 more.
        assert_eq!(lru.make_room(70), Err(NoRoom { needed: 70, budget: 100 }));
        assert!(lru.contains("a"));
        // Recording a again keeps the lease already handed out.
        drop(lru.insert("a".into(), 40));
        assert!(lru.make_room(70).is_err(), "a is still pinned after a second insert");
        // Best effort evicts nothing pinned either, but whatever is free.
        drop(lru.insert("c".into(), 10));
        assert_eq!(lru.make_room_best_effort(100), vec!["c".to_string()]);
        assert!(lru.contains("a"));
        drop(pinned);
        assert_eq!(lru.make_room(70).unwrap(), vec!["a".to_string()]);
        assert_eq!(lru.used(), 0);
        assert!(lru.make_room(101).is_err());
    }
}
