//! Retry state of every policy of the instance: consecutive failures per key,
//! kept per gateway context, with a TTL and bounds.
//!
//! Layout:
//! - a slab of slots, allocated in chunks as live entries need them (never
//!   moved, so a slot's number is stable: number + 1 is the key's *handle*);
//! - a chained hash index over the slab, grown one bucket at a time (linear
//!   hashing), so no call ever rehashes the table;
//! - *contexts*: one per (policy, tenant, server) that holds state, each with
//!   its bounds (the policy's `state_ttl_ms` and `max_state_entries`) and an
//!   intrusive doubly linked list of its slots ordered by last failure (head =
//!   oldest). Because every failure moves its slot to the tail and the clock
//!   is monotonic, the head is the context's entry that expires first and the
//!   one to drop when the context is full.
//!
//! So:
//! - TTL is exact: a lookup treats an entry older than its context's TTL as
//!   absent, whether or not a sweep has removed it yet;
//! - sweeping is amortized O(1): each call pops at most a few expired
//!   entries off the head of two contexts (the key's, and the next in turn);
//! - a context at its `max_state_entries` drops its own oldest entry first,
//!   so one context's flood of new keys never evicts another context's state;
//! - the instance as a whole is bounded in bytes (from the memory cap, see
//!   [`StateTable::set_budget`]) and in entries ([`MAX_ENTRIES`]): at that
//!   bound the context holding the most entries drops its oldest (a fair
//!   share: a context below the average is never the one to pay).
//!
//! Why a hand-written table rather than a library map: every call runs under
//! a fuel budget, so no single call may do work proportional to the table. A
//! growable open-addressing map rehashes everything when it grows (with
//! 100 000 entries that burnt more than a 10 M-fuel call budget), and one
//! sized for the bound up front costs its full size per instance whatever is
//! live. Here a call touches one short chain and splits at most one bucket,
//! and memory follows the live entries.
//!
//! Request ids are client-controlled, so the index is keyed with SipHash-1-3
//! under a per-instance secret key (from the imported seed): chains cannot be
//! made long on purpose.

use alloc::boxed::Box;
use alloc::vec;
use alloc::vec::Vec;
use core::cmp::Ordering;
use core::hash::Hasher;

use siphasher::sip::SipHasher13;

use super::key::{KeyParts, PolicyId};
use crate::wire::MAX_ENTRIES;

const NIL: u32 = u32::MAX;
/// Slots per chunk of the slab (a chunk is allocated whole when needed).
const CHUNK_BITS: u32 = 10;
const CHUNK: usize = 1 << CHUNK_BITS;
/// Buckets per segment of the index, and the buckets of an empty index.
const SEGMENT_BITS: u32 = 10;
const SEGMENT: usize = 1 << SEGMENT_BITS;
/// How many contexts one eviction at the instance's bound looks at for one holding a fair
/// share, at most.
const VICTIM_LOOK: usize = 64;
/// How many expired entries one call may sweep off each of two contexts.
/// Bounds the latency of a single call after a burst expires together; the
/// backlog drains over the following calls (each adds at most one entry).
pub const SWEEP_PER_CALL: usize = 8;
/// Bytes an entry is counted for besides its key: its slot, its share of the
/// index, and the key's allocation (the allocator's header and rounding).
pub const ENTRY_BYTES: u64 = core::mem::size_of::<Slot>() as u64 + 4 + 16;
/// Bytes a context is counted for besides its tenant and server: its place in
/// the contexts and their order (twice, as those lists grow by doubling) and
/// its two strings' allocations.
pub const CONTEXT_BYTES: u64 = 2 * (core::mem::size_of::<Option<Context>>() as u64 + 4) + 32;
/// Contexts holding no entry are kept (a context whose keys keep clearing is not made
/// again for every new key) until there are more of them than this beyond those holding
/// entries; then they go, a bounded number per new context.
const EMPTY_CONTEXTS_KEPT: u32 = 64;
/// ... and at most this many go in one call.
const EMPTY_CONTEXTS_DROPPED: u32 = 2 * EMPTY_CONTEXTS_KEPT;

/// A name for a key that holds state: its slot's number + 1 (1..=
/// [`MAX_ENTRIES`]); 0 names nothing.
pub type Handle = u32;
/// No handle.
pub const NO_HANDLE: Handle = 0;

/// One live entry, as seen from outside.
///
/// Packed to 4-byte alignment: 20 bytes instead of 24.
/// Fields are only ever read and written by value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C, packed(4))]
pub struct Entry {
    /// Consecutive failures so far.
    pub failures: u32,
    /// The delay (ms) of the key's last retry, saturated to u32 (0 = none
    /// yet); decorrelated jitter grows from it.
    pub last_delay_ms: u32,
    /// The key's delays summed since its first failure, saturated to u32
    /// (`max_total_delay_ms` is at most `u32::MAX`).
    pub total_delay_ms: u32,
    /// Time of the last failure (ms, on the instance's clock).
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

/// The bounds of a context's state: its policy's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// An entry is forgotten once its last failure is older than this (ms).
    pub ttl_ms: u64,
    /// The most entries the context keeps; at the bound the oldest goes.
    pub max_entries: u32,
}

struct Slot {
    /// Identity, tool name and request id, one after the other; empty in a
    /// free slot.
    key: Box<str>,
    /// Byte lengths of the identity and the tool name within `key`.
    identity_len: u32,
    tool_len: u32,
    /// The context it belongs to; `NIL` for a free slot.
    context: u32,
    /// The key's SipHash, truncated.
    hash: u32,
    entry: Entry,
    /// The context's age order (doubly linked; head = oldest last failure).
    prev: u32,
    next: u32,
    /// Next slot in the same index bucket.
    chain: u32,
}

impl Slot {
    fn free() -> Slot {
        Slot {
            key: Box::default(),
            identity_len: 0,
            tool_len: 0,
            context: NIL,
            hash: 0,
            entry: Entry {
                failures: 0,
                last_delay_ms: 0,
                total_delay_ms: 0,
                last_failure_ms: 0,
            },
            prev: NIL,
            next: NIL,
            chain: NIL,
        }
    }

