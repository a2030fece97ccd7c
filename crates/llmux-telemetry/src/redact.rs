//! Masking of personal data and secrets in logged prompts and answers (`mask_pii_in_logs`):
//! email addresses, card numbers (those that pass the Luhn check), phone numbers, and API keys,
//! tokens and other secrets of the well-known shapes. Applied to every string of a logged
//! value, off the request path.

use std::borrow::Cow;
use std::sync::LazyLock;

use regex::{Captures, Regex};
use serde_json::Value;

// The patterns are ASCII-only (`[0-9]`, `(?-u:\b)`): Unicode classes would send every
// prompt with non-ASCII text to the regex crate's slower engine.
static EMAIL: LazyLock<Option<Regex>> = LazyLock::new(|| {
    Regex::new(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}").ok()
});

/// Runs of 13 or more digits, spaces or dashes between them allowed; masked where they start
/// with a number passing the Luhn check (a card number followed by its CVV or expiry).
static CARD: LazyLock<Option<Regex>> =
    LazyLock::new(|| Regex::new(r"(?-u:\b)[0-9](?:[ -]?[0-9]){12,}(?-u:\b)").ok());

/// Phone numbers: an optional `+country` prefix, then 9 to 12 digits in groups; or E.164
/// written without separators.
static PHONE: LazyLock<Option<Regex>> = LazyLock::new(|| {
    Regex::new(concat!(
        r"(?:\+[0-9]{1,3}[ .-]?)?(?:\([0-9]{2,4}\)[ .-]?|(?-u:\b)[0-9]{2,4}[ .-])",
        r"[0-9]{3,4}[ .-]?[0-9]{3,4}(?-u:\b)",
        r"|\+[1-9][0-9]{9,14}(?-u:\b)",
    ))
    .ok()
});

/// Secrets by shape: OpenAI / Anthropic style keys, AWS access key ids, GitHub, Slack and
/// Google API tokens, bearer tokens, JWTs, and `password=` / `api_key:` style assignments.
static SECRET: LazyLock<Option<Regex>> = LazyLock::new(|| {
    Regex::new(concat!(
        r"(?-u:\b)(?:sk|pk|rk)-[A-Za-z0-9_-]{16,}",
        r"|(?-u:\b)AKIA[0-9A-Z]{16}(?-u:\b)",
        r"|(?-u:\b)gh[pousr]_[A-Za-z0-9]{30,}",
        r"|(?-u:\b)xox[abposr]-[A-Za-z0-9-]{10,}",
        r"|(?-u:\b)AIza[0-9A-Za-z_-]{35}",
        r"|(?i:bearer)\s+[A-Za-z0-9._~+/=-]{16,}",
        r"|(?-u:\b)eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}",
        r#"|(?i:password|passwd|secret|api[_-]?key|access[_-]?token)["']?\s*[:=]\s*["']?[^\s"',;]{6,}"#,
    ))
    .ok()
});

/// `text` with what looks like personal data or a secret replaced by `[EMAIL]`, `[CARD]`,
/// `[PHONE]` or `[SECRET]`.
pub fn mask_text(text: &str) -> Cow<'_, str> {
    let mut out = Cow::Borrowed(text);
    if let Some(re) = SECRET.as_ref() {
        out = replace(out, re, |_| "[SECRET]".to_owned());
    }
    if let Some(re) = EMAIL.as_ref() {
        out = replace(out, re, |_| "[EMAIL]".to_owned());
    }
    if let Some(re) = CARD.as_ref() {
        out = replace(out, re, |c| mask_card(&c[0]));
    }
    if let Some(re) = PHONE.as_ref() {
        out = mask_phones(out, re);
    }
    out
}

/// A run of digits with the longest leading card number (13 to 19 digits passing Luhn)
/// replaced by `[CARD]`; unchanged when none passes.
fn mask_card(run: &str) -> String {
    // Byte offset just past each digit.
    let ends: Vec<usize> = run
        .bytes()
        .enumerate()
        .filter(|(_, b)| b.is_ascii_digit())
        .map(|(i, _)| i + 1)
        .collect();
    let digits: Vec<u8> = run.bytes().filter(u8::is_ascii_digit).collect();
    for n in (13..=digits.len().min(19)).rev() {
        if luhn(&digits[..n]) {
            return format!("[CARD]{}", &run[ends[n - 1]..]);
        }
    }
    run.to_owned()
}

