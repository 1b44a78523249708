//! Retry state: consecutive failures per `(tool, request id)`, with a TTL and
//! a bound on the number of entries.
//!
//! Layout: a slab of entries, a hash table of slab indices, and an intrusive
//! doubly linked list ordered by last failure (head = oldest). Because every
//! failure moves its entry to the tail and the clock is monotonic, the head is
//! always the entry that expires first and the entry to drop when full. So:
//! - TTL is exact: a lookup treats an entry older than the TTL as absent,
//!   whether or not a sweep has removed it yet;
//! - sweeping is amortized O(1): each call pops at most a few expired entries
//!   off the head, never scanning the table;
//! - when full, the oldest entry goes first, in O(1).
//!
//! Request ids are client-controlled, so the table is keyed with SipHash-1-3
//! under a per-instance secret key (from the imported seed): colliding keys
//! cannot be precomputed.

use alloc::boxed::Box;
use alloc::string::String;
use alloc::vec::Vec;
use core::hash::Hasher;

use hashbrown::HashTable;
use siphasher::sip::SipHasher13;

const NIL: u32 = u32::MAX;

/// One live entry, as seen from outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// Consecutive failures so far.
    pub failures: u32,
    /// Monotonic time of the last failure (ms).
    pub last_failure_ms: u64,
}

struct Slot {
    /// Tool name followed by request id; empty in a free slot.
    key: Box<str>,
    /// Byte length of the tool name within `key`.
    split: u32,
    hash: u64,
    entry: Entry,
    prev: u32,
    next: u32,
}

impl Slot {
    fn matches(&self, tool: &str, request_id: &str) -> bool {
        let split = self.split as usize;
        split == tool.len()
            && self.key.len() == split + request_id.len()
            && self.key.get(..split) == Some(tool)
            && self.key.get(split..) == Some(request_id)
    }
}

/// The state table. Not thread-safe; one per engine.
pub struct StateTable {
    table: HashTable<u32>,
    slots: Vec<Slot>,
    free: Vec<u32>,
    head: u32,
    tail: u32,
    hash_key: (u64, u64),
}

impl StateTable {
    /// An empty table whose hash function is keyed with `hash_key`.
    pub fn new(hash_key: (u64, u64)) -> Self {
        Self {
            table: HashTable::new(),
            slots: Vec::new(),
            free: Vec::new(),
            head: NIL,
            tail: NIL,
            hash_key,
        }
    }

    /// Number of entries held (expired ones not yet swept included).
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// Whether the table holds no entry.
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    fn hash(&self, tool: &str, request_id: &str) -> u64 {
        let mut h = SipHasher13::new_with_keys(self.hash_key.0, self.hash_key.1);
        h.write(tool.as_bytes());
        // 0xff never occurs in UTF-8, so ("ab", "c") and ("a", "bc") differ.
        h.write_u8(0xff);
        h.write(request_id.as_bytes());
        h.finish()
    }

    fn find(&self, tool: &str, request_id: &str) -> Option<u32> {
        let hash = self.hash(tool, request_id);
        self.table
            .find(hash, |&i| self.slots[i as usize].matches(tool, request_id))
            .copied()
    }

    /// The live entry for a key, if any (expired entries read as absent).
    pub fn get(&self, tool: &str, request_id: &str, now_ms: u64, ttl_ms: u64) -> Option<Entry> {
        let entry = self.slots[self.find(tool, request_id)? as usize].entry;
        (!expired(entry.last_failure_ms, now_ms, ttl_ms)).then_some(entry)
    }

