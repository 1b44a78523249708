//! Retry state: consecutive failures per `(tool, request id)`, with a TTL and
//! a bound on the number of entries.
//!
//! Layout: a slab of entries, a chained hash index over it, and an intrusive
//! doubly linked list ordered by last failure (head = oldest). Because every
//! failure moves its entry to the tail and the clock is monotonic, the head is
//! always the entry that expires first and the entry to drop when full. So:
//! - TTL is exact: a lookup treats an entry older than the TTL as absent,
//!   whether or not a sweep has removed it yet;
//! - sweeping is amortized O(1): each call pops at most a few expired entries
//!   off the head, never scanning the table;
//! - when full, the oldest entry goes first, in O(1).
//!
//! Why a chained index sized once for `capacity` rather than a growable
//! open-addressing map: every call runs under a fuel budget, so no single call
//! may do work proportional to the table. An open-addressing map rehashes
//! everything when it grows, and again in place when deletions leave too many
//! tombstones (with 100 000 entries that burnt more than a 10 M-fuel call
//! budget). Here the bucket array is allocated when the capacity is set (a
//! cold path) and an insert or delete only touches one short chain.
//!
//! Request ids are client-controlled, so the index is keyed with SipHash-1-3
//! under a per-instance secret key (from the imported seed): chains cannot be
//! made long on purpose.
//!
//! Handles: the host may name a key that holds state with a small number of
//! its choosing (a [`Handle`]), so that its next results can be decided
//! without sending the key again (`decide-held`). A handle names at most one
//! slot and a slot at most one handle; removing the slot drops its handle, so
//! a handle that names nothing live is simply unknown. The two maps are
//! plain arrays that grow only when handles are used.

use alloc::boxed::Box;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::hash::Hasher;
use core::ops::{Index, IndexMut};

use siphasher::sip::SipHasher13;

use crate::wire::{HANDLE_KEY_MAX_BYTES, HANDLE_MAX};

const NIL: u32 = u32::MAX;

/// A host-chosen name for a key that holds state: 1..=[`HANDLE_MAX`]; 0 (and
/// anything above the maximum) names nothing.
pub type Handle = u32;
/// No handle.
pub const NO_HANDLE: Handle = 0;
/// One live entry, as seen from outside.
///
/// Packed to 4-byte alignment: 20 bytes instead of 24, which keeps a slot at
/// 48 bytes on wasm32 (100 000 entries within the 16 MiB memory target).
/// Fields are only ever read and written by value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C, packed(4))]
pub struct Entry {
    /// Consecutive failures so far.
    pub failures: u32,
    /// The delay (ms) of the key's last retry, saturated to u32 (0 = none
    /// yet); decorrelated jitter grows from it. In the padding after
    /// `failures`, so entries stay the same size.
    pub last_delay_ms: u32,
    /// The key's delays summed since its first failure, saturated to u32
    /// (`max_total_delay_ms` is at most `u32::MAX`).
    pub total_delay_ms: u32,
    /// Monotonic time of the last failure (ms).
    pub last_failure_ms: u64,
}

impl Entry {
    /// The entry of a key's first failure at `now_ms`.
    pub fn first(now_ms: u64) -> Self {
        Self {
            failures: 1,
            last_delay_ms: 0,
            total_delay_ms: 0,
            last_failure_ms: now_ms,
        }
    }
}

struct Slot {
    /// Tool name followed by request id; empty in a free slot.
    key: Box<str>,
    /// Byte length of the tool name within `key`.
    split: u32,
    /// The key's SipHash, truncated: 32 bits index up to 2^32 buckets and
    /// keep the slot (with its entry) at 48 bytes on wasm32.
    hash: u32,
    entry: Entry,
    /// Age order (doubly linked; head = oldest last failure).
    prev: u32,
    next: u32,
    /// Next slot in the same hash bucket.
    chain: u32,
}

impl Slot {
    fn matches(&self, hash: u32, tool: &str, request_id: &str) -> bool {
        let split = self.split as usize;
        self.hash == hash
            && split == tool.len()
            && self.key.len() == split + request_id.len()
            && self.key.get(..split) == Some(tool)
            && self.key.get(split..) == Some(request_id)
    }
}

