//! The one record of a finished request that every sink reads: what the core logged, who
//! called, and LiteLLM's `StandardLoggingPayload` built from them once, on first use, off the
//! request path (and its JSON, serialized once for every sink that ships it as is).

use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use llmux::{Operation, Outcome, RequestLog};
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::Value;

use crate::redact;

/// What `messages` and `response` say when message logging is off.
pub const REDACTED: &str = "redacted-by-llmux";

/// The most of a prompt or an answer a record carries (serialized): a sink's batch limit
/// (Langfuse 3.5 MB, an OTLP receiver's 4 MiB) must not be blown by one request.
pub const MAX_LOGGED_BYTES: usize = 256 * 1024;

/// `text` cut to at most `max` bytes (at a character boundary), marked when cut.
pub fn truncated(text: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if text.len() <= max {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    std::borrow::Cow::Owned(format!("{}...[truncated by llmux]", &text[..end]))
}

/// `value` as raw JSON, or its serialization cut to `MAX_LOGGED_BYTES` (as a string) when it
/// is larger.
fn capped(value: &Value) -> Option<Box<RawValue>> {
    let text = value.to_string();
    if text.len() <= MAX_LOGGED_BYTES {
        return RawValue::from_string(text).ok();
    }
    serde_json::value::to_raw_value(&truncated(&text, MAX_LOGGED_BYTES)).ok()
}

/// Raw JSON as logged: as it is when no masking applies and it fits, else parsed, masked and
/// capped.
fn logged(raw: &RawValue, mask_pii: bool) -> Option<Box<RawValue>> {
    if !mask_pii && raw.get().len() <= MAX_LOGGED_BYTES {
        return Some(raw.to_owned());
    }
    let mut value: Value = serde_json::from_str(raw.get()).ok()?;
    if mask_pii {
        redact::mask_value(&mut value);
    }
    capped(&value)
}

/// `"redacted-by-llmux"` as raw JSON.
fn redacted() -> Option<Box<RawValue>> {
    serde_json::value::to_raw_value(REDACTED).ok()
}

/// Who made a request (what governance knows; all `None` for the master key or without it).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Caller {
    pub key_hash: Option<Arc<str>>,
    pub key_alias: Option<Arc<str>>,
    pub team_id: Option<Arc<str>>,
    pub team_alias: Option<Arc<str>>,
    pub user_id: Option<Arc<str>>,
    pub user_email: Option<Arc<str>>,
    pub org_id: Option<Arc<str>>,
    pub end_user: Option<Arc<str>>,
}

/// The request's own span: its trace, its id, and the client's span it continues.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestSpan {
    pub trace_id: u128,
    pub span_id: u64,
    /// The client's span (`traceparent`), when it sent one.
    pub parent: Option<u64>,
    pub sampled: bool,
}

/// A finished request, as every sink and the tracer read it.
#[derive(Debug)]
pub struct Finished {
    pub log: RequestLog,
    pub caller: Caller,
    /// LiteLLM's call type (`acompletion`, `aembedding`, `anthropic_messages`, ...).
    pub call_type: &'static str,
    /// The route it came in on (`/v1/chat/completions`).
    pub route: &'static str,
    pub span: Option<RequestSpan>,
    /// Prompts and answers may be logged (`turn_off_message_logging` and its overrides).
    pub message_logging: bool,
    /// Mask emails, phone numbers, card numbers and secrets in what is logged.
    pub mask_pii: bool,
    pub tags: Vec<String>,
    standard: OnceLock<StandardLoggingPayload>,
    json: OnceLock<Bytes>,
    input: OnceLock<Option<Box<RawValue>>>,
    output: OnceLock<Option<Box<RawValue>>>,
}

impl Finished {
    pub fn new(
        mut log: RequestLog,
        caller: Caller,
        call_type: &'static str,
        route: &'static str,
    ) -> Self {
        // A client names the model, at any length: a record carries 256 bytes of it.
        if log.requested_model.len() > 256 {
            log.requested_model = truncated(&log.requested_model, 256).into_owned();
        }
        Finished {
            log,
            caller,
            call_type,
            route,
            span: None,
            message_logging: true,
            mask_pii: false,
            tags: Vec::new(),
            standard: OnceLock::new(),
            json: OnceLock::new(),
            input: OnceLock::new(),
            output: OnceLock::new(),
        }
    }

    /// About how many bytes the record holds (its kept bodies): what queues are bounded by.
    pub fn weight(&self) -> usize {
        let detail = self.log.detail.as_deref();
        let body = |b: Option<&Bytes>| b.map_or(0, Bytes::len);
        1024 + detail.map_or(0, |d| {
            d.error.as_ref().map_or(0, String::len)
                + body(d.request_body.as_ref())
                + body(d.response_body.as_ref())
                + d.delivered
                    .as_ref()
                    .map_or(0, llmux::DeliveredText::kept_bytes)
        })
    }

    pub fn succeeded(&self) -> bool {
        !matches!(self.log.outcome, Outcome::Failed(_))
    }

