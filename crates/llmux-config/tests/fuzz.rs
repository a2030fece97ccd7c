//! Fuzzing the config loader by property at scale: any text, and documents shaped like LiteLLM
//! configs with arbitrary values in every section, load or fail with diagnostics, never panic.
//! Cases: `LLMUX_FUZZ_CASES` (256 by default; `scripts/test.sh` runs a larger batch).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;

use proptest::prelude::*;
use serde_json::{json, Value};

fn cases() -> u32 {
    std::env::var("LLMUX_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256)
}

const KEYS: &str = "[a-z_]{1,12}|model|model_name|litellm_params|model_info|api_key|api_base|rpm|tpm|timeout|order|weight|tags|mode|id|master_key|database_url|num_retries|fallbacks|routing_strategy|cooldown_time|allowed_fails|drop_params|max_budget|budget_duration|request_timeout|stream_timeout|max_tokens|input_cost_per_token|output_cost_per_token|custom_llm_provider|vertex_project|aws_region_name|api_version|client_body_timeout|spend_log_durability|max_buffered_response_mb|api_model_env_allowlist|budget_stream_cutoff|max_request_size_mb|cache|callbacks";

fn arb_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        "[ -~]{0,16}".prop_map(Value::String),
        "os.environ/[A-Z_]{1,8}".prop_map(Value::String),
        "\\$\\{[A-Z_]{1,6}(:-[a-z0-9]{0,4})?\\}".prop_map(Value::String),
        prop_oneof![
            Just("openai/gpt-4o"),
            Just("anthropic/claude"),
            Just("bedrock/x"),
            Just("vertex_ai/gemini"),
            Just("mock/m"),
            Just("azure/d"),
            Just("*"),
            Just("groq/*")
        ]
        .prop_map(|s| json!(s)),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::btree_map(KEYS, inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn arb_config() -> impl Strategy<Value = Value> {
    (
        prop::collection::vec((arb_value(), arb_value(), arb_value()), 0..4),
        arb_value(),
        arb_value(),
        arb_value(),
        arb_value(),
        arb_value(),
    )
        .prop_map(|(models, router, litellm, general, llmux, env)| {
            let list: Vec<Value> = models
                .into_iter()
                .map(|(name, params, info)| {
                    json!({"model_name": name, "litellm_params": params, "model_info": info})
                })
                .collect();
            json!({
                "model_list": list,
                "router_settings": router,
                "litellm_settings": litellm,
                "general_settings": general,
                "llmux_settings": llmux,
                "environment_variables": env,
            })
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn any_text_loads_or_is_refused_with_diagnostics(text in "(?s).{0,400}") {
        let env: HashMap<String, String> = HashMap::new();
        if let Err(diags) = llmux_config::load_str(&text, &env) {
            prop_assert!(diags.iter().any(|d| d.is_error()));
        }
    }

    #[test]
    fn config_shaped_documents_load_or_are_refused_with_diagnostics(doc in arb_config()) {
        let env: HashMap<String, String> =
            [("KEY".to_owned(), "v".to_owned()), ("A".to_owned(), "1".to_owned())].into();
        // JSON is YAML: the same document both ways.
        for text in [doc.to_string(), serde_json::to_string_pretty(&doc).unwrap()] {
            match llmux_config::load_str(&text, &env) {
                Ok(loaded) => prop_assert!(loaded.diagnostics.iter().all(|d| !d.is_error())),
                Err(diags) => prop_assert!(diags.iter().any(|d| d.is_error())),
            }
        }
    }
}