// The memory target (100 000 entries within 16 MiB) depends on this.
#[cfg(target_pointer_width = "32")]
const _: () = assert!(core::mem::size_of::<Slot>() == 48);

/// The slab of slots, indexed by slot number (`u32`, as the chains and the
/// index store them). An index out of range is a bug in the table: it traps.
struct Slots(Vec<Slot>);

impl Index<u32> for Slots {
    type Output = Slot;
    fn index(&self, i: u32) -> &Slot {
        &self.0[i as usize]
    }
}

impl IndexMut<u32> for Slots {
    fn index_mut(&mut self, i: u32) -> &mut Slot {
        &mut self.0[i as usize]
    }
}

/// The state table. Not thread-safe; one per engine.
pub struct StateTable {
    /// First slot of each bucket's chain, stored as `slot + 1` so that an
    /// all-zero array is an empty index (allocated zeroed: no fill loop to pay
    /// for in fuel). The length is a power of two, or 0 until the first entry
    /// arrives (configuring or replaying a scenario never pays for it).
    buckets: Vec<u32>,
    slots: Slots,
    free: Vec<u32>,
    len: usize,
    capacity: usize,
    head: u32,
    tail: u32,
    hash_key: (u64, u64),
    /// `handle_slot[h]`: the slot handle `h` names, plus 1 (0: none).
    handle_slot: Vec<u32>,
    /// `slot_handle[i]`: the handle naming slot `i` (0: none).
    slot_handle: Vec<Handle>,
}

impl StateTable {
    /// An empty table for at most `capacity` entries whose hash function is
    /// keyed with `hash_key`.
    pub fn new(hash_key: (u64, u64), capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Self {
            buckets: Vec::new(),
            slots: Slots(Vec::new()),
            free: Vec::new(),
            len: 0,
            capacity,
            head: NIL,
            tail: NIL,
            hash_key,
            handle_slot: Vec::new(),
            slot_handle: Vec::new(),
        }
    }

    /// Change the bound: drops the oldest entries beyond it and re-indexes the
    /// rest (a cold path: O(entries)).
    pub fn set_capacity(&mut self, capacity: usize) {
        let capacity = capacity.max(1);
        while self.len > capacity && self.head != NIL {
            self.remove_index(self.head);
        }
        self.capacity = capacity;
        if self.slots.0.capacity() > 0 {
            // A larger bound: room for it now, in this (cold) call.
            let _ = self
                .slots
                .0
                .try_reserve_exact(capacity.saturating_sub(self.slots.0.len()));
            if !self.slot_handle.is_empty() {
                let _ = self
                    .slot_handle
                    .try_reserve_exact(capacity.saturating_sub(self.slot_handle.len()));
            }
        }
        let count = bucket_count(capacity);
        if self.buckets.is_empty() || count == self.buckets.len() {
            return;
        }
        self.buckets = vec![0; count];
        let mut i = self.head;
        while i != NIL {
            let b = self.bucket_of(self.slots[i].hash);
            self.slots[i].chain = self.head_of(b);
            self.set_head(b, i);
            i = self.slots[i].next;
        }
    }

    /// Number of entries held (expired ones not yet swept included).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the table holds no entry.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The key's hash in this table (keyed SipHash-1-3, truncated): what the
    /// `*_hashed` methods take, so that one decision hashes its key once.
    pub fn key_hash(&self, tool: &str, request_id: &str) -> u32 {
        let mut h = SipHasher13::new_with_keys(self.hash_key.0, self.hash_key.1);
        h.write(tool.as_bytes());
        // 0xff never occurs in UTF-8, so ("ab", "c") and ("a", "bc") differ.
        h.write_u8(0xff);
        h.write(request_id.as_bytes());
        h.finish() as u32
    }

    fn bucket_of(&self, hash: u32) -> usize {
        // The low bits of SipHash are as good as any; the length is a power of two.
        (hash as usize) & (self.buckets.len() - 1)
    }

