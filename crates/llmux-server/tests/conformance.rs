//! One conformance suite every provider adapter runs end to end (OpenAI-shaped request in, the
//! provider's wire format to `llmux-mock`, OpenAI-shaped answer out): text, streamed text,
//! tool calls, streamed tool calls, embeddings where the provider has them, and a rate-limit
//! error. Adding a provider means adding a row here and passing it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{sse_data, start, stream_text};
use serde_json::{json, Value};

struct Row {
    provider: &'static str,
    /// `litellm_params` for the deployment; `{mock}` is the mock's `/v1` base URL.
    params: &'static str,
    embeddings: bool,
}

const ROWS: &[Row] = &[
    Row {
        provider: "openai",
        params: r#"{model: openai/gpt-mock, api_base: "{mock}", api_key: k}"#,
        embeddings: true,
    },
    Row {
        provider: "groq",
        params: r#"{model: groq/llama-mock, api_base: "{mock}", api_key: k}"#,
        embeddings: false,
    },
    Row {
        provider: "azure",
        params: r#"{model: azure/dep, api_base: "{mock}/..", api_key: k, api_version: "2024-10-21"}"#,
        embeddings: true,
    },
    Row {
        provider: "anthropic",
        params: r#"{model: anthropic/claude-mock, api_base: "{mock}", api_key: k}"#,
        embeddings: false,
    },
    Row {
        provider: "gemini",
        params: r#"{model: gemini/gemini-mock, api_base: "{mock}/..", api_key: k}"#,
        embeddings: true,
    },
    Row {
        provider: "cohere",
        params: r#"{model: cohere/command-mock, api_base: "{mock}/..", api_key: k}"#,
        embeddings: true,
    },
];

const TOOLS: &str = r#"[{"type": "function", "function": {"name": "get_weather", "description": "weather", "parameters": {"type": "object", "properties": {"location": {"type": "string"}}}}}]"#;

fn expected_text() -> String {
    (0..20).map(|i| format!("tok{i} ")).collect()
}

fn tool_args(payloads: &[String]) -> String {
    payloads
        .iter()
        .filter_map(|p| serde_json::from_str::<Value>(p).ok())
        .flat_map(|v| {
            v["choices"][0]["delta"]["tool_calls"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .filter_map(|c| c["function"]["arguments"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test]
async fn every_provider_passes_the_conformance_suite() {
    for row in ROWS {
        let p = row.provider;
        let yaml = format!(
            "model_list:\n  - model_name: m\n    litellm_params: {}\n  - model_name: limited\n    litellm_params: {}\nrouter_settings: {{num_retries: 0}}\n",
            row.params,
            row.params.replacen('{', "{extra_headers: {x-mock-status: \"429\"}, ", 1)
        );
        let h = start(&yaml).await;
        let messages = json!([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}]);
        let tools: Value = serde_json::from_str(TOOLS).unwrap();

        let r = h
            .post(
                "/v1/chat/completions",
                &json!({"model": "m", "messages": messages}),
            )
            .await;
        assert_eq!(r.status(), 200, "{p}: text");
        assert_eq!(r.headers()["x-llmux-provider"], p, "{p}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["object"], "chat.completion", "{p}");
        assert_eq!(v["choices"][0]["message"]["role"], "assistant", "{p}");
        assert_eq!(
            v["choices"][0]["message"]["content"],
            expected_text(),
            "{p}: text"
        );
        assert_eq!(v["choices"][0]["finish_reason"], "stop", "{p}");
        assert!(
            v["usage"]["prompt_tokens"].as_u64().unwrap() > 0,
            "{p}: usage"
        );

        let r = h.post("/v1/chat/completions", &json!({"model": "m", "messages": messages, "stream": true, "stream_options": {"include_usage": true}})).await;
        assert_eq!(r.status(), 200, "{p}: stream");
        let payloads = sse_data(&r.text().await.unwrap());
        assert_eq!(
            stream_text(&payloads),
            expected_text(),
            "{p}: streamed text"
        );
        assert_eq!(
            payloads.last().map(String::as_str),
            Some("[DONE]"),
            "{p}: [DONE]"
        );
        assert!(
            payloads
                .iter()
                .filter_map(|d| serde_json::from_str::<Value>(d).ok())
                .any(|v| v["usage"]["completion_tokens"]
                    .as_u64()
                    .is_some_and(|n| n > 0)),
            "{p}: streamed usage"
        );

        let r = h.post("/v1/chat/completions", &json!({"model": "m", "messages": messages, "tools": tools, "tool_choice": "required"})).await;
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["choices"][0]["finish_reason"], "tool_calls", "{p}: tools");
        let call = &v["choices"][0]["message"]["tool_calls"][0];
        assert_eq!(call["function"]["name"], "get_weather", "{p}");
        assert_eq!(
            serde_json::from_str::<Value>(call["function"]["arguments"].as_str().unwrap()).unwrap(),
            json!({"location": "Paris"}),
            "{p}"
        );

        let r = h.post("/v1/chat/completions", &json!({"model": "m", "messages": messages, "tools": tools, "tool_choice": "required", "stream": true})).await;
        let payloads = sse_data(&r.text().await.unwrap());
        assert_eq!(
            serde_json::from_str::<Value>(&tool_args(&payloads)).unwrap(),
            json!({"location": "Paris"}),
            "{p}: streamed tools"
        );

        if row.embeddings {
            let r = h
                .post(
                    "/v1/embeddings",
                    &json!({"model": "m", "input": ["a", "b"]}),
                )
                .await;
            assert_eq!(r.status(), 200, "{p}: embeddings");
            let v: Value = r.json().await.unwrap();
            assert_eq!(v["data"].as_array().unwrap().len(), 2, "{p}: embeddings");
        }

        let r = h
            .post(
                "/v1/chat/completions",
                &json!({"model": "limited", "messages": messages}),
            )
            .await;
        assert_eq!(r.status(), 429, "{p}: rate limit keeps its status");
        let e: Value = r.json().await.unwrap();
        assert!(e["error"]["message"].is_string(), "{p}: OpenAI error shape");
    }
}