    fn parts(&self) -> (&str, &str, &str) {
        let (identity, rest) = self.key.split_at(self.identity_len as usize);
        let (tool, request_id) = rest.split_at(self.tool_len as usize);
        (identity, tool, request_id)
    }

    /// The whole key of this slot, in context `c` (its own).
    fn key_in<'a>(&'a self, c: &'a Context) -> KeyParts<'a> {
        let (identity, tool, request_id) = self.parts();
        KeyParts {
            tenant: &c.tenant,
            server: &c.server,
            identity,
            tool,
            request_id,
        }
    }

    fn matches(&self, key: &KeyParts<'_>) -> bool {
        self.identity_len as usize == key.identity.len()
            && self.tool_len as usize == key.tool.len()
            && self.key.len() == key.identity.len() + key.tool.len() + key.request_id.len()
            && self.parts() == (key.identity, key.tool, key.request_id)
    }

    fn bytes(&self) -> u64 {
        ENTRY_BYTES + self.key.len() as u64
    }
}

/// One gateway context's state under one policy.
struct Context {
    policy: PolicyId,
    tenant: Box<str>,
    server: Box<str>,
    limits: Limits,
    len: u32,
    head: u32,
    tail: u32,
}

impl Context {
    fn order(&self, policy: PolicyId, tenant: &str, server: &str) -> Ordering {
        (self.policy, &*self.tenant, &*self.server).cmp(&(policy, tenant, server))
    }

    fn bytes(&self) -> u64 {
        CONTEXT_BYTES + (self.tenant.len() + self.server.len()) as u64
    }
}

/// A chained hash index grown by linear hashing: `INITIAL << level` buckets
/// plus `split` already split, each split moving part of one chain.
struct Index {
    /// Segments of `SEGMENT` buckets; a bucket holds its first slot + 1 (0:
    /// empty), so a zeroed segment is an empty one.
    segments: Vec<Box<[u32]>>,
    level: u32,
    split: u32,
}

impl Index {
    const INITIAL: u32 = SEGMENT as u32;

    fn buckets(&self) -> u32 {
        if self.segments.is_empty() {
            0
        } else {
            (Self::INITIAL << self.level) + self.split
        }
    }

    fn bucket_of(&self, hash: u32) -> u32 {
        let m = Self::INITIAL << self.level;
        let b = hash & (m - 1);
        if b < self.split {
            hash & ((m << 1) - 1)
        } else {
            b
        }
    }

    fn head(&self, b: u32) -> u32 {
        self.segments[(b >> SEGMENT_BITS) as usize][b as usize & (SEGMENT - 1)].wrapping_sub(1)
    }

    fn set_head(&mut self, b: u32, slot: u32) {
        // NIL (u32::MAX) wraps to 0, the empty bucket.
        self.segments[(b >> SEGMENT_BITS) as usize][b as usize & (SEGMENT - 1)] =
            slot.wrapping_add(1);
    }

    /// Room for bucket `b` (a new segment when it starts one).
    fn reserve(&mut self, b: u32) {
        while self.segments.len() <= (b >> SEGMENT_BITS) as usize {
            self.segments.push(vec![0u32; SEGMENT].into_boxed_slice());
        }
    }
}

/// The state table of one instance. Not thread-safe; one per engine.
pub struct StateTable {
    /// The slab, in chunks of `CHUNK` slots.
    chunks: Vec<Vec<Slot>>,
    free: Vec<u32>,
    len: u32,
    index: Index,
    contexts: Vec<Option<Context>>,
    free_contexts: Vec<u32>,
    /// Live contexts, ordered by (policy, tenant, server).
    sorted: Vec<u32>,
    hash_key: (u64, u64),
    /// Bytes counted for the live entries and contexts, and their bound.
    bytes: u64,
    budget_bytes: u64,
    /// Contexts holding no entry (kept for the next key, up to a bound).
    empty: u32,
    /// The next context the sweep looks at.
    cursor: u32,
    /// The context last found holding a fair share, and where the next look starts.
    largest: u32,
    victim_cursor: usize,
}

impl StateTable {
    /// An empty table whose hash function is keyed with `hash_key`, bounded
    /// only by [`MAX_ENTRIES`] until [`StateTable::set_budget`].
    pub fn new(hash_key: (u64, u64)) -> Self {
        Self {
            chunks: Vec::new(),
            free: Vec::new(),
            len: 0,
            index: Index {
                segments: Vec::new(),
                level: 0,
                split: 0,
            },
            contexts: Vec::new(),
            free_contexts: Vec::new(),
            sorted: Vec::new(),
            hash_key,
            bytes: 0,
            budget_bytes: u64::MAX,
            empty: 0,
            cursor: 0,
            largest: NIL,
            victim_cursor: 0,
        }
    }

    /// Forget every entry and context (the hash key and the byte bound stay).
    pub fn clear(&mut self) {
        let (hash_key, budget) = (self.hash_key, self.budget_bytes);
        *self = Self::new(hash_key);
        self.budget_bytes = budget;
    }

    /// Bound the bytes counted for live entries and contexts; at the bound
    /// the context holding the most entries drops its oldest.
    pub fn set_budget(&mut self, bytes: u64) {
        self.budget_bytes = bytes;
    }

    /// The byte bound ([`u64::MAX`]: none).
    pub fn budget(&self) -> u64 {
        self.budget_bytes
    }

    /// Bytes counted for the live entries and contexts.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Number of entries held (expired ones not yet swept included).
    pub fn len(&self) -> usize {
        self.len as usize
    }

    /// Whether the table holds no entry.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Entries of `policy`, in all its contexts (found by binary search: the metrics read
    /// this for every policy).
    pub fn policy_len(&self, policy: PolicyId) -> usize {
        let (from, to) = self.policy_range(policy);
        self.sorted[from..to]
            .iter()
            .map(|&c| self.context(c).len as usize)
            .sum()
    }

    /// Contexts holding state.
    pub fn context_count(&self) -> usize {
        self.live_contexts() as usize
    }