    /// The first slot of bucket `b`'s chain, or `NIL`.
    fn head_of(&self, b: usize) -> u32 {
        self.buckets[b].wrapping_sub(1)
    }

    fn set_head(&mut self, b: usize, slot: u32) {
        // NIL (u32::MAX) wraps to 0, the empty bucket.
        self.buckets[b] = slot.wrapping_add(1);
    }

    fn find(&self, hash: u32, tool: &str, request_id: &str) -> Option<u32> {
        if self.buckets.is_empty() {
            return None;
        }
        let mut i = self.head_of(self.bucket_of(hash));
        while i != NIL {
            let slot = &self.slots[i];
            if slot.matches(hash, tool, request_id) {
                return Some(i);
            }
            i = slot.chain;
        }
        None
    }

    /// The live entry for a key, if any (expired entries read as absent).
    #[cfg(test)]
    pub fn get(&self, tool: &str, request_id: &str, now_ms: u64, ttl_ms: u64) -> Option<Entry> {
        let hash = self.key_hash(tool, request_id);
        let entry = self.slots[self.find(hash, tool, request_id)?].entry;
        (!expired(entry.last_failure_ms, now_ms, ttl_ms)).then_some(entry)
    }

    /// Record a failure at `now_ms` and return the key's entry: its
    /// consecutive-failure count includes this failure, `last_delay_ms` is
    /// still the previous retry's (the caller sets the new one). An expired
    /// entry starts over at 1. When the table is full, the oldest entry goes
    /// first.
    #[cfg(test)]
    pub fn record_failure(
        &mut self,
        tool: &str,
        request_id: &str,
        now_ms: u64,
        ttl_ms: u64,
    ) -> &mut Entry {
        let hash = self.key_hash(tool, request_id);
        self.record_failure_hashed(hash, tool, request_id, now_ms, ttl_ms, NO_HANDLE)
    }

    /// [`StateTable::record_failure`] for a key of [`StateTable::key_hash`]
    /// `hash`, naming the key `handle` from now on (see [`Handle`]; a key
    /// longer than [`HANDLE_KEY_MAX_BYTES`] gets none, and `handle` then names
    /// nothing).
    pub fn record_failure_hashed(
        &mut self,
        hash: u32,
        tool: &str,
        request_id: &str,
        now_ms: u64,
        ttl_ms: u64,
        handle: Handle,
    ) -> &mut Entry {
        let i = match self.find(hash, tool, request_id) {
            Some(i) => {
                let slot = &mut self.slots[i];
                slot.entry = if expired(slot.entry.last_failure_ms, now_ms, ttl_ms) {
                    Entry::first(now_ms)
                } else {
                    Entry {
                        failures: slot.entry.failures.saturating_add(1),
                        last_failure_ms: now_ms,
                        ..slot.entry
                    }
                };
                self.unlink(i);
                self.push_tail(i);
                i
            }
            None => self.insert_new(hash, tool, request_id, Entry::first(now_ms)),
        };
        if tool.len() + request_id.len() <= HANDLE_KEY_MAX_BYTES {
            self.name(i, handle);
        } else {
            self.release(handle);
        }
        &mut self.slots[i].entry
    }

    /// The key `handle` names, as `(key hash, tool, request id)`, if it names a
    /// live slot (an entry past its TTL but not yet swept included, as for a
    /// lookup by key).
    pub fn key_of(&self, handle: Handle) -> Option<(u32, &str, &str)> {
        let i = at(&self.handle_slot, handle).checked_sub(1)?;
        let slot = &self.slots[i];
        let (tool, request_id) = slot.key.split_at_checked(slot.split as usize)?;
        Some((slot.hash, tool, request_id))
    }

    /// Let `handle` name nothing (no-op for [`NO_HANDLE`] or a handle that
    /// names nothing).
    pub fn release(&mut self, handle: Handle) {
        if let Some(i) = at(&self.handle_slot, handle).checked_sub(1) {
            set(&mut self.handle_slot, handle, 0);
            set(&mut self.slot_handle, i, NO_HANDLE);
        }
    }

