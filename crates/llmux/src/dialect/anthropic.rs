//! The Anthropic Messages API (`POST /v1/messages`) as an inbound dialect: its request into the
//! internal (OpenAI chat) request, and the internal response, stream and errors back into
//! Anthropic's message, events and error shapes, as Anthropic documents them.
//!
//! Content the internal request can carry goes through unchanged: `cache_control` on system
//! blocks, text and tools, thinking blocks with their signatures (as `thinking_blocks` on the
//! assistant message), Anthropic's own server tools. The Anthropic adapter turns all of it back
//! into the same blocks for an Anthropic deployment; other providers get their own translation
//! of the internal request.

use bytes::{Bytes, BytesMut};
use llmux_providers::anthropic::stream::{NATIVE_MARK, NATIVE_ONLY_MARK};
use llmux_types::{ErrorKind, GatewayError, RawObject, Usage};
use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use super::internal::{ChatAnswer, ChatChunk, ChatTextPart};
use super::{BytesWriter, Str};
use serde_json::value::RawValue;
use serde_json::{json, Value};

/// The internal request made from a Messages request.
#[derive(Debug, Clone)]
pub struct ChatRequest {
    /// The OpenAI chat request body.
    pub body: Bytes,
    /// The model the client asked for.
    pub model: String,
    pub stream: bool,
}

fn invalid(message: impl Into<String>, param: &str) -> GatewayError {
    GatewayError::invalid_request(message).with_param(param)
}

/// Convert a Messages request body into the internal chat request. The body itself rides
/// along (`NATIVE_ANTHROPIC`, with the client's `anthropic-beta`): an Anthropic deployment is
/// sent it as it is, with only the model changed, and its answer comes back as it sent it.
///
/// The body is read into borrowed typed structs (its top level indexed, each message and block
/// read once, strings borrowed where they carry no escapes) and the internal request written
/// from typed structs: no `serde_json::Value` tree is built for the common shapes.
pub fn chat_request(body: &[u8], beta: Option<&str>) -> Result<ChatRequest, GatewayError> {
    chat_request_routed(body, beta, |_| true)
}

/// `chat_request`, carrying the client's own body only when `reaches_anthropic(model)` says a
/// deployment that serves Anthropic's API may answer (or the request names its own fallbacks):
/// every other request is translated anyway, and the carried copy would only be parsed again
/// and cut out on the way upstream.
pub fn chat_request_routed(
    body: &[u8],
    beta: Option<&str>,
    reaches_anthropic: impl FnOnce(&str) -> bool,
) -> Result<ChatRequest, GatewayError> {
    // serde's derived structs also accept an array, by position: only an object is read so.
    let typed = body
        .trim_ascii_start()
        .starts_with(b"{")
        .then(|| serde_json::from_slice::<MessagesRequest<'_>>(body).ok())
        .flatten()
        .and_then(Fields::from_typed);
    // When the one-pass reading fails or lacks what a request needs, the checked reading says
    // what is wrong (or accepts what the typed one cannot, such as a repeated key).
    let fields = match typed {
        Some(fields) => fields,
        None => Fields::checked(body)?,
    };
    let Fields {
        model,
        max_tokens,
        messages,
        stream,
        system,
        temperature,
        top_p,
        top_k,
        stop_sequences,
        metadata,
        tools,
        tool_choice,
        thinking,
        gateway,
        has_fallbacks,
    } = fields;
    let mut chat_messages = Vec::with_capacity(messages.len() + 1);
    if let Some(system) = system {
        if let Some(content) = system_content(system)? {
            chat_messages.push(OutMessage::new("system", content));
        }
    }
    for (i, message) in messages.into_iter().enumerate() {
        convert_message(message, i, &mut chat_messages)?;
    }
    let mut out = InternalRequest {
        model: &model,
        messages: chat_messages,
        max_tokens,
        temperature: number("temperature", temperature)?,
        top_p: number("top_p", top_p)?,
        top_k: number("top_k", top_k)?,
        stop: None,
        user: None,
        tools: None,
        tool_choice: None,
        parallel_tool_calls: None,
        thinking: None,
        reasoning_effort: None,
        gateway: Vec::new(),
        tags: None,
        stream: stream.then_some(true),
        stream_options: stream.then_some(StreamOptions {
            include_usage: true,
        }),
    };
    if let Some(stops) = stop_sequences {
        let stops_list = serde_json::from_str::<Vec<Cow<'_, str>>>(stops.get()).map_err(|_| {
            invalid(
                "stop_sequences: must be an array of strings",
                "stop_sequences",
            )
        })?;
        if !stops_list.is_empty() {
            out.stop = Some(stops);
        }
    }
    let metadata: Option<Metadata<'_>> =
        metadata.and_then(|raw| serde_json::from_str(raw.get()).ok());
    if let Some(metadata) = &metadata {
        out.user = metadata.user_id.as_deref();
        out.tags = metadata.tags;
    }
    if let Some(tools) = tools {
        let tools: Vec<&RawValue> = serde_json::from_str(tools.get())
            .map_err(|_| invalid("tools: must be an array", "tools"))?;
        if !tools.is_empty() {
            out.tools = Some(
                tools
                    .iter()
                    .map(|t| convert_tool(t))
                    .collect::<Result<_, _>>()?,
            );
        }
    }
    if let Some(choice) = tool_choice {
        let choice: Value = serde_json::from_str(choice.get())
            .map_err(|_| invalid("tool_choice: must be an object", "tool_choice"))?;
        let (choice, parallel) = convert_tool_choice(&choice)?;
        out.tool_choice = Some(choice);
        out.parallel_tool_calls = parallel;
    }
    if let Some(raw) = thinking {
        let thinking: Thinking<'_> = serde_json::from_str(raw.get())
            .map_err(|_| invalid("thinking: must be an object", "thinking"))?;
        match thinking.kind.as_deref() {
            Some("enabled") => {
                let budget = thinking.budget_tokens.ok_or_else(|| {
                    invalid(
                        "thinking.budget_tokens: required with thinking enabled",
                        "thinking",
                    )
                })?;
                // `thinking` reaches Anthropic-family deployments as sent; every other
                // provider reads the effort it corresponds to.
                out.thinking = Some(raw);
                out.reasoning_effort = Some(effort_for_budget(budget));
            }
            Some("disabled") => {}
            Some("adaptive") => out.thinking = Some(raw),
            _ => {
                return Err(invalid(
                    "thinking.type: must be `enabled` or `disabled`",
                    "thinking",
                ))
            }
        }
    }
    // The gateway's own controls (LiteLLM's names: fallbacks, num_retries, timeout, tags, ...)
    // work here as on chat completions; tags may also come in `metadata.tags`.
    for (field, v) in gateway {
        if field == "tags" {
            out.tags = Some(v);
        } else {
            out.gateway.push((field, v));
        }
    }
    let mut internal = serde_json::to_vec(&out)
        .map_err(|e| GatewayError::internal(format!("cannot write the internal request: {e}")))?;
    if !has_fallbacks && !reaches_anthropic(&model) {
        return Ok(ChatRequest {
            body: Bytes::from(internal),
            model: model.into_owned(),
            stream,
        });
    }
    // The client's body rides along byte for byte (its key order matters to a model, and
    // re-encoding would sort it); the Anthropic adapter edits it in place.
    internal.pop(); // the closing brace
    internal.extend_from_slice(b",\"");
    internal.extend_from_slice(llmux_providers::NATIVE_ANTHROPIC.as_bytes());
    internal.extend_from_slice(b"\":{\"beta\":");
    match beta {
        Some(beta) => llmux_types::raw::write_json_string(&mut internal, beta),
        None => internal.extend_from_slice(b"null"),
    }
    internal.extend_from_slice(b",\"body\":");
    internal.extend_from_slice(body);
    internal.extend_from_slice(b"}}");
    Ok(ChatRequest {
        body: Bytes::from(internal),
        model: model.into_owned(),
        stream,
    })
}

