//! Virtual keys and who holds them: keys are `sk-` + 32 random bytes from the OS CSPRNG,
//! stored only as their SHA-256 hex digest; a request's key resolves to a `Principal` (the key,
//! its user, team and organization, and the caller's role).

use std::sync::Arc;

use rand::TryRngCore;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use llmux_store::Object;

pub use crate::policy::strings;
use crate::policy::Governed;

/// A new virtual key.
pub fn generate_key() -> String {
    let mut bytes = [0u8; 32];
    // The OS generator fails only on a broken system; a zeroed key would be predictable, so
    // fall back to the thread generator (itself seeded from the OS) rather than use it.
    if rand::rngs::OsRng.try_fill_bytes(&mut bytes).is_err() {
        rand::Rng::fill(&mut rand::rng(), &mut bytes);
    }
    let mut key = String::with_capacity(3 + 43);
    key.push_str("sk-");
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    // base64url without padding: 43 characters for 32 bytes.
    let mut acc = 0u32;
    let mut bits = 0;
    for b in bytes {
        acc = (acc << 8) | u32::from(b);
        bits += 8;
        while bits >= 6 {
            bits -= 6;
            key.push(ALPHABET[((acc >> bits) & 63) as usize] as char);
        }
    }
    if bits > 0 {
        key.push(ALPHABET[((acc << (6 - bits)) & 63) as usize] as char);
    }
    key
}

/// The stored id of a key: SHA-256 hex. A value that already is a 64-hex digest (LiteLLM's
/// `/key/info?key=<hash>`) is kept as it is; authentication never takes that shortcut (see
/// `key_digest`), so knowing a key's id is not knowing the key.
pub fn hash_key(key: &str) -> String {
    if key.len() == 64 && key.bytes().all(|b| b.is_ascii_hexdigit()) {
        return key.to_ascii_lowercase();
    }
    digest_hex(&key_digest(key))
}

/// SHA-256 of a presented key.
pub fn key_digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// A digest as the lowercase hex the store keys objects by.
pub fn digest_hex(digest: &[u8; 32]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(64);
    for b in digest {
        out.push(HEX[usize::from(b >> 4)] as char);
        out.push(HEX[usize::from(b & 15)] as char);
    }
    out
}

/// LiteLLM's abbreviated key for display: `sk-...` + the last four characters.
pub fn key_name(key: &str) -> String {
    let tail: String = key
        .chars()
        .rev()
        .take(4)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    format!("sk-...{tail}")
}

/// LiteLLM's roles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    ProxyAdmin,
    ProxyAdminViewer,
    InternalUser,
    InternalUserViewer,
}

impl Role {
    pub fn parse(s: &str) -> Option<Role> {
        Some(match s {
            "proxy_admin" => Role::ProxyAdmin,
            "proxy_admin_viewer" => Role::ProxyAdminViewer,
            "internal_user" => Role::InternalUser,
            "internal_user_viewer" => Role::InternalUserViewer,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::ProxyAdmin => "proxy_admin",
            Role::ProxyAdminViewer => "proxy_admin_viewer",
            Role::InternalUser => "internal_user",
            Role::InternalUserViewer => "internal_user_viewer",
        }
    }

    /// Sees everything.
    pub fn is_admin(self) -> bool {
        matches!(self, Role::ProxyAdmin | Role::ProxyAdminViewer)
    }

    /// May change things (within what it may see).
    pub fn can_write(self) -> bool {
        matches!(self, Role::ProxyAdmin | Role::InternalUser)
    }

    /// The rights both roles have: a key minted by `other` for a user with `self` acts with
    /// no more than the minter could (the roles form a lattice of "sees all" x "may write").
    pub fn meet(self, other: Role) -> Role {
        match (
            self.is_admin() && other.is_admin(),
            self.can_write() && other.can_write(),
        ) {
            (true, true) => Role::ProxyAdmin,
            (true, false) => Role::ProxyAdminViewer,
            (false, true) => Role::InternalUser,
            (false, false) => Role::InternalUserViewer,
        }
    }
}

/// How much say a caller has over a key, lowest first. Limits, budgets, models, expiry, owner
/// and blocks on a key record the authority that set them (`limits_set_by`, `blocked_by`), and
/// only a caller with at least that authority may change them: a key's holder cannot lift what
/// a team admin or proxy admin put on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Authority {
    /// The key's own user.
    Owner,
    /// An admin of the key's team.
    TeamAdmin,
    /// A proxy admin (the master key included).
    ProxyAdmin,
}

impl Authority {
    pub fn as_str(self) -> &'static str {
        match self {
            Authority::Owner => "owner",
            Authority::TeamAdmin => "team_admin",
            Authority::ProxyAdmin => "proxy_admin",
        }
    }

    /// The authority stored in `field` of a key; a key written before authorities were
    /// recorded counts as set by a proxy admin (the safe reading).
    pub fn stored(data: &Map<String, Value>, field: &str) -> Authority {
        match data.get(field).and_then(Value::as_str) {
            Some("owner") => Authority::Owner,
            Some("team_admin") => Authority::TeamAdmin,
            _ => Authority::ProxyAdmin,
        }
    }
}

