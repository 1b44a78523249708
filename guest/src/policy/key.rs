//! A retry-state key: the parts the host sends for one tool call, and the id
//! of the policy it is decided under.

/// A policy's id: the [`super::registry::policy_id`] of its content.
pub type PolicyId = u64;

/// The parts of one tool call's retry-state key, as the host sends them
/// (`decide`'s `key` and `parts`).
///
/// `tenant` and `server` name the gateway context the call ran in (its
/// `global_context.tenant_id` and `server_id`): with the policy they make the
/// key's *context*, which the native plugin keeps apart by giving each
/// gateway context its own plugin object. Retry state, the entry bound and
/// retry budgets are kept per context, so two contexts never share a key's
/// state or budget, whatever request ids clients send. `identity` is what
/// `key_scope` adds (the user under `user`; empty otherwise).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct KeyParts<'a> {
    /// The gateway context's tenant (the tool's team), or empty.
    pub tenant: &'a str,
    /// The gateway context's virtual server, or empty.
    pub server: &'a str,
    /// The identity `key_scope` adds, or empty.
    pub identity: &'a str,
    /// The tool name.
    pub tool: &'a str,
    /// The request id.
    pub request_id: &'a str,
}

impl<'a> KeyParts<'a> {
    /// A key with no context and no identity (the native plugin's key).
    pub fn new(tool: &'a str, request_id: &'a str) -> Self {
        Self {
            tool,
            request_id,
            ..Self::default()
        }
    }

    /// The same key in the gateway context `(tenant, server)`.
    pub fn context(self, tenant: &'a str, server: &'a str) -> Self {
        Self {
            tenant,
            server,
            ..self
        }
    }

    /// The same key with `identity` in its identity part.
    pub fn identity(self, identity: &'a str) -> Self {
        Self { identity, ..self }
    }
}
