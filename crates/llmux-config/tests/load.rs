//! Loading real LiteLLM configs and the diagnostics a user sees for mistakes.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use llmux_config::{load_file, load_str, Diagnostic, Severity};

fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn shared_config(name: &str) -> PathBuf {
    PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap())
        .join("../../tests/fixtures/configs")
        .join(name)
}

fn warnings_at<'a>(diags: &'a [Diagnostic], path: &str) -> Vec<&'a Diagnostic> {
    diags.iter().filter(|d| d.path == path).collect()
}

#[test]
fn litellm_fixture_configs_load() {
    let e = env(&[
        ("AZURE_API_KEY", "k"),
        ("OPENAI_API_KEY", "o"),
        ("LITELLM_MASTER_KEY", "sk-master"),
    ]);
    for name in [
        "litellm-azure_config.yaml",
        "litellm-docs-example.yaml",
        "litellm-load_balancer.yaml",
    ] {
        let loaded =
            load_file(&shared_config(name), &e).unwrap_or_else(|d| panic!("{name}: {d:?}"));
        assert!(!loaded.config.deployments.is_empty(), "{name}");
        assert!(loaded
            .diagnostics
            .iter()
            .all(|d| d.severity == Severity::Warning));
    }
}

#[test]
fn azure_fixture_reads_underscored_numbers_and_fractional_timeouts() {
    let loaded = load_file(
        &shared_config("litellm-azure_config.yaml"),
        &env(&[("AZURE_API_KEY", "k")]),
    )
    .unwrap();
    let d = &loaded.config.deployments[0];
    assert_eq!(d.tpm, Some(20_000));
    assert_eq!(d.timeout, Some(Duration::from_secs(5)));
    assert_eq!(d.stream_timeout, Some(Duration::from_millis(500)));
    assert_eq!(d.max_retries, Some(4));
    assert_eq!(d.api_key.as_ref().unwrap().expose(), "k");
    assert_eq!(d.api_version.as_deref(), Some("2023-05-15"));
}

#[test]
fn docs_example_reports_unsupported_settings_by_path() {
    let loaded = load_file(
        &shared_config("litellm-docs-example.yaml"),
        &env(&[("LITELLM_MASTER_KEY", "sk-m")]),
    )
    .unwrap();
    let c = &loaded.config;
    assert_eq!(c.master_key.as_ref().unwrap().expose(), "sk-m");
    assert!(c.drop_params);
    assert_eq!(c.deployments[0].rpm, Some(900));
    assert_eq!(c.deployments[0].order, Some(1));
    let d = &loaded.diagnostics;
    assert!(
        warnings_at(d, "router_settings.num_retries").is_empty(),
        "supported now"
    );
    assert_eq!(c.router.num_retries, 2);
    assert_eq!(c.router.cooldown_time, Duration::from_secs(30));
    assert_eq!(c.router.fallbacks["gpt-4o"], vec!["claude".to_owned()]);
    assert!(c.router.enable_pre_call_checks);
    assert!(
        !warnings_at(d, "router_settings.redis_host")
            .iter()
            .any(|w| w.message.contains("does not support yet")),
        "redis is read now (shared rate limits)"
    );
    // `prometheus` and `otel` are both served now.
    let callbacks = warnings_at(d, "litellm_settings.callbacks");
    assert!(callbacks.is_empty(), "{callbacks:?}");
    let names: Vec<&str> = c.callbacks.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["prometheus", "otel"]);
    assert!(c.callbacks.iter().all(|c| c.on_success && c.on_failure));
    let db = warnings_at(d, "general_settings.database_url");
    assert!(db
        .iter()
        .any(|x| x.message.contains("DATABASE_URL is not set")));
    assert!(
        !db.iter()
            .any(|x| x.message.contains("does not support yet")),
        "database_url is supported"
    );
    // Unset variables are named, never their values.
    assert!(d
        .iter()
        .any(|x| x.path == "model_list[0].litellm_params.api_key"
            && x.message.contains("AZURE_API_KEY")));
    assert!(
        warnings_at(d, "router_settings.routing_strategy").is_empty(),
        "simple-shuffle is supported"
    );
}

