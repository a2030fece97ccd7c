//! What a stream delivered to its client, kept so a stream whose usage never arrives (the client
//! left before the usage chunk, the upstream broke off) is still billed: the generated text and
//! tool-call arguments are gathered as their escaped JSON, by a byte scan of each event (no
//! parse on the relay path), and counted with the model's tokenizer only when needed.

use memchr::memmem::Finder;
use std::sync::LazyLock;

/// Text kept per stream at most (32 KiB: a thousand long streams hold 32 MiB at worst); past it
/// only the byte count grows, and is counted at about four bytes a token.
const MAX_KEPT_BYTES: usize = 32 * 1024;

/// The members whose string values are generated output: chat `content`, `reasoning_content`
/// and `refusal`, tool-call `arguments`, and completions' `text`.
static NEEDLES: LazyLock<[Finder<'static>; 5]> = LazyLock::new(|| {
    [
        Finder::new(b"\"content\""),
        Finder::new(b"\"reasoning_content\""),
        Finder::new(b"\"refusal\""),
        Finder::new(b"\"arguments\""),
        Finder::new(b"\"text\""),
    ]
});

#[derive(Debug, Clone, Default, PartialEq)]
pub struct DeliveredText {
    /// Escaped JSON string contents, concatenated (still one valid escaped string).
    escaped: Vec<u8>,
    /// Bytes seen past `MAX_KEPT_BYTES`.
    dropped: u64,
}

impl DeliveredText {
    /// Gather the generated strings of the SSE events in `bytes`.
    pub fn observe(&mut self, bytes: &[u8]) {
        for needle in NEEDLES.iter() {
            let mut from = 0;
            while let Some(at) = needle.find(&bytes[from..]) {
                let after_name = from + at + needle.needle().len();
                from = after_name;
                // A member name, then (whitespace) `:` (whitespace) and a string value; a name
                // that is not a member with a string value (`"content": null`) is skipped.
                let Some(start) = string_value_start(bytes, after_name) else {
                    continue;
                };
                let end = string_end(bytes, start);
                let piece = &bytes[start..end];
                if self.escaped.len() + piece.len() <= MAX_KEPT_BYTES {
                    self.escaped.extend_from_slice(piece);
                } else {
                    self.dropped += piece.len() as u64;
                }
                from = end;
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.escaped.is_empty() && self.dropped == 0
    }

    /// The gathered text, unescaped.
    pub fn text(&self) -> String {
        let mut quoted = Vec::with_capacity(self.escaped.len() + 2);
        quoted.push(b'"');
        quoted.extend_from_slice(&self.escaped);
        quoted.push(b'"');
        serde_json::from_slice::<String>(&quoted)
            .unwrap_or_else(|_| String::from_utf8_lossy(&self.escaped).into_owned())
    }

    /// A cheap running estimate: about four bytes of generated text a token.
    pub fn approx_tokens(&self) -> u64 {
        (self.escaped.len() as u64 + self.dropped).div_ceil(4)
    }

    /// Bytes past what was kept (counted at about four per token).
    pub fn dropped_bytes(&self) -> u64 {
        self.dropped
    }
}

/// After a member name at `at`: where its string value's text starts, if it has one.
fn string_value_start(bytes: &[u8], at: usize) -> Option<usize> {
    let mut i = at;
    let skip = |i: &mut usize| {
        while bytes.get(*i).is_some_and(u8::is_ascii_whitespace) {
            *i += 1;
        }
    };
    skip(&mut i);
    if bytes.get(i) != Some(&b':') {
        return None;
    }
    i += 1;
    skip(&mut i);
    (bytes.get(i) == Some(&b'"')).then_some(i + 1)
}

/// Where the JSON string starting at `start` ends (its closing quote, or the end of `bytes`).
fn string_end(bytes: &[u8], start: usize) -> usize {
    let mut i = start;
    while let Some(q) = memchr::memchr(b'"', &bytes[i..]) {
        let at = i + q;
        let backslashes = bytes[start..at]
            .iter()
            .rev()
            .take_while(|b| **b == b'\\')
            .count();
        if backslashes % 2 == 0 {
            return at;
        }
        i = at + 1;
    }
    bytes.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gathers_content_reasoning_and_arguments_across_events() {
        let mut d = DeliveredText::default();
        d.observe(b"data: {\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"Hel\"}}]}\n\n");
        d.observe(b"data: {\"choices\":[{\"delta\":{\"content\":\"lo \\\"x\\\" \\u00e9\\n\"}}]}\n\ndata: {\"choices\":[{\"delta\":{\"reasoning_content\":\"hm\"}}]}\n\n");
        d.observe(b"data: {\"choices\":[{\"delta\":{\"tool_calls\":[{\"function\":{\"arguments\":\"{\\\"a\\\":1}\"}}]}}]}\n\n");
        d.observe(b"data: {\"choices\":[{\"delta\":{\"content\":null},\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n");
        assert_eq!(d.text(), "Hello \"x\" é\nhm{\"a\":1}");
        assert!(!d.is_empty());
    }

    #[test]
    fn a_string_split_by_a_backslash_run_ends_where_json_says() {
        assert_eq!(string_end(br#"ab\\"cd"#, 0), 4);
        assert_eq!(string_end(br#"ab\"cd"e"#, 0), 6);
        assert_eq!(string_end(b"abc", 0), 3);
    }

    #[test]
    fn spaced_members_completions_text_and_refusals_count_too() {
        let mut d = DeliveredText::default();
        d.observe(
            b"data: {\"choices\": [{\"delta\": {\"content\" : \"a b\", \"refusal\": \"no\"}}]}\n\n",
        );
        d.observe(b"data: {\"choices\":[{\"text\":\"!\",\"index\":0}]}\n\n");
        d.observe(b"data: {\"choices\":[{\"delta\":{\"content\": null, \"text\": 5}}]}\n\n");
        assert_eq!(d.text(), "a bno!");
    }

    #[test]
    fn keeps_at_most_the_cap_and_counts_the_rest() {
        let mut d = DeliveredText::default();
        let event = format!(
            "data: {{\"choices\":[{{\"delta\":{{\"content\":\"{}\"}}}}]}}\n\n",
            "x".repeat(1000)
        );
        for _ in 0..2000 {
            d.observe(event.as_bytes());
        }
        assert!(d.text().len() <= MAX_KEPT_BYTES);
        assert_eq!(d.text().len() as u64 + d.dropped_bytes(), 2_000_000);
    }
}
