//! Vertex AI: URLs, bodies and credentials handling. Response and stream translation are the
//! Gemini and Anthropic adapters' (tested on recorded traffic there); the Vertex-captured
//! stream fixture runs through the Vertex target here.

use std::collections::HashMap;

use bytes::Bytes;
use serde_json::{json, Value};

use super::*;
use crate::auth::OAuthGrant;
use crate::sse::SseSplitter;
use crate::DecodedEvent;

const SA: &str = r#"{"type": "service_account", "project_id": "proj-from-key", "private_key_id": "k1",
  "private_key": "-----BEGIN PRIVATE KEY-----\nMIIB\n-----END PRIVATE KEY-----\n",
  "client_email": "llmux@proj-from-key.iam.gserviceaccount.com", "token_uri": "http://127.0.0.1:9/token"}"#;

fn build(params: &str, env: &[(&str, &str)]) -> (Option<VertexTarget>, Vec<Diagnostic>) {
    let env: HashMap<String, String> = env
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let loaded = llmux_config::load_str(
        &format!("model_list: [{{model_name: m, litellm_params: {params}}}]"),
        &env,
    )
    .unwrap();
    let dep = &loaded.config.deployments[0];
    let model = dep.model.split_once('/').unwrap().1.to_owned();
    let mut diags = Vec::new();
    let target = VertexTarget::new(&model, dep, &loaded.config, &env, &mut diags);
    (target, diags)
}

fn request(target: &VertexTarget, op: Operation, body: Value) -> (String, Value) {
    let bytes = serde_json::to_vec(&body).unwrap();
    let obj = RawObject::parse(&bytes).unwrap();
    let r = target
        .build_request(
            op,
            &obj,
            RequestContext {
                wildcard: None,
                drop_params: false,
            },
        )
        .unwrap();
    assert!(matches!(r.auth, Some(UpstreamAuth::OAuth(_))));
    (r.url, serde_json::from_slice(&r.body).unwrap())
}

#[test]
fn gemini_on_vertex_uses_project_location_urls_and_gemini_bodies() {
    let (t, diags) = build(
        r#"{model: vertex_ai/gemini-2.5-pro, vertex_project: p1, vertex_location: europe-west4}"#,
        &[("GOOGLE_APPLICATION_CREDENTIALS", "/nonexistent")],
    );
    assert!(t.is_none(), "an unreadable credentials file is an error");
    assert!(diags[0].message.contains("/nonexistent"));

    let dir = std::env::temp_dir().join(format!("llmux-vertex-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("sa.json");
    std::fs::write(&path, SA).unwrap();
    let (t, _) = build(
        r#"{model: vertex_ai/gemini-2.5-pro, vertex_project: p1, vertex_location: europe-west4}"#,
        &[("GOOGLE_APPLICATION_CREDENTIALS", path.to_str().unwrap())],
    );
    let t = t.unwrap();
    let messages =
        json!([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]);
    let (url, body) = request(
        &t,
        Operation::Chat,
        json!({"model": "m", "messages": messages, "temperature": 0.3}),
    );
    assert_eq!(url, "https://europe-west4-aiplatform.googleapis.com/v1/projects/p1/locations/europe-west4/publishers/google/models/gemini-2.5-pro:generateContent");
    assert_eq!(body["systemInstruction"]["parts"][0]["text"], "Be brief.");
    assert_eq!(body["generationConfig"]["temperature"], 0.3);
    let (url, _) = request(
        &t,
        Operation::Chat,
        json!({"model": "m", "messages": messages, "stream": true}),
    );
    assert!(url.ends_with("gemini-2.5-pro:streamGenerateContent?alt=sse"));
    let UpstreamAuth::OAuth(source) = t.auth.clone().unwrap() else {
        panic!()
    };
    assert_eq!(source.token_url, "http://127.0.0.1:9/token");
    assert_eq!(source.scope, GOOGLE_CLOUD_SCOPE);
    assert!(matches!(source.grant, OAuthGrant::JwtBearer { .. }));
}

#[test]
fn claude_on_vertex_uses_raw_predict_without_model_in_the_body() {
    let (t, _) = build(
        &format!("{{model: vertex_ai/claude-sonnet-4@20250514, vertex_location: global, vertex_credentials: {SA:?}}}"),
        &[],
    );
    let t = t.unwrap();
    assert!(!t.supports(Operation::Embeddings));
    let (url, body) = request(
        &t,
        Operation::Chat,
        json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": true}),
    );
    assert_eq!(url, "https://aiplatform.googleapis.com/v1/projects/proj-from-key/locations/global/publishers/anthropic/models/claude-sonnet-4@20250514:streamRawPredict");
    assert_eq!(body["anthropic_version"], ANTHROPIC_VERTEX_VERSION);
    assert!(body.get("model").is_none());
    assert_eq!(body["messages"][0]["content"][0]["text"], "hi");
}

#[test]
fn vertex_embeddings_use_predict_instances() {
    let (t, _) = build(
        &format!("{{model: vertex_ai/text-embedding-005, vertex_project: p2, api_base: \"http://localhost:1\", vertex_credentials: {SA:?}}}"),
        &[],
    );
    let t = t.unwrap();
    let (url, body) = request(
        &t,
        Operation::Embeddings,
        json!({"model": "m", "input": ["a", "b"], "dimensions": 64}),
    );
    assert_eq!(url, "http://localhost:1/v1/projects/p2/locations/us-central1/publishers/google/models/text-embedding-005:predict");
    assert_eq!(
        body,
        json!({"instances": [{"content": "a"}, {"content": "b"}], "parameters": {"outputDimensionality": 64}})
    );
    let answer = br#"{"predictions": [{"embeddings": {"values": [0.1], "statistics": {"token_count": 2, "truncated": false}}},
        {"embeddings": {"values": [0.2], "statistics": {"token_count": 3, "truncated": false}}}]}"#;
    let out = t
        .parse_response(Operation::Embeddings, Bytes::from_static(answer))
        .unwrap();
    let v: Value = serde_json::from_slice(&out.body).unwrap();
    assert_eq!(v["data"][1]["embedding"], json!([0.2]));
    assert_eq!(out.usage.unwrap().prompt_tokens, 5);
}