    /// Record a failure at `now_ms` and return the consecutive-failure count.
    /// An expired entry starts over at 1. When the table already holds
    /// `capacity` entries, the oldest goes first.
    pub fn record_failure(
        &mut self,
        tool: &str,
        request_id: &str,
        now_ms: u64,
        ttl_ms: u64,
        capacity: usize,
    ) -> u32 {
        if let Some(i) = self.find(tool, request_id) {
            let slot = &mut self.slots[i as usize];
            let previous = if expired(slot.entry.last_failure_ms, now_ms, ttl_ms) {
                0
            } else {
                slot.entry.failures
            };
            slot.entry = Entry {
                failures: previous.saturating_add(1),
                last_failure_ms: now_ms,
            };
            let failures = slot.entry.failures;
            self.unlink(i);
            self.push_tail(i);
            return failures;
        }
        while self.len() >= capacity.max(1) && self.head != NIL {
            self.remove_index(self.head);
        }
        let hash = self.hash(tool, request_id);
        let mut key = String::with_capacity(tool.len() + request_id.len());
        key.push_str(tool);
        key.push_str(request_id);
        let slot = Slot {
            key: key.into_boxed_str(),
            split: tool.len() as u32,
            hash,
            entry: Entry {
                failures: 1,
                last_failure_ms: now_ms,
            },
            prev: NIL,
            next: NIL,
        };
        let i = match self.free.pop() {
            Some(i) => {
                self.slots[i as usize] = slot;
                i
            }
            None => {
                self.slots.push(slot);
                (self.slots.len() - 1) as u32
            }
        };
        let slots = &self.slots;
        self.table
            .insert_unique(hash, i, |&j| slots[j as usize].hash);
        self.push_tail(i);
        1
    }

    /// Forget a key. Returns whether it was held.
    pub fn remove(&mut self, tool: &str, request_id: &str) -> bool {
        match self.find(tool, request_id) {
            Some(i) => {
                self.remove_index(i);
                true
            }
            None => false,
        }
    }

    /// Pop up to `limit` expired entries off the head (the amortized sweep).
    pub fn sweep(&mut self, now_ms: u64, ttl_ms: u64, limit: usize) -> usize {
        let mut removed = 0;
        while removed < limit
            && self.head != NIL
            && expired(
                self.slots[self.head as usize].entry.last_failure_ms,
                now_ms,
                ttl_ms,
            )
        {
            self.remove_index(self.head);
            removed += 1;
        }
        removed
    }

    /// Remove every expired entry, wherever it sits (a full scan: for the
    /// explicit `evict-expired` call, which must also be exact if the clock
    /// ever went backwards and broke the head-is-oldest order).
    pub fn evict_all_expired(&mut self, now_ms: u64, ttl_ms: u64) -> usize {
        let mut removed = 0;
        let mut i = self.head;
        while i != NIL {
            let next = self.slots[i as usize].next;
            if expired(self.slots[i as usize].entry.last_failure_ms, now_ms, ttl_ms) {
                self.remove_index(i);
                removed += 1;
            }
            i = next;
        }
        removed
    }

    /// Drop the oldest entries until at most `capacity` remain.
    pub fn shrink_to(&mut self, capacity: usize) {
        while self.len() > capacity && self.head != NIL {
            self.remove_index(self.head);
        }
    }

    /// Entries from oldest to newest last failure: `(tool, request id, entry)`.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str, Entry)> + '_ {
        let mut i = self.head;
        core::iter::from_fn(move || {
            if i == NIL {
                return None;
            }
            let slot = &self.slots[i as usize];
            i = slot.next;
            let (tool, request_id) = slot.key.split_at(slot.split as usize);
            Some((tool, request_id, slot.entry))
        })
    }

    fn remove_index(&mut self, i: u32) {
        let hash = self.slots[i as usize].hash;
        if let Ok(found) = self.table.find_entry(hash, |&j| j == i) {
            found.remove();
        }
        self.unlink(i);
        let slot = &mut self.slots[i as usize];
        slot.key = Box::default();
        self.free.push(i);
        // Give memory back once the table has emptied (e.g. after a burst of
        // unique request ids expired), rather than keeping the peak forever.
        if self.table.is_empty() {
            self.slots = Vec::new();
            self.free = Vec::new();
            self.table = HashTable::new();
        }
    }

    fn unlink(&mut self, i: u32) {
        let (prev, next) = {
            let s = &self.slots[i as usize];
            (s.prev, s.next)
        };
        match prev {
            NIL => self.head = next,
            p => self.slots[p as usize].next = next,
        }
        match next {
            NIL => self.tail = prev,
            n => self.slots[n as usize].prev = prev,
        }
        let s = &mut self.slots[i as usize];
        s.prev = NIL;
        s.next = NIL;
    }

    fn push_tail(&mut self, i: u32) {
        let tail = self.tail;
        {
            let s = &mut self.slots[i as usize];
            s.prev = tail;
            s.next = NIL;
        }
        match tail {
            NIL => self.head = i,
            t => self.slots[t as usize].next = i,
        }
        self.tail = i;
    }
}