/// A sampling parameter: a number, or absent.
fn number<'r>(
    field: &'static str,
    raw: Option<&'r RawValue>,
) -> Result<Option<&'r RawValue>, GatewayError> {
    match raw {
        Some(raw) if serde_json::from_str::<f64>(raw.get()).is_err() => {
            Err(invalid(format!("{field}: must be a number"), field))
        }
        other => Ok(other),
    }
}

/// A Messages request's top level, read in one pass with its messages (the common case).
#[derive(Deserialize)]
struct MessagesRequest<'a> {
    #[serde(borrow, default)]
    model: Option<Str<'a>>,
    #[serde(default)]
    max_tokens: Option<u64>,
    #[serde(borrow, default)]
    messages: Option<Vec<InMessage<'a>>>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(borrow, default)]
    system: Option<&'a RawValue>,
    #[serde(borrow, default)]
    temperature: Option<&'a RawValue>,
    #[serde(borrow, default)]
    top_p: Option<&'a RawValue>,
    #[serde(borrow, default)]
    top_k: Option<&'a RawValue>,
    #[serde(borrow, default)]
    stop_sequences: Option<&'a RawValue>,
    #[serde(borrow, default)]
    metadata: Option<&'a RawValue>,
    #[serde(borrow, default)]
    tools: Option<&'a RawValue>,
    #[serde(borrow, default)]
    tool_choice: Option<&'a RawValue>,
    #[serde(borrow, default)]
    thinking: Option<&'a RawValue>,
    // The gateway's own controls (`llmux_providers::GATEWAY_PARAMS`; a test holds the two
    // lists together).
    #[serde(borrow, default)]
    fallbacks: Option<&'a RawValue>,
    #[serde(borrow, default)]
    disable_fallbacks: Option<&'a RawValue>,
    #[serde(borrow, default)]
    num_retries: Option<&'a RawValue>,
    #[serde(borrow, default)]
    timeout: Option<&'a RawValue>,
    #[serde(borrow, default)]
    tags: Option<&'a RawValue>,
    #[serde(borrow, default)]
    context_window_fallbacks: Option<&'a RawValue>,
    #[serde(borrow, default)]
    content_policy_fallbacks: Option<&'a RawValue>,
    #[serde(borrow, default)]
    mock_testing_fallbacks: Option<&'a RawValue>,
    #[serde(borrow, default)]
    cache: Option<&'a RawValue>,
}

/// What the conversion reads of a Messages request, however it was read. Fields a client set
/// to `null` are absent.
struct Fields<'a> {
    model: Cow<'a, str>,
    max_tokens: u64,
    messages: Vec<InMessage<'a>>,
    stream: bool,
    system: Option<&'a RawValue>,
    temperature: Option<&'a RawValue>,
    top_p: Option<&'a RawValue>,
    top_k: Option<&'a RawValue>,
    stop_sequences: Option<&'a RawValue>,
    metadata: Option<&'a RawValue>,
    tools: Option<&'a RawValue>,
    tool_choice: Option<&'a RawValue>,
    thinking: Option<&'a RawValue>,
    /// The gateway's controls the client set, by name.
    gateway: Vec<(&'static str, &'a RawValue)>,
    has_fallbacks: bool,
}

impl<'a> Fields<'a> {
    /// The one-pass reading, when it has what a request needs (else the checked reading runs
    /// for its precise error).
    fn from_typed(r: MessagesRequest<'a>) -> Option<Self> {
        let model = r.model.filter(|m| !m.is_empty())?.into_cow();
        let max_tokens = r.max_tokens.filter(|n| *n >= 1)?;
        let messages = r.messages?;
        let gateway: Vec<(&'static str, &'a RawValue)> = [
            ("fallbacks", r.fallbacks),
            ("disable_fallbacks", r.disable_fallbacks),
            ("num_retries", r.num_retries),
            ("timeout", r.timeout),
            ("tags", r.tags),
            ("context_window_fallbacks", r.context_window_fallbacks),
            ("content_policy_fallbacks", r.content_policy_fallbacks),
            ("mock_testing_fallbacks", r.mock_testing_fallbacks),
            ("cache", r.cache),
        ]
        .into_iter()
        .filter_map(|(k, v)| Some((k, v?)))
        .collect();
        Some(Fields {
            model,
            max_tokens,
            messages,
            stream: r.stream.unwrap_or(false),
            system: r.system,
            temperature: r.temperature,
            top_p: r.top_p,
            top_k: r.top_k,
            stop_sequences: r.stop_sequences,
            metadata: r.metadata,
            tools: r.tools,
            tool_choice: r.tool_choice,
            thinking: r.thinking,
            has_fallbacks: r.fallbacks.is_some()
                || r.context_window_fallbacks.is_some()
                || r.content_policy_fallbacks.is_some(),
            gateway,
        })
    }