    fn slot(&self, i: u32) -> &Slot {
        &self.chunks[(i >> CHUNK_BITS) as usize][i as usize & (CHUNK - 1)]
    }

    fn slot_mut(&mut self, i: u32) -> &mut Slot {
        &mut self.chunks[(i >> CHUNK_BITS) as usize][i as usize & (CHUNK - 1)]
    }

    fn context(&self, c: u32) -> &Context {
        self.contexts[c as usize]
            .as_ref()
            .expect("a live slot's context is live")
    }

    fn context_mut(&mut self, c: u32) -> &mut Context {
        self.contexts[c as usize]
            .as_mut()
            .expect("a live slot's context is live")
    }

    /// The key's hash in this table (keyed SipHash-1-3, truncated).
    pub fn key_hash(&self, policy: PolicyId, key: &KeyParts<'_>) -> u32 {
        let mut h = SipHasher13::new_with_keys(self.hash_key.0, self.hash_key.1);
        h.write_u64(policy);
        // 0xff never occurs in UTF-8, so the parts cannot run into each other.
        for part in [key.tenant, key.server, key.identity, key.tool] {
            h.write(part.as_bytes());
            h.write_u8(0xff);
        }
        h.write(key.request_id.as_bytes());
        h.finish() as u32
    }

    /// The slot holding `key` of `policy`, live or expired, if any.
    pub fn find(&self, hash: u32, policy: PolicyId, key: &KeyParts<'_>) -> Option<u32> {
        if self.index.segments.is_empty() {
            return None;
        }
        let mut i = self.index.head(self.index.bucket_of(hash));
        while i != NIL {
            let slot = self.slot(i);
            if slot.hash == hash && slot.matches(key) {
                let c = self.context(slot.context);
                if c.order(policy, key.tenant, key.server) == Ordering::Equal {
                    return Some(i);
                }
            }
            i = slot.chain;
        }
        None
    }

    /// The entry in slot `i` (a live slot).
    pub fn entry(&self, i: u32) -> Entry {
        self.slot(i).entry
    }

    /// The entry in slot `i`, to update (a live slot).
    pub fn entry_mut(&mut self, i: u32) -> &mut Entry {
        &mut self.slot_mut(i).entry
    }

    /// The key `handle` names, as (slot, policy, key), if its slot is live (an
    /// entry past its TTL but not yet swept included, as for a lookup by key).
    pub fn key_of(&self, handle: Handle) -> Option<(u32, PolicyId, KeyParts<'_>)> {
        let i = handle.checked_sub(1)?;
        let slot = self
            .chunks
            .get((i >> CHUNK_BITS) as usize)?
            .get(i as usize & (CHUNK - 1))?;
        if slot.context == NIL {
            return None;
        }
        let c = self.context(slot.context);
        Some((i, c.policy, slot.key_in(c)))
    }

    /// The key hash stored with slot `i` (a live slot).
    pub fn hash_of(&self, i: u32) -> u32 {
        self.slot(i).hash
    }

    /// The bounds of slot `i`'s context (a live slot).
    pub fn limits_of(&self, i: u32) -> Limits {
        self.context(self.slot(i).context).limits
    }

    /// Record a failure of `key` under `policy` at `now_ms` and return its
    /// slot: [`StateTable::fail_again`] when the key is held, else
    /// [`StateTable::insert_new`].
    pub fn record_failure(
        &mut self,
        hash: u32,
        policy: PolicyId,
        key: &KeyParts<'_>,
        now_ms: u64,
        limits: Limits,
    ) -> u32 {
        match self.find(hash, policy, key) {
            Some(i) => self.fail_again(i, now_ms),
            None => self.insert_new(hash, policy, key, now_ms, limits),
        }
    }

    /// Another failure of the key in slot `i` (a live slot) at `now_ms`: its
    /// count goes up (from 1 again when the entry had expired) and it becomes
    /// its context's newest; `last_delay_ms` is still the previous retry's
    /// (the caller sets the new one). Returns `i`.
    pub fn fail_again(&mut self, i: u32, now_ms: u64) -> u32 {
        let ttl_ms = self.limits_of(i).ttl_ms;
        let slot = self.slot_mut(i);
        slot.entry = if expired(slot.entry.last_failure_ms, now_ms, ttl_ms) {
            Entry::first(now_ms)
        } else {
            Entry {
                failures: slot.entry.failures.saturating_add(1),
                last_failure_ms: now_ms,
                ..slot.entry
            }
        };
        let c = slot.context;
        self.unlink(i);
        self.push_tail(c, i);
        i
    }

    /// The first failure of `key` (not held) under `policy` at `now_ms`, in
    /// a new slot (returned). It may first drop its context's oldest entry
    /// (at the context's bound), then the oldest of the context holding the
    /// most entries (at the instance's bound).
    pub fn insert_new(
        &mut self,
        hash: u32,
        policy: PolicyId,
        key: &KeyParts<'_>,
        now_ms: u64,
        limits: Limits,
    ) -> u32 {
        self.insert(hash, policy, key, Entry::first(now_ms), limits)
    }

    /// Put `entry` for a new key: see [`StateTable::record_failure`].
    fn insert(
        &mut self,
        hash: u32,
        policy: PolicyId,
        key: &KeyParts<'_>,
        entry: Entry,
        limits: Limits,
    ) -> u32 {
        self.insert_at(hash, policy, key, entry, limits, None)
    }