#[test]
fn load_balancer_fixture_uses_environment_variables_and_entry_level_limits() {
    let loaded = load_file(&shared_config("litellm-load_balancer.yaml"), &env(&[])).unwrap();
    let c = &loaded.config;
    assert_eq!(c.deployments.len(), 4);
    assert_eq!(c.deployments[0].rpm, Some(3));
    assert_eq!(c.deployments[0].tpm, Some(20000));
    assert!(c.drop_params, "`True` is a boolean");
    assert!(c
        .environment_variables
        .contains(&("REDIS_PORT".to_owned(), "6329".to_owned())));
}

#[test]
fn environment_variables_section_feeds_references() {
    let text = r#"
environment_variables:
  MY_BASE: http://127.0.0.1:9
model_list:
  - model_name: m
    litellm_params: {model: openai/x, api_base: os.environ/MY_BASE, temperature: 0.2, max_tokens: 7, vertex_project: p, connect_timeout: 2}
"#;
    let loaded = load_str(text, &env(&[])).unwrap();
    let d = &loaded.config.deployments[0];
    assert_eq!(d.api_base.as_deref(), Some("http://127.0.0.1:9"));
    assert_eq!(d.request_defaults["temperature"], 0.2);
    assert_eq!(d.request_defaults["max_tokens"], 7);
    assert_eq!(d.provider_params["vertex_project"], "p");
    assert_eq!(d.connect_timeout, Some(Duration::from_secs(2)));
    assert!(!d.provider_params.contains_key("connect_timeout"));
}

#[test]
fn unknown_keys_are_warnings_with_paths_and_strict_makes_them_errors() {
    let text = r#"
model_list:
  - model_name: m
    litellm_params: {model: openai/x}
    typo_key: 1
litellm_settings: {drop_params: false, mystery: 2}
general_settings: {master_key: sk-1}
mystery_section: {}
llmux_settings: {drain_timeout: 5, client_header_timeout: 2.5, nope: 1}
"#;
    let mut loaded = load_str(text, &env(&[])).unwrap();
    let paths: Vec<_> = loaded.diagnostics.iter().map(|d| d.path.clone()).collect();
    for expected in [
        "model_list[0].typo_key",
        "litellm_settings.mystery",
        "mystery_section",
        "llmux_settings.nope",
    ] {
        assert!(
            paths.contains(&expected.to_owned()),
            "missing {expected} in {paths:?}"
        );
    }
    assert_eq!(loaded.config.drain_timeout, Duration::from_secs(5));
    assert_eq!(
        loaded.config.client_header_timeout,
        Duration::from_millis(2500)
    );
    llmux_config::strict(&mut loaded.diagnostics);
    assert!(loaded.diagnostics.iter().all(Diagnostic::is_error));
}

#[test]
fn every_error_is_reported_not_just_the_first() {
    let text = r#"
model_list:
  - model_name: a
    litellm_params: {model: openai/x, api_base: "ftp://nope", timeout: -1}
  - model_name: b
    litellm_params: {model: openai/y, rpm: lots}
  - model_name: c
    litellm_params: {}
  - model_name: "a*b*"
    litellm_params: {model: openai/z}
general_settings: {max_request_size_mb: 0}
"#;
    let errors = load_str(text, &env(&[])).unwrap_err();
    let paths: Vec<_> = errors
        .iter()
        .filter(|d| d.is_error())
        .map(|d| d.path.clone())
        .collect();
    for expected in [
        "model_list[0].litellm_params.api_base",
        "model_list[0].litellm_params.timeout",
        "model_list[1].litellm_params.rpm",
        "model_list[2].litellm_params",
        "model_list[3].model_name",
        "general_settings.max_request_size_mb",
    ] {
        assert!(
            paths.iter().any(|p| p == expected),
            "missing {expected} in {paths:?}"
        );
    }
}