    /// Member by member, each checked with its own error message.
    fn checked(body: &'a [u8]) -> Result<Self, GatewayError> {
        let request = RawObject::parse(body).map_err(|e| {
            if body.trim_ascii_start().starts_with(b"{") {
                GatewayError::invalid_request(format!("the body is not valid JSON: {e}"))
            } else {
                GatewayError::invalid_request("the body must be a JSON object")
            }
        })?;
        let present = |key: &str| request.get(key).filter(|v| v.get() != "null");
        let model: Cow<'a, str> = match request.decode::<Str<'a>>("model") {
            Ok(Some(m)) if !m.is_empty() => m.into_cow(),
            _ => return Err(invalid("model: Field required", "model")),
        };
        let max_tokens = match request.get("max_tokens") {
            Some(raw) => serde_json::from_str::<u64>(raw.get())
                .ok()
                .filter(|n| *n >= 1)
                .ok_or_else(|| invalid("max_tokens: must be a positive integer", "max_tokens"))?,
            None => return Err(invalid("max_tokens: Field required", "max_tokens")),
        };
        let messages: Vec<InMessage<'a>> = match request.get("messages") {
            Some(raw) if raw.get().starts_with('[') => serde_json::from_str(raw.get())
                .map_err(|e| invalid(format!("messages: {e}"), "messages"))?,
            _ => return Err(invalid("messages: Field required (an array)", "messages")),
        };
        let stream = match present("stream") {
            None => false,
            Some(raw) => serde_json::from_str::<bool>(raw.get())
                .map_err(|_| invalid("stream: must be a boolean", "stream"))?,
        };
        let gateway = llmux_providers::GATEWAY_PARAMS
            .iter()
            .filter(|f| **f != llmux_providers::NATIVE_ANTHROPIC)
            .filter_map(|f| Some((*f, present(f)?)))
            .collect();
        Ok(Fields {
            model,
            max_tokens,
            messages,
            stream,
            system: present("system"),
            temperature: present("temperature"),
            top_p: present("top_p"),
            top_k: present("top_k"),
            stop_sequences: present("stop_sequences"),
            metadata: present("metadata"),
            tools: present("tools"),
            tool_choice: present("tool_choice"),
            thinking: present("thinking"),
            has_fallbacks: [
                "fallbacks",
                "context_window_fallbacks",
                "content_policy_fallbacks",
            ]
            .iter()
            .any(|f| present(f).is_some()),
            gateway,
        })
    }
}

/// The internal (OpenAI chat) request written from a Messages request.
#[derive(Serialize)]
struct InternalRequest<'a> {
    model: &'a str,
    messages: Vec<OutMessage<'a>>,
    max_tokens: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_k: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stop: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tools: Option<Vec<OutTool<'a>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_choice: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parallel_tool_calls: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    thinking: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reasoning_effort: Option<&'static str>,
    /// The gateway's own controls, as the client wrote them.
    #[serde(flatten, serialize_with = "flatten_pairs")]
    gateway: Vec<(&'static str, &'a RawValue)>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tags: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stream: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stream_options: Option<StreamOptions>,
}

/// Write `gateway`'s pairs as fields of the enclosing object (serde's `flatten` wants a map).
fn flatten_pairs<S: serde::Serializer>(
    pairs: &[(&'static str, &RawValue)],
    serializer: S,
) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut map = serializer.serialize_map(Some(pairs.len()))?;
    for (k, v) in pairs {
        map.serialize_entry(k, v)?;
    }
    map.end()
}

#[derive(Serialize)]
struct StreamOptions {
    include_usage: bool,
}

#[derive(Deserialize)]
struct Metadata<'a> {
    #[serde(borrow, default)]
    user_id: Option<Str<'a>>,
    #[serde(borrow, default)]
    tags: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct Thinking<'a> {
    #[serde(borrow, default, rename = "type")]
    kind: Option<Str<'a>>,
    #[serde(default)]
    budget_tokens: Option<u64>,
}

/// One message of the internal request.
#[derive(Serialize)]
struct OutMessage<'a> {
    role: &'static str,
    content: OutContent<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_call_id: Option<Cow<'a, str>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tool_calls: Vec<OutToolCall<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    thinking_blocks: Vec<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reasoning_content: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cache_control: Option<&'a RawValue>,
}

impl<'a> OutMessage<'a> {
    fn new(role: &'static str, content: OutContent<'a>) -> Self {
        OutMessage {
            role,
            content,
            tool_call_id: None,
            tool_calls: Vec::new(),
            thinking_blocks: Vec::new(),
            reasoning_content: None,
            cache_control: None,
        }
    }
}

#[derive(Serialize)]
#[serde(untagged)]
enum OutContent<'a> {
    Text(Cow<'a, str>),
    Parts(Vec<OutPart<'a>>),
    Null(()),
}

/// An OpenAI content part (its `cache_control` kept).
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum OutPart<'a> {
    Text {
        text: Cow<'a, str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        cache_control: Option<&'a RawValue>,
    },
    ImageUrl {
        image_url: ImageUrl<'a>,
        #[serde(skip_serializing_if = "Option::is_none")]
        cache_control: Option<&'a RawValue>,
    },
    File {
        file: FileData<'a>,
        #[serde(skip_serializing_if = "Option::is_none")]
        cache_control: Option<&'a RawValue>,
    },
}

impl OutPart<'_> {
    /// Text without `cache_control`: joinable into a plain string.
    fn plain_text(&self) -> Option<&str> {
        match self {
            OutPart::Text {
                text,
                cache_control: None,
            } => Some(text),
            _ => None,
        }
    }
}

#[derive(Serialize)]
struct ImageUrl<'a> {
    url: Cow<'a, str>,
}

#[derive(Serialize)]
struct FileData<'a> {
    file_data: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    filename: Option<&'a RawValue>,
}

#[derive(Serialize)]
struct OutToolCall<'a> {
    id: Cow<'a, str>,
    #[serde(rename = "type")]
    kind: &'static str,
    function: OutFunctionCall<'a>,
}

#[derive(Serialize)]
struct OutFunctionCall<'a> {
    name: Cow<'a, str>,
    arguments: &'a str,
}

/// A tool of the internal request: a client tool as an OpenAI function, or one of Anthropic's
/// own server tools as sent.
#[derive(Serialize)]
#[serde(untagged)]
enum OutTool<'a> {
    Server(&'a RawValue),
    Function {
        #[serde(rename = "type")]
        kind: &'static str,
        function: OutFunction<'a>,
        #[serde(skip_serializing_if = "Option::is_none")]
        cache_control: Option<&'a RawValue>,
    },
}

#[derive(Serialize)]
struct OutFunction<'a> {
    name: Cow<'a, str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<&'a RawValue>,
    parameters: &'a RawValue,
}

/// A message of the Messages request.
#[derive(Deserialize)]
struct InMessage<'a> {
    #[serde(borrow, default)]
    role: Option<Str<'a>>,
    #[serde(borrow, default)]
    content: Option<InContent<'a>>,
}

/// A content block of the Messages request: every field any block kind has, each optional.
#[derive(Deserialize)]
struct InBlock<'a> {
    #[serde(borrow, default, rename = "type")]
    kind: Option<Str<'a>>,
    #[serde(borrow, default)]
    text: Option<Str<'a>>,
    #[serde(borrow, default)]
    cache_control: Option<&'a RawValue>,
    #[serde(borrow, default)]
    source: Option<InSource<'a>>,
    #[serde(borrow, default)]
    title: Option<&'a RawValue>,
    #[serde(borrow, default)]
    id: Option<Str<'a>>,
    #[serde(borrow, default)]
    name: Option<Str<'a>>,
    #[serde(borrow, default)]
    input: Option<&'a RawValue>,
    #[serde(borrow, default)]
    tool_use_id: Option<Str<'a>>,
    #[serde(borrow, default)]
    content: Option<&'a RawValue>,
    #[serde(default)]
    is_error: Option<bool>,
    #[serde(borrow, default)]
    thinking: Option<Str<'a>>,
}

