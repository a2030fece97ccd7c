//! Typed policy views: what admission enforces from a key, user, team, organization, customer or
//! budget, read from its LiteLLM-shaped document once, when the object is cached, instead of
//! looking fields up in the JSON on every request. `Governed` is the cached object and its view.

use std::ops::Deref;
use std::sync::Arc;

use foldhash::HashMap;
use llmux_store::{Kind, Object};
use serde_json::{Map, Value};

use crate::keys::Role;
use crate::parse_time;

/// An object as governance caches it: the stored object and the policy read from it.
#[derive(Debug, Clone)]
pub struct Governed {
    pub object: Object,
    pub policy: Policy,
    /// Its id and its human name (a key's `key_alias`, a team's `team_alias`, a user's
    /// `user_email`, ...), shared rather than copied into every request's metric labels.
    pub labels: (Arc<str>, Option<Arc<str>>),
}

impl Governed {
    pub fn new(object: Object) -> Governed {
        let policy = Policy::of(&object.data);
        let alias_field = match object.kind {
            Kind::Key => "key_alias",
            Kind::Team => "team_alias",
            Kind::User => "user_email",
            Kind::Organization => "organization_alias",
            Kind::Customer | Kind::Budget | Kind::Model => "alias",
        };
        let alias = object
            .data
            .get(alias_field)
            .and_then(Value::as_str)
            .map(Arc::from);
        let labels = (Arc::from(object.id.as_str()), alias);
        Governed {
            object,
            policy,
            labels,
        }
    }
}

impl Deref for Governed {
    type Target = Object;

    fn deref(&self) -> &Object {
        &self.object
    }
}

/// Requests per minute, tokens per minute and requests in parallel, each optional.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RateLimits {
    pub rpm: Option<u64>,
    pub tpm: Option<u64>,
    pub max_parallel: Option<u64>,
}

