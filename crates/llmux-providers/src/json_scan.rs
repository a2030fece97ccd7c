//! Finding one member of a top-level JSON object without parsing the rest of the document.
//!
//! The usage of a response is a few dozen bytes of a body the gateway otherwise passes through
//! untouched; deserializing only `usage` with serde_json still validated every byte it skipped
//! (~8k instructions for a 450-byte chat completion). Written by hand because no crate we know
//! of seeks a key without tokenizing what it skips; the structure walk here is small: strings
//! (with escapes), nesting, and scalars up to the next delimiter.

/// The raw bytes of the value of member `key` of the object `json`, or `None` when `json` is
/// not an object or has no such member. Only the structure is checked: the caller parses the
/// value it gets. `key` is compared with the member name as written (no escape decoding).
pub fn top_level_member<'a>(json: &'a [u8], key: &[u8]) -> Option<&'a [u8]> {
    let mut i = skip_whitespace(json, 0);
    if json.get(i) != Some(&b'{') {
        return None;
    }
    i += 1;
    loop {
        i = skip_whitespace(json, i);
        if json.get(i) != Some(&b'"') {
            return None; // `}` (no more members) or not JSON
        }
        let name_end = string_end(json, i + 1)?;
        let name = json.get(i + 1..name_end)?;
        i = skip_whitespace(json, name_end + 1);
        if json.get(i) != Some(&b':') {
            return None;
        }
        let value_start = skip_whitespace(json, i + 1);
        let value_end = value_end(json, value_start)?;
        if name == key {
            return json.get(value_start..value_end);
        }
        i = skip_whitespace(json, value_end);
        if json.get(i) != Some(&b',') {
            return None;
        }
        i += 1;
    }
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
        top_level_member(json.as_bytes(), key.as_bytes()).map(|v| std::str::from_utf8(v).unwrap())
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
            r#"{"a" 1, "usage": 1}"#,
            r#"{"a": 1 "usage": 1}"#,
            r#"{"a": {"usage": 1}"#,
            r#"{"a":, "usage": 1}"#,
            "{\"a\":\"\\",
        ] {
            assert_eq!(member(doc, "usage"), None, "{doc}");
        }
    }
}