#[derive(Deserialize)]
struct InSource<'a> {
    #[serde(borrow, default, rename = "type")]
    kind: Option<Str<'a>>,
    #[serde(borrow, default)]
    media_type: Option<Str<'a>>,
    #[serde(borrow, default)]
    data: Option<Str<'a>>,
    #[serde(borrow, default)]
    url: Option<Str<'a>>,
}

#[derive(Deserialize)]
struct InTool<'a> {
    #[serde(borrow, default, rename = "type")]
    kind: Option<Str<'a>>,
    #[serde(borrow, default)]
    name: Option<Str<'a>>,
    #[serde(borrow, default)]
    description: Option<&'a RawValue>,
    #[serde(borrow, default)]
    input_schema: Option<&'a RawValue>,
    #[serde(borrow, default)]
    cache_control: Option<&'a RawValue>,
}

/// The OpenAI `reasoning_effort` closest to an Anthropic thinking budget.
fn effort_for_budget(budget: u64) -> &'static str {
    match budget {
        0..=2048 => "low",
        2049..=8192 => "medium",
        _ => "high",
    }
}

/// A position in the request (`messages.2.content.0`), written out only for an error message.
#[derive(Clone, Copy)]
struct At<'p> {
    parent: Option<&'p At<'p>>,
    segment: Segment,
}

#[derive(Clone, Copy)]
enum Segment {
    Key(&'static str),
    Index(usize),
}

impl<'p> At<'p> {
    fn root(key: &'static str) -> At<'static> {
        At {
            parent: None,
            segment: Segment::Key(key),
        }
    }

    fn key(&'p self, key: &'static str) -> At<'p> {
        At {
            parent: Some(self),
            segment: Segment::Key(key),
        }
    }

    fn index(&'p self, index: usize) -> At<'p> {
        At {
            parent: Some(self),
            segment: Segment::Index(index),
        }
    }
}

impl std::fmt::Display for At<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(parent) = self.parent {
            write!(f, "{parent}.")?;
        }
        match self.segment {
            Segment::Key(key) => f.write_str(key),
            Segment::Index(i) => write!(f, "{i}"),
        }
    }
}

/// A string, or an array of blocks (each kept raw beside its typed reading).
enum InContent<'a> {
    Text(Cow<'a, str>),
    Blocks(Vec<&'a RawValue>),
}

impl<'de: 'a, 'a> Deserialize<'de> for InContent<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = InContent<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string or an array of content blocks")
            }
            fn visit_borrowed_str<E: serde::de::Error>(
                self,
                s: &'de str,
            ) -> Result<Self::Value, E> {
                Ok(InContent::Text(Cow::Borrowed(s)))
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Self::Value, E> {
                Ok(InContent::Text(Cow::Owned(s.to_owned())))
            }
            fn visit_string<E: serde::de::Error>(self, s: String) -> Result<Self::Value, E> {
                Ok(InContent::Text(Cow::Owned(s)))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Self::Value, A::Error> {
                let mut blocks = Vec::with_capacity(seq.size_hint().unwrap_or(4));
                while let Some(block) = seq.next_element::<&'de RawValue>()? {
                    blocks.push(block);
                }
                Ok(InContent::Blocks(blocks))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

fn content_of<'a>(raw: &'a RawValue, at: &At<'_>) -> Result<InContent<'a>, GatewayError> {
    let text = raw.get();
    let not_valid = || invalid(format!("{at}: must be a string or an array"), "messages");
    serde_json::from_str(text).map_err(|_| not_valid())
}

fn block_of<'a>(raw: &'a RawValue, at: &At<'_>) -> Result<InBlock<'a>, GatewayError> {
    serde_json::from_str(raw.get()).map_err(|e| invalid(format!("{at}: {e}"), "messages"))
}

fn system_content(system: &RawValue) -> Result<Option<OutContent<'_>>, GatewayError> {
    let system_at = At::root("system");
    let blocks = match content_of(system, &system_at) {
        Ok(InContent::Text(s)) if s.is_empty() => return Ok(None),
        Ok(InContent::Text(s)) => return Ok(Some(OutContent::Text(s))),
        Ok(InContent::Blocks(blocks)) => blocks,
        Err(_) => {
            return Err(invalid(
                "system: must be a string or an array of text blocks",
                "system",
            ))
        }
    };
    let mut parts = Vec::with_capacity(blocks.len());
    for (k, raw) in blocks.iter().enumerate() {
        let block = block_of(raw, &system_at.index(k))?;
        if block.kind.as_deref() != Some("text") {
            return Err(invalid("system: only text blocks are allowed", "system"));
        }
        parts.push(text_part(block));
    }
    Ok((!parts.is_empty()).then_some(OutContent::Parts(parts)))
}

/// A text block as an OpenAI text part (its `cache_control` kept).
fn text_part(block: InBlock<'_>) -> OutPart<'_> {
    OutPart::Text {
        text: block.text.map(Str::into_cow).unwrap_or_default(),
        cache_control: block.cache_control,
    }
}

/// An image or document block as an OpenAI content part.
fn media_part<'a>(block: InBlock<'a>, at: &At<'_>) -> Result<OutPart<'a>, GatewayError> {
    let kind = block.kind.as_deref().unwrap_or("");
    let source = block
        .source
        .as_ref()
        .ok_or_else(|| invalid(format!("{at}.source: Field required"), "messages"))?;
    let cache_control = block.cache_control;
    let data = source.data.as_deref().unwrap_or("");
    Ok(match (kind, source.kind.as_deref()) {
        ("image", Some("base64")) => {
            let media_type = source.media_type.as_deref().unwrap_or("image/png");
            OutPart::ImageUrl {
                image_url: ImageUrl {
                    url: Cow::Owned(format!("data:{media_type};base64,{data}")),
                },
                cache_control,
            }
        }
        ("image", Some("url")) => OutPart::ImageUrl {
            image_url: ImageUrl {
                url: source.url.clone().map(Str::into_cow).unwrap_or_default(),
            },
            cache_control,
        },
        ("document", Some("base64")) => {
            let media_type = source.media_type.as_deref().unwrap_or("application/pdf");
            OutPart::File {
                file: FileData {
                    file_data: format!("data:{media_type};base64,{data}"),
                    filename: block.title,
                },
                cache_control,
            }
        }
        ("document", Some("text")) => OutPart::Text {
            text: source.data.clone().map(Str::into_cow).unwrap_or_default(),
            cache_control,
        },
        (_, other) => {
            return Err(invalid(
                format!(
                    "{at}: a {kind} source of type `{}` is not supported here",
                    other.unwrap_or("?")
                ),
                "messages",
            ))
        }
    })
}

/// The content of a `tool_result` block: a string, or text and image parts.
fn tool_result_content<'a>(
    content: Option<&'a RawValue>,
    at: &At<'_>,
) -> Result<OutContent<'a>, GatewayError> {
    let Some(raw) = content.filter(|c| c.get() != "null") else {
        return Ok(OutContent::Text(Cow::Borrowed("")));
    };
    let content_at = at.key("content");
    let blocks = match content_of(raw, &content_at)? {
        InContent::Text(s) => return Ok(OutContent::Text(s)),
        InContent::Blocks(blocks) => blocks,
    };
    let mut out = Vec::with_capacity(blocks.len());
    for (k, raw) in blocks.iter().enumerate() {
        let part_at = content_at.index(k);
        let part = block_of(raw, &part_at)?;
        match part.kind.as_deref() {
            Some("text") => out.push(text_part(part)),
            Some("image") | Some("document") => out.push(media_part(part, &part_at)?),
            _ => {
                return Err(invalid(
                    format!("{content_at}: only text, image and document blocks are allowed"),
                    "messages",
                ))
            }
        }
    }
    // A result of text alone reads as a string everywhere.
    let texts: Option<Vec<&str>> = out.iter().map(OutPart::plain_text).collect();
    if let Some(texts) = texts {
        return Ok(OutContent::Text(Cow::Owned(texts.join("\n"))));
    }
    Ok(OutContent::Parts(out))
}

