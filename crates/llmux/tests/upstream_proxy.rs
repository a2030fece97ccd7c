//! An HTTP proxy named in the environment (`HTTP_PROXY`) carries upstream requests. Its own test
//! binary: it sets process environment before the client is built.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;

use llmux::types::openai::{ChatCompletionRequest, ChatMessage};
use llmux::Client;

#[tokio::test]
async fn requests_go_through_the_proxy_from_the_environment() {
    // The mock serves absolute-form requests too, so it can stand in for a forward proxy.
    let (router, _) = llmux_mock::app(false);
    let proxy = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy_addr = proxy.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(proxy, router).await.unwrap() });
    // The api_base's port has nothing listening: only the proxy can answer.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let unreachable = closed.local_addr().unwrap();
    drop(closed);

    for name in [
        "NO_PROXY",
        "no_proxy",
        "HTTPS_PROXY",
        "https_proxy",
        "ALL_PROXY",
        "all_proxy",
    ] {
        std::env::remove_var(name);
    }
    std::env::set_var("HTTP_PROXY", format!("http://{proxy_addr}"));

    let yaml = format!(
        "model_list:\n  - model_name: remote\n    litellm_params: {{model: openai/remote-model, api_base: \"http://{unreachable}/v1\", api_key: k}}\nrouter_settings: {{num_retries: 0}}\n"
    );
    let env: HashMap<String, String> = HashMap::new();
    let loaded = llmux::config::load_str(&yaml, &env).unwrap();
    let client = Client::with_env(loaded.config, &env).unwrap().0;
    let answer = client
        .chat(&ChatCompletionRequest::new(
            "remote",
            vec![ChatMessage::user("q")],
        ))
        .await
        .unwrap();
    assert!(answer.text().starts_with("tok0 tok1"), "{}", answer.text());
}
