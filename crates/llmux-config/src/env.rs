//! Environment references in configuration values: `os.environ/NAME`, `${NAME}`, `${NAME:-default}`.

use std::collections::HashMap;

use serde_json::Value;

use crate::Diagnostic;

/// Where variables come from; tests pass a map instead of the process environment.
pub trait EnvSource {
    fn var(&self, name: &str) -> Option<String>;
}

/// The real process environment.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessEnv;

impl EnvSource for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl EnvSource for HashMap<String, String> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).cloned()
    }
}

/// An environment that shows only the variables an allow-list names (a trailing `*` allows a
/// prefix), remembering the names it hid. Deployments added through the management API see
/// the environment through one (`llmux_settings.api_model_env_allowlist`), both where their
/// values name variables and where a provider falls back to one (`OPENAI_API_KEY`,
/// `GOOGLE_APPLICATION_CREDENTIALS`, ...): an admin key cannot point a model at its own URL
/// and have the gateway send it the operator's keys.
pub struct AllowListedEnv<'a> {
    pub inner: &'a dyn EnvSource,
    pub allowed: &'a [String],
    refused: std::sync::Mutex<Vec<String>>,
}

impl<'a> AllowListedEnv<'a> {
    pub fn new(inner: &'a dyn EnvSource, allowed: &'a [String]) -> Self {
        AllowListedEnv {
            inner,
            allowed,
            refused: std::sync::Mutex::new(Vec::new()),
        }
    }

    pub fn allows(&self, name: &str) -> bool {
        self.allowed.iter().any(|a| match a.strip_suffix('*') {
            Some(prefix) => name.starts_with(prefix),
            None => a == name,
        })
    }

    /// The names asked for and hidden, in first-asked order.
    pub fn refused(&self) -> Vec<String> {
        self.refused.lock().map(|r| r.clone()).unwrap_or_default()
    }
}

impl EnvSource for AllowListedEnv<'_> {
    fn var(&self, name: &str) -> Option<String> {
        if self.allows(name) {
            return self.inner.var(name);
        }
        if let Ok(mut refused) = self.refused.lock() {
            if !refused.iter().any(|r| r == name) {
                refused.push(name.to_owned());
            }
        }
        None
    }
}

/// The process environment with the file's `environment_variables:` laid over it (LiteLLM sets
/// those into `os.environ`, so they win).
pub(crate) struct Overlay<'a> {
    pub file_vars: &'a [(String, String)],
    pub base: &'a dyn EnvSource,
}

impl EnvSource for Overlay<'_> {
    fn var(&self, name: &str) -> Option<String> {
        self.file_vars
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .or_else(|| self.base.var(name))
    }
}

/// Replace every environment reference inside `value`, in place. Unset variables become `null`
/// (a whole-value reference) or empty text (inside a longer string), each with a warning.
pub(crate) fn resolve(
    value: &mut Value,
    env: &dyn EnvSource,
    path: &str,
    out: &mut Vec<Diagnostic>,
) {
    match value {
        Value::String(s) => {
            if let Some(resolved) = resolve_str(s, env, path, out) {
                *value = resolved;
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                resolve(item, env, &format!("{path}[{i}]"), out);
            }
        }
        Value::Object(map) => {
            for (k, v) in map.iter_mut() {
                let child = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                resolve(v, env, &child, out);
            }
        }
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

/// `None` when the string has no reference.
fn resolve_str(
    s: &str,
    env: &dyn EnvSource,
    path: &str,
    out: &mut Vec<Diagnostic>,
) -> Option<Value> {
    let trimmed = s.trim();
    if let Some(name) = trimmed.strip_prefix("os.environ/") {
        return Some(match env.var(name) {
            Some(v) => Value::String(v),
            None => {
                out.push(Diagnostic::warning(
                    path,
                    format!("environment variable {name} is not set"),
                ));
                Value::Null
            }
        });
    }
    if !s.contains("${") {
        return None;
    }
    // A value that is exactly one `${NAME}` becomes null when unset, like `os.environ/NAME`.
    let whole = trimmed.starts_with("${")
        && trimmed.ends_with('}')
        && trimmed[2..].find('}') == Some(trimmed.len() - 3);
    let mut result = String::with_capacity(s.len());
    let mut rest = s;
    let mut any_unset = false;
    while let Some(start) = rest.find("${") {
        result.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            result.push_str(&rest[start..]);
            rest = "";
            break;
        };
        let inner = &after[..end];
        let (name, default) = match inner.split_once(":-") {
            Some((n, d)) => (n, Some(d)),
            None => (inner, None),
        };
        match (env.var(name).filter(|v| !v.is_empty()), default) {
            (Some(v), _) => result.push_str(&v),
            (None, Some(d)) => result.push_str(d),
            (None, None) => {
                any_unset = true;
                out.push(Diagnostic::warning(
                    path,
                    format!("environment variable {name} is not set"),
                ));
            }
        }
        rest = &after[end + 1..];
    }
    result.push_str(rest);
    if whole && any_unset {
        return Some(Value::Null);
    }
    Some(Value::String(result))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn env() -> HashMap<String, String> {
        HashMap::from([
            ("KEY".to_owned(), "sk-1".to_owned()),
            ("HOST".to_owned(), "h".to_owned()),
        ])
    }

    #[test]
    fn resolves_all_reference_forms() {
        let mut v = json!({
            "a": "os.environ/KEY", "b": "${KEY}", "c": "http://${HOST}:${PORT:-4000}/v1",
            "d": "os.environ/MISSING", "e": "${MISSING}", "f": ["x-${MISSING}-y"], "g": "plain $ {x}"
        });
        let mut out = Vec::new();
        resolve(&mut v, &env(), "", &mut out);
        assert_eq!(v["a"], "sk-1");
        assert_eq!(v["b"], "sk-1");
        assert_eq!(v["c"], "http://h:4000/v1");
        assert_eq!(v["d"], Value::Null);
        assert_eq!(v["e"], Value::Null);
        assert_eq!(v["f"][0], "x--y");
        assert_eq!(v["g"], "plain $ {x}");
        let paths: Vec<_> = out.iter().map(|d| d.path.as_str()).collect();
        assert_eq!(paths, vec!["d", "e", "f[0]"]);
    }

    #[test]
    fn overlay_prefers_file_variables() {
        let base = env();
        let file = vec![("KEY".to_owned(), "from-file".to_owned())];
        let overlay = Overlay {
            file_vars: &file,
            base: &base,
        };
        assert_eq!(overlay.var("KEY").unwrap(), "from-file");
        assert_eq!(overlay.var("HOST").unwrap(), "h");
    }
}