/// Who is calling.
#[derive(Debug, Clone)]
pub struct Principal {
    pub role: Role,
    /// The key used (`None` for the master key).
    pub key: Option<Arc<Governed>>,
    pub user: Option<Arc<Governed>>,
    pub team: Option<Arc<Governed>>,
    pub organization: Option<Arc<Governed>>,
}

impl Principal {
    pub fn master() -> Principal {
        Principal {
            role: Role::ProxyAdmin,
            key: None,
            user: None,
            team: None,
            organization: None,
        }
    }

    /// The tenant whose cached answers this caller shares under `scope`: its team
    /// (`team:<id>`), or its key (`key:<hash>`; also for a key in no team under the team scope,
    /// so teamless keys never share; `key:` is the master key's own); `None` for the global
    /// scope.
    pub fn cache_scope(&self, scope: llmux::config::CacheScope) -> Option<Arc<str>> {
        let key = || {
            let id = self.key.as_ref().map_or("", |k| &*k.labels.0);
            Arc::from(format!("key:{id}"))
        };
        match (scope, &self.team) {
            (llmux::config::CacheScope::Global, _) => None,
            (llmux::config::CacheScope::Team, Some(team)) => {
                Some(Arc::from(format!("team:{}", team.labels.0)))
            }
            (llmux::config::CacheScope::Team, None) | (llmux::config::CacheScope::Key, _) => {
                Some(key())
            }
        }
    }

    /// The key's or else the team's `turn_off_message_logging`, when either sets it; a team
    /// that turns it off is a floor its keys cannot lift.
    pub fn turn_off_message_logging(&self) -> Option<bool> {
        let of =
            |g: &Option<Arc<Governed>>| g.as_ref().and_then(|g| g.policy.turn_off_message_logging);
        match (of(&self.key), of(&self.team)) {
            (_, Some(true)) => Some(true),
            (key, team) => key.or(team),
        }
    }

    pub fn user_id(&self) -> Option<&str> {
        self.key
            .as_ref()
            .and_then(|k| k.user_id.as_deref())
            .or_else(|| self.user.as_ref().map(|u| u.id.as_str()))
    }

    /// The team a key made by a team admin for a member is confined to: with it, the member
    /// reaches that team's keys and logs, not the rest of their own.
    pub fn delegated_team(&self) -> Option<&str> {
        let key = self.key.as_ref()?;
        if key.policy.delegated {
            // A delegated key without a team reaches nothing.
            return Some(key.team_id.as_deref().unwrap_or(""));
        }
        None
    }

    /// Whether this caller administers `team` (a team admin may manage the team's keys).
    pub fn is_team_admin(&self, team: &Object) -> bool {
        let Some(me) = self.user_id() else {
            return false;
        };
        let listed = |field: &str| {
            team.data
                .get(field)
                .and_then(Value::as_array)
                .is_some_and(|members| {
                    members.iter().any(|m| {
                        m.get("user_id").and_then(Value::as_str) == Some(me)
                            && m.get("role").and_then(Value::as_str) == Some("admin")
                    })
                })
        };
        listed("members_with_roles")
            || team
                .data
                .get("admins")
                .and_then(Value::as_array)
                .is_some_and(|a| a.iter().any(|v| v.as_str() == Some(me)))
    }
}

/// The key a client presented, from whichever header carries it.
pub fn presented_key(headers: &http::HeaderMap) -> Option<&str> {
    if let Some(value) = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        let value = value.trim();
        let key = match value.split_once(' ') {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => rest.trim(),
            _ => value,
        };
        if !key.is_empty() {
            return Some(key);
        }
    }
    ["x-api-key", "api-key", "x-litellm-api-key"]
        .iter()
        .find_map(|name| {
            headers
                .get(*name)
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
                .filter(|k| !k.is_empty())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_random_url_safe_and_hashed() {
        let a = generate_key();
        let b = generate_key();
        assert_ne!(a, b);
        assert!(a.starts_with("sk-") && a.len() == 46, "{a}");
        assert!(a[3..]
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'));
        let h = hash_key(&a);
        assert_eq!(h.len(), 64);
        assert_eq!(hash_key(&h), h, "a digest is already an id");
        assert_eq!(
            hash_key("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(key_name("sk-abcdefgh"), "sk-...efgh");
    }

    #[test]
    fn meet_keeps_only_the_rights_both_roles_have() {
        use Role::*;
        let all = [
            ProxyAdmin,
            ProxyAdminViewer,
            InternalUser,
            InternalUserViewer,
        ];
        for a in all {
            assert_eq!(a.meet(a), a);
            assert_eq!(a.meet(ProxyAdmin), a);
            for b in all {
                let m = a.meet(b);
                assert_eq!(m, b.meet(a));
                assert_eq!(m.is_admin(), a.is_admin() && b.is_admin());
                assert_eq!(m.can_write(), a.can_write() && b.can_write());
            }
        }
        assert_eq!(ProxyAdminViewer.meet(InternalUser), InternalUserViewer);
        assert_eq!(ProxyAdmin.meet(InternalUser), InternalUser);
    }
}
