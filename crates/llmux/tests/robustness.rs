//! Nothing a client sends can panic the gateway or earn a 5xx: arbitrary bodies through every
//! operation against the in-process mock model.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;

use bytes::Bytes;
use llmux::{Client, Operation, RequestOptions};
use proptest::prelude::*;
use serde_json::{json, Value};

fn client() -> Client {
    let env: HashMap<String, String> = HashMap::new();
    let loaded = llmux::config::load_str(
        "model_list: [{model_name: m, litellm_params: {model: mock/m}}, {model_name: \"w/*\", litellm_params: {model: \"mock/*\"}}]",
        &env,
    )
    .unwrap();
    Client::with_env(loaded.config, &env).unwrap().0
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
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(
                "[a-z_]{0,10}|model|messages|input|prompt|stream|mock_response",
                inner,
                0..6
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn arb_request() -> impl Strategy<Value = Value> {
    (
        arb_json(),
        prop_oneof![
            Just(json!("m")),
            Just(json!("w/x")),
            Just(json!("none")),
            arb_json()
        ],
        arb_json(),
        any::<bool>(),
    )
        .prop_map(|(mut base, model, payload, stream)| {
            if !base.is_object() {
                base = json!({});
            }
            let obj = base.as_object_mut().unwrap();
            obj.insert("model".into(), model);
            obj.insert("messages".into(), payload.clone());
            obj.insert("input".into(), payload.clone());
            obj.insert("prompt".into(), payload);
            obj.insert("stream".into(), json!(stream));
            base
        })
}

async fn drain(client: &Client, op: Operation, body: Bytes) -> u16 {
    match client.execute(op, body, RequestOptions::default()).await {
        Ok(response) => {
            if let llmux::ResponseBody::Stream(mut stream) = response.body {
                use futures_util::StreamExt;
                while stream.next().await.is_some() {}
            }
            response.meta.status
        }
        Err(e) => e.status,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn structured_garbage_never_fails_server_side(request in arb_request()) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let client = client();
        let body = Bytes::from(serde_json::to_vec(&request).unwrap());
        for op in [Operation::Chat, Operation::Completions, Operation::Embeddings] {
            let status = runtime.block_on(drain(&client, op, body.clone()));
            prop_assert!(status < 500, "{op:?} {request} -> {status}");
        }
    }

    #[test]
    fn arbitrary_bytes_never_fail_server_side(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let client = client();
        let status = runtime.block_on(drain(&client, Operation::Chat, Bytes::from(bytes)));
        prop_assert!(status < 500);
    }
}
