//! The typed library API on top of `Client::execute`: requests are serialized once, sent through
//! exactly the path the server uses, and responses decoded into `llmux_types::openai` types.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::Stream;
use llmux_providers::sse::{parse_fields, SseSplitter};
use llmux_types::openai::{
    ChatCompletionChunk, ChatCompletionRequest, ChatCompletionResponse, EmbeddingRequest,
    EmbeddingResponse, Model, ModelList,
};
use llmux_types::{ErrorEnvelope, ErrorKind, GatewayError};
use serde::de::DeserializeOwned;

use crate::{Client, Operation, RelayStream, RequestOptions, ResponseBody};

fn encode<T: serde::Serialize>(value: &T) -> Result<Bytes, GatewayError> {
    serde_json::to_vec(value)
        .map(Bytes::from)
        .map_err(|e| GatewayError::invalid_request(format!("cannot encode the request: {e}")))
}

fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, GatewayError> {
    serde_json::from_slice(body).map_err(|e| {
        GatewayError::new(
            ErrorKind::UpstreamError,
            format!("cannot decode the upstream response: {e}"),
        )
    })
}

impl Client {
    /// Run a request that must answer with JSON, decoded into `T`.
    async fn execute_json<T: DeserializeOwned>(
        &self,
        op: Operation,
        body: Bytes,
    ) -> Result<T, GatewayError> {
        let response = self.execute(op, body, RequestOptions::default()).await?;
        match response.body {
            ResponseBody::Json(body) => decode(&body),
            ResponseBody::Stream(_) => Err(GatewayError::internal("expected a JSON response")),
        }
    }

    /// A chat completion (non-streaming; `stream` is forced off).
    pub async fn chat(
        &self,
        request: &ChatCompletionRequest,
    ) -> Result<ChatCompletionResponse, GatewayError> {
        let mut request = request.clone();
        request.stream = None;
        request.stream_options = None;
        self.execute_json(Operation::Chat, encode(&request)?).await
    }

    /// A streamed chat completion: chunks as the upstream produces them.
    ///
    /// ```
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// use futures_util::StreamExt;
    /// use llmux::types::openai::{ChatCompletionRequest, ChatMessage};
    /// let client = llmux::Client::from_yaml(
    ///     "model_list: [{model_name: demo, litellm_params: {model: mock/demo, mock_response: a b c}}]",
    /// )?;
    /// let request = ChatCompletionRequest::new("demo", vec![ChatMessage::user("hi")]);
    /// let mut stream = client.chat_stream(&request).await?;
    /// let mut text = String::new();
    /// while let Some(chunk) = stream.next().await {
    ///     text.push_str(chunk?.choices[0].delta.content.as_deref().unwrap_or(""));
    /// }
    /// assert_eq!(text, "a b c");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # }).unwrap();
    /// ```
    pub async fn chat_stream(
        &self,
        request: &ChatCompletionRequest,
    ) -> Result<ChatStream, GatewayError> {
        let mut request = request.clone();
        request.stream = Some(true);
        let response = self
            .execute(
                Operation::Chat,
                encode(&request)?,
                RequestOptions::default(),
            )
            .await?;
        match response.body {
            ResponseBody::Stream(inner) => Ok(ChatStream {
                inner,
                splitter: SseSplitter::new(),
                done: false,
            }),
            ResponseBody::Json(_) => Err(GatewayError::internal("expected a stream")),
        }
    }

    /// Embeddings for one or more inputs.
    pub async fn embeddings(
        &self,
        request: &EmbeddingRequest,
    ) -> Result<EmbeddingResponse, GatewayError> {
        self.execute_json(Operation::Embeddings, encode(request)?)
            .await
    }

    /// The model groups clients can ask for, as `/v1/models` lists them.
    pub fn models(&self) -> ModelList {
        let snapshot = self.snapshot();
        let data = snapshot
            .router
            .model_names()
            .map(|id| {
                let owned_by = snapshot
                    .router
                    .route(id)
                    .and_then(|m| m.candidates.first())
                    .map(|i| snapshot.router.deployment(*i).provider)
                    .unwrap_or("llmux");
                Model {
                    id: id.to_owned(),
                    object: "model".into(),
                    created: 0,
                    owned_by: owned_by.to_owned(),
                }
            })
            .collect();
        ModelList {
            object: "list".into(),
            data,
        }
    }
}

/// Streamed chat chunks; an error event from the upstream ends the stream with `Err`.
pub struct ChatStream {
    inner: RelayStream,
    splitter: SseSplitter,
    done: bool,
}

impl std::fmt::Debug for ChatStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChatStream")
    }
}

impl Stream for ChatStream {
    type Item = Result<ChatCompletionChunk, GatewayError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            if self.done {
                return Poll::Ready(None);
            }
            match self.splitter.next_event() {
                Ok(Some(event)) => {
                    let fields = parse_fields(&event);
                    if !fields.has_data {
                        continue;
                    }
                    let data = fields.data.trim_ascii();
                    if data == b"[DONE]" {
                        self.done = true;
                        return Poll::Ready(None);
                    }
                    if let Ok(envelope) = serde_json::from_slice::<ErrorEnvelope>(data) {
                        self.done = true;
                        let mut error = GatewayError::new(
                            ErrorKind::UpstreamError,
                            envelope.error.message.clone(),
                        );
                        error.body = envelope.error;
                        return Poll::Ready(Some(Err(error)));
                    }
                    return Poll::Ready(Some(decode::<ChatCompletionChunk>(data)));
                }
                Ok(None) => {}
                Err(_) => {
                    self.done = true;
                    return Poll::Ready(Some(Err(GatewayError::new(
                        ErrorKind::UpstreamError,
                        "stream event too large",
                    ))));
                }
            }
            match Pin::new(&mut self.inner).poll_next(cx) {
                Poll::Ready(Some(bytes)) => self.splitter.push(&bytes),
                Poll::Ready(None) => {
                    self.done = true;
                    return Poll::Ready(None);
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}