    /// Let `handle` name slot `i`, and nothing else name either.
    fn name(&mut self, i: u32, handle: Handle) {
        let old = at(&self.slot_handle, i);
        if handle == NO_HANDLE || handle > HANDLE_MAX || old == handle {
            return;
        }
        if old != NO_HANDLE {
            set(&mut self.handle_slot, old, 0);
        }
        // The handle moves here from whatever slot it named before.
        self.release(handle);
        set(&mut self.handle_slot, handle, i + 1);
        if self.slot_handle.is_empty() {
            // The first handle: the map covers the slab from now on (see insert_new),
            // with room for the bound, so that no later call reallocates it.
            self.slot_handle.resize(self.slots.0.len(), NO_HANDLE);
            let _ = self
                .slot_handle
                .try_reserve_exact(self.capacity.saturating_sub(self.slots.0.len()));
        }
        set(&mut self.slot_handle, i, handle);
    }

    /// Put `entry` for a key as the newest entry, replacing any entry the key
    /// has (restoring exported state). When the table is full, the oldest
    /// entry goes first.
    pub fn put(&mut self, tool: &str, request_id: &str, entry: Entry) {
        let hash = self.key_hash(tool, request_id);
        match self.find(hash, tool, request_id) {
            Some(i) => {
                self.slots[i].entry = entry;
                self.unlink(i);
                self.push_tail(i);
            }
            None => {
                self.insert_new(hash, tool, request_id, entry);
            }
        }
    }

    fn insert_new(&mut self, hash: u32, tool: &str, request_id: &str, entry: Entry) -> u32 {
        while self.len >= self.capacity && self.head != NIL {
            self.remove_index(self.head);
        }
        if self.buckets.is_empty() {
            // Allocated once, on the first entry, and kept: an index that came and
            // went with every burst would cost its fill each time.
            self.buckets = vec![0; bucket_count(self.capacity)];
        }
        let mut key = String::with_capacity(tool.len() + request_id.len());
        key.push_str(tool);
        key.push_str(request_id);
        let bucket = self.bucket_of(hash);
        let slot = Slot {
            key: key.into_boxed_str(),
            split: tool.len() as u32,
            hash,
            entry,
            prev: NIL,
            next: NIL,
            chain: self.head_of(bucket),
        };
        let i = match self.free.pop() {
            Some(i) => {
                self.slots[i] = slot;
                i
            }
            None => {
                let slots = &mut self.slots.0;
                if slots.capacity() == 0 {
                    // The slab, like the index, is allocated once for `capacity`
                    // entries: a growing Vec would copy every slot inside one
                    // fuel-metered call (262 144 of them cost 12.6 M fuel).
                    let _ = slots.try_reserve_exact(self.capacity);
                }
                slots.push(slot);
                if !self.slot_handle.is_empty() {
                    // In step with the slab once handles are in use, so that naming a
                    // new slot never has to fill a gap (a decide-held stays O(1)).
                    self.slot_handle.push(NO_HANDLE);
                }
                (self.slots.0.len() - 1) as u32
            }
        };
        self.set_head(bucket, i);
        self.len += 1;
        self.push_tail(i);
        i
    }

    /// Forget a key. Returns whether it was held.
    pub fn remove(&mut self, tool: &str, request_id: &str) -> bool {
        self.remove_hashed(self.key_hash(tool, request_id), tool, request_id)
    }

    /// [`StateTable::remove`] for a key of [`StateTable::key_hash`] `hash`.
    pub fn remove_hashed(&mut self, hash: u32, tool: &str, request_id: &str) -> bool {
        match self.find(hash, tool, request_id) {
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
            && expired(self.slots[self.head].entry.last_failure_ms, now_ms, ttl_ms)
        {
            self.remove_index(self.head);
            removed += 1;
        }
        removed
    }

    /// Remove every expired entry, wherever it sits (a full scan: exact even
    /// if the clock ever went backwards and broke the head-is-oldest order).
    pub fn evict_all_expired(&mut self, now_ms: u64, ttl_ms: u64) -> usize {
        let mut removed = 0;
        let mut i = self.head;
        while i != NIL {
            let next = self.slots[i].next;
            if expired(self.slots[i].entry.last_failure_ms, now_ms, ttl_ms) {
                self.remove_index(i);
                removed += 1;
            }
            i = next;
        }
        removed
    }

    /// Entries from oldest to newest last failure: `(tool, request id, entry)`.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str, Entry)> + '_ {
        let mut i = self.head;
        core::iter::from_fn(move || {
            if i == NIL {
                return None;
            }
            let slot = &self.slots[i];
            i = slot.next;
            // `split` is the tool's length in bytes, a char boundary.
            let (tool, request_id) = slot.key.split_at(slot.split as usize);
            Some((tool, request_id, slot.entry))
        })
    }