impl RateLimits {
    fn of(data: &Map<String, Value>) -> RateLimits {
        RateLimits {
            rpm: data.get("rpm_limit").and_then(Value::as_u64),
            tpm: data.get("tpm_limit").and_then(Value::as_u64),
            max_parallel: data.get("max_parallel_requests").and_then(Value::as_u64),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.rpm.is_none() && self.tpm.is_none() && self.max_parallel.is_none()
    }
}

/// What governance enforces from one object's document. Fields an object kind does not have are
/// simply empty (a team has no `max_role`).
#[derive(Debug, Clone, Default)]
pub struct Policy {
    pub blocked: bool,
    /// `expires` as unix ms, and as written (for the error message).
    pub expires: Option<(i64, String)>,
    pub max_budget: Option<f64>,
    pub soft_budget: Option<f64>,
    /// A shared budget object this one counts against when it has no `max_budget` of its own.
    pub budget_id: Option<String>,
    pub limits: RateLimits,
    /// Per-model limits of a key (`model_rpm_limit`, `model_tpm_limit`).
    pub model_rpm: HashMap<String, u64>,
    pub model_tpm: HashMap<String, u64>,
    /// The models it may use, when `restricts_models`.
    pub models: Vec<String>,
    /// `models` was a non-empty list: only what it names is allowed (a list of nothing but
    /// non-strings allows nothing, rather than everything).
    pub restricts_models: bool,
    pub tags: Vec<String>,
    /// A key's model aliases (requested name -> served name).
    pub aliases: HashMap<String, String>,
    /// A key's `allowed_routes`, when `restricts_routes` (as `restricts_models`).
    pub allowed_routes: Vec<String>,
    pub restricts_routes: bool,
    /// A user's `user_role`: `None` when unset, `Some(None)` when it names no role llmux knows.
    pub user_role: Option<Option<Role>>,
    /// A key's `max_role` cap, as written (an unknown cap caps to the least role).
    pub max_role: Option<Option<Role>>,
    /// A key a team admin minted for a member: confined to its team.
    pub delegated: bool,
    /// A key's stable id across regenerations (rate windows are named by it).
    pub token_uid: Option<String>,
    /// A key minted with a rate-limited key shares that key's windows: its uid and limits.
    pub parent_limits: Option<(String, RateLimits)>,
    /// `metadata.turn_off_message_logging` of a key or team: overrides the global setting for
    /// its requests (a key's wins over its team's).
    pub turn_off_message_logging: Option<bool>,
}

impl Policy {
    pub fn of(data: &Map<String, Value>) -> Policy {
        let text = |field: &str| data.get(field).and_then(Value::as_str).map(str::to_owned);
        let role = |field: &str| match data.get(field) {
            None | Some(Value::Null) => None,
            Some(r) => Some(r.as_str().and_then(Role::parse)),
        };
        let per_model = |field: &str| -> HashMap<String, u64> {
            data.get(field)
                .and_then(Value::as_object)
                .map(|m| {
                    m.iter()
                        .filter_map(|(model, v)| Some((model.clone(), v.as_u64()?)))
                        .collect()
                })
                .unwrap_or_default()
        };
        let non_empty = |field: &str| {
            data.get(field)
                .and_then(Value::as_array)
                .is_some_and(|a| !a.is_empty())
        };
        Policy {
            blocked: data.get("blocked").and_then(Value::as_bool) == Some(true),
            expires: text("expires").map(|t| {
                // A date that does not parse never expires the key, as before this view.
                (parse_time(&t).unwrap_or(i64::MAX), t)
            }),
            max_budget: data.get("max_budget").and_then(Value::as_f64),
            soft_budget: data.get("soft_budget").and_then(Value::as_f64),
            budget_id: text("budget_id"),
            limits: RateLimits::of(data),
            model_rpm: per_model("model_rpm_limit"),
            model_tpm: per_model("model_tpm_limit"),
            models: strings(data, "models"),
            restricts_models: non_empty("models"),
            tags: strings(data, "tags"),
            aliases: data
                .get("aliases")
                .and_then(Value::as_object)
                .map(|m| {
                    m.iter()
                        .filter_map(|(from, to)| Some((from.clone(), to.as_str()?.to_owned())))
                        .collect()
                })
                .unwrap_or_default(),
            allowed_routes: strings(data, "allowed_routes"),
            restricts_routes: non_empty("allowed_routes"),
            user_role: role("user_role"),
            max_role: role("max_role"),
            delegated: data.get("delegated").and_then(Value::as_bool) == Some(true),
            token_uid: text("token_uid"),
            parent_limits: data
                .get("parent_limits")
                .and_then(Value::as_object)
                .and_then(|p| {
                    let uid = p.get("uid").and_then(Value::as_str)?;
                    Some((uid.to_owned(), RateLimits::of(p)))
                }),
            turn_off_message_logging: data
                .get("metadata")
                .and_then(|m| m.get("turn_off_message_logging"))
                .and_then(Value::as_bool),
        }
    }
}

/// A document field as a list of strings (`models`, `tags`, ...).
pub fn strings(data: &Map<String, Value>, field: &str) -> Vec<String> {
    data.get(field)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn policy(doc: Value) -> Policy {
        match doc {
            Value::Object(m) => Policy::of(&m),
            _ => unreachable!("a test document is an object"),
        }
    }

    #[test]
    fn a_document_is_read_once_into_its_policy() {
        let p = policy(json!({
            "blocked": true,
            "expires": "2030-01-01T00:00:00Z",
            "max_budget": 2.5,
            "soft_budget": 1.0,
            "rpm_limit": 10,
            "tpm_limit": 1000,
            "max_parallel_requests": 2,
            "model_rpm_limit": {"gpt-4o": 3, "bad": "x"},
            "models": ["gpt-4o", 7, "claude-*"],
            "tags": ["prod"],
            "aliases": {"fast": "gpt-4o-mini", "broken": 1},
            "allowed_routes": ["llm_api_routes"],
            "max_role": "internal_user_viewer",
            "delegated": true,
            "token_uid": "uid-1",
            "parent_limits": {"uid": "uid-0", "rpm_limit": 5},
        }));
        assert!(p.blocked);
        assert_eq!(p.expires.as_ref().map(|e| e.0), Some(1_893_456_000_000));
        assert_eq!((p.max_budget, p.soft_budget), (Some(2.5), Some(1.0)));
        assert_eq!(
            p.limits,
            RateLimits {
                rpm: Some(10),
                tpm: Some(1000),
                max_parallel: Some(2)
            }
        );
        assert_eq!(p.model_rpm.get("gpt-4o"), Some(&3));
        assert!(!p.model_rpm.contains_key("bad"));
        assert_eq!(p.models, ["gpt-4o", "claude-*"]);
        assert_eq!(
            p.aliases.get("fast").map(String::as_str),
            Some("gpt-4o-mini")
        );
        assert!(!p.aliases.contains_key("broken"));
        assert_eq!(p.max_role, Some(Some(Role::InternalUserViewer)));
        assert!(p.delegated);
        let (uid, parent) = p.parent_limits.expect("parent limits");
        assert_eq!((uid.as_str(), parent.rpm), ("uid-0", Some(5)));
    }

    #[test]
    fn unknown_roles_and_unparsable_dates_are_kept_distinct_from_absent_ones() {
        let p = policy(json!({"user_role": "superuser", "expires": "soon"}));
        assert_eq!(p.user_role, Some(None));
        assert_eq!(p.expires.map(|e| e.0), Some(i64::MAX));
        let p = policy(json!({"user_role": null, "models": []}));
        assert_eq!(p.user_role, None);
        assert!(!p.blocked && p.limits.is_empty() && !p.restricts_models);
    }

    /// A model or route list holding only non-strings restricts to nothing, as the document
    /// read on every request did; only an empty (or absent) list restricts nothing.
    #[test]
    fn a_list_of_no_names_allows_nothing() {
        let p = policy(json!({"models": [1, null], "allowed_routes": [{}]}));
        assert!(p.restricts_models && p.models.is_empty());
        assert!(p.restricts_routes && p.allowed_routes.is_empty());
    }
}