    /// The model the upstream was asked for (the last attempt's; the deployment's
    /// `litellm_params.model` or the requested name when no attempt was recorded).
    pub fn upstream_model(&self) -> &str {
        self.log
            .detail
            .as_ref()
            .and_then(|d| d.attempts.last())
            .map(|a| a.model.as_str())
            .or(self.log.model.as_deref())
            .unwrap_or(&self.log.requested_model)
    }

    pub fn ended_at(&self) -> SystemTime {
        self.log.started_at + self.log.duration
    }

    /// LiteLLM's `StandardLoggingPayload` for this request (built on first use).
    pub fn standard(&self) -> &StandardLoggingPayload {
        self.standard
            .get_or_init(|| StandardLoggingPayload::of(self))
    }

    /// The payload as JSON (serialized on first use).
    pub fn standard_json(&self) -> &Bytes {
        self.json.get_or_init(|| {
            serde_json::to_vec(self.standard())
                .map(Bytes::from)
                .unwrap_or_default()
        })
    }

    /// The prompt as logged (raw JSON, worked out once): the request's `messages` (`prompt`,
    /// `input` or `documents` for the other operations), redacted or masked as configured;
    /// `None` when the core did not keep the body.
    pub fn logged_input(&self) -> Option<&RawValue> {
        self.input
            .get_or_init(|| {
                if !self.message_logging {
                    return redacted();
                }
                let body = self.log.detail.as_ref()?.request_body.as_ref()?;
                let field = match self.log.operation {
                    Operation::Chat => "messages",
                    Operation::Completions => "prompt",
                    Operation::Embeddings => "input",
                    Operation::Rerank => "documents",
                };
                let object = llmux::types::RawObject::parse(body).ok()?;
                logged(object.get(field)?, self.mask_pii)
            })
            .as_deref()
    }

    /// The answer as logged (raw JSON, worked out once): a JSON answer as it was sent, a
    /// stream's delivered text as one assistant message; redacted or masked as configured.
    pub fn logged_output(&self) -> Option<&RawValue> {
        self.output
            .get_or_init(|| {
                if !self.message_logging {
                    return redacted();
                }
                let detail = self.log.detail.as_ref()?;
                if let Some(text) = detail.stream_text() {
                    let mut value = serde_json::json!({
                        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}}]
                    });
                    if self.mask_pii {
                        redact::mask_value(&mut value);
                    }
                    return capped(&value);
                }
                if self.log.stream || !self.succeeded() {
                    return None;
                }
                let body = detail.response_body.as_ref()?;
                let raw = serde_json::from_slice::<&RawValue>(body).ok()?;
                logged(raw, self.mask_pii)
            })
            .as_deref()
    }

    /// The failure's message, masked as configured (it may quote the prompt).
    pub fn error_message(&self) -> Option<String> {
        let message = self.log.detail.as_ref()?.error.as_deref()?;
        let kind = match self.log.outcome {
            Outcome::Failed(kind) => kind.as_str(),
            _ => REDACTED,
        };
        Some(self.logged_error(kind, message))
    }

    /// An error's message as logged: only its kind when message logging is off (an upstream's
    /// message may quote the prompt), masked as configured, at most 4 KiB.
    pub fn logged_error(&self, kind: &str, message: &str) -> String {
        if !self.message_logging {
            return kind.to_owned();
        }
        let message = truncated(message, 4096);
        if self.mask_pii {
            redact::mask_text(&message).into_owned()
        } else {
            message.into_owned()
        }
    }
}

/// Seconds since the Unix epoch, as LiteLLM writes times.
pub fn epoch_seconds(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs_f64()
}

/// LiteLLM's `StandardLoggingPayload` (its field names and shapes), for sinks that ship it.
#[derive(Debug, Clone, Serialize)]
#[allow(non_snake_case)]
pub struct StandardLoggingPayload {
    pub id: String,
    pub trace_id: String,
    pub call_type: &'static str,
    pub stream: bool,
    pub response_cost: f64,
    pub status: &'static str,
    pub custom_llm_provider: Option<&'static str>,
    pub total_tokens: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub startTime: f64,
    pub endTime: f64,
    pub completionStartTime: f64,
    pub response_time: f64,
    /// The model the upstream was asked for; the requested name when none was chosen.
    pub model: String,
    pub model_id: Option<String>,
    pub model_group: Option<String>,
    pub api_base: String,
    pub metadata: StandardLoggingMetadata,
    pub cache_hit: bool,
    pub cache_key: Option<String>,
    pub saved_cache_cost: f64,
    pub request_tags: Vec<String>,
    pub end_user: Option<String>,
    pub requester_ip_address: Option<String>,
    pub messages: Option<Box<RawValue>>,
    pub response: Option<Box<RawValue>>,
    pub error_str: Option<String>,
    pub error_information: Option<ErrorInformation>,
    pub model_parameters: Value,
    pub hidden_params: HiddenParams,
}

/// `StandardLoggingMetadata`: the caller.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct StandardLoggingMetadata {
    pub user_api_key_hash: Option<String>,
    pub user_api_key_alias: Option<String>,
    pub user_api_key_team_id: Option<String>,
    pub user_api_key_team_alias: Option<String>,
    pub user_api_key_user_id: Option<String>,
    pub user_api_key_user_email: Option<String>,
    pub user_api_key_org_id: Option<String>,
    pub user_api_key_end_user_id: Option<String>,
    pub requested_model: String,
    pub attempts: usize,
    pub recoveries: u32,
}

