//! Finding one member of a top-level JSON object without parsing the rest of the document.
//!
//! The usage of a response is a few dozen bytes of a body the gateway otherwise passes through
//! untouched; deserializing only `usage` with serde_json still validated every byte it skipped
//! (~8k instructions for a 450-byte chat completion). Written by hand because no crate we know
//! of seeks a key without tokenizing what it skips; the structure walk here is small: strings
//! (with escapes), nesting, and scalars up to the next delimiter. The member is looked for from
//! the end first, so the walk covers what follows it rather than the whole completion.

/// The raw bytes of the value of member `key` of the object `json`, or `None` when `json` is
/// not an object or has no such member. Only the structure is checked: the caller parses the
/// value it gets. `key` is compared with the member name as written (no escape decoding).
///
/// `quoted_key` finds `"key"` (the caller builds it once). Members the gateway reads (`usage`)
/// come last or nearly so in provider responses, so the last occurrence is tried first and
/// checked by walking only what follows it (`member_before_end`); the walk from the start
/// is the fallback. Both agree on valid JSON without duplicate members (a property test holds
/// them to it); a duplicated member yields its last occurrence when that one is last.
pub fn top_level_member<'a>(
    json: &'a [u8],
    key: &[u8],
    quoted_key: &memchr::memmem::FinderRev<'_>,
) -> Option<&'a [u8]> {
    if let Some(at) = quoted_key.rfind(json) {
        if let Some(value) = member_before_end(json, at) {
            return Some(value);
        }
    }
    first_top_level_member(json, key)
}

/// The value of the member whose name's opening quote is at `at`, when that member belongs to
/// the outermost object: everything after its value, walked as members, ends with the `}` that
/// is the document's last byte but whitespace. A member nested deeper would leave at least one
/// more closing bracket after that `}`, so it is refused, as is a name not preceded by `{` or
/// `,` (an escaped quote inside a string).
fn member_before_end(json: &[u8], at: usize) -> Option<&[u8]> {
    let before = json.get(..at)?.trim_ascii_end();
    if !matches!(before.last(), Some(b'{' | b',')) || !json.trim_ascii_start().starts_with(b"{") {
        return None;
    }
    let (_, value_start, member_end) = member_at(json, at)?;
    let mut i = skip_whitespace(json, member_end);
    loop {
        match json.get(i)? {
            b'}' => {
                return (skip_whitespace(json, i + 1) == json.len())
                    .then(|| json.get(value_start..member_end))
                    .flatten();
            }
            b',' => {
                let (_, _, next_end) = member_at(json, skip_whitespace(json, i + 1))?;
                i = skip_whitespace(json, next_end);
            }
            _ => return None,
        }
    }
}

/// The member found by walking the object from its start.
fn first_top_level_member<'a>(json: &'a [u8], key: &[u8]) -> Option<&'a [u8]> {
    let mut i = skip_whitespace(json, 0);
    if json.get(i) != Some(&b'{') {
        return None;
    }
    loop {
        // `}` (no more members) or not JSON: no name where one belongs.
        let (name, value_start, value_end) = member_at(json, skip_whitespace(json, i + 1))?;
        if name == key {
            return json.get(value_start..value_end);
        }
        i = skip_whitespace(json, value_end);
        if json.get(i) != Some(&b',') {
            return None;
        }
    }
}

/// The member whose name's opening quote is at `i`: its name as written, and where its value
/// starts and ends.
fn member_at(json: &[u8], i: usize) -> Option<(&[u8], usize, usize)> {
    if json.get(i) != Some(&b'"') {
        return None;
    }
    let name_end = string_end(json, i + 1)?;
    let name = json.get(i + 1..name_end)?;
    let colon = skip_whitespace(json, name_end + 1);
    if json.get(colon) != Some(&b':') {
        return None;
    }
    let value_start = skip_whitespace(json, colon + 1);
    Some((name, value_start, value_end(json, value_start)?))
}

fn skip_whitespace(json: &[u8], mut i: usize) -> usize {
    while let Some(b' ' | b'\t' | b'\n' | b'\r') = json.get(i) {
        i += 1;
    }
    i
}

/// The index of the quote that closes the string whose contents start at `i`.
fn string_end(json: &[u8], mut i: usize) -> Option<usize> {
    loop {
        i += memchr::memchr2(b'"', b'\\', json.get(i..)?)?;
        if json[i] == b'"' {
            return Some(i);
        }
        i += 2; // a backslash and the character it escapes
    }
}