    /// [`StateTable::insert`] into slot `at` (a free slot not in the free
    /// list), else into any free slot.
    fn insert_at(
        &mut self,
        hash: u32,
        policy: PolicyId,
        key: &KeyParts<'_>,
        entry: Entry,
        limits: Limits,
        at: Option<u32>,
    ) -> u32 {
        let c = self.context_for(policy, key.tenant, key.server, limits);
        let cap = self.context(c).limits.max_entries.max(1);
        while self.context(c).len >= cap {
            let head = self.context(c).head;
            self.remove_slot(head);
        }
        let need =
            ENTRY_BYTES + (key.identity.len() + key.tool.len() + key.request_id.len()) as u64;
        while self.len >= MAX_ENTRIES || self.bytes.saturating_add(need) > self.budget_bytes {
            let Some(victim) = self.fair_share_victim() else {
                break;
            };
            if self.context(victim).len == 0 {
                break;
            }
            let head = self.context(victim).head;
            self.remove_slot(head);
            if victim != c {
                // At the bound its bytes are wanted now, not at the next bulk drop.
                self.drop_if_empty(victim);
            }
        }
        let i = match at {
            Some(i) => i,
            None => self.take_slot(),
        };
        debug_assert_eq!(self.slot(i).context, NIL, "a free slot");
        let mut text = alloc::string::String::with_capacity(
            key.identity.len() + key.tool.len() + key.request_id.len(),
        );
        text.push_str(key.identity);
        text.push_str(key.tool);
        text.push_str(key.request_id);
        *self.slot_mut(i) = Slot {
            key: text.into_boxed_str(),
            identity_len: key.identity.len() as u32,
            tool_len: key.tool.len() as u32,
            context: c,
            hash,
            entry,
            prev: NIL,
            next: NIL,
            chain: NIL,
        };
        self.link_index(i);
        self.push_tail(c, i);
        if self.context(c).len == 0 {
            self.empty -= 1;
        }
        self.context_mut(c).len += 1;
        self.len += 1;
        self.bytes += need;
        i
    }

    /// A free slot number, growing the slab by a chunk when none is free.
    fn take_slot(&mut self) -> u32 {
        if let Some(i) = self.free.pop() {
            return i;
        }
        let last = self.chunks.len();
        if last == 0 || self.chunks[last - 1].len() == CHUNK {
            self.chunks.push(Vec::with_capacity(CHUNK));
        }
        let chunk = self.chunks.len() - 1;
        self.chunks[chunk].push(Slot::free());
        ((chunk << CHUNK_BITS) + self.chunks[chunk].len() - 1) as u32
    }

    /// The context of `(policy, tenant, server)`, created with `limits` when
    /// it holds no state yet.
    fn context_for(&mut self, policy: PolicyId, tenant: &str, server: &str, limits: Limits) -> u32 {
        let at = self.sorted.binary_search_by(|&c| {
            self.contexts[c as usize]
                .as_ref()
                .map_or(Ordering::Less, |ctx| ctx.order(policy, tenant, server))
        });
        match at {
            Ok(pos) => self.sorted[pos],
            Err(_) if self.empty > EMPTY_CONTEXTS_KEPT + self.live_contexts() => {
                self.drop_empty_contexts();
                self.context_for(policy, tenant, server, limits)
            }
            Err(pos) => {
                let ctx = Context {
                    policy,
                    tenant: Box::from(tenant),
                    server: Box::from(server),
                    limits,
                    len: 0,
                    head: NIL,
                    tail: NIL,
                };
                self.bytes += ctx.bytes();
                let c = match self.free_contexts.pop() {
                    Some(c) => {
                        self.contexts[c as usize] = Some(ctx);
                        c
                    }
                    None => {
                        self.contexts.push(Some(ctx));
                        (self.contexts.len() - 1) as u32
                    }
                };
                self.sorted.insert(pos, c);
                self.empty += 1;
                c
            }
        }
    }

    /// Contexts holding entries.
    fn live_contexts(&self) -> u32 {
        self.sorted.len() as u32 - self.empty
    }

    /// Forget every context that holds nothing. O(contexts), once per
    /// [`EMPTY_CONTEXTS_KEPT`] contexts emptied at least.
    fn drop_empty_contexts(&mut self) {
        // At most a bounded number in one call (each frees two strings): a look over the order
        // is cheap, freeing thousands of contexts in one call is not.
        let mut dropped = 0;
        let mut sorted = core::mem::take(&mut self.sorted);
        sorted.retain(|&c| {
            let ctx = self.contexts[c as usize]
                .as_ref()
                .expect("a sorted context is live");
            if ctx.len > 0 || dropped == EMPTY_CONTEXTS_DROPPED {
                return true;
            }
            dropped += 1;
            self.bytes -= ctx.bytes();
            self.contexts[c as usize] = None;
            self.free_contexts.push(c);
            false
        });
        self.sorted = sorted;
        self.empty -= dropped;
    }

    /// Forget context `c` once it holds nothing.
    fn drop_if_empty(&mut self, c: u32) {
        let Some(ctx) = self.contexts[c as usize].as_ref() else {
            return;
        };
        if ctx.len > 0 {
            return;
        }
        self.bytes -= ctx.bytes();
        self.empty -= 1;
        if let Ok(pos) = self.sorted.binary_search_by(|&other| {
            self.contexts[other as usize]
                .as_ref()
                .map_or(Ordering::Less, |o| {
                    o.order(ctx.policy, &ctx.tenant, &ctx.server)
                })
        }) {
            self.sorted.remove(pos);
        }
        self.contexts[c as usize] = None;
        self.free_contexts.push(c);
    }

    /// The context that pays at the instance's bound: the one holding the
    /// most entries. The last one found is kept while it still holds at least
    /// a fair share (the average), so a flood pays without a scan per entry.
    fn fair_share_victim(&mut self) -> Option<u32> {
        let live = self.live_contexts();
        if live == 0 || self.len == 0 {
            return None;
        }
        let fair = self.len.div_ceil(live);
        let holds_a_share = |c: &Context| c.len > 0 && c.len >= fair;
        let cached = self
            .contexts
            .get(self.largest as usize)
            .and_then(Option::as_ref)
            .is_some_and(holds_a_share);
        if cached {
            return Some(self.largest);
        }
        // A bounded look, on from where the last one stopped: the first context holding a fair
        // share, else the largest seen. One exists (not all can be below the average), and a
        // flood's context, once found, is kept above; a call never scans every context.
        let n = self.sorted.len();
        let mut best: Option<u32> = None;
        for _ in 0..n.min(VICTIM_LOOK) {
            self.victim_cursor = (self.victim_cursor + 1) % n;
            let c = self.sorted[self.victim_cursor];
            let ctx = self.context(c);
            if holds_a_share(ctx) {
                best = Some(c);
                break;
            }
            if ctx.len > best.map_or(0, |b| self.context(b).len) {
                best = Some(c);
            }
        }
        self.largest = best?;
        Some(self.largest)
    }

