//! The internal answer and stream chunks (OpenAI chat shapes) as the dialects read them:
//! borrowed typed structs holding only what a dialect turns into its own shapes, strings
//! borrowed from the body where they carry no escapes; no `serde_json::Value` tree is built.

use serde::Deserialize;
use serde_json::value::RawValue;

use super::Str;
use llmux_types::Usage;

/// The internal answer (an OpenAI chat completion): what the dialects' answers are made of.
#[derive(Deserialize)]
pub(crate) struct ChatAnswer<'a> {
    #[serde(borrow, default)]
    pub(crate) id: Option<Str<'a>>,
    #[serde(borrow, default)]
    pub(crate) model: Option<Str<'a>>,
    #[serde(borrow, default, deserialize_with = "null_as_empty")]
    pub(crate) choices: Vec<ChatChoice<'a>>,
}

#[derive(Deserialize)]
pub(crate) struct ChatChoice<'a> {
    #[serde(borrow, default)]
    pub(crate) message: Option<ChatAnswerMessage<'a>>,
    #[serde(borrow, default)]
    pub(crate) finish_reason: Option<Str<'a>>,
}

#[derive(Deserialize)]
pub(crate) struct ChatAnswerMessage<'a> {
    /// A string, an array of parts, or null.
    #[serde(borrow, default)]
    pub(crate) content: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pub(crate) reasoning_content: Option<Str<'a>>,
    #[serde(borrow, default)]
    pub(crate) thinking_blocks: Option<Vec<&'a RawValue>>,
    #[serde(borrow, default)]
    pub(crate) tool_calls: Option<Vec<ChatToolCall<'a>>>,
}

#[derive(Deserialize)]
pub(crate) struct ChatToolCall<'a> {
    #[serde(borrow, default)]
    pub(crate) id: Option<Str<'a>>,
    #[serde(borrow, default)]
    pub(crate) function: Option<ChatFunction<'a>>,
}

#[derive(Deserialize)]
pub(crate) struct ChatFunction<'a> {
    #[serde(borrow, default)]
    pub(crate) name: Option<Str<'a>>,
    #[serde(borrow, default, deserialize_with = "json_text")]
    pub(crate) arguments: Option<Str<'a>>,
}

#[derive(Deserialize)]
pub(crate) struct ChatTextPart<'a> {
    #[serde(borrow, default)]
    pub(crate) text: Option<Str<'a>>,
}

/// One chunk of the internal stream, read without building a tree; the fields a server might
/// send with a surprising type are read leniently (a stream is not cut for one odd field).
#[derive(Deserialize)]
pub(crate) struct ChatChunk<'a> {
    #[serde(borrow, default)]
    pub(crate) id: Option<Str<'a>>,
    #[serde(borrow, default)]
    pub(crate) model: Option<Str<'a>>,
    #[serde(borrow, default, deserialize_with = "null_as_empty")]
    pub(crate) choices: Vec<ChunkChoice<'a>>,
    #[serde(default, deserialize_with = "lenient")]
    pub(crate) usage: Option<Usage>,
    #[serde(borrow, default)]
    pub(crate) error: Option<ChunkError<'a>>,
}

#[derive(Deserialize)]
pub(crate) struct ChunkChoice<'a> {
    #[serde(borrow, default)]
    pub(crate) delta: Option<ChunkDelta<'a>>,
    #[serde(borrow, default, deserialize_with = "lenient")]
    pub(crate) finish_reason: Option<Str<'a>>,
}

#[derive(Deserialize)]
pub(crate) struct ChunkDelta<'a> {
    #[serde(borrow, default, deserialize_with = "lenient")]
    pub(crate) content: Option<Str<'a>>,
    #[serde(borrow, default, deserialize_with = "lenient")]
    pub(crate) reasoning_content: Option<Str<'a>>,
    #[serde(borrow, default)]
    pub(crate) thinking_blocks: Option<Vec<ThinkingBlockDelta<'a>>>,
    #[serde(borrow, default)]
    pub(crate) tool_calls: Option<Vec<ToolCallDelta<'a>>>,
}

#[derive(Deserialize)]
pub(crate) struct ThinkingBlockDelta<'a> {
    #[serde(borrow, default)]
    pub(crate) signature: Option<Str<'a>>,
}

#[derive(Deserialize)]
pub(crate) struct ToolCallDelta<'a> {
    #[serde(default, deserialize_with = "lenient")]
    pub(crate) index: Option<u64>,
    #[serde(borrow, default, deserialize_with = "lenient")]
    pub(crate) id: Option<Str<'a>>,
    #[serde(borrow, default)]
    pub(crate) function: Option<ChatFunction<'a>>,
}

#[derive(Deserialize)]
pub(crate) struct ChunkError<'a> {
    #[serde(borrow, default)]
    pub(crate) message: Option<Str<'a>>,
    #[serde(borrow, default, rename = "type")]
    pub(crate) kind: Option<Str<'a>>,
    /// OpenAI's error code, any JSON (a string usually).
    #[serde(borrow, default)]
    pub(crate) code: Option<&'a RawValue>,
}

/// A field read when it has the expected shape, and ignored when it does not: an
/// OpenAI-compatible server that sends a surprising type in one field (a null counter in
/// `usage`, content as an array) does not cost the whole chunk.
fn lenient<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    let raw = <&'de RawValue>::deserialize(deserializer)?;
    Ok(serde_json::from_str(raw.get()).ok())
}

/// `null` for a list reads as an empty one.
fn null_as_empty<'de, D, T>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Ok(Option::<Vec<T>>::deserialize(deserializer)?.unwrap_or_default())
}

/// Tool-call arguments: the JSON text a string holds, or (from servers that send the arguments
/// as an object) the object's own JSON text.
fn json_text<'de, D>(deserializer: D) -> Result<Option<Str<'de>>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    let raw = <&'de RawValue>::deserialize(deserializer)?;
    let text = raw.get();
    if text == "null" {
        return Ok(None);
    }
    if text.starts_with('"') {
        return serde_json::from_str(text)
            .map(Some)
            .map_err(serde::de::Error::custom);
    }
    Ok(Some(Str(std::borrow::Cow::Borrowed(text))))
}
