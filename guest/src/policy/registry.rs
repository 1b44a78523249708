//! The policies of an instance: one per configuration the process uses.
//!
//! One instance serves every plugin object of a process (issue 23): each
//! stanza, each team's binding and each equal configuration opens a policy,
//! and plugin objects with the same stanza, configuration and retry ceiling
//! share one. A policy is immutable (a new configuration is a new policy, as
//! Envoy learned: reconfiguring a live one races with the calls using it) and
//! is named by an id derived from its content, so the same configuration has
//! the same id in every instance of the contract (a rebuilt instance, a
//! reloaded build): a plugin object's id stays valid, and the host only
//! opens it again where the instance does not hold it.
//!
//! A policy that nobody opened or decided with for its `state_ttl_ms` is
//! released (its retry state would have expired anyway); at most
//! [`MAX_POLICIES`] are held, so a flood of distinct configurations cannot
//! grow memory without bound.

use alloc::boxed::Box;
use alloc::vec::Vec;
use core::hash::Hasher;

use siphasher::sip::SipHasher13;

use super::config::{Config, ConfigError};
use super::state::expired;

pub use super::key::PolicyId;
/// The most policies an instance holds. Opening another first releases the
/// unused ones; if all are in use, it is refused.
pub const MAX_POLICIES: usize = 4096;

/// The id of the policy of `(scope, config, ceiling)`: SipHash-1-3 with the
/// key (0, 0) over the scope's UTF-8, a 0xff byte, the configuration's JSON
/// text as the host sent it, a 0xff byte, and the ceiling as 4 little-endian
/// bytes (none: no bytes). 0 is never an id (it becomes 1). The text, not
/// its value: a host that sends one configuration as one text (keys sorted,
/// no spacing) gets one policy for it, and the engine never writes JSON back.
pub fn policy_id(scope: &str, canonical: &str, ceiling: Option<u32>) -> PolicyId {
    let mut h = SipHasher13::new_with_keys(0, 0);
    h.write(scope.as_bytes());
    h.write_u8(0xff);
    h.write(canonical.as_bytes());
    h.write_u8(0xff);
    if let Some(c) = ceiling {
        h.write(&c.to_le_bytes());
    }
    h.finish().max(1)
}

/// One policy held by the instance.
pub struct Registered {
    /// Its id.
    pub id: PolicyId,
    /// The stanza it belongs to (the plugin's name in the gateway's YAML):
    /// two stanzas never share state, each counting its own failures.
    pub scope: Box<str>,
    /// The configuration's JSON text, as opened.
    pub canonical: Box<str>,
    /// The gateway's retry ceiling it was opened under.
    pub ceiling: Option<u32>,
    /// The validated configuration.
    pub config: Config,
    /// What opening it lowered to the ceiling.
    pub warnings: Vec<ConfigError>,
    /// When it was last opened or decided with (ms).
    pub last_used_ms: u64,
}

impl Registered {
    /// Whether it has gone unused for its `state_ttl_ms` at `now_ms`.
    pub fn unused(&self, now_ms: u64) -> bool {
        expired(self.last_used_ms, now_ms, self.config.state_ttl_ms())
    }

    /// Bytes it is counted for (its configuration, parsed and as text).
    pub fn bytes(&self) -> u64 {
        Registry::bytes_of(self.canonical.len())
    }
}

/// Bytes a policy is counted for besides its configuration's text (its record, its parsed
/// global policy and a few overrides' worth of the allocator's rounding).
const POLICY_BYTES: u64 = 1536;

/// What [`Registry::lookup`] found for a content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    /// The policy is held, in this slot.
    Held(u32),
    /// It is not held; this is its id.
    Vacant(PolicyId),
    /// Another content holds its id (a SipHash collision).
    Collision(PolicyId),
}

/// The policies held, by slot (the number retry state and budgets refer to)
/// and by id.
#[derive(Default)]
pub struct Registry {
    slots: Vec<Option<Registered>>,
    free: Vec<u32>,
    /// (id, slot), sorted by id (at most [`MAX_POLICIES`]: a sorted list is
    /// smaller code than a tree map, and as fast at this size).
    by_id: Vec<(PolicyId, u32)>,
    bytes: u64,
    /// Where [`Registry::some_unused`] looks next.
    cursor: usize,
}

impl Registry {
    /// Bytes a policy whose configuration is `text_len` bytes of text is counted for: the text,
    /// and its parsed form at up to three times its size.
    pub fn bytes_of(text_len: usize) -> u64 {
        POLICY_BYTES + 4 * text_len as u64
    }

    /// The slot of the policy `id` names, if held.
    pub fn find(&self, id: PolicyId) -> Option<u32> {
        let at = self.by_id.binary_search_by_key(&id, |&(id, _)| id).ok()?;
        Some(self.by_id[at].1)
    }

    /// The policy in slot `ix` (a held one).
    pub fn get(&self, ix: u32) -> &Registered {
        self.slots[ix as usize]
            .as_ref()
            .expect("a held policy's slot")
    }

    /// Mark the policy in slot `ix` used at `now_ms`.
    pub fn touch(&mut self, ix: u32, now_ms: u64) {
        if let Some(p) = self.slots[ix as usize].as_mut() {
            p.last_used_ms = p.last_used_ms.max(now_ms);
        }
    }