/// One past the last byte of the value that starts at `i`.
fn value_end(json: &[u8], mut i: usize) -> Option<usize> {
    match json.get(i)? {
        b'"' => string_end(json, i + 1).map(|end| end + 1),
        b'{' | b'[' => {
            let mut depth = 0usize;
            loop {
                match json.get(i)? {
                    b'"' => i = string_end(json, i + 1)?,
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(i + 1);
                        }
                    }
                    _ => {}
                }
                i += 1;
            }
        }
        b',' | b'}' | b']' | b':' => None,
        _ => {
            // A number, `true`, `false` or `null`: up to the next delimiter.
            while let Some(b) = json.get(i) {
                if matches!(b, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r') {
                    break;
                }
                i += 1;
            }
            Some(i)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member<'a>(json: &'a str, key: &str) -> Option<&'a str> {
        let quoted = format!("\"{key}\"");
        let finder = memchr::memmem::FinderRev::new(quoted.as_bytes());
        let found = top_level_member(json.as_bytes(), key.as_bytes(), &finder);
        found.map(|v| std::str::from_utf8(v).unwrap())
    }

    fn member_from_start<'a>(json: &'a str, key: &str) -> Option<&'a str> {
        first_top_level_member(json.as_bytes(), key.as_bytes())
            .map(|v| std::str::from_utf8(v).unwrap())
    }

    #[test]
    fn the_last_occurrence_counts_only_at_the_top_level() {
        for (doc, want) in [
            (r#"{"a":1,"usage":{"n":2}}"#, Some(r#"{"n":2}"#)),
            (
                r#"{"usage":{"n":2},"b":[1,"}"],"c":{"d":null}} "#,
                Some(r#"{"n":2}"#),
            ),
            // The last `"usage"` is nested, a string, an escaped quote, or in an array.
            (r#"{"usage":1,"o":{"usage":2}}"#, Some("1")),
            (r#"{"usage":1,"o":[{"usage":2}]}"#, Some("1")),
            (r#"{"usage":1,"s":"usage"}"#, Some("1")),
            (r#"{"usage":1,"say \"usage":2}"#, Some("1")),
            (r#"{"say \"usage": {"n":2}}"#, None),
            (r#"{"usage":1,"a":["usage"]}"#, Some("1")),
            (r#"{"o":{"usage":2}}"#, None),
            (r#"[{"usage":2}]"#, None),
            // Trailing bytes: the walk from the start does not look past the member either.
            (r#"{"a":1,"usage":{"n":2}}}"#, Some(r#"{"n":2}"#)),
            (r#"{"a":1,"usage":{"n":2}} x"#, Some(r#"{"n":2}"#)),
        ] {
            assert_eq!(member(doc, "usage"), want, "{doc}");
        }
    }

    #[test]
    fn finds_members_of_every_kind_and_only_at_the_top_level() {
        let doc = r#" { "a" : 1 , "s":"x\"}{\\" ,"o":{"usage":{"n":[1,{"}":"]"}]}},
            "arr":[ "usage", {"usage":2} ], "t":true,"n":null, "usage" : {"prompt_tokens":3} } "#;
        assert_eq!(member(doc, "a"), Some("1"));
        assert_eq!(member(doc, "s"), Some(r#""x\"}{\\""#));
        assert_eq!(member(doc, "o"), Some(r#"{"usage":{"n":[1,{"}":"]"}]}}"#));
        assert_eq!(member(doc, "arr"), Some(r#"[ "usage", {"usage":2} ]"#));
        assert_eq!(member(doc, "t"), Some("true"));
        assert_eq!(member(doc, "n"), Some("null"));
        assert_eq!(member(doc, "usage"), Some(r#"{"prompt_tokens":3}"#));
        assert_eq!(member(doc, "missing"), None);
    }

    #[test]
    fn what_is_not_an_object_has_no_members() {
        for doc in [
            "",
            "[]",
            r#"["usage", 1]"#,
            r#"not json "usage""#,
            "{}",
            r#"{"usage""#,
            r#"{"usage":"#,
            r#"{"a":"unterminated, "usage": 1"#,
            r#"{"a": 1 "usage": 1}"#,
            "{\"a\":\"\\",
        ] {
            assert_eq!(member(doc, "usage"), None, "{doc}");
        }
    }

    /// Looking from the end checks what follows the member, not what precedes it: in these
    /// documents, broken before the member, the walk from the start finds nothing and the look
    /// from the end finds the member. Bodies come from the upstream, which could as well send a
    /// valid one with any usage, so nothing is lost by not walking the prefix.
    #[test]
    fn a_document_broken_before_the_last_member_still_yields_it() {
        for doc in [
            r#"{"a" 1, "usage": 1}"#,
            r#"{"a":, "usage": 1}"#,
            r#"{"a": {"usage": 1}"#,
        ] {
            assert_eq!(member_from_start(doc, "usage"), None, "{doc}");
            assert_eq!(member(doc, "usage"), Some("1"), "{doc}");
        }
    }

    fn top_level_name() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        prop_oneof![
            Just("usage".to_string()),
            Just("say \"usage".to_string()),
            "[a-z\"]{0,3}",
        ]
    }

    fn json_value() -> impl proptest::strategy::Strategy<Value = serde_json::Value> {
        use proptest::prelude::*;
        use serde_json::Value;
        let text = prop_oneof![
            Just("usage".to_string()),
            Just("say \"usage\": {".to_string()),
            // Serialized as `"say \"usage"`: the needle `"usage"` inside a name.
            Just("say \"usage".to_string()),
            "[a-z\"\\\\{}\\[\\],: ]{0,8}",
        ];
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i32>().prop_map(Value::from),
            text.clone().prop_map(Value::String),
        ];
        let key = prop_oneof![Just("usage".to_string()), Just("u".to_string()), text];
        leaf.prop_recursive(4, 32, 5, move |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                proptest::collection::vec((key.clone(), inner), 0..5)
                    .prop_map(|members| Value::Object(members.into_iter().collect())),
            ]
        })
    }

    proptest::proptest! {
        /// Looking from the end finds what walking from the start finds, in compact and in
        /// pretty-printed documents, and that is the member serde_json reads.
        #[test]
        fn looking_from_the_end_agrees_with_the_walk_from_the_start(
            members in proptest::collection::vec(
                (top_level_name(), json_value()),
                0..5,
            ),
        ) {
            let object = serde_json::Value::Object(members.into_iter().collect());
            for doc in [serde_json::to_string(&object).unwrap(), serde_json::to_string_pretty(&object).unwrap()] {
                let found = member(&doc, "usage");
                proptest::prop_assert_eq!(found, member_from_start(&doc, "usage"), "{}", doc);
                let parsed = found.map(|v| serde_json::from_str::<serde_json::Value>(v).unwrap());
                proptest::prop_assert_eq!(parsed.as_ref(), object.get("usage"), "{}", doc);
            }
        }
    }
}