fn convert_message<'a>(
    message: InMessage<'a>,
    i: usize,
    out: &mut Vec<OutMessage<'a>>,
) -> Result<(), GatewayError> {
    let messages_at = At::root("messages");
    let at = messages_at.index(i);
    let role = message.role.as_deref().unwrap_or("");
    let content = message
        .content
        .ok_or_else(|| invalid(format!("{at}.content: Field required"), "messages"))?;
    match role {
        "user" => {
            let content_at = at.key("content");
            let blocks = match content {
                InContent::Text(s) => {
                    out.push(OutMessage::new("user", OutContent::Text(s)));
                    return Ok(());
                }
                InContent::Blocks(blocks) => blocks,
            };
            let mut parts = Vec::with_capacity(blocks.len());
            for (k, raw) in blocks.iter().enumerate() {
                let at = content_at.index(k);
                let block = block_of(raw, &at)?;
                match block.kind.as_deref() {
                    Some("text") => parts.push(text_part(block)),
                    Some("image") | Some("document") => parts.push(media_part(block, &at)?),
                    Some("tool_result") => {
                        let id = block
                            .tool_use_id
                            .clone()
                            .map(Str::into_cow)
                            .ok_or_else(|| {
                                invalid(format!("{at}.tool_use_id: Field required"), "messages")
                            })?;
                        let mut content = tool_result_content(block.content, &at)?;
                        if block.is_error == Some(true) {
                            if let OutContent::Text(text) = &content {
                                content = OutContent::Text(Cow::Owned(format!("Error: {text}")));
                            }
                        }
                        let mut tool = OutMessage::new("tool", content);
                        tool.tool_call_id = Some(id);
                        tool.cache_control = block.cache_control;
                        out.push(tool);
                    }
                    Some(other) => {
                        return Err(invalid(
                            format!(
                                "{at}.type: `{other}` blocks are not supported in user messages"
                            ),
                            "messages",
                        ))
                    }
                    None => return Err(invalid(format!("{at}.type: Field required"), "messages")),
                }
            }
            if !parts.is_empty() {
                out.push(OutMessage::new("user", OutContent::Parts(parts)));
            }
        }
        "assistant" => {
            let content_at = at.key("content");
            let blocks = match content {
                InContent::Text(s) => {
                    out.push(OutMessage::new("assistant", OutContent::Text(s)));
                    return Ok(());
                }
                InContent::Blocks(blocks) => blocks,
            };
            let mut parts = Vec::new();
            let mut tool_calls = Vec::new();
            let mut thinking_blocks = Vec::new();
            let mut reasoning = String::new();
            for (k, raw) in blocks.iter().enumerate() {
                let at = content_at.index(k);
                let block = block_of(raw, &at)?;
                match block.kind.as_deref() {
                    Some("text") => parts.push(text_part(block)),
                    Some("tool_use") | Some("server_tool_use") => {
                        tool_calls.push(OutToolCall {
                            id: block.id.map(Str::into_cow).unwrap_or_default(),
                            kind: "function",
                            function: OutFunctionCall {
                                name: block.name.map(Str::into_cow).unwrap_or_default(),
                                arguments: block.input.map_or("{}", RawValue::get),
                            },
                        });
                    }
                    Some("thinking") => {
                        reasoning.push_str(block.thinking.as_deref().unwrap_or(""));
                        thinking_blocks.push(*raw);
                    }
                    Some("redacted_thinking") => thinking_blocks.push(*raw),
                    Some(other) => {
                        return Err(invalid(
                            format!(
                            "{at}.type: `{other}` blocks are not supported in assistant messages"
                        ),
                            "messages",
                        ))
                    }
                    None => return Err(invalid(format!("{at}.type: Field required"), "messages")),
                }
            }
            let texts: Option<Vec<&str>> = parts.iter().map(OutPart::plain_text).collect();
            let content = match texts {
                _ if parts.is_empty() => OutContent::Null(()),
                Some(texts) => OutContent::Text(Cow::Owned(texts.concat())),
                None => OutContent::Parts(parts),
            };
            let mut message = OutMessage::new("assistant", content);
            message.tool_calls = tool_calls;
            if !thinking_blocks.is_empty() {
                message.thinking_blocks = thinking_blocks;
                message.reasoning_content = Some(reasoning);
            }
            out.push(message);
        }
        other => {
            return Err(invalid(
                format!("{at}.role: must be `user` or `assistant`, not `{other}`"),
                "messages",
            ))
        }
    }
    Ok(())
}

/// A tool: a client tool (`input_schema`) as an OpenAI function; Anthropic's own server tools
/// (web search, code execution, ...) pass as they are, for Anthropic deployments.
fn convert_tool(raw: &RawValue) -> Result<OutTool<'_>, GatewayError> {
    let tool: InTool<'_> =
        serde_json::from_str(raw.get()).map_err(|e| invalid(format!("tools: {e}"), "tools"))?;
    let kind = tool.kind.as_deref();
    let Some(parameters) = tool
        .input_schema
        .filter(|_| matches!(kind, None | Some("custom")))
    else {
        if kind.is_none() {
            return Err(invalid(
                "tools: a tool needs `input_schema` or a `type`",
                "tools",
            ));
        }
        return Ok(OutTool::Server(raw));
    };
    let name = tool
        .name
        .ok_or_else(|| invalid("tools: a tool needs a `name`", "tools"))?;
    Ok(OutTool::Function {
        kind: "function",
        function: OutFunction {
            name: name.into_cow(),
            description: tool.description,
            parameters,
        },
        cache_control: tool.cache_control,
    })
}