#[test]
fn missing_project_is_an_error_and_missing_credentials_a_warning() {
    let (t, diags) = build(r#"{model: vertex_ai/gemini-2.5-flash}"#, &[]);
    assert!(t.is_none());
    assert!(diags
        .iter()
        .any(|d| d.message.contains("no Vertex AI project")));
    let (t, diags) = build(
        r#"{model: vertex_ai/gemini-2.5-flash, vertex_project: p}"#,
        &[],
    );
    assert!(t.unwrap().auth.is_none());
    assert!(diags
        .iter()
        .any(|d| d.message.contains("no Google credentials")));
    let (t, diags) = build(
        r#"{model: vertex_ai/gemini-2.5-flash, vertex_project: p, vertex_credentials: "{\"type\": \"service_account\"}"}"#,
        &[],
    );
    assert!(t.is_none());
    assert!(diags.iter().any(|d| d.message.contains("private_key")));
}

#[test]
fn recorded_vertex_stream_decodes_through_the_vertex_target() {
    let (t, _) = build(
        &format!("{{model: vertex_ai/gemini-3-pro-preview, vertex_credentials: {SA:?}}}"),
        &[],
    );
    let t = t.unwrap();
    let text = std::fs::read_to_string(format!(
        "{}/../../tests/fixtures/providers/google/google-stream-no-args-tool-call.chunks.txt",
        std::env::var("CARGO_MANIFEST_DIR").unwrap()
    ))
    .unwrap();
    let mut splitter = SseSplitter::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        splitter.push(format!("data: {line}\r\n\r\n").as_bytes());
    }
    let mut decoder = t.stream_decoder(Operation::Chat);
    let mut names = Vec::new();
    while let Some(event) = splitter.next_event().unwrap() {
        if let DecodedEvent::Chunk { bytes, .. } = decoder.decode(event) {
            let s = String::from_utf8(bytes.to_vec()).unwrap();
            for data in s.split("\n\n").filter_map(|e| e.strip_prefix("data: ")) {
                if data == "[DONE]" {
                    continue;
                }
                let v: Value = serde_json::from_str(data).unwrap();
                for call in v["choices"][0]["delta"]["tool_calls"]
                    .as_array()
                    .into_iter()
                    .flatten()
                {
                    if let Some(n) = call["function"]["name"].as_str() {
                        names.push(n.to_owned());
                    }
                }
            }
        }
    }
    assert!(names.len() >= 2, "parallel calls: {names:?}");
}
