//! Mid-stream recovery, the pure part: what the client has received so far (`StreamTracker`),
//! and how a continuation stream from another deployment is spliced onto it (`Splicer`,
//! `ContinuationRewriter`) so the client sees one stream: one `id`, no repeated text, no lost
//! text, one final usage.
//!
//! The rules:
//! - Only single-choice text streams are spliced. If any tool-call delta reached the client the
//!   stream is not spliced (a half-delivered call cannot be resumed safely): it ends with an error
//!   event. The same holds for `n > 1`, and for text longer than `max_buffered_bytes`.
//! - If the client already received a `finish_reason`, the answer is complete: the stream ends
//!   with `[DONE]` instead of an error.
//! - The continuation is asked for with the delivered text as a trailing assistant message. A
//!   model that continues the prefix is relayed as is. A model that starts over is detected: its
//!   text is held while it repeats the delivered text from the start, and dropped once it has
//!   repeated all of it; at the first character that differs, or when the continuation finishes
//!   first, everything held is released. So text is never lost, and a full restart is never shown
//!   twice.
//! - Continuation chunks take the original stream's `id`, `created` and `model`; their role-only
//!   chunk is dropped; the final usage is the sum of what every attempt reported; the last chunk
//!   carries `llmux_recovery` with the number of recoveries.

use std::borrow::Cow;

use bytes::Bytes;
use llmux_providers::sse::parse_fields;
use llmux_types::Usage;
use serde::Deserialize;
use serde_json::{json, Value};

#[derive(Deserialize)]
struct DeltaView<'a> {
    #[serde(borrow, default)]
    content: Option<Cow<'a, str>>,
    #[serde(default)]
    tool_calls: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    function_call: Option<serde::de::IgnoredAny>,
}

#[derive(Deserialize)]
struct ChoiceView<'a> {
    #[serde(default)]
    index: u32,
    #[serde(borrow, default)]
    delta: Option<DeltaView<'a>>,
    #[serde(borrow, default)]
    finish_reason: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct ChunkView<'a> {
    #[serde(borrow, default)]
    id: Option<Cow<'a, str>>,
    #[serde(default)]
    created: Option<u64>,
    #[serde(borrow, default)]
    model: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    choices: Vec<ChoiceView<'a>>,
}

/// What the client has received of a chat stream.
#[derive(Debug, Default, Clone)]
pub(crate) struct StreamTracker {
    pub id: Option<String>,
    pub created: Option<u64>,
    pub model: Option<String>,
    pub text: String,
    pub tool_call_started: bool,
    pub multiple_choices: bool,
    pub finished: bool,
    /// Usage reported so far (summed over attempts).
    pub usage: Option<Usage>,
    unparsable: bool,
}

impl StreamTracker {
    /// Record one forwarded event (possibly several SSE events in one buffer).
    pub fn observe(&mut self, bytes: &[u8], usage: Option<Usage>) {
        if let Some(u) = usage {
            self.add_usage(u);
        }
        for event in split_events(bytes) {
            let fields = parse_fields(event);
            if !fields.has_data || fields.data.trim_ascii() == b"[DONE]" {
                continue;
            }
            let Ok(chunk) = serde_json::from_slice::<ChunkView<'_>>(&fields.data) else {
                self.unparsable = true;
                continue;
            };
            if self.id.is_none() {
                self.id = chunk.id.map(Cow::into_owned);
                self.created = chunk.created;
                self.model = chunk.model.map(Cow::into_owned);
            }
            for choice in chunk.choices {
                if choice.index != 0 {
                    self.multiple_choices = true;
                }
                if let Some(delta) = choice.delta {
                    if let Some(content) = delta.content {
                        self.text.push_str(&content);
                    }
                    if delta.tool_calls.is_some() || delta.function_call.is_some() {
                        self.tool_call_started = true;
                    }
                }
                if choice.finish_reason.is_some() {
                    self.finished = true;
                }
            }
        }
    }

    pub fn add_usage(&mut self, u: Usage) {
        self.usage = Some(sum_usage(self.usage, u));
    }

    /// Whether this stream may be continued elsewhere (see the module rules).
    pub fn splice_allowed(&self, max_buffered_bytes: usize) -> bool {
        !self.tool_call_started
            && !self.multiple_choices
            && !self.unparsable
            && self.text.len() <= max_buffered_bytes
    }
}

