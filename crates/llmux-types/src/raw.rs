//! A shallow view of a JSON object: top-level keys with their values kept as raw JSON slices.
//!
//! The gateway reads the few fields routing needs (`model`, `stream`, ...) and forwards everything
//! else byte for byte, so an unknown field a client sends reaches the upstream unchanged and the
//! body is never fully decoded and re-encoded. Rewriting `model` or adding a default writes the
//! other values back as the exact bytes they arrived as.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

/// Above this many keys, duplicate detection switches from a scan to a hash map.
const LINEAR_DEDUP_LIMIT: usize = 32;

/// Why a body is not a JSON object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawObjectError(pub String);

impl fmt::Display for RawObjectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RawObjectError {}

/// Top-level entries of a JSON object in their original order; a repeated key keeps its first
/// position and its last value (what `serde_json` does for maps).
#[derive(Debug, Clone, Default)]
pub struct RawObject<'a> {
    entries: Vec<(Cow<'a, str>, &'a RawValue)>,
}

impl<'a> RawObject<'a> {
    /// Parse `bytes` as a JSON object. Values are validated but not decoded.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, RawObjectError> {
        let mut de = serde_json::Deserializer::from_slice(bytes);
        let object = RawObject::deserialize(&mut de).map_err(|e| RawObjectError(e.to_string()))?;
        de.end().map_err(|e| RawObjectError(e.to_string()))?;
        Ok(object)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|(k, _)| k.as_ref())
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &'a RawValue)> {
        self.entries.iter().map(|(k, v)| (k.as_ref(), *v))
    }

    pub fn get(&self, key: &str) -> Option<&'a RawValue> {
        self.entries.iter().find(|(k, _)| k == key).map(|(_, v)| *v)
    }

    pub fn contains(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// The value of `key` if present and not `null`.
    pub fn get_non_null(&self, key: &str) -> Option<&'a RawValue> {
        self.get(key).filter(|v| v.get() != "null")
    }

    /// Decode one value; `Ok(None)` when absent or `null`.
    pub fn decode<T: Deserialize<'a>>(&self, key: &str) -> Result<Option<T>, RawObjectError> {
        match self.get_non_null(key) {
            None => Ok(None),
            Some(raw) => serde_json::from_str(raw.get())
                .map(Some)
                .map_err(|e| RawObjectError(format!("field `{key}`: {e}"))),
        }
    }

    /// Start an edit; nothing is copied until `render`.
    pub fn edit(&self) -> RawObjectEdit<'_, 'a> {
        RawObjectEdit {
            object: self,
            replace: Vec::new(),
            remove: Vec::new(),
            defaults: Vec::new(),
        }
    }

    /// The object written back unchanged (keys re-escaped, values byte for byte).
    pub fn to_bytes(&self) -> Vec<u8> {
        self.edit().render()
    }

    fn insert(
        &mut self,
        key: Cow<'a, str>,
        value: &'a RawValue,
        index: &mut Option<HashMap<String, usize>>,
    ) {
        if let Some(map) = index {
            if let Some(&at) = map.get(key.as_ref()) {
                self.entries[at].1 = value;
                return;
            }
            map.insert(key.to_string(), self.entries.len());
            self.entries.push((key, value));
            return;
        }
        if let Some(slot) = self.entries.iter_mut().find(|(k, _)| *k == key) {
            slot.1 = value;
            return;
        }
        self.entries.push((key, value));
        if self.entries.len() > LINEAR_DEDUP_LIMIT {
            let map = self
                .entries
                .iter()
                .enumerate()
                .map(|(i, (k, _))| (k.to_string(), i))
                .collect();
            *index = Some(map);
        }
    }
}

/// A pending set of changes to a `RawObject`.
pub struct RawObjectEdit<'o, 'a> {
    object: &'o RawObject<'a>,
    replace: Vec<(&'o str, Cow<'o, [u8]>)>,
    remove: Vec<&'o str>,
    defaults: Vec<(&'o str, Cow<'o, [u8]>)>,
}

impl<'o> RawObjectEdit<'o, '_> {
    /// Set `key` to `raw_json` (already-encoded JSON), replacing or appending.
    pub fn set(mut self, key: &'o str, raw_json: impl Into<Cow<'o, [u8]>>) -> Self {
        self.replace.push((key, raw_json.into()));
        self
    }

    /// Set `key` to a JSON string.
    pub fn set_str(self, key: &'o str, value: &str) -> Self {
        let encoded = serde_json::to_vec(value).unwrap_or_else(|_| b"\"\"".to_vec());
        self.set(key, encoded)
    }

    pub fn remove(mut self, key: &'o str) -> Self {
        self.remove.push(key);
        self
    }

    /// Add `key` only if the object does not have it (request defaults).
    pub fn default(mut self, key: &'o str, raw_json: impl Into<Cow<'o, [u8]>>) -> Self {
        self.defaults.push((key, raw_json.into()));
        self
    }

    pub fn render(self) -> Vec<u8> {
        let capacity = self
            .object
            .entries
            .iter()
            .map(|(k, v)| k.len() + v.get().len() + 4)
            .sum::<usize>()
            + 2;
        let mut out = Vec::with_capacity(capacity + 64);
        out.push(b'{');
        let mut first = true;
        let mut written: Vec<&str> = Vec::new();
        for (key, value) in &self.object.entries {
            let key = key.as_ref();
            if self.remove.contains(&key) {
                continue;
            }
            let replacement = self.replace.iter().rev().find(|(k, _)| *k == key);
            let bytes: &[u8] = match replacement {
                Some((_, raw)) => raw,
                None => value.get().as_bytes(),
            };
            push_entry(&mut out, &mut first, key, bytes);
            if replacement.is_some() {
                written.push(key);
            }
        }
        for (key, raw) in &self.replace {
            if !written.contains(key) && !self.object.contains(key) && !self.remove.contains(key) {
                push_entry(&mut out, &mut first, key, raw);
                written.push(key);
            }
        }
        for (key, raw) in &self.defaults {
            let present = self.object.contains(key) || written.contains(key);
            if !present && !self.remove.contains(key) {
                push_entry(&mut out, &mut first, key, raw);
                written.push(key);
            }
        }
        out.push(b'}');
        out
    }
}

