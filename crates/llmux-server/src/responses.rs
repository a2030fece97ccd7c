//! The OpenAI Responses API routes: `POST /v1/responses` through the Responses dialect
//! (`llmux::dialect::responses`) into the chat path, and the stored responses (`store`, on by
//! default): `GET` and `DELETE /v1/responses/{id}`, `GET /v1/responses/{id}/input_items`, and
//! `previous_response_id`, which continues a stored conversation. A stored response belongs to
//! the key that made it; another key is told it does not exist (proxy admins may read any).

use std::convert::Infallible;

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::Response;
use bytes::Bytes;
use futures_util::StreamExt;
use llmux::dialect::responses;
use llmux::{ErrorKind, GatewayError, Operation, ResponseBody};
use llmux_store::{Store, StoredResponse};
use serde_json::{json, Value};

use crate::{error_response, execute, model_route, AppState};
use llmux_governance::keys::{Principal, Role};

/// Who owns what a caller stores: its key's hash (empty for the master key).
fn owner_of(principal: Option<&Principal>) -> String {
    principal
        .and_then(|p| p.key.as_ref())
        .map(|k| k.id.clone())
        .unwrap_or_default()
}

fn not_found(id: &str) -> GatewayError {
    GatewayError::new(
        ErrorKind::NotFound,
        format!("Response with id '{id}' not found."),
    )
    .with_param("response_id")
}

fn store_of(state: &AppState) -> Option<&Store> {
    state.governance.as_ref().map(|g| &g.store)
}

/// A stored response the caller may see.
async fn load(
    state: &AppState,
    principal: Option<&Principal>,
    id: &str,
) -> Result<StoredResponse, GatewayError> {
    let store = store_of(state).ok_or_else(|| {
        GatewayError::invalid_request(
            "Stored responses need the gateway's database (set a master key).",
        )
    })?;
    let stored = store.get_response(id).await?.ok_or_else(|| not_found(id))?;
    let admin = principal.is_some_and(|p| p.role == Role::ProxyAdmin);
    if stored.owner != owner_of(principal) && !admin {
        return Err(not_found(id));
    }
    Ok(stored)
}

fn json_array(text: &str) -> Vec<Value> {
    serde_json::from_str(text).unwrap_or_default()
}

/// How long a stored response is kept (OpenAI keeps them 30 days).
const KEEP_MS: i64 = 30 * 86_400_000;
/// The longest chain of responses `previous_response_id` follows.
const MAX_CHAIN: usize = 1000;

/// The conversation a response ends: its turns and those of the responses it continues, oldest
/// first, bounded like a request body (it becomes part of one).
async fn conversation(
    state: &AppState,
    principal: Option<&Principal>,
    id: &str,
) -> Result<Vec<Value>, GatewayError> {
    let limit = state.client.snapshot().config.max_request_body_bytes;
    let mut stored = load(state, principal, id).await?;
    let owner = stored.owner.clone();
    let mut turns = Vec::new();
    let mut size = 0usize;
    loop {
        size += stored.conversation.len();
        if size > limit || turns.len() >= MAX_CHAIN {
            return Err(GatewayError::new(
                ErrorKind::PayloadTooLarge,
                format!("The conversation that response '{id}' ends is too long to continue."),
            )
            .with_param("previous_response_id"));
        }
        let previous = std::mem::take(&mut stored.previous_id);
        turns.push(json_array(&stored.conversation));
        if previous.is_empty() {
            break;
        }
        let Some(store) = store_of(state) else { break };
        // An expired or deleted earlier turn ends the history there.
        match store.get_response(&previous).await? {
            Some(next) if next.owner == owner => stored = next,
            _ => break,
        }
    }
    Ok(turns.into_iter().rev().flatten().collect())
}

/// What is kept of an answer: its input and, once known, its output, linked to the response it
/// continues.
struct Keeper {
    store: Option<Store>,
    owner: String,
    previous_id: Option<String>,
    input_items: Vec<Value>,
}

/// Answers kept since start, to prune the expired ones every so often.
static KEPT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

impl Keeper {
    async fn keep(&self, id: &str, response: &[u8], output: &[responses::OutputItem]) {
        let Some(store) = &self.store else { return };
        // Input items get ids, as the API lists them.
        let input: Vec<Value> = self
            .input_items
            .iter()
            .map(|item| {
                let mut item = item.clone();
                if item.get("id").is_none() {
                    item["id"] = json!(format!("msg_{}", llmux::new_request_id()));
                }
                if item.get("type").is_none() {
                    item["type"] = json!("message");
                }
                item
            })
            .collect();
        let mut turn = input.clone();
        turn.extend(
            output
                .iter()
                .filter_map(|item| serde_json::to_value(item).ok()),
        );
        let now = llmux_store::now_ms();
        let record = StoredResponse {
            id: id.to_owned(),
            owner: self.owner.clone(),
            created_at: now,
            response: String::from_utf8_lossy(response).into_owned(),
            input_items: Value::Array(input).to_string(),
            conversation: Value::Array(turn).to_string(),
            previous_id: self.previous_id.clone().unwrap_or_default(),
            expires_at: now + KEEP_MS,
        };
        if let Err(e) = store.insert_response(&record).await {
            tracing::warn!(error = %e, "cannot store a response");
        }
        if KEPT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 100 == 99 {
            if let Err(e) = store.prune_responses(now).await {
                tracing::warn!(error = %e, "cannot prune expired responses");
            }
        }
    }
}