pub(crate) fn sum_usage(a: Option<Usage>, b: Usage) -> Usage {
    let Some(a) = a else { return b };
    let mut u = Usage::new(
        a.prompt_tokens + b.prompt_tokens,
        a.completion_tokens + b.completion_tokens,
    );
    let cached = a.cached_tokens() + b.cached_tokens();
    let reasoning = a.reasoning_tokens() + b.reasoning_tokens();
    if cached > 0 {
        u.prompt_tokens_details = Some(llmux_types::usage::PromptTokensDetails {
            cached_tokens: Some(cached),
        });
    }
    if reasoning > 0 {
        u.completion_tokens_details = Some(llmux_types::usage::CompletionTokensDetails {
            reasoning_tokens: Some(reasoning),
        });
    }
    u
}

/// Complete SSE events in a buffer (each ends with a blank line).
fn split_events(bytes: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = bytes;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let end = memchr::memmem::find(rest, b"\n\n")
            .map(|i| i + 2)
            .or_else(|| memchr::memmem::find(rest, b"\r\n\r\n").map(|i| i + 4))
            .unwrap_or(rest.len());
        let (event, tail) = rest.split_at(end);
        rest = tail;
        Some(event)
    })
}

/// Joins a continuation's text onto what was delivered (see the module rules).
#[derive(Debug, Clone)]
pub(crate) struct Splicer {
    delivered: String,
    /// Bytes of `delivered` the continuation has repeated so far, while it may be a restart.
    matched: usize,
    held: String,
    passthrough: bool,
}

impl Splicer {
    pub fn new(delivered: &str) -> Self {
        Splicer {
            delivered: delivered.to_owned(),
            matched: 0,
            held: String::new(),
            passthrough: delivered.is_empty(),
        }
    }

    /// Feed continuation text; returns what to send to the client now.
    pub fn feed(&mut self, piece: &str) -> String {
        if self.passthrough {
            return piece.to_owned();
        }
        let mut out = String::new();
        for (i, c) in piece.char_indices() {
            let expected = self.delivered[self.matched..].chars().next();
            if expected == Some(c) {
                self.matched += c.len_utf8();
                self.held.push(c);
                if self.matched == self.delivered.len() {
                    // A full restart: what it repeated is already on the client's screen.
                    self.held.clear();
                    self.passthrough = true;
                    out.push_str(&piece[i + c.len_utf8()..]);
                    return out;
                }
            } else {
                // A genuine continuation: release what was held.
                self.passthrough = true;
                out.push_str(&std::mem::take(&mut self.held));
                out.push_str(&piece[i..]);
                return out;
            }
        }
        out
    }

    /// The continuation ended: release anything still held (it was not a full restart).
    pub fn finish(&mut self) -> String {
        self.passthrough = true;
        std::mem::take(&mut self.held)
    }
}

/// Rewrites continuation chunks into the original stream's identity.
#[derive(Debug)]
pub(crate) struct ContinuationRewriter {
    id: Option<String>,
    created: Option<u64>,
    model: Option<String>,
    splicer: Splicer,
    /// Recoveries so far, stamped on the final chunk.
    pub recoveries: u32,
}

impl ContinuationRewriter {
    pub fn new(tracker: &StreamTracker, recoveries: u32) -> Self {
        ContinuationRewriter {
            id: tracker.id.clone(),
            created: tracker.created,
            model: tracker.model.clone(),
            splicer: Splicer::new(&tracker.text),
            recoveries,
        }
    }