fn push_entry(out: &mut Vec<u8>, first: &mut bool, key: &str, value: &[u8]) {
    if !*first {
        out.push(b',');
    }
    *first = false;
    write_json_string(out, key);
    out.push(b':');
    out.extend_from_slice(value);
}

/// Append `s` as a JSON string literal.
pub fn write_json_string(out: &mut Vec<u8>, s: &str) {
    let needs_escape = s.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\');
    if needs_escape {
        // serde_json's escaping is the reference; a `&str` always serializes.
        if serde_json::to_writer(&mut *out, s).is_ok() {
            return;
        }
    }
    out.push(b'"');
    out.extend_from_slice(s.as_bytes());
    out.push(b'"');
}

impl<'de> Deserialize<'de> for RawObject<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ObjectVisitor;
        impl<'de> Visitor<'de> for ObjectVisitor {
            type Value = RawObject<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut object = RawObject {
                    entries: Vec::with_capacity(map.size_hint().unwrap_or(8)),
                };
                let mut index = None;
                while let Some(key) = map.next_key::<KeyStr<'de>>()? {
                    let value: &'de RawValue = map.next_value()?;
                    object.insert(key.0, value, &mut index);
                }
                Ok(object)
            }
        }
        deserializer.deserialize_map(ObjectVisitor)
    }
}

/// A key borrowed from the input when it has no escapes.
struct KeyStr<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for KeyStr<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = KeyStr<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string key")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(KeyStr(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(KeyStr(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(KeyStr(Cow::Owned(v)))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn rewrites_model_and_keeps_everything_else_verbatim() {
        let body = br#"{"model":"alias","messages":[{"role":"user","content":"hi \u00e9"}],"x_unknown":{"a":[1,2.50,null]},"temperature":0.70}"#;
        let obj = RawObject::parse(body).unwrap();
        let out = obj.edit().set_str("model", "gpt-4o").render();
        let expected = br#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi \u00e9"}],"x_unknown":{"a":[1,2.50,null]},"temperature":0.70}"#;
        assert_eq!(
            String::from_utf8(out).unwrap(),
            String::from_utf8(expected.to_vec()).unwrap()
        );
    }

    #[test]
    fn defaults_only_fill_missing_keys() {
        let obj = RawObject::parse(br#"{"model":"m","temperature":0.1}"#).unwrap();
        let out = obj
            .edit()
            .default("temperature", &b"0.9"[..])
            .default("max_tokens", &b"10"[..])
            .render();
        assert_eq!(out, br#"{"model":"m","temperature":0.1,"max_tokens":10}"#);
    }

    #[test]
    fn remove_and_escape_keys() {
        let obj = RawObject::parse(br#"{"a\"b":1,"drop":2}"#).unwrap();
        assert_eq!(obj.get("a\"b").unwrap().get(), "1");
        let out = obj.edit().remove("drop").render();
        assert_eq!(out, br#"{"a\"b":1}"#);
    }

    #[test]
    fn duplicate_keys_keep_last_value() {
        let obj = RawObject::parse(br#"{"model":"a","x":1,"model":"b"}"#).unwrap();
        assert_eq!(obj.len(), 2);
        assert_eq!(obj.decode::<String>("model").unwrap().unwrap(), "b");
        let mut many = String::from("{");
        for i in 0..100 {
            many.push_str(&format!("\"k{}\":{},", i % 50, i));
        }
        many.push_str("\"end\":true}");
        let obj = RawObject::parse(many.as_bytes()).unwrap();
        assert_eq!(obj.len(), 51);
        assert_eq!(obj.get("k3").unwrap().get(), "53");
    }

    #[test]
    fn rejects_non_objects_and_trailing_garbage() {
        assert!(RawObject::parse(b"[1,2]").is_err());
        assert!(RawObject::parse(b"{\"a\":1} x").is_err());
        assert!(RawObject::parse(b"{\"a\":").is_err());
        assert!(RawObject::parse(b"").is_err());
        let deep = "[".repeat(100_000);
        assert!(RawObject::parse(format!("{{\"a\":{deep}").as_bytes()).is_err());
    }

    proptest! {
        #[test]
        fn round_trip_preserves_json_value(map in proptest::collection::btree_map("[a-z\"\\\\é]{0,6}", any::<i64>(), 0..20)) {
            let json = serde_json::to_vec(&map).unwrap();
            let obj = RawObject::parse(&json).unwrap();
            let back: serde_json::Value = serde_json::from_slice(&obj.to_bytes()).unwrap();
            let orig: serde_json::Value = serde_json::from_slice(&json).unwrap();
            prop_assert_eq!(back, orig);
        }
    }
}
