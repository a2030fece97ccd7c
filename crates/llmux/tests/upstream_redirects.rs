//! How the upstream client treats redirects: 307/308 are followed with the method and body
//! kept, credentials are not sent on to another origin, and a 301/302/303 (which would turn the
//! POST into a body-less GET) is reported with its target. The `Host` header names the origin
//! each hop goes to.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;

use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use llmux::types::openai::{ChatCompletionRequest, ChatMessage};
use llmux::{Client, ErrorKind};

/// A chat completion whose text says what the final upstream saw.
async fn answer(headers: HeaderMap, body: String) -> Response {
    let request: serde_json::Value = serde_json::from_str(&body).unwrap();
    let text = format!(
        "auth={} host={} question={}",
        headers.contains_key("authorization"),
        headers
            .get("host")
            .and_then(|h| h.to_str().ok())
            .unwrap_or("-"),
        request["messages"][0]["content"].as_str().unwrap_or("")
    );
    axum::Json(serde_json::json!({
        "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}
    }))
    .into_response()
}

fn moved(status: u16, location: String) -> Response {
    (
        StatusCode::from_u16(status).unwrap(),
        [("location", location)],
        "moved",
    )
        .into_response()
}

async fn serve(router: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    format!("http://{addr}")
}

/// The client, the redirecting upstream's authority and the other origin's.
async fn client() -> (Client, String, String) {
    let other = serve(axum::Router::new().route("/final/chat/completions", post(answer))).await;
    let other_authority = other.trim_start_matches("http://").to_owned();
    let app = axum::Router::new()
        .route("/final/chat/completions", post(answer))
        .route(
            "/same/chat/completions",
            post(|| async { moved(307, "/final/chat/completions".into()) }),
        )
        .route(
            "/twice/chat/completions",
            post(|| async { moved(308, "../../same/chat/completions".into()) }),
        )
        .route(
            "/elsewhere/chat/completions",
            post(move || {
                let other = other.clone();
                async move { moved(307, format!("{other}/final/chat/completions")) }
            }),
        )
        .route(
            "/found/chat/completions",
            post(|| async { moved(302, "/final/chat/completions".into()) }),
        )
        .route(
            "/loop/chat/completions",
            post(|| async { moved(307, "/loop/chat/completions".into()) }),
        );
    let base = serve(app).await;
    let model = |name: &str| {
        format!("  - model_name: {name}\n    litellm_params: {{model: openai/m, api_base: \"{base}/{name}\", api_key: secret}}\n")
    };
    let yaml = format!(
        "model_list:\n{}{}{}{}{}router_settings: {{num_retries: 0}}\n",
        model("same"),
        model("twice"),
        model("elsewhere"),
        model("found"),
        model("loop")
    );
    let env: HashMap<String, String> = HashMap::new();
    let loaded = llmux::config::load_str(&yaml, &env).unwrap();
    let client = Client::with_env(loaded.config, &env).unwrap().0;
    let authority = base.trim_start_matches("http://").to_owned();
    (client, authority, other_authority)
}

async fn ask(client: &Client, model: &str) -> Result<String, llmux::GatewayError> {
    let request = ChatCompletionRequest::new(model, vec![ChatMessage::user("what is 6x7")]);
    client.chat(&request).await.map(|r| r.text().to_owned())
}

#[tokio::test]
async fn temporary_and_permanent_redirects_keep_the_post_and_its_body() {
    let (client, authority, _) = client().await;
    assert_eq!(
        ask(&client, "same").await.unwrap(),
        format!("auth=true host={authority} question=what is 6x7")
    );
    // 308 to a relative path, then 307 to the final URL.
    assert_eq!(
        ask(&client, "twice").await.unwrap(),
        format!("auth=true host={authority} question=what is 6x7")
    );
}

#[tokio::test]
async fn credentials_are_not_sent_to_another_origin() {
    let (client, _, other) = client().await;
    assert_eq!(
        ask(&client, "elsewhere").await.unwrap(),
        format!("auth=false host={other} question=what is 6x7")
    );
}

#[tokio::test]
async fn redirects_that_would_drop_the_body_or_never_end_are_errors() {
    let (client, _, _) = client().await;
    let error = ask(&client, "found").await.unwrap_err();
    assert_eq!(error.kind, ErrorKind::UpstreamError);
    assert!(
        error.message().contains("/final/chat/completions") && error.message().contains("302"),
        "{}",
        error.message()
    );
    let error = ask(&client, "loop").await.unwrap_err();
    assert_eq!(error.kind, ErrorKind::UpstreamError);
    assert!(
        error.message().contains("more than 5"),
        "{}",
        error.message()
    );
}