    fn remove_index(&mut self, i: u32) {
        // Unchain from the bucket (chains are short: the index is sized for
        // `capacity` and keyed).
        let bucket = self.bucket_of(self.slots[i].hash);
        let after = self.slots[i].chain;
        if self.head_of(bucket) == i {
            self.set_head(bucket, after);
        } else {
            let mut j = self.head_of(bucket);
            while j != NIL {
                let next = self.slots[j].chain;
                if next == i {
                    self.slots[j].chain = after;
                    break;
                }
                j = next;
            }
        }
        self.unlink(i);
        let slot = &mut self.slots[i];
        slot.key = Box::default();
        slot.chain = NIL;
        let handle = at(&self.slot_handle, i);
        if handle != NO_HANDLE {
            set(&mut self.handle_slot, handle, 0);
            set(&mut self.slot_handle, i, NO_HANDLE);
        }
        self.free.push(i);
        self.len -= 1;
    }

    fn unlink(&mut self, i: u32) {
        let (prev, next) = {
            let s = &self.slots[i];
            (s.prev, s.next)
        };
        match prev {
            NIL => self.head = next,
            p => self.slots[p].next = next,
        }
        match next {
            NIL => self.tail = prev,
            n => self.slots[n].prev = prev,
        }
        let s = &mut self.slots[i];
        s.prev = NIL;
        s.next = NIL;
    }

    fn push_tail(&mut self, i: u32) {
        let tail = self.tail;
        {
            let s = &mut self.slots[i];
            s.prev = tail;
            s.next = NIL;
        }
        match tail {
            NIL => self.head = i,
            t => self.slots[t].next = i,
        }
        self.tail = i;
    }
}

/// `v[i]`, or 0 past its end (the handle maps grow only as handles are used).
fn at(v: &[u32], i: u32) -> u32 {
    v.get(i as usize).copied().unwrap_or(0)
}

/// `v[i] = value`, growing `v` (with zeros) to reach `i`.
fn set(v: &mut Vec<u32>, i: u32, value: u32) {
    let i = i as usize;
    if v.len() <= i {
        v.resize(i + 1, 0);
    }
    if let Some(cell) = v.get_mut(i) {
        *cell = value;
    }
}