    /// Rewrite the events in `bytes`; `None` when nothing is left to send. Text that reaches the
    /// client is also recorded in `tracker` (so a second failure continues from the right place).
    /// `total_usage` is the usage summed over attempts, to put in the usage chunk.
    pub fn rewrite(&mut self, bytes: &[u8], tracker: &mut StreamTracker) -> Option<Bytes> {
        let mut out = Vec::new();
        for event in split_events(bytes) {
            let fields = parse_fields(event);
            if !fields.has_data {
                continue;
            }
            if fields.data.trim_ascii() == b"[DONE]" {
                let held = self.splicer.finish();
                if !held.is_empty() {
                    tracker.text.push_str(&held);
                    let chunk = json!({"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
                                       "choices": [{"index": 0, "delta": {"content": held}, "finish_reason": null}]});
                    out.extend_from_slice(format!("data: {chunk}\n\n").as_bytes());
                }
                out.extend_from_slice(b"data: [DONE]\n\n");
                continue;
            }
            let Ok(mut chunk) = serde_json::from_slice::<Value>(&fields.data) else {
                continue;
            };
            if let Some(obj) = chunk.as_object_mut() {
                if let Some(id) = &self.id {
                    obj.insert("id".into(), json!(id));
                }
                if let Some(created) = self.created {
                    obj.insert("created".into(), json!(created));
                }
                if let Some(model) = &self.model {
                    obj.insert("model".into(), json!(model));
                }
            }
            let mut keep = false;
            let mut final_chunk = false;
            if let Some(choices) = chunk.get_mut("choices").and_then(Value::as_array_mut) {
                for choice in choices.iter_mut() {
                    let choice_finishing =
                        choice.get("finish_reason").is_some_and(|f| !f.is_null());
                    if let Some(delta) = choice.get_mut("delta").and_then(Value::as_object_mut) {
                        delta.remove("role");
                        let finishing = choice_finishing;
                        if let Some(Value::String(text)) = delta
                            .get("content")
                            .cloned()
                            .or_else(|| finishing.then(|| json!("")))
                        {
                            let mut emitted = self.splicer.feed(&text);
                            if finishing {
                                emitted.push_str(&self.splicer.finish());
                            }
                            tracker.text.push_str(&emitted);
                            if emitted.is_empty() {
                                delta.remove("content");
                            } else {
                                delta.insert("content".into(), json!(emitted));
                            }
                        }
                        keep |= !delta.is_empty();
                    }
                    if choice.get("finish_reason").is_some_and(|f| !f.is_null()) {
                        keep = true;
                        final_chunk = true;
                        tracker.finished = true;
                    }
                }
            }
            if let Some(usage) = chunk
                .get("usage")
                .filter(|u| !u.is_null())
                .and_then(|u| serde_json::from_value::<Usage>(u.clone()).ok())
            {
                tracker.add_usage(usage);
                if let Some(total) = tracker.usage {
                    chunk["usage"] = json!(total);
                }
                keep = true;
                final_chunk = true;
            }
            if !keep {
                continue;
            }
            if final_chunk {
                chunk["llmux_recovery"] = json!({"recovered": true, "recoveries": self.recoveries});
            }
            out.extend_from_slice(b"data: ");
            out.extend_from_slice(&serde_json::to_vec(&chunk).unwrap_or_default());
            out.extend_from_slice(b"\n\n");
        }
        (!out.is_empty()).then(|| Bytes::from(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn chunks_of(text: &str, sizes: &[usize]) -> Vec<String> {
        let chars: Vec<char> = text.chars().collect();
        let mut out = Vec::new();
        let mut at = 0;
        let mut i = 0;
        while at < chars.len() {
            let n = sizes
                .get(i % sizes.len().max(1))
                .copied()
                .unwrap_or(1)
                .max(1);
            let end = (at + n).min(chars.len());
            out.push(chars[at..end].iter().collect());
            at = end;
            i += 1;
        }
        out
    }

    fn splice(delivered: &str, continuation: &[String]) -> String {
        let mut s = Splicer::new(delivered);
        let mut out = delivered.to_owned();
        for piece in continuation {
            out.push_str(&s.feed(piece));
        }
        out.push_str(&s.finish());
        out
    }

    fn text_strategy() -> impl Strategy<Value = String> {
        // ASCII, accents, CJK and emoji: multi-byte characters on every side of a cut.
        proptest::collection::vec(
            prop_oneof![
                Just("a"),
                Just("b"),
                Just(" "),
                Just("é"),
                Just("漢"),
                Just("😀"),
                Just("\n"),
                Just("tok")
            ],
            1..60,
        )
        .prop_map(|v| v.concat())
    }

    proptest! {
        #[test]
        fn a_prefix_continuation_reassembles_exactly(
            text in text_strategy(),
            cut in 0usize..200,
            sizes in proptest::collection::vec(1usize..7, 1..5),
        ) {
            let chars: Vec<char> = text.chars().collect();
            let cut = cut % (chars.len() + 1);
            let delivered: String = chars[..cut].iter().collect();
            let rest: String = chars[cut..].iter().collect();
            // A continuation could coincide with a restart only if `rest` starts with all of
            // `delivered`; that ambiguity is excluded here and covered by the restart property.
            prop_assume!(delivered.is_empty() || !rest.starts_with(&delivered));
            prop_assert_eq!(splice(&delivered, &chunks_of(&rest, &sizes)), text);
        }

        #[test]
        fn a_full_restart_is_not_shown_twice(
            text in text_strategy(),
            cut in 1usize..200,
            sizes in proptest::collection::vec(1usize..7, 1..5),
        ) {
            let chars: Vec<char> = text.chars().collect();
            let cut = 1 + cut % chars.len();
            let delivered: String = chars[..cut].iter().collect();
            prop_assert_eq!(splice(&delivered, &chunks_of(&text, &sizes)), text);
        }

        #[test]
        fn nothing_is_ever_lost(
            delivered in text_strategy(),
            continuation in text_strategy(),
            sizes in proptest::collection::vec(1usize..7, 1..5),
        ) {
            // Whatever the continuation says, the client ends with the delivered text followed
            // by the continuation, minus at most a repetition of the delivered text.
            let out = splice(&delivered, &chunks_of(&continuation, &sizes));
            prop_assert!(out.starts_with(&delivered));
            let added = &out[delivered.len()..];
            let full = format!("{delivered}{continuation}");
            prop_assert!(added == continuation || (continuation.starts_with(&delivered) && out == continuation) || out == full,
                "delivered={delivered:?} continuation={continuation:?} out={out:?}");
        }
    }

    fn event(v: Value) -> Vec<u8> {
        format!("data: {v}\n\n").into_bytes()
    }

    #[test]
    fn tracker_follows_text_tools_and_finish() {
        let mut t = StreamTracker::default();
        t.observe(&event(json!({"id": "c1", "created": 5, "model": "m", "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hel"}}]})), None);
        t.observe(
            &event(json!({"id": "c1", "choices": [{"index": 0, "delta": {"content": "lo é"}}]})),
            None,
        );
        assert_eq!(t.text, "Hello é");
        assert_eq!(
            (t.id.as_deref(), t.created, t.model.as_deref()),
            (Some("c1"), Some(5), Some("m"))
        );
        assert!(t.splice_allowed(100));
        assert!(!t.splice_allowed(3), "over the buffer limit");
        t.observe(&event(json!({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": "{"}}]}}]})), None);
        assert!(!t.splice_allowed(100), "tool calls are never spliced");
        let mut n2 = StreamTracker::default();
        n2.observe(
            &event(json!({"choices": [{"index": 1, "delta": {"content": "x"}}]})),
            None,
        );
        assert!(!n2.splice_allowed(100));
        let mut done = StreamTracker::default();
        done.observe(
            &event(json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})),
            None,
        );
        assert!(done.finished);
    }

    #[test]
    fn continuation_chunks_take_the_original_identity_and_sum_usage() {
        let mut t = StreamTracker::default();
        t.observe(&event(json!({"id": "orig", "created": 1, "model": "gpt", "choices": [{"index": 0, "delta": {"content": "ab"}}]})), None);
        t.add_usage(Usage::new(10, 2));
        let mut r = ContinuationRewriter::new(&t, 1);
        let role = r.rewrite(&event(json!({"id": "new", "created": 9, "model": "other", "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]})), &mut t);
        assert!(role.is_none(), "the role-only chunk is dropped");
        let out = r.rewrite(&event(json!({"id": "new", "created": 9, "model": "other", "choices": [{"index": 0, "delta": {"content": "cd"}}]})), &mut t).unwrap();
        let v: Value = serde_json::from_slice(&out[6..out.len() - 2]).unwrap();
        assert_eq!(
            (v["id"].as_str(), v["created"].as_u64(), v["model"].as_str()),
            (Some("orig"), Some(1), Some("gpt"))
        );
        assert_eq!(v["choices"][0]["delta"]["content"], "cd");
        let fin = r.rewrite(&event(json!({"id": "new", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})), &mut t).unwrap();
        let v: Value = serde_json::from_slice(&fin[6..fin.len() - 2]).unwrap();
        assert_eq!(v["llmux_recovery"]["recoveries"], 1);
        let usage = r.rewrite(&event(json!({"id": "new", "choices": [], "usage": {"prompt_tokens": 12, "completion_tokens": 2, "total_tokens": 14}})), &mut t).unwrap();
        let v: Value = serde_json::from_slice(&usage[6..usage.len() - 2]).unwrap();
        assert_eq!(v["usage"]["prompt_tokens"], 22);
        assert_eq!(v["usage"]["total_tokens"], 26);
        assert_eq!(t.text, "abcd");
        assert_eq!(
            &r.rewrite(b"data: [DONE]\n\n", &mut t).unwrap()[..],
            b"data: [DONE]\n\n"
        );
    }
}