/// `tool_choice` and whether parallel tool use was disabled.
fn convert_tool_choice(choice: &Value) -> Result<(Value, Option<bool>), GatewayError> {
    let parallel = choice
        .get("disable_parallel_tool_use")
        .and_then(Value::as_bool)
        .map(|disabled| !disabled);
    let out = match choice.get("type").and_then(Value::as_str) {
        Some("auto") => json!("auto"),
        Some("any") => json!("required"),
        Some("none") => json!("none"),
        Some("tool") => {
            let name = choice
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| invalid("tool_choice.name: Field required", "tool_choice"))?;
            json!({"type": "function", "function": {"name": name}})
        }
        _ => {
            return Err(invalid(
                "tool_choice.type: must be `auto`, `any`, `tool` or `none`",
                "tool_choice",
            ))
        }
    };
    Ok((out, parallel))
}

/// Anthropic's `usage` from the internal one: `input_tokens` excludes what was read from or
/// written to the prompt cache.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct MessageUsage {
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_creation_input_tokens: u64,
    pub cache_read_input_tokens: u64,
}

impl From<&Usage> for MessageUsage {
    fn from(u: &Usage) -> Self {
        let read = u.cached_tokens();
        let written = u.cache_creation_input_tokens.unwrap_or(0);
        MessageUsage {
            input_tokens: u.prompt_tokens.saturating_sub(read + written),
            output_tokens: u.completion_tokens,
            cache_creation_input_tokens: written,
            cache_read_input_tokens: read,
        }
    }
}

/// A Messages API response.
#[derive(Debug, Serialize)]
pub struct Message<'a> {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub role: &'static str,
    pub model: &'a str,
    pub content: Vec<ContentBlock<'a>>,
    pub stop_reason: Option<&'static str>,
    pub stop_sequence: Option<&'a str>,
    pub usage: MessageUsage,
}

/// One block of a Messages response's `content`.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum ContentBlock<'a> {
    /// A block kept as the internal answer carried it (thinking blocks with their signatures).
    Raw(&'a RawValue),
    Typed(TypedBlock<'a>),
}

#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum TypedBlock<'a> {
    Thinking {
        thinking: &'a str,
        signature: &'static str,
    },
    Text {
        text: &'a str,
    },
    ToolUse {
        id: &'a str,
        name: &'a str,
        input: ToolInput<'a>,
    },
}

/// A tool call's arguments as the `input` object: the JSON as generated when it is JSON, else
/// kept as a string under `_raw` (a model may emit broken JSON; the client still sees it).
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum ToolInput<'a> {
    Json(&'a RawValue),
    Empty {},
    Broken { _raw: &'a str },
}

impl<'a> ToolInput<'a> {
    fn of(arguments: &'a str) -> Self {
        if arguments.trim().is_empty() {
            return ToolInput::Empty {};
        }
        match serde_json::from_str::<&RawValue>(arguments) {
            Ok(raw) if raw.get().trim_start().starts_with('{') => ToolInput::Json(raw),
            _ => ToolInput::Broken { _raw: arguments },
        }
    }
}

/// Anthropic's `stop_reason` for an OpenAI `finish_reason`.
fn stop_reason(finish: Option<&str>) -> &'static str {
    match finish {
        Some("length") => "max_tokens",
        Some("tool_calls") | Some("function_call") => "tool_use",
        Some("content_filter") => "refusal",
        _ => "end_turn",
    }
}

/// A message id in Anthropic's form (`msg_...`).
fn message_id(id: Option<&str>) -> String {
    match id {
        Some(id) if id.starts_with("msg_") => id.to_owned(),
        Some(id) if !id.is_empty() => prefixed("msg_", id.strip_prefix("chatcmpl-").unwrap_or(id)),
        _ => prefixed("msg_", &crate::new_request_id()),
    }
}

/// `prefix` + `rest` (`format!` costs a formatter run per call on this path).
fn prefixed(prefix: &str, rest: &str) -> String {
    let mut out = String::with_capacity(prefix.len() + rest.len());
    out.push_str(prefix);
    out.push_str(rest);
    out
}

/// Convert an internal (OpenAI chat completion) response body into a Messages response;
/// `usage` as the core already read it from that body (read here when not given).
pub fn message(chat: &[u8], usage: Option<&Usage>) -> Result<Bytes, GatewayError> {
    let usage = match usage {
        Some(usage) => *usage,
        None => llmux_providers::openai_compat::extract_usage(chat).unwrap_or_default(),
    };
    let not_json = |e: serde_json::Error| {
        GatewayError::new(
            ErrorKind::UpstreamError,
            format!("the answer is not an OpenAI chat completion: {e}"),
        )
    };
    let chat: ChatAnswer<'_> = serde_json::from_slice(chat).map_err(not_json)?;
    let choice = chat.choices.first();
    let msg = choice.and_then(|c| c.message.as_ref());
    // Text parts of an array `content`, decoded first so the blocks can borrow them.
    let parts: Vec<ChatTextPart<'_>> = match msg.and_then(|m| m.content) {
        Some(raw) if raw.get().starts_with('[') => {
            serde_json::from_str(raw.get()).map_err(not_json)?
        }
        _ => Vec::new(),
    };
    let text: Option<Str<'_>> = match msg.and_then(|m| m.content) {
        Some(raw) if raw.get().starts_with('"') => {
            Some(serde_json::from_str(raw.get()).map_err(not_json)?)
        }
        _ => None,
    };
    let mut content = Vec::new();
    if let Some(msg) = msg {
        match msg.thinking_blocks.as_deref() {
            Some(blocks) if !blocks.is_empty() => {
                content.extend(blocks.iter().map(|b| ContentBlock::Raw(b)));
            }
            _ => {
                if let Some(r) = msg.reasoning_content.as_deref().filter(|r| !r.is_empty()) {
                    content.push(ContentBlock::Typed(TypedBlock::Thinking {
                        thinking: r,
                        signature: "",
                    }));
                }
            }
        }
    }
    if let Some(text) = text.as_deref().filter(|t| !t.is_empty()) {
        content.push(ContentBlock::Typed(TypedBlock::Text { text }));
    }
    for part in &parts {
        if let Some(text) = part.text.as_deref() {
            content.push(ContentBlock::Typed(TypedBlock::Text { text }));
        }
    }
    for call in msg.and_then(|m| m.tool_calls.as_deref()).unwrap_or(&[]) {
        let function = call.function.as_ref();
        content.push(ContentBlock::Typed(TypedBlock::ToolUse {
            id: call.id.as_deref().unwrap_or(""),
            name: function.and_then(|f| f.name.as_deref()).unwrap_or(""),
            input: ToolInput::of(function.and_then(|f| f.arguments.as_deref()).unwrap_or("")),
        }));
    }
    let message = Message {
        id: message_id(chat.id.as_deref()),
        kind: "message",
        role: "assistant",
        model: chat.model.as_deref().unwrap_or(""),
        content,
        stop_reason: Some(stop_reason(choice.and_then(|c| c.finish_reason.as_deref()))),
        stop_sequence: None,
        usage: MessageUsage::from(&usage),
    };
    serde_json::to_vec(&message)
        .map(Bytes::from)
        .map_err(|e| GatewayError::new(ErrorKind::Internal, e.to_string()))
}