/// `POST /v1/responses`.
pub async fn create(State(state): State<AppState>, request: Request) -> Response {
    let state = &state;
    model_route(state, request, error_response, |checked| async move {
        let principal = checked.principal.as_ref();
        let history = match responses::previous_response_id(&checked.body) {
            Some(id) => conversation(state, principal, &id).await?,
            None => Vec::new(),
        };
        let mut converted = responses::chat_request(&checked.body, &history)?;
        if store_of(state).is_none() {
            converted.store = false;
        }
        let shell = responses::Shell::new(&converted);
        let keeper = Keeper {
            store: store_of(state).filter(|_| converted.store).cloned(),
            owner: owner_of(principal),
            previous_id: converted.previous_response_id.clone(),
            input_items: converted.input_items.clone(),
        };
        execute(
            state,
            checked.call(Operation::Chat, "responses"),
            converted.body,
        )
        .await?
        .respond_async(|body, usage| shape(body, usage, shell, keeper))
        .await
    })
    .await
}

/// The internal answer as a Response object or its event stream, kept first when stored.
async fn shape(
    body: ResponseBody,
    usage: Option<llmux::types::Usage>,
    shell: responses::Shell,
    keeper: Keeper,
) -> Result<(Body, &'static str), GatewayError> {
    Ok(match body {
        ResponseBody::Json(bytes) => {
            let (out, output) = responses::response(&bytes, &shell, usage.as_ref())?;
            keeper.keep(&shell.id, &out, &output).await;
            (Body::from(out), "application/json")
        }
        ResponseBody::Stream(stream) => {
            let id = shell.id.clone();
            let translator = responses::StreamTranslator::new(shell);
            let events = futures_util::stream::unfold(
                (stream, translator, keeper, id, false),
                |(mut inner, mut translator, keeper, id, done)| async move {
                    if done {
                        return None;
                    }
                    match inner.next().await {
                        Some(chunk) => {
                            let out = translator.feed(&chunk);
                            Some((out, (inner, translator, keeper, id, false)))
                        }
                        None => {
                            let out = translator.finish();
                            // Kept before the last event leaves, so a client chaining on it
                            // finds it.
                            // A failed stream is not kept: nothing continues from half an answer.
                            if translator.completed() {
                                match translator.final_response_bytes() {
                                    Ok(response) => {
                                        keeper.keep(&id, &response, translator.output()).await;
                                    }
                                    Err(e) => {
                                        tracing::warn!(error = %e.message(), "cannot store a response")
                                    }
                                }
                            }
                            Some((out, (inner, translator, keeper, id, true)))
                        }
                    }
                },
            )
            .filter(|b: &Bytes| std::future::ready(!b.is_empty()))
            .map(Ok::<Bytes, Infallible>);
            (Body::from_stream(events), "text/event-stream")
        }
    })
}

fn json_response(status: StatusCode, body: Value) -> Response {
    let mut out = Response::new(Body::from(body.to_string()));
    *out.status_mut() = status;
    out.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    out
}

/// Who calls a stored-response route (auth only; these routes take no body).
async fn caller(
    state: &AppState,
    headers: &HeaderMap,
    uri: &Uri,
) -> Result<Option<Principal>, GatewayError> {
    crate::authenticate(state, headers, uri.path()).await
}

/// A stored-response route: the response `id` names, for a caller who may see it, turned into
/// the route's answer by `answer`; or the error.
async fn stored_route<F, Fut>(
    state: &AppState,
    id: &str,
    headers: &HeaderMap,
    uri: &Uri,
    answer: F,
) -> Response
where
    F: FnOnce(StoredResponse) -> Fut,
    Fut: std::future::Future<Output = Result<Value, GatewayError>>,
{
    let request_id = llmux::new_request_id();
    let result = async {
        let principal = caller(state, headers, uri).await?;
        answer(load(state, principal.as_ref(), id).await?).await
    };
    match result.await {
        Ok(body) => json_response(StatusCode::OK, body),
        Err(e) => error_response(&e, &request_id),
    }
}

/// `GET /v1/responses/{id}`.
pub async fn get(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    stored_route(&state, &id, &headers, &uri, |stored| async move {
        Ok(serde_json::from_str(&stored.response).unwrap_or_default())
    })
    .await
}

/// `DELETE /v1/responses/{id}`.
pub async fn delete(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    stored_route(&state, &id, &headers, &uri, |_| async {
        if let Some(store) = store_of(&state) {
            store.delete_response(&id).await?;
        }
        Ok(json!({"id": id, "object": "response.deleted", "deleted": true}))
    })
    .await
}

/// `GET /v1/responses/{id}/input_items`.
pub async fn input_items(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    stored_route(&state, &id, &headers, &uri, |stored| async move {
        let items = json_array(&stored.input_items);
        let id_of = |item: Option<&Value>| {
            item.and_then(|i| i.get("id"))
                .cloned()
                .unwrap_or(Value::Null)
        };
        Ok(json!({"object": "list", "first_id": id_of(items.first()), "last_id": id_of(items.last()),
                  "has_more": false, "data": items}))
    })
    .await
}