/// `StandardLoggingPayloadErrorInformation`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ErrorInformation {
    pub error_code: String,
    pub error_class: String,
    pub llm_provider: String,
    pub error_message: String,
}

/// `StandardLoggingHiddenParams`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct HiddenParams {
    pub model_id: Option<String>,
    pub response_cost: f64,
    pub litellm_overhead_time_ms: f64,
    pub litellm_model_name: Option<String>,
}

fn owned(value: &Option<Arc<str>>) -> Option<String> {
    value.as_deref().map(str::to_owned)
}

impl StandardLoggingPayload {
    fn of(finished: &Finished) -> Self {
        let log = &finished.log;
        let usage = log.usage.unwrap_or_default();
        let start = epoch_seconds(log.started_at);
        let end = epoch_seconds(finished.ended_at());
        let first = log
            .time_to_first_chunk
            .map_or(end, |t| start + t.as_secs_f64());
        let response_time = log
            .time_to_first_chunk
            .unwrap_or(log.duration)
            .as_secs_f64();
        let cost = log.cost.unwrap_or(0.0);
        let error = finished.error_message();
        let error_information = match log.outcome {
            Outcome::Failed(kind) => Some(ErrorInformation {
                error_code: log.status.to_string(),
                error_class: kind.as_str().to_owned(),
                llm_provider: log.provider.unwrap_or("").to_owned(),
                error_message: error.clone().unwrap_or_default(),
            }),
            _ => None,
        };
        let caller = &finished.caller;
        StandardLoggingPayload {
            id: log.request_id.clone(),
            trace_id: finished.span.map_or_else(
                || log.request_id.clone(),
                |s| format!("{:032x}", s.trace_id),
            ),
            call_type: finished.call_type,
            stream: log.stream,
            response_cost: cost,
            status: if finished.succeeded() {
                "success"
            } else {
                "failure"
            },
            custom_llm_provider: log.provider,
            total_tokens: usage.total_tokens,
            prompt_tokens: usage.prompt_tokens,
            completion_tokens: usage.completion_tokens,
            startTime: start,
            endTime: end,
            completionStartTime: first,
            response_time,
            model: finished.upstream_model().to_owned(),
            model_id: log.deployment_id.clone(),
            model_group: log.model_group.clone(),
            api_base: String::new(),
            metadata: StandardLoggingMetadata {
                user_api_key_hash: owned(&caller.key_hash),
                user_api_key_alias: owned(&caller.key_alias),
                user_api_key_team_id: owned(&caller.team_id),
                user_api_key_team_alias: owned(&caller.team_alias),
                user_api_key_user_id: owned(&caller.user_id),
                user_api_key_user_email: owned(&caller.user_email),
                user_api_key_org_id: owned(&caller.org_id),
                user_api_key_end_user_id: owned(&caller.end_user),
                requested_model: log.requested_model.clone(),
                attempts: log.detail.as_ref().map_or(0, |d| d.attempts.len()),
                recoveries: log.recoveries,
            },
            cache_hit: log.cache_hit == Some(true),
            cache_key: None,
            saved_cache_cost: 0.0,
            request_tags: finished.tags.clone(),
            end_user: owned(&caller.end_user),
            requester_ip_address: None,
            messages: finished.logged_input().map(RawValue::to_owned),
            response: finished.logged_output().map(RawValue::to_owned),
            error_str: error,
            error_information,
            model_parameters: model_parameters(finished),
            hidden_params: HiddenParams {
                model_id: log.deployment_id.clone(),
                response_cost: cost,
                litellm_overhead_time_ms: log.overhead.as_secs_f64() * 1000.0,
                litellm_model_name: log.model.clone(),
            },
        }
    }
}

/// The request's sampling parameters (a fixed list: nothing that can carry prompt text), when
/// the body was kept.
fn model_parameters(finished: &Finished) -> Value {
    const PARAMETERS: [&str; 20] = [
        "temperature",
        "top_p",
        "top_k",
        "max_tokens",
        "max_completion_tokens",
        "n",
        "presence_penalty",
        "frequency_penalty",
        "seed",
        "stream",
        "logprobs",
        "top_logprobs",
        "parallel_tool_calls",
        "reasoning_effort",
        "dimensions",
        "encoding_format",
        "top_n",
        "service_tier",
        "tool_choice",
        "store",
    ];
    let Some(body) = finished
        .log
        .detail
        .as_ref()
        .and_then(|d| d.request_body.as_ref())
    else {
        return Value::Object(Default::default());
    };
    let Ok(object) = llmux::types::RawObject::parse(body) else {
        return Value::Object(Default::default());
    };
    Value::Object(
        PARAMETERS
            .iter()
            .filter_map(|name| {
                let raw = object.get(name)?;
                Some(((*name).to_owned(), serde_json::from_str(raw.get()).ok()?))
            })
            .collect(),
    )
}