/// Anthropic's error `type` for a gateway error.
pub fn error_type(e: &GatewayError) -> &'static str {
    match e.kind {
        ErrorKind::Authentication => "authentication_error",
        ErrorKind::PermissionDenied => "permission_error",
        ErrorKind::NotFound => "not_found_error",
        ErrorKind::PayloadTooLarge => "request_too_large",
        ErrorKind::RateLimited => "rate_limit_error",
        ErrorKind::UpstreamUnavailable if e.status == 529 || e.status == 503 => "overloaded_error",
        ErrorKind::Timeout => "timeout_error",
        ErrorKind::InvalidRequest
        | ErrorKind::BudgetExceeded
        | ErrorKind::ContextLengthExceeded
        | ErrorKind::ContentFiltered => "invalid_request_error",
        _ => match e.status {
            400 => "invalid_request_error",
            401 => "authentication_error",
            403 => "permission_error",
            404 => "not_found_error",
            413 => "request_too_large",
            429 => "rate_limit_error",
            529 => "overloaded_error",
            _ => "api_error",
        },
    }
}

/// An error body in Anthropic's shape.
pub fn error_body(e: &GatewayError) -> Bytes {
    Bytes::from(
        json!({"type": "error", "error": {"type": error_type(e), "message": e.message()}})
            .to_string(),
    )
}

/// Turns the internal SSE stream (OpenAI chat chunks) into Anthropic's event stream:
/// `message_start`, `ping`, per block `content_block_start` / `_delta` / `_stop` (thinking,
/// text, tool use), `message_delta` with the stop reason and usage, `message_stop`; an error
/// mid-stream becomes an `error` event.
#[derive(Debug, Default)]
pub struct StreamTranslator {
    pending: BytesMut,
    started: bool,
    finished: bool,
    /// The open block: its index and kind (`thinking`, `text`, `tool_use`).
    open: Option<(usize, &'static str)>,
    next_index: usize,
    /// OpenAI tool-call index -> Anthropic block index.
    tools: Vec<(u64, usize)>,
    stop_reason: Option<&'static str>,
    usage: Option<Usage>,
    /// The next data event is the translation of a native event already sent.
    skip_translation: bool,
    /// The upstream's own `message_delta` was sent: the end of the message is only its stop.
    native_delta_sent: bool,
}

fn event_raw(out: &mut BytesMut, name: &str, data: &str) {
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\ndata: ");
    out.extend_from_slice(data.as_bytes());
    out.extend_from_slice(b"\n\n");
}

/// One Messages stream event, written as Anthropic frames it (`event: <type>`, `data: <json>`).
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum StreamEvent<'a> {
    MessageStart {
        message: Message<'a>,
    },
    Ping,
    ContentBlockStart {
        index: usize,
        content_block: BlockStart<'a>,
    },
    ContentBlockDelta {
        index: usize,
        delta: BlockDelta<'a>,
    },
    ContentBlockStop {
        index: usize,
    },
    MessageDelta {
        delta: MessageDeltaBody,
        usage: MessageUsage,
    },
    MessageStop,
    Error {
        error: ErrorDetail<'a>,
    },
}

impl StreamEvent<'_> {
    fn name(&self) -> &'static str {
        match self {
            StreamEvent::MessageStart { .. } => "message_start",
            StreamEvent::Ping => "ping",
            StreamEvent::ContentBlockStart { .. } => "content_block_start",
            StreamEvent::ContentBlockDelta { .. } => "content_block_delta",
            StreamEvent::ContentBlockStop { .. } => "content_block_stop",
            StreamEvent::MessageDelta { .. } => "message_delta",
            StreamEvent::MessageStop => "message_stop",
            StreamEvent::Error { .. } => "error",
        }
    }

    fn write(&self, out: &mut BytesMut) {
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(self.name().as_bytes());
        out.extend_from_slice(b"\ndata: ");
        let mut writer = BytesWriter(out);
        // Serializing these structs cannot fail (no maps with non-string keys, no floats).
        let _ = serde_json::to_writer(&mut writer, self);
        writer.0.extend_from_slice(b"\n\n");
    }
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum BlockStart<'a> {
    Thinking {
        thinking: &'static str,
        signature: &'static str,
    },
    Text {
        text: &'static str,
    },
    ToolUse {
        id: Cow<'a, str>,
        name: &'a str,
        input: ToolInput<'static>,
    },
}