/// Phone-shaped runs of 9 to 15 digits that are not part of a longer run of digits (a card
/// number that failed the Luhn check, an id).
fn mask_phones<'t>(text: Cow<'t, str>, re: &Regex) -> Cow<'t, str> {
    let is_separator = |c: char| matches!(c, ' ' | '.' | '-');
    let mut masked = String::new();
    let mut copied = 0;
    for m in re.find_iter(&text) {
        let digits = m.as_str().bytes().filter(u8::is_ascii_digit).count();
        let before = text[..m.start()]
            .strip_suffix(is_separator)
            .unwrap_or(&text[..m.start()]);
        let after = text[m.end()..]
            .strip_prefix(is_separator)
            .unwrap_or(&text[m.end()..]);
        let inside_a_number = before.ends_with(|c: char| c.is_ascii_digit())
            || after.starts_with(|c: char| c.is_ascii_digit());
        if !(9..=15).contains(&digits) || inside_a_number {
            continue;
        }
        masked.push_str(&text[copied..m.start()]);
        masked.push_str("[PHONE]");
        copied = m.end();
    }
    if copied == 0 {
        return text;
    }
    masked.push_str(&text[copied..]);
    Cow::Owned(masked)
}

fn replace<'t>(
    text: Cow<'t, str>,
    re: &Regex,
    with: impl Fn(&Captures<'_>) -> String,
) -> Cow<'t, str> {
    if !re.is_match(&text) {
        return text;
    }
    Cow::Owned(
        re.replace_all(&text, |c: &Captures<'_>| with(c))
            .into_owned(),
    )
}

/// Every string in `value` masked in place (object keys are left: they are the API's names).
pub fn mask_value(value: &mut Value) {
    match value {
        Value::String(s) => {
            if let Cow::Owned(masked) = mask_text(s) {
                *s = masked;
            }
        }
        Value::Array(items) => items.iter_mut().for_each(mask_value),
        Value::Object(map) => map.values_mut().for_each(mask_value),
        _ => {}
    }
}

/// The Luhn checksum over ASCII digits.
fn luhn(digits: &[u8]) -> bool {
    if !(13..=19).contains(&digits.len()) {
        return false;
    }
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, d)| {
            let d = u32::from(d - b'0');
            if i % 2 == 1 {
                let doubled = d * 2;
                if doubled > 9 {
                    doubled - 9
                } else {
                    doubled
                }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn personal_data_and_secrets_are_masked() {
        let text =
            "mail jane.doe+x@example.co.uk or call +1 415-555-0132; card 4111 1111 1111 1111, \
                    key sk-proj-abcdefghijklmnop1234, AKIAIOSFODNN7EXAMPLE, Authorization: Bearer \
                    abc.def-ghi_jklmnopqrs, password: hunter22x";
        let masked = mask_text(text);
        for gone in [
            "jane.doe",
            "415-555",
            "4111 1111",
            "sk-proj",
            "AKIAIOSFODNN7EXAMPLE",
            "abc.def-ghi",
            "hunter22x",
        ] {
            assert!(!masked.contains(gone), "{gone} left in {masked}");
        }
        for mark in ["[EMAIL]", "[PHONE]", "[CARD]", "[SECRET]"] {
            assert!(masked.contains(mark), "{mark} missing in {masked}");
        }
    }

    #[test]
    fn cards_followed_by_more_digits_and_bare_e164_numbers_are_masked() {
        let masked = mask_text("card 4111 1111 1111 1111 123 exp, call +14155550132 now");
        assert!(!masked.contains("4111"), "{masked}");
        assert!(masked.contains("[CARD] 123"), "{masked}");
        assert!(masked.contains("[PHONE] now"), "{masked}");
    }

    #[test]
    fn ordinary_numbers_and_text_stay() {
        // Not a card (fails Luhn), a year, an amount, an order number too short for a phone.
        let text = "order 4111 1111 1111 1112 in 2026 cost 1234.56, ticket 12345";
        assert_eq!(mask_text(text), text);
        assert!(matches!(mask_text("hello world"), Cow::Borrowed(_)));
    }

    #[test]
    fn values_are_masked_everywhere_but_in_keys() {
        let mut value = serde_json::json!({
            "messages": [{"role": "user", "content": "I am bob@example.com"}],
            "bob@example.com": 1
        });
        mask_value(&mut value);
        assert_eq!(value["messages"][0]["content"], "I am [EMAIL]");
        assert!(value.get("bob@example.com").is_some());
    }

    #[test]
    fn every_pattern_compiles() {
        // A pattern that did not compile would mask nothing, silently.
        assert!(EMAIL.is_some() && CARD.is_some() && PHONE.is_some() && SECRET.is_some());
    }

    #[test]
    fn luhn_accepts_valid_numbers_only() {
        assert!(luhn(b"4111111111111111"));
        assert!(luhn(b"5500005555555559"));
        assert!(!luhn(b"4111111111111112"));
        assert!(!luhn(b"411111"));
    }
}
