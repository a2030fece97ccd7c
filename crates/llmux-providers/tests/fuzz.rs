//! Fuzzing by property at scale: the parsers that read what upstreams send (the JSON member
//! scan, SSE and AWS event-stream framing, every native adapter's response, error and stream
//! translation) and the request translation fed arbitrary client JSON never panic, and the
//! framings give the same result however the bytes are split. Cases per property:
//! `LLMUX_FUZZ_CASES` (256 by default; `scripts/test.sh` runs a larger batch).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use llmux_providers::eventstream::{decode_message, encode_event, EventStreamSplitter};
use llmux_providers::registry::{native_target, resolve};
use llmux_providers::sse::{parse_fields, SseSplitter};
use llmux_providers::ResolvedProvider;
use llmux_providers::{json_scan, openai_compat, Operation, Provider, RequestContext};
use llmux_types::RawObject;
use proptest::prelude::*;
use serde_json::{json, Value};

fn cases() -> u32 {
    std::env::var("LLMUX_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256)
}

/// Every native adapter, built the way the router builds it.
fn natives() -> Vec<(String, Arc<dyn Provider>)> {
    let dir = env!("CARGO_MANIFEST_DIR");
    let yaml = format!(
        "model_list:
  - {{model_name: a, litellm_params: {{model: anthropic/claude-sonnet-4-5, api_key: k}}}}
  - {{model_name: g, litellm_params: {{model: gemini/gemini-2.5-flash, api_key: k}}}}
  - {{model_name: c, litellm_params: {{model: cohere/command-r, api_key: k}}}}
  - {{model_name: b, litellm_params: {{model: bedrock/anthropic.claude-3-haiku-20240307-v1:0, aws_access_key_id: AKID, aws_secret_access_key: secret, aws_region_name: us-east-1}}}}
  - {{model_name: bl, litellm_params: {{model: bedrock/meta.llama3-8b-instruct-v1:0, aws_access_key_id: AKID, aws_secret_access_key: secret, aws_region_name: us-east-1}}}}
  - {{model_name: vg, litellm_params: {{model: vertex_ai/gemini-2.5-flash, vertex_project: p, vertex_location: us-central1, vertex_credentials: {dir}/../../tests/fixtures/credentials/vertex-service-account.json}}}}
  - {{model_name: vc, litellm_params: {{model: vertex_ai/claude-sonnet-4-5, vertex_project: p, vertex_location: us-east5, vertex_credentials: {dir}/../../tests/fixtures/credentials/vertex-service-account.json}}}}
"
    );
    let env: HashMap<String, String> = HashMap::new();
    let loaded = llmux_config::load_str(&yaml, &env).unwrap();
    let mut out = Vec::new();
    for dep in &loaded.config.deployments {
        let mut diags = Vec::new();
        let Some(ResolvedProvider::Native {
            provider,
            upstream_model,
        }) = resolve(dep, &mut diags)
        else {
            panic!("{} is not native: {diags:?}", dep.model);
        };
        let target = native_target(
            provider,
            &upstream_model,
            dep,
            &loaded.config,
            &env,
            &mut diags,
        )
        .unwrap_or_else(|| panic!("{}: {diags:?}", dep.model));
        out.push((dep.model.clone(), target));
    }
    assert_eq!(out.len(), 7);
    out
}

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        ".{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(
                "[a-z_]{0,10}|role|content|type|text|tool_calls|function|arguments|name|choices|delta|usage|candidates|parts|message|stop_reason|finish_reason|index|id|input|output|contentBlockDelta|metadata",
                inner,
                0..6
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A request body of the shape clients send, with arbitrary parts.
fn arb_request() -> impl Strategy<Value = Value> {
    (arb_json(), arb_json(), arb_json(), any::<bool>()).prop_map(
        |(base, messages, tools, stream)| {
            let mut obj = match base {
                Value::Object(m) => m,
                _ => serde_json::Map::new(),
            };
            obj.insert("model".into(), json!("m"));
            obj.insert("messages".into(), messages.clone());
            obj.insert("tools".into(), tools);
            obj.insert("input".into(), messages);
            obj.insert("stream".into(), json!(stream));
            Value::Object(obj)
        },
    )
}

fn bytes_like_events() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..400),
        arb_json().prop_map(|v| format!("data: {v}\n\n").into_bytes()),
        (arb_json(), "[a-z_]{1,20}")
            .prop_map(|(v, e)| format!("event: {e}\ndata: {v}\n\n").into_bytes()),
        (arb_json(), "[a-zA-Z]{1,20}").prop_map(|(v, t)| encode_event(
            &t,
            v.to_string().as_bytes()
        )
        .to_vec()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn the_member_scan_never_panics_and_agrees_with_serde(
        doc in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..300),
            arb_json().prop_map(|v| v.to_string().into_bytes()),
            arb_json().prop_map(|v| json!({"a": v, "usage": {"prompt_tokens": 1}}).to_string().into_bytes()),
        ]
    ) {
        let finder = memchr::memmem::FinderRev::new(b"\"usage\"");
        let found = json_scan::top_level_member(&doc, b"usage", &finder);
        if let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(&doc) {
            let expected = map.get("usage");
            let got = found.map(|raw| serde_json::from_slice::<Value>(raw).unwrap());
            prop_assert_eq!(got.as_ref(), expected);
        }
        let _ = openai_compat::extract_usage(&doc);
    }

    #[test]
    fn sse_framing_never_panics_and_ignores_split_points(
        stream in prop::collection::vec(any::<u8>(), 0..600),
        cuts in prop::collection::vec(0usize..600, 0..12),
    ) {
        let whole = {
            let mut s = SseSplitter::new();
            s.push(&stream);
            let mut events = Vec::new();
            while let Ok(Some(e)) = s.next_event() {
                let _ = parse_fields(&e);
                events.push(e);
            }
            (events, s.take_remainder())
        };
        let mut points: Vec<usize> = cuts.into_iter().map(|c| c % (stream.len() + 1)).collect();
        points.sort_unstable();
        let mut s = SseSplitter::new();
        let mut events = Vec::new();
        let mut prev = 0;
        let mut failed = false;
        for p in points.into_iter().chain([stream.len()]) {
            s.push(&stream[prev..p]);
            prev = p;
            loop {
                match s.next_event() {
                    Ok(Some(e)) => events.push(e),
                    Ok(None) => break,
                    Err(_) => { failed = true; break; }
                }
            }
        }
        if !failed {
            prop_assert_eq!(events, whole.0);
        }
    }

    #[test]
    fn event_stream_framing_never_panics_and_round_trips(
        payloads in prop::collection::vec((arb_json(), "[a-zA-Z]{1,20}"), 0..6),
        noise in prop::collection::vec(any::<u8>(), 0..64),
        flip in any::<(usize, u8)>(),
        cuts in prop::collection::vec(0usize..2000, 0..8),
    ) {
        let mut stream = Vec::new();
        for (v, t) in &payloads {
            stream.extend_from_slice(&encode_event(t, v.to_string().as_bytes()));
        }
        // Whole messages decode back, however the stream is split.
        let mut points: Vec<usize> = cuts.iter().map(|c| c % (stream.len() + 1)).collect();
        points.sort_unstable();
        let mut s = EventStreamSplitter::new();
        let mut decoded = Vec::new();
        let mut prev = 0;
        for p in points.into_iter().chain([stream.len()]) {
            s.push(&stream[prev..p]);
            prev = p;
            while let Ok(Some(m)) = s.next_message() {
                decoded.push(decode_message(m).unwrap());
            }
        }
        prop_assert_eq!(decoded.len(), payloads.len());
        for (m, (v, t)) in decoded.iter().zip(&payloads) {
            prop_assert_eq!(m.kind.as_str(), t.as_str());
            let expected = v.to_string();
            prop_assert_eq!(&m.payload[..], expected.as_bytes());
        }
        // A corrupted stream fails cleanly.
        let mut bad = stream.clone();
        if !bad.is_empty() {
            let at = flip.0 % bad.len();
            bad[at] ^= flip.1 | 1;
        }
        bad.extend_from_slice(&noise);
        let mut s = EventStreamSplitter::new();
        s.push(&bad);
        while let Ok(Some(m)) = s.next_message() {
            let _ = decode_message(m);
        }
    }

    #[test]
    fn every_native_adapter_survives_what_an_upstream_may_send(
        body in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..300),
            arb_json().prop_map(|v| v.to_string().into_bytes()),
        ],
        events in prop::collection::vec(bytes_like_events(), 0..8),
        status in 100u16..600,
    ) {
        for (name, p) in natives() {
            for op in [Operation::Chat, Operation::Embeddings, Operation::Completions, Operation::Rerank] {
                if !p.supports(op) {
                    continue;
                }
                let _ = p.parse_response(op, Bytes::from(body.clone()));
                let e = p.parse_error(status, &http::HeaderMap::new(), &body);
                prop_assert!(e.status >= 400, "{name}: {status} -> {}", e.status);
                let mut decoder = p.stream_decoder(op);
                for ev in &events {
                    let _ = decoder.decode(Bytes::from(ev.clone()));
                }
            }
        }
    }

    #[test]
    fn request_translation_never_panics_on_client_json(request in arb_request()) {
        let bytes = serde_json::to_vec(&request).unwrap();
        let obj = RawObject::parse(&bytes).unwrap();
        for (_, p) in natives() {
            for op in [Operation::Chat, Operation::Embeddings, Operation::Completions, Operation::Rerank] {
                if p.supports(op) {
                    let ctx = RequestContext { wildcard: None, drop_params: true };
                    let _ = p.build_request(op, &obj, ctx);
                    let ctx = RequestContext { wildcard: Some("x"), drop_params: false };
                    let _ = p.build_request(op, &obj, ctx);
                }
            }
        }
    }
}