    /// Remove the entry in slot `i` (a live slot), if it holds one. Its context
    /// stays, maybe empty, for the next key (see [`EMPTY_CONTEXTS_KEPT`]).
    pub fn remove(&mut self, i: u32) {
        if self.slot(i).context != NIL {
            self.remove_slot(i);
        }
    }

    /// Remove a live slot; its context stays, maybe empty (the caller drops it).
    fn remove_slot(&mut self, i: u32) {
        self.unlink_index(i);
        self.unlink(i);
        let slot = core::mem::replace(self.slot_mut(i), Slot::free());
        let ctx = self.context_mut(slot.context);
        ctx.len -= 1;
        if ctx.len == 0 {
            self.empty += 1;
        }
        self.len -= 1;
        self.bytes -= slot.bytes();
        self.free.push(i);
    }

    /// Drop up to [`SWEEP_PER_CALL`] expired entries off the head of the
    /// context of slot `near` (the key a call just decided, if it holds
    /// state) and as many off the next context in turn. Returns how many went.
    /// Slot numbers other than `near` may no longer be live afterwards.
    pub fn sweep(&mut self, now_ms: u64, near: Option<u32>) -> usize {
        let mut swept = 0;
        if let Some(slot) = near {
            let c = self.slot(slot).context;
            if c != NIL {
                swept += self.sweep_context(c, now_ms, SWEEP_PER_CALL);
            }
        }
        if !self.contexts.is_empty() {
            self.cursor = (self.cursor + 1) % self.contexts.len() as u32;
            if self.contexts[self.cursor as usize].is_some() {
                swept += self.sweep_context(self.cursor, now_ms, SWEEP_PER_CALL);
            }
        }
        swept
    }

    fn sweep_context(&mut self, c: u32, now_ms: u64, max: usize) -> usize {
        let mut swept = 0;
        while swept < max {
            let ctx = self.context(c);
            let head = ctx.head;
            if head == NIL
                || !expired(
                    self.slot(head).entry.last_failure_ms,
                    now_ms,
                    ctx.limits.ttl_ms,
                )
            {
                break;
            }
            self.remove_slot(head);
            swept += 1;
        }
        swept
    }

    /// Remove every expired entry, looking at every entry (a clock that went
    /// backwards may leave an expired entry behind a fresh one); returns how
    /// many went. A cold path: O(entries).
    pub fn evict_all_expired(&mut self, now_ms: u64) -> usize {
        let mut evicted = 0;
        for c in 0..self.contexts.len() as u32 {
            let Some(ctx) = self.contexts[c as usize].as_ref() else {
                continue;
            };
            let ttl_ms = ctx.limits.ttl_ms;
            let mut i = ctx.head;
            while i != NIL {
                let slot = self.slot(i);
                let next = slot.next;
                if expired(slot.entry.last_failure_ms, now_ms, ttl_ms) {
                    self.remove_slot(i);
                    evicted += 1;
                }
                i = next;
            }
            self.drop_if_empty(c);
        }
        evicted
    }

    /// Remove every entry of `policy`; returns how many went. A cold path.
    /// Work proportional to the policy's own entries (its contexts are found by
    /// binary search): releasing many policies at once stays within a cold call's fuel.
    pub fn remove_policy(&mut self, policy: PolicyId) -> usize {
        let (from, to) = self.policy_range(policy);
        let contexts: Vec<u32> = self.sorted[from..to].to_vec();
        let mut removed = 0;
        for c in contexts {
            loop {
                let head = self.context(c).head;
                if head == NIL {
                    break;
                }
                self.remove_slot(head);
                removed += 1;
            }
            self.drop_if_empty(c);
        }
        removed
    }

    /// The range of `sorted` holding `policy`'s contexts.
    fn policy_range(&self, policy: PolicyId) -> (usize, usize) {
        let from = self
            .sorted
            .partition_point(|&c| self.context(c).policy < policy);
        let to = self
            .sorted
            .partition_point(|&c| self.context(c).policy <= policy);
        (from, to)
    }