/// A `content_block_delta`'s `delta`, its `type` the variant's name + `_delta`.
#[derive(Serialize)]
#[serde(tag = "type")]
enum BlockDelta<'a> {
    #[serde(rename = "thinking_delta")]
    Thinking { thinking: &'a str },
    #[serde(rename = "signature_delta")]
    Signature { signature: &'a str },
    #[serde(rename = "text_delta")]
    Text { text: &'a str },
    #[serde(rename = "input_json_delta")]
    InputJson { partial_json: &'a str },
}

#[derive(Serialize)]
struct MessageDeltaBody {
    stop_reason: &'static str,
    stop_sequence: Option<&'static str>,
}

#[derive(Serialize)]
struct ErrorDetail<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    message: &'a str,
}

/// The first fields of an Anthropic event, to keep the translator's state in step.
#[derive(Deserialize)]
struct NativeEventHead<'a> {
    #[serde(borrow, default, rename = "type")]
    kind: Option<Str<'a>>,
    #[serde(default)]
    index: Option<usize>,
}

impl StreamTranslator {
    pub fn new() -> Self {
        StreamTranslator::default()
    }

    /// Feed bytes of the internal stream; returns the Anthropic events they complete.
    pub fn feed(&mut self, bytes: &[u8]) -> Bytes {
        self.pending.extend_from_slice(bytes);
        let mut out = BytesMut::new();
        for text in super::take_events(&mut self.pending) {
            if let Some(native) = text.strip_prefix(NATIVE_MARK) {
                self.native(native, &mut out);
                self.skip_translation = true;
                continue;
            }
            if let Some(native) = text.strip_prefix(NATIVE_ONLY_MARK) {
                self.native(native, &mut out);
                continue;
            }
            for line in text.lines() {
                if let Some(data) = line.strip_prefix("data:") {
                    if std::mem::take(&mut self.skip_translation) {
                        continue;
                    }
                    self.data(data.trim(), &mut out);
                }
            }
        }
        out.freeze()
    }

    /// The internal stream ended: close what is open and end the message (if it did not end
    /// already).
    pub fn finish(&mut self) -> Bytes {
        let mut out = BytesMut::new();
        if !self.finished {
            self.end_message(&mut out);
        }
        out.freeze()
    }

    /// An event as an Anthropic deployment sent it: sent on as it is, with the translator's
    /// state kept in step (a fallback to another provider mid-stream continues from it).
    fn native(&mut self, event: &str, out: &mut BytesMut) {
        if self.finished {
            return;
        }
        let Ok(head) = serde_json::from_str::<NativeEventHead<'_>>(event.trim()) else {
            return;
        };
        let kind = head.kind.unwrap_or_default();
        let index = head.index;
        match kind.as_ref() {
            "message_start" => self.started = true,
            "content_block_start" => {
                if let Some(i) = index {
                    self.open = Some((i, "native"));
                    self.next_index = self.next_index.max(i + 1);
                }
            }
            "content_block_stop" => self.open = None,
            "message_delta" => self.native_delta_sent = true,
            "message_stop" | "error" => self.finished = true,
            _ => {}
        }
        event_raw(out, &kind, event.trim());
    }

    fn start(&mut self, id: Option<&str>, model: Option<&str>, out: &mut BytesMut) {
        if self.started {
            return;
        }
        self.started = true;
        let message = Message {
            id: message_id(id),
            kind: "message",
            role: "assistant",
            model: model.unwrap_or(""),
            content: Vec::new(),
            stop_reason: None,
            stop_sequence: None,
            usage: MessageUsage::default(),
        };
        StreamEvent::MessageStart { message }.write(out);
        StreamEvent::Ping.write(out);
    }

    fn close_block(&mut self, out: &mut BytesMut) {
        if let Some((index, _)) = self.open.take() {
            StreamEvent::ContentBlockStop { index }.write(out);
        }
    }

    /// Make sure a block of `kind` is open (a new one unless the open one is of that kind).
    fn block(&mut self, start: BlockStart<'_>, out: &mut BytesMut) -> usize {
        let kind = match start {
            BlockStart::Thinking { .. } => "thinking",
            BlockStart::Text { .. } => "text",
            BlockStart::ToolUse { .. } => "tool_use",
        };
        if let Some((index, open)) = self.open {
            if open == kind && kind != "tool_use" {
                return index;
            }
        }
        self.close_block(out);
        let index = self.next_index;
        self.next_index += 1;
        self.open = Some((index, kind));
        StreamEvent::ContentBlockStart {
            index,
            content_block: start,
        }
        .write(out);
        index
    }

    fn delta(out: &mut BytesMut, index: usize, delta: BlockDelta<'_>) {
        StreamEvent::ContentBlockDelta { index, delta }.write(out);
    }

    fn data(&mut self, data: &str, out: &mut BytesMut) {
        const THINKING: BlockStart<'static> = BlockStart::Thinking {
            thinking: "",
            signature: "",
        };
        if self.finished {
            return;
        }
        if data == "[DONE]" {
            self.end_message(out);
            return;
        }
        let Ok(chunk) = serde_json::from_str::<ChatChunk<'_>>(data) else {
            return;
        };
        self.start(chunk.id.as_deref(), chunk.model.as_deref(), out);
        if let Some(error) = &chunk.error {
            let kind = match error.kind.as_deref() {
                Some("rate_limit_error") | Some("rate_limit_exceeded") => "rate_limit_error",
                Some("overloaded_error") => "overloaded_error",
                _ => "api_error",
            };
            let message = error.message.as_deref().unwrap_or("upstream error");
            StreamEvent::Error {
                error: ErrorDetail { kind, message },
            }
            .write(out);
            self.finished = true;
            return;
        }
        if chunk.usage.is_some() {
            self.usage = chunk.usage;
        }
        let Some(choice) = chunk.choices.first() else {
            return;
        };
        if let Some(delta) = &choice.delta {
            if let Some(r) = delta.reasoning_content.as_deref().filter(|r| !r.is_empty()) {
                let index = self.block(THINKING, out);
                Self::delta(out, index, BlockDelta::Thinking { thinking: r });
            }
            for block in delta.thinking_blocks.as_deref().unwrap_or(&[]) {
                if let Some(signature) = block.signature.as_deref().filter(|s| !s.is_empty()) {
                    let index = self.block(THINKING, out);
                    Self::delta(out, index, BlockDelta::Signature { signature });
                }
            }
            if let Some(text) = delta.content.as_deref().filter(|t| !t.is_empty()) {
                let index = self.block(BlockStart::Text { text: "" }, out);
                Self::delta(out, index, BlockDelta::Text { text });
            }
            for call in delta.tool_calls.as_deref().unwrap_or(&[]) {
                let k = call.index.unwrap_or(0);
                let function = call.function.as_ref();
                let known = self.tools.iter().find(|(t, _)| *t == k).map(|(_, i)| *i);
                let index = match known {
                    Some(i) => i,
                    None => {
                        let id = match call.id.as_deref() {
                            Some(id) => Cow::Borrowed(id),
                            None => Cow::Owned(format!("toolu_{}", crate::new_request_id())),
                        };
                        let start = BlockStart::ToolUse {
                            id,
                            name: function.and_then(|f| f.name.as_deref()).unwrap_or(""),
                            input: ToolInput::Empty {},
                        };
                        let i = self.block(start, out);
                        self.tools.push((k, i));
                        i
                    }
                };
                if let Some(args) = function
                    .and_then(|f| f.arguments.as_deref())
                    .filter(|a| !a.is_empty())
                {
                    Self::delta(out, index, BlockDelta::InputJson { partial_json: args });
                }
            }
        }
        if let Some(finish) = choice.finish_reason.as_deref() {
            self.stop_reason = Some(stop_reason(Some(finish)));
        }
    }

    fn end_message(&mut self, out: &mut BytesMut) {
        if !self.started {
            self.start(None, None, out);
        }
        self.close_block(out);
        if self.native_delta_sent {
            // The upstream's own message_delta (stop reason, usage) went out already.
            StreamEvent::MessageStop.write(out);
            self.finished = true;
            return;
        }
        let usage = self
            .usage
            .as_ref()
            .map(MessageUsage::from)
            .unwrap_or_default();
        StreamEvent::MessageDelta {
            delta: MessageDeltaBody {
                stop_reason: self.stop_reason.unwrap_or("end_turn"),
                stop_sequence: None,
            },
            usage,
        }
        .write(out);
        StreamEvent::MessageStop.write(out);
        self.finished = true;
    }
}

/// Where the first complete SSE event in `buf` ends: (length before the blank line, length of
/// the blank line).
pub(crate) fn find_event_end(buf: &[u8]) -> Option<(usize, usize)> {
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|i| (i, 2));
    let crlf = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, 4));
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests;
