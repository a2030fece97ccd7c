//! Using llmux as a library: the same routing and translation as the server, in-process.
//!
//! Run with `cargo run -p llmux --example library`. The `mock/` model answers without network;
//! point a `model_list` entry at a real provider to call it instead.

use futures_util::StreamExt;
use llmux::types::openai::{ChatCompletionRequest, ChatMessage, EmbeddingInput, EmbeddingRequest};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let client = llmux::Client::from_yaml(
        r#"
model_list:
  - model_name: demo
    litellm_params: {model: mock/demo}
  - model_name: gpt-4o-mini
    litellm_params: {model: openai/gpt-4o-mini, api_key: os.environ/OPENAI_API_KEY}
"#,
    )?;

    let request = ChatCompletionRequest::new("demo", vec![ChatMessage::user("What is llmux?")]);
    let response = client.chat(&request).await?;
    eprintln!("chat: {}", response.text());

    let mut stream = client.chat_stream(&request).await?;
    let mut streamed = String::new();
    while let Some(chunk) = stream.next().await {
        if let Some(choice) = chunk?.choices.first() {
            streamed.push_str(choice.delta.content.as_deref().unwrap_or(""));
        }
    }
    eprintln!("stream: {streamed}");

    let embeddings = client
        .embeddings(&EmbeddingRequest::new(
            "demo",
            EmbeddingInput::Text("hello".into()),
        ))
        .await?;
    eprintln!(
        "embedding dimensions: {}",
        match &embeddings.data[0].embedding {
            llmux::types::openai::EmbeddingVector::Float(v) => v.len(),
            llmux::types::openai::EmbeddingVector::Base64(_) => 0,
        }
    );
    Ok(())
}