    /// Every live slot as (handle, policy, key, entry): context by context
    /// (ordered by policy, tenant and server), oldest last failure first.
    pub fn iter(&self) -> impl Iterator<Item = (Handle, PolicyId, KeyParts<'_>, Entry)> + '_ {
        self.iter_contexts(&self.sorted)
    }

    /// [`StateTable::iter`] for the slots of `policy` only.
    pub fn iter_policy(
        &self,
        policy: PolicyId,
    ) -> impl Iterator<Item = (Handle, PolicyId, KeyParts<'_>, Entry)> + '_ {
        let (from, to) = self.policy_range(policy);
        self.iter_contexts(&self.sorted[from..to])
    }

    fn iter_contexts<'a>(
        &'a self,
        contexts: &'a [u32],
    ) -> impl Iterator<Item = (Handle, PolicyId, KeyParts<'a>, Entry)> + 'a {
        contexts.iter().flat_map(move |&c| {
            let ctx = self.context(c);
            let mut i = ctx.head;
            core::iter::from_fn(move || {
                if i == NIL {
                    return None;
                }
                let slot = self.slot(i);
                let item = (i + 1, ctx.policy, slot.key_in(ctx), slot.entry);
                i = slot.next;
                Some(item)
            })
        })
    }

    /// Put `entry` for `key` of `policy` in the slot `handle` names, as the
    /// newest of its context (restoring exported state into an empty table,
    /// in document order; [`StateTable::finish_restore`] after the last).
    /// False when the handle is out of range or its slot is taken, or the key
    /// is held already; then nothing changes. Bounds apply as to a new key.
    pub fn restore(
        &mut self,
        handle: Handle,
        policy: PolicyId,
        key: &KeyParts<'_>,
        entry: Entry,
        limits: Limits,
    ) -> bool {
        let Some(i) = handle.checked_sub(1).filter(|&i| i < MAX_ENTRIES) else {
            return false;
        };
        let hash = self.key_hash(policy, key);
        if self.find(hash, policy, key).is_some() {
            return false;
        }
        // Grow the slab to reach slot `i`; the free list is rebuilt at the end.
        while self.slab_len() <= i as usize {
            let last = self.chunks.len();
            if last == 0 || self.chunks[last - 1].len() == CHUNK {
                self.chunks.push(Vec::with_capacity(CHUNK));
            }
            let chunk = self.chunks.len() - 1;
            self.chunks[chunk].push(Slot::free());
        }
        if self.slot(i).context != NIL {
            return false;
        }
        self.insert_at(hash, policy, key, entry, limits, Some(i));
        true
    }

    /// After the last [`StateTable::restore`]: every free slot is free for
    /// new keys again.
    pub fn finish_restore(&mut self) {
        self.free = (0..self.slab_len() as u32)
            .rev()
            .filter(|&i| self.slot(i).context == NIL)
            .collect();
    }

    fn slab_len(&self) -> usize {
        match self.chunks.last() {
            None => 0,
            Some(last) => ((self.chunks.len() - 1) << CHUNK_BITS) + last.len(),
        }
    }

    fn link_index(&mut self, i: u32) {
        if self.index.segments.is_empty() {
            self.index.reserve(Index::INITIAL - 1);
        }
        let b = self.index.bucket_of(self.slot(i).hash);
        let head = self.index.head(b);
        self.slot_mut(i).chain = head;
        self.index.set_head(b, i);
        // Load factor 1: one split per entry beyond it keeps chains short.
        if self.len + 1 > self.index.buckets() {
            self.split_bucket();
        }
    }

    /// Linear hashing's split: bucket `split` shares its chain with the new
    /// bucket `split + INITIAL << level`.
    fn split_bucket(&mut self) {
        let m = Index::INITIAL << self.index.level;
        let from = self.index.split;
        let to = from + m;
        self.index.reserve(to);
        let mut i = self.index.head(from);
        self.index.set_head(from, NIL);
        self.index.set_head(to, NIL);
        while i != NIL {
            let next = self.slot(i).chain;
            let b = if self.slot(i).hash & m != 0 { to } else { from };
            let head = self.index.head(b);
            self.slot_mut(i).chain = head;
            self.index.set_head(b, i);
            i = next;
        }
        self.index.split += 1;
        if self.index.split == m {
            self.index.level += 1;
            self.index.split = 0;
        }
    }

    fn unlink_index(&mut self, i: u32) {
        let b = self.index.bucket_of(self.slot(i).hash);
        let next = self.slot(i).chain;
        let mut j = self.index.head(b);
        if j == i {
            self.index.set_head(b, next);
            return;
        }
        while j != NIL {
            let after = self.slot(j).chain;
            if after == i {
                self.slot_mut(j).chain = next;
                return;
            }
            j = after;
        }
    }

    fn unlink(&mut self, i: u32) {
        let (prev, next, c) = {
            let s = self.slot(i);
            (s.prev, s.next, s.context)
        };
        match prev {
            NIL => self.context_mut(c).head = next,
            p => self.slot_mut(p).next = next,
        }
        match next {
            NIL => self.context_mut(c).tail = prev,
            n => self.slot_mut(n).prev = prev,
        }
        let s = self.slot_mut(i);
        s.prev = NIL;
        s.next = NIL;
    }

    fn push_tail(&mut self, c: u32, i: u32) {
        let tail = self.context(c).tail;
        {
            let s = self.slot_mut(i);
            s.prev = tail;
            s.next = NIL;
        }
        match tail {
            NIL => self.context_mut(c).head = i,
            t => self.slot_mut(t).next = i,
        }
        self.context_mut(c).tail = i;
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
    use alloc::format;
    use alloc::string::String;

    const TTL: u64 = 1000;
    const LIMITS: Limits = Limits {
        ttl_ms: TTL,
        max_entries: 1000,
    };
    const ROOMY: Limits = Limits {
        ttl_ms: TTL,
        max_entries: 10_000,
    };
    const P: PolicyId = 0;

    fn k<'a>(tool: &'a str, rid: &'a str) -> KeyParts<'a> {
        KeyParts::new(tool, rid)
    }

    fn in_tenant<'a>(tenant: &'a str, rid: &'a str) -> KeyParts<'a> {
        KeyParts {
            tenant,
            ..k("t", rid)
        }
    }

    fn fail(t: &mut StateTable, key: KeyParts<'_>, now: u64) -> u32 {
        fail_in(t, P, key, now, LIMITS)
    }

    fn fail_in(
        t: &mut StateTable,
        policy: PolicyId,
        key: KeyParts<'_>,
        now: u64,
        limits: Limits,
    ) -> u32 {
        let hash = t.key_hash(policy, &key);
        let i = t.record_failure(hash, policy, &key, now, limits);
        t.entry(i).failures
    }

    fn get(t: &StateTable, key: KeyParts<'_>, now: u64) -> Option<Entry> {
        let i = t.find(t.key_hash(P, &key), P, &key)?;
        let entry = t.entry(i);
        (!expired(entry.last_failure_ms, now, t.limits_of(i).ttl_ms)).then_some(entry)
    }

    fn remove(t: &mut StateTable, key: KeyParts<'_>) -> bool {
        match t.find(t.key_hash(P, &key), P, &key) {
            Some(i) => {
                t.remove(i);
                true
            }
            None => false,
        }
    }

    fn ctx_text_bytes(t: &StateTable) -> u64 {
        t.sorted
            .iter()
            .map(|&c| {
                let ctx = t.context(c);
                (ctx.tenant.len() + ctx.server.len()) as u64
            })
            .sum()
    }

    fn rids(t: &StateTable) -> Vec<String> {
        t.iter()
            .map(|(_, _, key, _)| String::from(key.request_id))
            .collect()
    }

    #[test]
    fn test_state_counts_and_removes() {
        let mut t = StateTable::new((1, 2));
        assert_eq!(fail(&mut t, k("a", "r"), 0), 1);
        assert_eq!(fail(&mut t, k("a", "r"), 1), 2);
        assert_eq!(fail(&mut t, k("ab", ""), 1), 1);
        assert_eq!(fail(&mut t, k("a", "b"), 1), 1);
        assert_eq!(t.len(), 3);
        assert!(remove(&mut t, k("a", "r")));
        assert!(!remove(&mut t, k("a", "r")));
        assert_eq!(
            get(&t, k("ab", ""), 1),
            Some(Entry {
                failures: 1,
                last_delay_ms: 0,
                total_delay_ms: 0,
                last_failure_ms: 1
            })
        );
    }

    #[test]
    fn test_state_parts_and_policies_are_distinct_keys() {
        let mut t = StateTable::new((1, 2));
        let key = |tenant, server, identity, tool, request_id| KeyParts {
            tenant,
            server,
            identity,
            tool,
            request_id,
        };
        // The same characters split differently are different keys.
        let keys = [
            key("ab", "", "", "t", "r"),
            key("a", "b", "", "t", "r"),
            key("", "ab", "", "t", "r"),
            key("", "a", "b", "t", "r"),
            key("", "", "ab", "t", "r"),
            key("", "", "a", "bt", "r"),
            key("", "", "", "abt", "r"),
            key("", "", "", "ab", "tr"),
        ];
        for key in keys {
            assert_eq!(fail(&mut t, key, 0), 1, "{key:?}");
        }
        for key in keys {
            assert_eq!(fail_in(&mut t, 1, key, 0, LIMITS), 1, "policy 1 {key:?}");
        }
        assert_eq!(t.len(), 16);
        assert_eq!(t.policy_len(0), 8);
        assert_eq!(t.context_count(), 2 * 5, "ab|, a|b, |ab, |a, | per policy");
        assert_eq!(t.remove_policy(0), 8);
        assert_eq!((t.len(), t.context_count()), (8, 5));
    }

    #[test]
    fn test_state_ttl_boundary_exact() {
        let mut t = StateTable::new((1, 2));
        fail(&mut t, k("a", "r"), 10);
        assert!(get(&t, k("a", "r"), 10 + TTL).is_some());
        assert!(get(&t, k("a", "r"), 10 + TTL + 1).is_none());
        assert_eq!(fail(&mut t, k("a", "r"), 10 + TTL), 2);
        assert_eq!(fail(&mut t, k("a", "r"), 10 + 2 * TTL + 1), 1);
    }

    #[test]
    fn test_state_sweep_is_bounded_and_ordered() {
        let mut t = StateTable::new((1, 2));
        for i in 0..30u64 {
            fail(&mut t, k("t", &i.to_string()), i);
        }
        // Touch "0" again: it becomes the newest.
        fail(&mut t, k("t", "0"), 40);
        let near = t.find(t.key_hash(P, &k("t", "0")), P, &k("t", "0"));
        // "1".."29" (ms 1..29) expired at TTL + 30; a sweep takes a bounded share
        // of the key's context and of the next in turn (here the same one).
        assert_eq!(t.sweep(TTL + 30, near), 2 * SWEEP_PER_CALL);
        assert_eq!(t.len(), 30 - 2 * SWEEP_PER_CALL);
        assert_eq!(t.sweep(TTL + 30, near), 29 - 2 * SWEEP_PER_CALL);
        assert_eq!(t.sweep(TTL + 30, near), 0);
        assert_eq!(rids(&t), vec!["0"]);
    }

    #[test]
    fn test_state_sweep_reaches_every_context_in_turn() {
        let mut t = StateTable::new((1, 2));
        for tenant in ["a", "b", "c"] {
            let key = KeyParts {
                tenant,
                ..k("t", "r")
            };
            fail(&mut t, key, 0);
        }
        // Calls that work elsewhere still sweep, one context after the other.
        let mut swept = 0;
        for _ in 0..3 {
            swept += t.sweep(2 * TTL, None);
        }
        assert_eq!((swept, t.len(), t.context_count()), (3, 0, 0));
    }

    #[test]
    fn test_state_empty_contexts_are_kept_then_dropped_in_bulk() {
        let mut t = StateTable::new((1, 2));
        // One context whose keys keep clearing: kept, not made again per key.
        for i in 0..10u64 {
            let rid = i.to_string();
            let key = k("t", &rid);
            fail(&mut t, key, 0);
            let slot = t.find(t.key_hash(P, &key), P, &key).unwrap();
            t.remove(slot);
        }
        assert_eq!((t.len(), t.context_count(), t.sorted.len()), (0, 0, 1));
        // Many contexts emptied: past the bound they all go at the next new context.
        for n in 0..=EMPTY_CONTEXTS_KEPT + 1 {
            let tenant = n.to_string();
            let key = in_tenant(&tenant, "r");
            fail(&mut t, key, 0);
            let slot = t.find(t.key_hash(P, &key), P, &key).unwrap();
            t.remove(slot);
        }
        assert!(
            t.sorted.len() <= EMPTY_CONTEXTS_KEPT as usize + 2,
            "{}",
            t.sorted.len()
        );
        assert_eq!(
            t.bytes(),
            t.sorted.len() as u64 * CONTEXT_BYTES + ctx_text_bytes(&t)
        );
    }

    #[test]
    fn test_state_context_bound_drops_its_own_oldest() {
        let mut t = StateTable::new((1, 2));
        let small = Limits {
            ttl_ms: TTL,
            max_entries: 3,
        };
        fail_in(&mut t, P, in_tenant("b", "victim"), 0, small);
        fail_in(&mut t, P, in_tenant("b", "victim"), 1, small);
        for i in 0..3000u64 {
            let rid = i.to_string();
            fail_in(&mut t, P, in_tenant("a", &rid), 2 + i, small);
        }
        assert_eq!(t.len(), 4);
        // a kept its newest three; b's key in mid-backoff is untouched.
        let kept: Vec<String> = t
            .iter()
            .map(|(_, _, key, e)| format!("{}{}:{}", key.tenant, key.request_id, e.failures))
            .collect();
        assert_eq!(kept, vec!["a2997:1", "a2998:1", "a2999:1", "bvictim:2"]);
    }

    #[test]
    fn test_state_instance_bound_is_a_fair_share() {
        let mut t = StateTable::new((1, 2));
        // Room for about 30 entries of this size.
        let one = ENTRY_BYTES + 3;
        t.set_budget(30 * one + 3 * (CONTEXT_BYTES + 1));
        for i in 0..5u64 {
            let rid = format!("b{i}");
            fail(&mut t, in_tenant("b", &rid), i);
        }
        for i in 0..200u64 {
            let rid = format!("{:03}", i % 1000);
            fail(&mut t, in_tenant("a", &rid), 10 + i);
        }
        assert!(t.bytes() <= t.budget());
        let count = |t: &StateTable, name: &str| {
            t.iter().filter(|(_, _, key, _)| key.tenant == name).count()
        };
        // The flood paid with its own entries; b (below the fair share) kept all five.
        assert_eq!(count(&t, "b"), 5);
        assert!(count(&t, "a") >= 20, "{}", count(&t, "a"));
        // A third context arriving when full takes from the largest, not from b.
        fail(&mut t, in_tenant("c", "c0"), 500);
        assert_eq!(count(&t, "b"), 5);
        assert_eq!(count(&t, "c"), 1);
    }

    #[test]
    fn test_state_index_grows_and_shrinks_consistently() {
        let mut t = StateTable::new((3, 4));
        fn fail(t: &mut StateTable, key: KeyParts<'_>, now: u64) -> u32 {
            let roomy = Limits {
                ttl_ms: TTL,
                max_entries: 10_000,
            };
            fail_in(t, P, key, now, roomy)
        }
        for i in 0..5000u64 {
            fail(&mut t, k("t", &i.to_string()), 0);
        }
        assert!(t.index.buckets() >= 5000);
        for i in (0..5000u64).step_by(2) {
            assert!(remove(&mut t, k("t", &i.to_string())));
        }
        for i in 0..5000u64 {
            let want = if i % 2 == 0 { 1 } else { 2 };
            assert_eq!(fail(&mut t, k("t", &i.to_string()), 1), want, "{i}");
        }
        assert_eq!(t.len(), 5000);
        // Slots are reused: the slab never held more than the live entries.
        assert!(t.chunks.len() * CHUNK <= 5000 + CHUNK);
    }

    #[test]
    fn test_state_collisions_in_one_bucket_stay_consistent() {
        let mut t = StateTable::new((5, 6));
        // Every key in one bucket: hashes agree modulo the bucket count.
        for i in 0..8u64 {
            let rid = i.to_string();
            let key = k("t", &rid);
            let i_slot = t.insert(7 << 20, P, &key, Entry::first(i), LIMITS);
            assert_eq!(t.find(7 << 20, P, &key), Some(i_slot));
        }
        for i in [3u64, 0, 7, 5] {
            let rid = i.to_string();
            let key = k("t", &rid);
            let slot = t.find(7 << 20, P, &key).unwrap();
            t.remove(slot);
        }
        for i in [1u64, 2, 4, 6] {
            assert!(t.find(7 << 20, P, &k("t", &i.to_string())).is_some());
        }
        assert_eq!(t.len(), 4);
    }

    #[test]
    fn test_state_handles_name_slots_until_they_go() {
        let mut t = StateTable::new((1, 2));
        let key = KeyParts {
            tenant: "team",
            server: "srv",
            identity: "ann",
            tool: "tool",
            request_id: "r1",
        };
        let hash = t.key_hash(7, &key);
        let i = t.record_failure(hash, 7, &key, 0, LIMITS);
        let handle = i + 1;
        assert_eq!(t.key_of(handle), Some((i, 7, key)));
        assert_eq!(t.key_of(0), None);
        assert_eq!(t.key_of(handle + 1), None);
        assert_eq!(t.key_of(u32::MAX), None);
        t.remove(i);
        assert_eq!(t.key_of(handle), None);
    }

    #[test]
    fn test_state_restore_places_entries_at_their_handles() {
        let mut t = StateTable::new((1, 2));
        let entry = |n| Entry {
            failures: n,
            last_delay_ms: 5,
            total_delay_ms: 9,
            last_failure_ms: 100,
        };
        assert!(t.restore(2500, P, &k("t", "far"), entry(2), ROOMY));
        assert_eq!(t.free.len(), 0, "rebuilt at the end");
        assert!(t.restore(1, P, &k("t", "first"), entry(1), ROOMY));
        assert!(!t.restore(1, P, &k("t", "taken"), entry(1), ROOMY));
        assert!(
            !t.restore(7, P, &k("t", "far"), entry(1), ROOMY),
            "held already"
        );
        assert!(!t.restore(0, P, &k("t", "zero"), entry(1), ROOMY));
        assert!(!t.restore(MAX_ENTRIES + 1, P, &k("t", "big"), entry(1), ROOMY));
        assert_eq!(t.key_of(2500).map(|(_, _, k)| k.request_id), Some("far"));
        assert_eq!(t.key_of(1).map(|(_, _, k)| k.request_id), Some("first"));
        assert_eq!(
            rids(&t),
            vec!["far", "first"],
            "document order is age order"
        );
        t.finish_restore();
        // New keys fill the free slots in between.
        for i in 0..2498u64 {
            fail_in(&mut t, P, k("t", &format!("n{i}")), 200, ROOMY);
        }
        assert_eq!(t.len(), 2500);
        assert_eq!(t.chunks.iter().map(Vec::len).sum::<usize>(), 2500);
    }

    #[test]
    fn test_state_full_eviction_survives_backwards_clock() {
        let mut t = StateTable::new((1, 2));
        fail(&mut t, k("t", "late"), 5000);
        fail(&mut t, k("t", "early"), 100); // clock went backwards
        assert_eq!(t.sweep(5000, None), 0); // head "late" is fresh
        assert_eq!(t.evict_all_expired(5000), 1);
        assert_eq!(rids(&t), vec!["late"]);
    }
}