/// Buckets for `capacity` entries: the next power of two (load factor <= 1).
fn bucket_count(capacity: usize) -> usize {
    capacity.max(1).next_power_of_two()
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
        let mut t = StateTable::new((1, 2), CAP);
        assert_eq!(t.record_failure("a", "r", 0, TTL).failures, 1);
        assert_eq!(t.record_failure("a", "r", 1, TTL).failures, 2);
        assert_eq!(t.record_failure("ab", "", 1, TTL).failures, 1);
        assert_eq!(t.record_failure("a", "b", 1, TTL).failures, 1);
        assert_eq!(t.len(), 3);
        assert!(t.remove("a", "r"));
        assert!(!t.remove("a", "r"));
        assert_eq!(
            t.get("ab", "", 1, TTL),
            Some(Entry {
                failures: 1,
                last_delay_ms: 0,
                total_delay_ms: 0,
                last_failure_ms: 1
            })
        );
    }

    #[test]
    fn test_state_ttl_boundary_exact() {
        let mut t = StateTable::new((1, 2), CAP);
        t.record_failure("a", "r", 10, TTL);
        assert!(t.get("a", "r", 10 + TTL, TTL).is_some());
        assert!(t.get("a", "r", 10 + TTL + 1, TTL).is_none());
        assert_eq!(t.record_failure("a", "r", 10 + TTL, TTL).failures, 2);
        assert_eq!(
            t.record_failure("a", "r", 10 + 2 * TTL + 1, TTL).failures,
            1
        );
    }

    #[test]
    fn test_state_sweep_is_bounded_and_ordered() {
        let mut t = StateTable::new((1, 2), CAP);
        for i in 0..10u64 {
            t.record_failure("t", &i.to_string(), i, TTL);
        }
        // Touch "0" again: it becomes the newest.
        t.record_failure("t", "0", 20, TTL);
        assert_eq!(t.sweep(TTL + 5, TTL, 100), 4); // "1".."4" (ms 1..4) expired
        assert_eq!(t.sweep(TTL + 100, TTL, 2), 2);
        assert_eq!(t.len(), 4);
        let order: Vec<&str> = t.iter().map(|(_, r, _)| r).collect();
        assert_eq!(order, vec!["7", "8", "9", "0"]);
    }

    #[test]
    fn test_state_capacity_drops_oldest() {
        let mut t = StateTable::new((1, 2), 3);
        for i in 0..5u64 {
            t.record_failure("t", &i.to_string(), i, TTL);
        }
        assert_eq!(t.len(), 3);
        let order: Vec<&str> = t.iter().map(|(_, r, _)| r).collect();
        assert_eq!(order, vec!["2", "3", "4"]);
        t.set_capacity(1);
        assert_eq!(t.iter().map(|(_, r, _)| r).collect::<Vec<_>>(), vec!["4"]);
    }

    #[test]
    fn test_state_full_eviction_survives_backwards_clock() {
        let mut t = StateTable::new((1, 2), CAP);
        t.record_failure("t", "late", 5000, TTL);
        t.record_failure("t", "early", 100, TTL); // clock went backwards
        assert_eq!(t.sweep(5000, TTL, 100), 0); // head "late" is fresh
        assert_eq!(t.evict_all_expired(5000, TTL), 1);
        assert_eq!(
            t.iter().map(|(_, r, _)| r).collect::<Vec<_>>(),
            vec!["late"]
        );
    }

    #[test]
    fn test_state_slots_reused_and_kept() {
        let mut t = StateTable::new((9, 9), CAP);
        for round in 0..3u64 {
            for i in 0..100u64 {
                t.record_failure("t", &i.to_string(), round * 10_000, TTL);
            }
            assert_eq!(t.len(), 100);
            assert!(t.slots.0.len() <= 100);
            for i in 0..50u64 {
                t.remove("t", &i.to_string());
            }
            assert_eq!(t.sweep(round * 10_000 + 2 * TTL, TTL, usize::MAX), 50);
            assert!(t.is_empty());
            assert_eq!(
                t.slots.0.capacity(),
                CAP,
                "the slab is allocated once, for the bound"
            );
            assert!(t.buckets.iter().all(|&b| b == 0));
        }
    }

    fn named(t: &mut StateTable, tool: &str, rid: &str, now: u64, ttl: u64, handle: Handle) {
        let hash = t.key_hash(tool, rid);
        t.record_failure_hashed(hash, tool, rid, now, ttl, handle);
    }

    fn key_of(t: &StateTable, handle: Handle) -> Option<(&str, &str)> {
        t.key_of(handle).map(|(_, tool, rid)| (tool, rid))
    }

    #[test]
    fn test_state_handle_names_its_key_until_the_key_goes() {
        let mut t = StateTable::new((1, 2), CAP);
        assert_eq!(key_of(&t, 7), None);
        named(&mut t, "tool", "r1", 0, TTL, 7);
        assert_eq!(key_of(&t, 7), Some(("tool", "r1")));
        // Another failure of the same key keeps it; no handle leaves it named.
        assert_eq!(t.record_failure("tool", "r1", 1, TTL).failures, 2);
        assert_eq!(key_of(&t, 7), Some(("tool", "r1")));
        t.remove("tool", "r1");
        assert_eq!(key_of(&t, 7), None);
    }

    #[test]
    fn test_state_handle_moves_and_slots_never_share_one() {
        let mut t = StateTable::new((1, 2), CAP);
        named(&mut t, "a", "1", 0, TTL, 1);
        named(&mut t, "b", "2", 0, TTL, 2);
        // Handle 1 now names b: a is unnamed, b's old handle 2 names nothing.
        named(&mut t, "b", "2", 1, TTL, 1);
        assert_eq!(key_of(&t, 1), Some(("b", "2")));
        assert_eq!(key_of(&t, 2), None);
        // Removing a (now unnamed) leaves b's handle alone.
        t.remove("a", "1");
        assert_eq!(key_of(&t, 1), Some(("b", "2")));
        // A slot reused by another key does not inherit the handle.
        t.remove("b", "2");
        t.record_failure("c", "3", 2, TTL);
        assert_eq!(key_of(&t, 1), None);
    }

    #[test]
    fn test_state_handles_drop_with_eviction_expiry_and_out_of_range() {
        let mut t = StateTable::new((1, 2), 2);
        named(&mut t, "t", "old", 0, TTL, 3);
        named(&mut t, "t", "mid", 1, TTL, 4);
        named(&mut t, "t", "new", 2, TTL, 5); // full: "old" goes
        assert_eq!(key_of(&t, 3), None);
        assert_eq!(key_of(&t, 4), Some(("t", "mid")));
        assert_eq!(t.sweep(2 + TTL + 1, TTL, usize::MAX), 2);
        assert_eq!(key_of(&t, 4), None);
        assert_eq!(key_of(&t, 5), None);
        // Out of range, or a key too long to copy: no handle.
        named(&mut t, "t", "x", 0, TTL, HANDLE_MAX + 1);
        assert_eq!(key_of(&t, HANDLE_MAX + 1), None);
        let long = "r".repeat(HANDLE_KEY_MAX_BYTES);
        named(&mut t, "t", "y", 0, TTL, 6);
        assert_eq!(key_of(&t, 6), Some(("t", "y")));
        named(&mut t, "t", &long, 0, TTL, 6);
        assert_eq!(
            key_of(&t, 6),
            None,
            "given to a key it cannot name, it names nothing"
        );
        named(&mut t, "", &long, 0, TTL, HANDLE_MAX);
        assert_eq!(key_of(&t, HANDLE_MAX), Some(("", long.as_str())));
        assert_eq!(key_of(&t, u32::MAX), None);
    }

    #[test]
    fn test_state_collisions_in_one_bucket_stay_consistent() {
        // Capacity 1 => one bucket: every key chains there.
        let mut t = StateTable::new((5, 6), 8);
        assert!(
            t.buckets.is_empty(),
            "the index is allocated on the first entry"
        );
        t.record_failure("t", "first", 0, TTL);
        assert_eq!(t.buckets.len(), 8);
        t.remove("t", "first");
        t.buckets = vec![0; 1]; // force every key into one chain
        for i in 0..8u64 {
            assert_eq!(t.record_failure("t", &i.to_string(), i, TTL).failures, 1);
        }
        for i in [3u64, 0, 7, 5] {
            assert!(t.remove("t", &i.to_string()));
        }
        for i in [1u64, 2, 4, 6] {
            assert_eq!(t.record_failure("t", &i.to_string(), 10, TTL).failures, 2);
        }
        assert_eq!(t.len(), 4);
    }

    #[test]
    fn test_state_set_capacity_reindexes_live_entries() {
        let mut t = StateTable::new((1, 2), 4);
        for i in 0..4u64 {
            t.record_failure("t", &i.to_string(), i, TTL);
        }
        t.set_capacity(1000);
        assert_eq!(t.buckets.len(), 1024);
        for i in 0..4u64 {
            assert_eq!(t.record_failure("t", &i.to_string(), 10, TTL).failures, 2);
        }
        t.set_capacity(2);
        assert_eq!(t.len(), 2);
        assert_eq!(
            t.iter().map(|(_, r, _)| r).collect::<Vec<_>>(),
            vec!["2", "3"]
        );
    }
}