#[test]
fn bad_yaml_and_wrong_shapes_are_errors_not_panics() {
    for text in [
        "model_list: [",
        "- a\n- b",
        "model_list: 3",
        "model_list:\n  - 1",
        "\"\\xff\": [",
    ] {
        let result = load_str(text, &env(&[]));
        assert!(result.is_err(), "{text:?} should fail");
    }
    assert!(load_str("", &env(&[]))
        .unwrap()
        .config
        .deployments
        .is_empty());
}

#[test]
fn secrets_are_not_printed_by_debug() {
    let loaded = load_str("general_settings: {master_key: sk-very-secret}", &env(&[])).unwrap();
    assert!(!format!("{:?}", loaded.config).contains("sk-very-secret"));
}

#[test]
fn a_configured_master_key_that_resolves_to_nothing_is_an_error() {
    for text in [
        "general_settings: {master_key: os.environ/UNSET_MASTER}",
        "general_settings: {master_key: \"\"}",
        "general_settings: {master_key: }",
        "general_settings: {master_key: \"${UNSET_MASTER}\"}",
    ] {
        let diags = load_str(text, &env(&[]))
            .err()
            .unwrap_or_else(|| panic!("{text}: loaded"));
        assert!(
            diags
                .iter()
                .any(|d| d.is_error() && d.path == "general_settings.master_key"),
            "{text}: {diags:?}"
        );
    }
    let loaded = load_str(
        "general_settings: {master_key: os.environ/SET_MASTER}",
        &env(&[("SET_MASTER", "sk-x")]),
    )
    .unwrap();
    assert_eq!(loaded.config.master_key.unwrap().expose(), "sk-x");
    let loaded = load_str("general_settings: {database_url: x}", &env(&[])).unwrap();
    assert!(loaded.config.master_key.is_none());
}

#[test]
fn redis_comes_from_router_settings_or_the_environment() {
    let url = |text: &str, vars: &[(&str, &str)]| {
        let loaded = load_str(text, &env(vars)).unwrap();
        loaded.config.redis_url(&env(vars))
    };
    assert_eq!(url("model_list: []", &[]), None);
    assert_eq!(
        url(
            "router_settings: {redis_host: r1, redis_port: 6380, redis_password: \"p@ss word\"}",
            &[]
        ),
        Some("redis://:p%40ss%20word@r1:6380".to_owned())
    );
    assert_eq!(
        url(
            "router_settings: {redis_url: \"rediss://x:1\"}",
            &[("REDIS_HOST", "ignored")]
        ),
        Some("rediss://x:1".to_owned())
    );
    assert_eq!(
        url(
            "model_list: []",
            &[("REDIS_HOST", "h"), ("REDIS_PORT", "7000")]
        ),
        Some("redis://h:7000".to_owned())
    );
    assert_eq!(
        url(
            "router_settings: {redis_host: os.environ/RH}",
            &[("RH", "from-env")]
        ),
        Some("redis://from-env:6379".to_owned())
    );
    assert!(load_str("router_settings: {redis_port: nope}", &env(&[])).is_err());
}

/// Asking for an authenticated metrics endpoint without a master key is said to do nothing.
#[test]
fn metrics_auth_without_a_master_key_is_reported() {
    let open = load_str(
        "litellm_settings: {require_auth_for_metrics_endpoint: true}",
        &env(&[]),
    )
    .unwrap();
    assert_eq!(open.config.require_auth_for_metrics_endpoint, Some(true));
    let warned = warnings_at(
        &open.diagnostics,
        "litellm_settings.require_auth_for_metrics_endpoint",
    );
    assert_eq!(warned.len(), 1, "{:?}", open.diagnostics);
    assert!(warned[0].message.contains("master_key"));
    let closed = load_str(
        "general_settings: {master_key: sk-1}\nlitellm_settings: {require_auth_for_metrics_endpoint: true}",
        &env(&[]),
    )
    .unwrap();
    assert!(warnings_at(
        &closed.diagnostics,
        "litellm_settings.require_auth_for_metrics_endpoint"
    )
    .is_empty());
}