    /// Where the policy of this content is, or the id it would have.
    pub fn lookup(&self, scope: &str, canonical: &str, ceiling: Option<u32>) -> Lookup {
        let id = policy_id(scope, canonical, ceiling);
        match self.find(id) {
            None => Lookup::Vacant(id),
            Some(ix) => {
                let p = self.get(ix);
                if (&*p.scope, &*p.canonical, p.ceiling) == (scope, canonical, ceiling) {
                    Lookup::Held(ix)
                } else {
                    Lookup::Collision(id)
                }
            }
        }
    }

    /// Hold `policy` (its id not held yet); returns its slot.
    pub fn insert(&mut self, policy: Registered) -> u32 {
        let id = policy.id;
        self.bytes += policy.bytes();
        let ix = match self.free.pop() {
            Some(ix) => {
                self.slots[ix as usize] = Some(policy);
                ix
            }
            None => {
                self.slots.push(Some(policy));
                (self.slots.len() - 1) as u32
            }
        };
        if let Err(at) = self.by_id.binary_search_by_key(&id, |&(id, _)| id) {
            self.by_id.insert(at, (id, ix));
        }
        ix
    }

    /// Stop holding the policy in slot `ix`.
    pub fn remove(&mut self, ix: u32) -> Option<Registered> {
        let policy = self.slots.get_mut(ix as usize)?.take()?;
        if let Ok(at) = self.by_id.binary_search_by_key(&policy.id, |&(id, _)| id) {
            self.by_id.remove(at);
        }
        self.bytes -= policy.bytes();
        self.free.push(ix);
        Some(policy)
    }

    /// Policies held.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Whether no policy is held.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// Bytes the policies held are counted for.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Every policy held, as (slot, policy), by id.
    pub fn iter(&self) -> impl Iterator<Item = (u32, &Registered)> + '_ {
        self.by_id.iter().map(|&(_, ix)| (ix, self.get(ix)))
    }

    /// The slots of the policies unused at `now_ms` among the next `n` in turn: amortized
    /// release (each open looks at a few) instead of a scan of every policy per open.
    pub fn some_unused(&mut self, now_ms: u64, n: usize) -> Vec<u32> {
        let mut found = Vec::new();
        for _ in 0..n.min(self.by_id.len()) {
            self.cursor = (self.cursor + 1) % self.by_id.len();
            let ix = self.by_id[self.cursor].1;
            if self.get(ix).unused(now_ms) {
                found.push(ix);
            }
        }
        found
    }

    /// The slots of the policies unused at `now_ms`.
    pub fn unused(&self, now_ms: u64) -> Vec<u32> {
        self.iter()
            .filter(|(_, p)| p.unused(now_ms))
            .map(|(ix, _)| ix)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registered(scope: &str, canonical: &str, ceiling: Option<u32>) -> Registered {
        Registered {
            id: policy_id(scope, canonical, ceiling),
            scope: scope.into(),
            canonical: canonical.into(),
            ceiling,
            config: Config::default(),
            warnings: Vec::new(),
            last_used_ms: 0,
        }
    }

    #[test]
    fn test_registry_ids_follow_the_content() {
        let a = policy_id("p", "{}", None);
        assert_eq!(a, policy_id("p", "{}", None), "stable");
        for other in [
            policy_id("q", "{}", None),
            policy_id("p", "{\"max_retries\":1}", None),
            policy_id("p", "{}", Some(3)),
            policy_id("p", "{}", Some(0)),
            // The separator keeps the parts apart.
            policy_id("p{", "}", None),
        ] {
            assert_ne!(a, other);
        }
        // Pinned: the derivation is part of the contract (docs/contract.md).
        assert_eq!(
            policy_id("RetryWithBackoffPlugin", "{}", None),
            0x83018cda4a6f1067
        );
    }

    #[test]
    fn test_registry_holds_looks_up_and_releases() {
        let mut r = Registry::default();
        let p = registered("p", "{}", None);
        let id = p.id;
        assert_eq!(r.lookup("p", "{}", None), Lookup::Vacant(id));
        let ix = r.insert(p);
        assert_eq!(r.lookup("p", "{}", None), Lookup::Held(ix));
        assert_eq!(r.find(id), Some(ix));
        assert!(r.bytes() > 0);
        // Unused after its TTL (the default, 300 s) without a touch.
        r.touch(ix, 1_000);
        assert!(r.unused(301_000).is_empty());
        assert_eq!(r.unused(301_001), vec![ix]);
        assert!(r.remove(ix).is_some());
        assert!(r.remove(ix).is_none());
        assert_eq!((r.len(), r.bytes(), r.find(id)), (0, 0, None));
    }

    #[test]
    fn test_registry_tells_a_collision_from_a_match() {
        let mut r = Registry::default();
        let mut p = registered("p", "{}", None);
        // Another content under the id of `{"a":1}`.
        p.id = policy_id("p", "{\"a\":1}", None);
        r.insert(p);
        assert_eq!(
            r.lookup("p", "{\"a\":1}", None),
            Lookup::Collision(policy_id("p", "{\"a\":1}", None))
        );
    }
}
