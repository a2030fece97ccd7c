//! Typed OpenAI request and response shapes for library users (`llmux::Client`).
//!
//! Every struct keeps fields it does not name in `extra`, so a field OpenAI adds tomorrow survives
//! a round trip. The HTTP server does not decode bodies into these types; it forwards raw JSON.
//! Field names are checked against the OpenAI OpenAPI spec in the tests.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::usage::Usage;

/// A message's `content`: a string or an array of parts (text, image_url, input_audio, ...).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum MessageContent {
    Text(String),
    Parts(Vec<Value>),
}

impl MessageContent {
    /// The text of the content, parts joined; non-text parts are skipped.
    pub fn text(&self) -> String {
        match self {
            MessageContent::Text(text) => text.clone(),
            MessageContent::Parts(parts) => parts
                .iter()
                .filter_map(|p| p.get("text").and_then(Value::as_str))
                .collect::<Vec<_>>()
                .join(""),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FunctionCall {
    pub name: String,
    pub arguments: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolCall {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub function: FunctionCall,
}

/// One message of a conversation (request) or the assistant's answer (response).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    #[serde(default)]
    pub content: Option<MessageContent>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCall>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refusal: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl ChatMessage {
    fn with_text(role: &str, text: impl Into<String>) -> Self {
        ChatMessage {
            role: role.to_owned(),
            content: Some(MessageContent::Text(text.into())),
            name: None,
            tool_calls: None,
            tool_call_id: None,
            refusal: None,
            extra: Map::new(),
        }
    }

    pub fn system(text: impl Into<String>) -> Self {
        Self::with_text("system", text)
    }

    pub fn user(text: impl Into<String>) -> Self {
        Self::with_text("user", text)
    }

    pub fn assistant(text: impl Into<String>) -> Self {
        Self::with_text("assistant", text)
    }

    pub fn tool(tool_call_id: impl Into<String>, text: impl Into<String>) -> Self {
        let mut message = Self::with_text("tool", text);
        message.tool_call_id = Some(tool_call_id.into());
        message
    }

    /// The message's text, or "" when it has none.
    pub fn text(&self) -> String {
        self.content
            .as_ref()
            .map(MessageContent::text)
            .unwrap_or_default()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FunctionDefinition {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strict: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tool {
    #[serde(rename = "type")]
    pub kind: String,
    pub function: FunctionDefinition,
}

impl Tool {
    pub fn function(
        name: impl Into<String>,
        description: impl Into<String>,
        parameters: Value,
    ) -> Self {
        Tool {
            kind: "function".to_owned(),
            function: FunctionDefinition {
                name: name.into(),
                description: Some(description.into()),
                parameters: Some(parameters),
                strict: None,
            },
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StreamOptions {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub include_usage: Option<bool>,
}

/// `POST /v1/chat/completions` request body.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChatCompletionRequest {
    pub model: String,
    pub messages: Vec<ChatMessage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_options: Option<StreamOptions>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_completion_tokens: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<Vec<Tool>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_choice: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_format: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_logprobs: Option<u32>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl ChatCompletionRequest {
    pub fn new(model: impl Into<String>, messages: Vec<ChatMessage>) -> Self {
        ChatCompletionRequest {
            model: model.into(),
            messages,
            ..ChatCompletionRequest::default()
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatChoice {
    pub index: u32,
    pub message: ChatMessage,
    #[serde(default)]
    pub finish_reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<Value>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `POST /v1/chat/completions` response body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatCompletionResponse {
    pub id: String,
    pub object: String,
    pub created: u64,
    pub model: String,
    pub choices: Vec<ChatChoice>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_fingerprint: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl ChatCompletionResponse {
    /// The first choice's text, the common case.
    pub fn text(&self) -> String {
        self.choices
            .first()
            .map(|c| c.message.text())
            .unwrap_or_default()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FunctionCallDelta {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arguments: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolCallDelta {
    pub index: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function: Option<FunctionCallDelta>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChatDelta {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCallDelta>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refusal: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChunkChoice {
    pub index: u32,
    #[serde(default)]
    pub delta: ChatDelta,
    #[serde(default)]
    pub finish_reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<Value>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// One `data:` event of a streamed chat completion.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatCompletionChunk {
    pub id: String,
    pub object: String,
    pub created: u64,
    pub model: String,
    #[serde(default)]
    pub choices: Vec<ChunkChoice>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `input` of an embeddings request: text, texts, tokens, or token arrays.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum EmbeddingInput {
    Text(String),
    Texts(Vec<String>),
    Tokens(Vec<u32>),
    TokenArrays(Vec<Vec<u32>>),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EmbeddingRequest {
    pub model: String,
    pub input: EmbeddingInput,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoding_format: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dimensions: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl EmbeddingRequest {
    pub fn new(model: impl Into<String>, input: EmbeddingInput) -> Self {
        EmbeddingRequest {
            model: model.into(),
            input,
            encoding_format: None,
            dimensions: None,
            user: None,
            extra: Map::new(),
        }
    }
}

/// An embedding vector: floats, or base64 of little-endian f32 with `encoding_format: base64`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum EmbeddingVector {
    Float(Vec<f32>),
    Base64(String),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Embedding {
    pub object: String,
    pub index: u32,
    pub embedding: EmbeddingVector,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EmbeddingResponse {
    pub object: String,
    pub data: Vec<Embedding>,
    pub model: String,
    #[serde(default)]
    pub usage: Usage,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Model {
    pub id: String,
    pub object: String,
    pub created: u64,
    pub owned_by: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelList {
    pub object: String,
    pub data: Vec<Model>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec() -> Option<Value> {
        let path = format!(
            "{}/../../tests/fixtures/specs/openai-openapi.json",
            std::env::var("CARGO_MANIFEST_DIR").unwrap()
        );
        let text = std::fs::read_to_string(&path).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Properties and required names of a component schema, following `allOf` and `$ref`.
    fn schema_fields(spec: &Value, name: &str) -> (Vec<String>, Vec<String>) {
        let mut props = Vec::new();
        let mut required = Vec::new();
        collect_fields(
            spec,
            &spec["components"]["schemas"][name],
            &mut props,
            &mut required,
        );
        (props, required)
    }

    fn collect_fields(
        spec: &Value,
        schema: &Value,
        props: &mut Vec<String>,
        required: &mut Vec<String>,
    ) {
        if let Some(r) = schema["$ref"].as_str() {
            let target = &spec["components"]["schemas"][r.rsplit('/').next().unwrap()];
            return collect_fields(spec, target, props, required);
        }
        for part in schema["allOf"].as_array().into_iter().flatten() {
            collect_fields(spec, part, props, required);
        }
        if let Some(p) = schema["properties"].as_object() {
            props.extend(p.keys().cloned());
        }
        if let Some(r) = schema["required"].as_array() {
            required.extend(r.iter().filter_map(Value::as_str).map(str::to_owned));
        }
    }

    /// Our serialization of `value` must use only the spec's field names and carry every required one.
    fn check_against_spec(spec: &Value, schema: &str, value: &Value) {
        let (props, required) = schema_fields(spec, schema);
        assert!(!props.is_empty(), "schema {schema} not found in spec");
        let obj = value.as_object().unwrap();
        for key in obj.keys() {
            assert!(
                props.contains(key),
                "{schema}: field `{key}` is not in the OpenAI spec"
            );
        }
        for key in required {
            assert!(
                obj.contains_key(&key),
                "{schema}: required field `{key}` missing"
            );
        }
    }

    #[test]
    fn types_match_the_openai_spec() {
        let Some(spec) = spec() else {
            panic!("tests/fixtures/specs/openai-openapi.json is required for this test");
        };
        let mut request = ChatCompletionRequest::new("gpt-4o", vec![ChatMessage::user("hi")]);
        request.stream = Some(true);
        request.stream_options = Some(StreamOptions {
            include_usage: Some(true),
        });
        request.temperature = Some(0.5);
        request.top_p = Some(1.0);
        request.max_tokens = Some(5);
        request.max_completion_tokens = Some(5);
        request.n = Some(1);
        request.stop = Some(json!(["x"]));
        request.tools = Some(vec![Tool::function("f", "d", json!({"type": "object"}))]);
        request.tool_choice = Some(json!("auto"));
        request.response_format = Some(json!({"type": "json_object"}));
        request.seed = Some(1);
        request.logprobs = Some(true);
        request.top_logprobs = Some(2);
        request.user = Some("u".into());
        let request_json = serde_json::to_value(&request).unwrap();
        check_against_spec(&spec, "CreateChatCompletionRequest", &request_json);

        let response: ChatCompletionResponse = serde_json::from_value(json!({
            "id": "c1", "object": "chat.completion", "created": 1, "model": "gpt-4o",
            "system_fingerprint": "fp",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi", "refusal": null},
                         "finish_reason": "stop", "logprobs": null}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}
        }))
        .unwrap();
        let response_json = serde_json::to_value(&response).unwrap();
        check_against_spec(&spec, "CreateChatCompletionResponse", &response_json);
        check_against_spec(&spec, "CompletionUsage", &response_json["usage"]);

        let chunk: ChatCompletionChunk = serde_json::from_value(json!({
            "id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o",
            "choices": [{"index": 0, "delta": {"role": "assistant", "content": "h"}, "finish_reason": null}]
        }))
        .unwrap();
        let chunk_json = serde_json::to_value(&chunk).unwrap();
        check_against_spec(&spec, "CreateChatCompletionStreamResponse", &chunk_json);
        check_against_spec(
            &spec,
            "ChatCompletionStreamResponseDelta",
            &chunk_json["choices"][0]["delta"],
        );

        let embeddings = EmbeddingResponse {
            object: "list".into(),
            data: vec![Embedding {
                object: "embedding".into(),
                index: 0,
                embedding: EmbeddingVector::Float(vec![0.5]),
            }],
            model: "e".into(),
            usage: Usage::new(1, 0),
            extra: Map::new(),
        };
        let embeddings_json = serde_json::to_value(&embeddings).unwrap();
        check_against_spec(&spec, "CreateEmbeddingResponse", &embeddings_json);
        check_against_spec(&spec, "Embedding", &embeddings_json["data"][0]);

        let mut embed_request = EmbeddingRequest::new("e", EmbeddingInput::Tokens(vec![1, 2]));
        embed_request.encoding_format = Some("float".into());
        embed_request.dimensions = Some(8);
        check_against_spec(
            &spec,
            "CreateEmbeddingRequest",
            &serde_json::to_value(&embed_request).unwrap(),
        );

        let models = ModelList {
            object: "list".into(),
            data: vec![Model {
                id: "m".into(),
                object: "model".into(),
                created: 0,
                owned_by: "o".into(),
            }],
        };
        let models_json = serde_json::to_value(&models).unwrap();
        check_against_spec(&spec, "ListModelsResponse", &models_json);
        check_against_spec(&spec, "Model", &models_json["data"][0]);

        let error = crate::ErrorEnvelope::new(crate::ErrorKind::RateLimited, "slow down");
        let error_json = serde_json::to_value(&error).unwrap();
        check_against_spec(&spec, "ErrorResponse", &error_json);
        check_against_spec(&spec, "Error", &error_json["error"]);
    }

    #[test]
    fn unknown_fields_survive_a_round_trip() {
        let input = json!({
            "model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": "a"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}], "x_msg": 1}],
            "x_top": {"nested": true}
        });
        let parsed: ChatCompletionRequest = serde_json::from_value(input.clone()).unwrap();
        assert_eq!(parsed.messages[0].text(), "a");
        assert_eq!(serde_json::to_value(&parsed).unwrap(), input);
    }

    #[test]
    fn embedding_inputs_of_every_shape_parse() {
        for (input, expect_tokens) in [
            (json!("a"), false),
            (json!(["a", "b"]), false),
            (json!([1, 2, 3]), true),
            (json!([[1, 2], [3]]), true),
        ] {
            let req: EmbeddingRequest =
                serde_json::from_value(json!({"model": "e", "input": input})).unwrap();
            let is_tokens = matches!(
                req.input,
                EmbeddingInput::Tokens(_) | EmbeddingInput::TokenArrays(_)
            );
            assert_eq!(is_tokens, expect_tokens);
        }
    }
}