/// An entry is gone once its last failure is *older* than the TTL: at exactly
/// `ttl_ms` it is still live (the native plugin's `>= cutoff` rule). A clock
/// that went backwards reads as age 0, never as a huge age.
pub fn expired(last_failure_ms: u64, now_ms: u64, ttl_ms: u64) -> bool {
    now_ms.saturating_sub(last_failure_ms) > ttl_ms
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: u64 = 1000;
    const CAP: usize = 1000;

    #[test]
    fn test_state_counts_and_removes() {
        let mut t = StateTable::new((1, 2));
        assert_eq!(t.record_failure("a", "r", 0, TTL, CAP), 1);
        assert_eq!(t.record_failure("a", "r", 1, TTL, CAP), 2);
        assert_eq!(t.record_failure("ab", "", 1, TTL, CAP), 1);
        assert_eq!(t.record_failure("a", "b", 1, TTL, CAP), 1);
        assert_eq!(t.len(), 3);
        assert!(t.remove("a", "r"));
        assert!(!t.remove("a", "r"));
        assert_eq!(
            t.get("ab", "", 1, TTL),
            Some(Entry {
                failures: 1,
                last_failure_ms: 1
            })
        );
    }

    #[test]
    fn test_state_ttl_boundary_exact() {
        let mut t = StateTable::new((1, 2));
        t.record_failure("a", "r", 10, TTL, CAP);
        assert!(t.get("a", "r", 10 + TTL, TTL).is_some());
        assert!(t.get("a", "r", 10 + TTL + 1, TTL).is_none());
        assert_eq!(t.record_failure("a", "r", 10 + TTL, TTL, CAP), 2);
        assert_eq!(t.record_failure("a", "r", 10 + 2 * TTL + 1, TTL, CAP), 1);
    }

    #[test]
    fn test_state_sweep_is_bounded_and_ordered() {
        let mut t = StateTable::new((1, 2));
        for i in 0..10u64 {
            t.record_failure("t", &i.to_string(), i, TTL, CAP);
        }
        // Touch "0" again: it becomes the newest.
        t.record_failure("t", "0", 20, TTL, CAP);
        assert_eq!(t.sweep(TTL + 5, TTL, 100), 4); // "1".."4" (ms 1..4) expired
        assert_eq!(t.sweep(TTL + 100, TTL, 2), 2);
        assert_eq!(t.len(), 4);
        let order: Vec<&str> = t.iter().map(|(_, r, _)| r).collect();
        assert_eq!(order, vec!["7", "8", "9", "0"]);
    }

    #[test]
    fn test_state_capacity_drops_oldest() {
        let mut t = StateTable::new((1, 2));
        for i in 0..5u64 {
            t.record_failure("t", &i.to_string(), i, TTL, 3);
        }
        assert_eq!(t.len(), 3);
        let order: Vec<&str> = t.iter().map(|(_, r, _)| r).collect();
        assert_eq!(order, vec!["2", "3", "4"]);
        t.shrink_to(1);
        assert_eq!(t.iter().map(|(_, r, _)| r).collect::<Vec<_>>(), vec!["4"]);
    }

    #[test]
    fn test_state_full_eviction_survives_backwards_clock() {
        let mut t = StateTable::new((1, 2));
        t.record_failure("t", "late", 5000, TTL, CAP);
        t.record_failure("t", "early", 100, TTL, CAP); // clock went backwards
        assert_eq!(t.sweep(5000, TTL, 100), 0); // head "late" is fresh
        assert_eq!(t.evict_all_expired(5000, TTL), 1);
        assert_eq!(
            t.iter().map(|(_, r, _)| r).collect::<Vec<_>>(),
            vec!["late"]
        );
    }

    #[test]
    fn test_state_slots_reused_and_released() {
        let mut t = StateTable::new((9, 9));
        for round in 0..3u64 {
            for i in 0..100u64 {
                t.record_failure("t", &i.to_string(), round * 10_000, TTL, CAP);
            }
            assert_eq!(t.len(), 100);
            assert!(t.slots.len() <= 100);
            for i in 0..50u64 {
                t.remove("t", &i.to_string());
            }
            assert_eq!(t.sweep(round * 10_000 + 2 * TTL, TTL, usize::MAX), 50);
            assert!(t.is_empty());
            assert_eq!(t.slots.capacity(), 0);
        }
    }
}
