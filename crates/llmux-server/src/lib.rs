//! The HTTP layer over `llmux::Client`: OpenAI-compatible routes (with and without `/v1`),
//! master-key auth, body limits, health probes, and response headers. `build_router(state)`
//! returns the whole app so tests can drive it without a socket.

mod auth;
pub mod body;
mod canned;
mod headers;
pub mod health;
pub mod management;
mod messages;
mod metrics;
mod models;
pub mod reload;
mod responses;
mod serve;

pub use serve::serve;

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, Uri};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use bytes::Bytes;
use futures_util::StreamExt;
use llmux::{Client, GatewayError, Operation, RequestOptions, ResponseBody};
use llmux_types::ErrorKind;
use serde_json::json;

pub use auth::constant_time_key_eq;
use llmux_governance as governance;
use llmux_governance::keys::Principal;
use llmux_governance::Governance;

/// How much longer than a cooldown another instance announced this one waits for that
/// instance's probe verdict before probing the deployment itself.
const FLEET_PROBE_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// Shared state of the HTTP app: one `Arc`, because axum clones the state for every request
/// (four reference counts up and down per request when it was four fields).
#[derive(Clone)]
pub struct AppState(Arc<SharedState>);

/// What [`AppState`] holds.
pub struct SharedState {
    pub client: Client,
    /// Set when a graceful stop begins: readiness turns 503 so balancers drain us.
    pub draining: Arc<AtomicBool>,
    /// Keys, budgets, limits and spend; `None` without a master key.
    pub governance: Option<Arc<Governance>>,
    /// The configuration as loaded from the file (database models are merged over it);
    /// replaced when the file is reloaded.
    pub base_config: arc_swap::ArcSwap<llmux_config::Config>,
    /// Which configuration is live, for readiness and the reload log.
    pub config_source: std::sync::Mutex<reload::ConfigSource>,
    /// Held while the client's configuration is rebuilt (a file reload, a model added through
    /// the API or by another instance): each rebuild reads the latest file and database, so a
    /// slower one cannot put back what a newer one replaced.
    pub(crate) rebuild: tokio::sync::Mutex<()>,
    /// The Prometheus metrics every request is counted in.
    pub metrics: Arc<metrics::Metrics>,
    /// Traces and log sinks (`callbacks`), when any is configured.
    pub telemetry: arc_swap::ArcSwapOption<llmux_telemetry::Telemetry>,
    /// Alerts (`general_settings.alerting`), when configured.
    pub alerter: arc_swap::ArcSwapOption<llmux_telemetry::alerts::Alerter>,
    /// The latest background health check (`background_health_checks`).
    pub health: std::sync::Mutex<Option<health::HealthReport>>,
    /// Live `GET /health` probes: one round at a time, reused briefly.
    pub live_probes: tokio::sync::Mutex<health::LiveProbes>,
    /// The database's answer to readiness, reused for a moment (readiness is unauthenticated).
    pub db_ping: std::sync::Mutex<Option<(std::time::Instant, bool)>>,
}

impl std::ops::Deref for AppState {
    type Target = SharedState;
    fn deref(&self) -> &SharedState {
        &self.0
    }
}

impl AppState {
    pub fn new(client: Client) -> Self {
        let base_config = arc_swap::ArcSwap::from_pointee(client.snapshot().config.clone());
        let metrics = metrics::Metrics::new(client.clone(), base_config.load().metrics_max_keys);
        metrics.spawn_drain();
        AppState(Arc::new(SharedState {
            metrics,
            telemetry: arc_swap::ArcSwapOption::empty(),
            alerter: arc_swap::ArcSwapOption::empty(),
            health: std::sync::Mutex::new(None),
            live_probes: tokio::sync::Mutex::default(),
            db_ping: std::sync::Mutex::new(None),
            client,
            draining: Arc::new(AtomicBool::new(false)),
            governance: None,
            base_config,
            config_source: std::sync::Mutex::new(reload::ConfigSource::default()),
            rebuild: tokio::sync::Mutex::new(()),
        }))
    }

    /// With governance, and the database's models applied.
    pub async fn with_governance(self, governance: Arc<Governance>) -> Result<Self, String> {
        let state = AppState(Arc::new(SharedState {
            metrics: Arc::clone(&self.metrics),
            telemetry: arc_swap::ArcSwapOption::new(self.telemetry.load_full()),
            alerter: arc_swap::ArcSwapOption::new(self.alerter.load_full()),
            health: std::sync::Mutex::new(None),
            live_probes: tokio::sync::Mutex::default(),
            db_ping: std::sync::Mutex::new(None),
            client: self.client.clone(),
            draining: Arc::clone(&self.draining),
            governance: Some(governance),
            base_config: arc_swap::ArcSwap::new(self.base_config.load_full()),
            config_source: std::sync::Mutex::new(
                self.config_source
                    .lock()
                    .map(|s| s.clone())
                    .unwrap_or_default(),
            ),
            rebuild: tokio::sync::Mutex::new(()),
        }));
        models::apply_db_models(&state)
            .await
            .map_err(|e| e.message().to_owned())?;
        // A deployment one instance cools down is cooled on every other (fleet-wide cooldowns),
        // and only that instance probes it when the cooldown ends: the others wait for its
        // verdict (`recovered`, or a new cooldown) for up to `FLEET_PROBE_GRACE` more, after
        // which they probe themselves (the prober may have died or seen no traffic).
        if let Some(gov) = &state.governance {
            if let Some(shared) = gov.shared_state() {
                let publisher = Arc::clone(shared);
                state
                    .client
                    .on_cooldown(move |id, duration| publisher.publish_cooldown(id, duration));
                let publisher = Arc::clone(shared);
                state
                    .client
                    .on_recovery(move |id| publisher.publish_recovery(id));
                let client = state.client.clone();
                gov.on_remote_cooldown(move |id, duration| {
                    client.cool_down(id, duration + FLEET_PROBE_GRACE);
                });
                let client = state.client.clone();
                gov.on_remote_recovery(move |id| {
                    client.recover(id);
                });
                // Usage, latency and in-flight counts of deployments, shared every 500 ms.
                let client = state.client.clone();
                shared.share_router_stats(move || {
                    let snapshot = client.snapshot();
                    let router = &snapshot.router;
                    router
                        .deployments()
                        .iter()
                        .enumerate()
                        .map(|(i, d)| (d.id.clone(), Arc::clone(router.stats(i))))
                        .collect()
                });
            }
        }
        // Models another instance of the fleet changed are loaded here too.
        if let Some(gov) = &state.governance {
            let weak = Arc::downgrade(&state.0);
            gov.on_models_changed(move || {
                let Some(inner) = weak.upgrade() else { return };
                let state = AppState(inner);
                tokio::spawn(async move {
                    if let Err(e) = models::apply_db_models(&state).await {
                        tracing::warn!(error = %e.message(), "cannot load the fleet's changed models");
                    }
                });
            });
        }
        Ok(state)
    }
}

/// Who may call a model route: with governance any valid key (master or virtual); without it
/// the master key when one is configured.
async fn authenticate(
    state: &AppState,
    headers: &axum::http::HeaderMap,
    path: &str,
) -> Result<Option<Principal>, GatewayError> {
    match &state.governance {
        Some(gov) => gov.authenticate_for(headers, path).await.map(Some),
        None => auth::authorize(headers, &state.client.snapshot().config).map(|()| None),
    }
}

/// All routes of the gateway.
pub fn build_router(state: AppState) -> Router {
    // Off the model routes (which check headers inline and answer in the shape themselves),
    // every error leaves in the OpenAI shape, extractor rejections included.
    let shaped = Router::new()
        .merge(management::routes())
        .route("/v1/models", get(list_models))
        .route("/models", get(list_models))
        .route("/v1/models/{*id}", get(get_model))
        .route("/models/{*id}", get(get_model))
        .route("/router/deployments", get(router_deployments))
        .layer(axum::middleware::from_fn(body::shape));
    Router::new()
        .merge(shaped)
        .route("/v1/chat/completions", post(chat_completions))
        .route("/chat/completions", post(chat_completions))
        .route("/v1/completions", post(completions))
        .route("/completions", post(completions))
        .route("/v1/embeddings", post(embeddings))
        .route("/v1/responses", post(responses::create))
        .route(
            "/v1/responses/{id}",
            get(responses::get).delete(responses::delete),
        )
        .route(
            "/v1/responses/{id}/input_items",
            get(responses::input_items),
        )
        .route("/v1/messages", post(messages::messages))
        .route("/v1/messages/count_tokens", post(messages::count_tokens))
        .route("/v1/rerank", post(rerank))
        .route("/v2/rerank", post(rerank))
        .route("/rerank", post(rerank))
        .route("/embeddings", post(embeddings))
        .route("/metrics", get(metrics_text))
        .route("/health", get(health::health))
        .route("/health/liveliness", get(liveliness))
        .route("/health/live", get(liveliness))
        .route("/health/readiness", get(readiness))
        .route("/health/ready", get(readiness))
        .fallback(unknown_route)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

async fn chat_completions(State(state): State<AppState>, request: Request) -> Response {
    proxy(state, Operation::Chat, request).await
}

async fn completions(State(state): State<AppState>, request: Request) -> Response {
    proxy(state, Operation::Completions, request).await
}

async fn embeddings(State(state): State<AppState>, request: Request) -> Response {
    proxy(state, Operation::Embeddings, request).await
}

async fn rerank(State(state): State<AppState>, request: Request) -> Response {
    proxy(state, Operation::Rerank, request).await
}

/// Auth → bounded body read → `Client::execute` → response with the gateway's headers.
async fn proxy(state: AppState, op: Operation, request: Request) -> Response {
    let state = &state;
    model_route(state, request, error_response, |checked| async move {
        execute(state, checked.call(op, op.as_str()), checked.body.clone())
            .await?
            .respond(|body, _| openai_body(body))
    })
    .await
}

/// A model route's request once its headers, caller and body have been checked.
pub(crate) struct Checked {
    pub parts: axum::http::request::Parts,
    pub principal: Option<Principal>,
    pub body: Bytes,
    pub request_id: String,
    pub received_at: Instant,
    pub client_request_id: Option<String>,
}

impl Checked {
    /// The model call this request makes (`call_type` names it in the spend log).
    pub(crate) fn call(&self, op: Operation, call_type: &'static str) -> Call<'_> {
        Call {
            op,
            call_type,
            headers: &self.parts.headers,
            principal: self.principal.as_ref(),
            client_request_id: self.client_request_id.clone(),
            request_id: &self.request_id,
            received_at: self.received_at,
        }
    }
}

/// The frame every model route shares, whatever its dialect: headers, caller and body checked
/// (`authorized_body`), then `handle`; an error answered in the dialect's shape by `render`;
/// the client's request id echoed either way.
pub(crate) async fn model_route<F, Fut>(
    state: &AppState,
    request: Request,
    render: fn(&GatewayError, &str) -> Response,
    handle: F,
) -> Response
where
    F: FnOnce(Checked) -> Fut,
    Fut: std::future::Future<Output = Result<Response, GatewayError>>,
{
    let client_request_id = headers::client_request_id(request.headers());
    let received_at = Instant::now();
    let (parts, body) = request.into_parts();
    let request_id = llmux::new_request_id();
    let mut response = match authorized_body(state, &parts, body).await {
        Err((e, close)) => closing(render(&e, &request_id), close),
        Ok((principal, body)) => {
            let id = request_id.clone();
            let checked = Checked {
                parts,
                principal,
                body,
                request_id,
                received_at,
                client_request_id: client_request_id.clone(),
            };
            handle(checked).await.unwrap_or_else(|e| render(&e, &id))
        }
    };
    headers::echo_client_request_id(response.headers_mut(), client_request_id.as_deref());
    response
}

/// `response` with `Connection: close` when the request's body was not read to its end.
fn closing(response: Response, close: bool) -> Response {
    if close {
        body::close(response)
    } else {
        response
    }
}

/// The checks every model route makes before the body is used: header limits, who calls, the
/// body read within its size and time limits. An error says whether the connection must close
/// (the body was not read).
async fn authorized_body(
    state: &AppState,
    parts: &axum::http::request::Parts,
    body: Body,
) -> Result<(Option<Principal>, Bytes), (GatewayError, bool)> {
    body::check_headers(&parts.headers).map_err(|e| (e, true))?;
    let principal = authenticate(state, &parts.headers, parts.uri.path())
        .await
        .map_err(|e| (e, false))?;
    let (limit, timeout) = {
        let snapshot = state.client.snapshot();
        (
            snapshot.config.max_request_body_bytes,
            snapshot.config.client_body_timeout,
        )
    };
    let body = body::read_body(&parts.headers, body, limit, timeout)
        .await
        .map_err(|e| (e, true))?;
    Ok((principal, body))
}

/// One model call through the gateway, whatever dialect the client spoke.
pub(crate) struct Call<'a> {
    pub op: Operation,
    /// What the spend log calls it (`chat`, ..., `anthropic_messages`).
    pub call_type: &'static str,
    pub headers: &'a axum::http::HeaderMap,
    pub principal: Option<&'a Principal>,
    pub client_request_id: Option<String>,
    pub request_id: &'a str,
    pub received_at: Instant,
}

/// What the core answered, with what the response still needs from governance.
pub(crate) struct Executed {
    response: llmux::GatewayResponse,
    received_at: Instant,
    remaining: Option<governance::limits::Remaining>,
    /// With `spend_log_durability: sync`: a stream's body ends once its spend row is in.
    durable_stream: Option<Arc<governance::Admission>>,
}

/// Admission (with governance), then `Client::execute` on an internal (OpenAI-shaped) body.
pub(crate) async fn execute(
    state: &AppState,
    call: Call<'_>,
    body: Bytes,
) -> Result<Executed, GatewayError> {
    let Call {
        op,
        call_type,
        headers: request_headers,
        principal,
        client_request_id,
        request_id,
        received_at,
    } = call;
    let mut hook = None;
    let mut remaining = None;
    let mut durable: Option<Arc<governance::Admission>> = None;
    // With governance the body is parsed here, once: admission reads its facts and the core
    // routes on the same parse. A key's model alias rewrites the body, which is parsed again.
    let parsed;
    let aliased;
    let reparsed;
    let mut input = None;
    let caller = metrics::CallerLabels::of(principal);
    let route = metrics::route(op, call_type);
    let mut requested_model = String::new();
    let mut observe = None;
    let telemetry = state.telemetry.load_full().map(|telemetry| {
        let end_user = request_headers
            .get(headers::X_LITELLM_END_USER_ID)
            .and_then(|v| v.to_str().ok());
        let message_logging =
            telemetry.message_logging(principal.and_then(|p| p.turn_off_message_logging()));
        let header = |name: &str| request_headers.get(name).and_then(|v| v.to_str().ok());
        let (observed, span) =
            telemetry.observe(header("traceparent"), header("tracestate"), message_logging);
        observe = Some(observed);
        metrics::TelemetryCall {
            caller: caller.for_telemetry(principal, end_user),
            call_type: metrics::litellm_call_type(call_type),
            span,
            message_logging,
            tags: headers::tags(request_headers),
            telemetry,
            op,
            request_id: request_id.to_owned(),
            received_at,
        }
    });
    // A request refused before it reaches the core is counted (and traced, and logged) here;
    // the core counts the rest.
    let refused_as = |model: &str, e: GatewayError| {
        state.metrics.refused(caller.clone(), route, model, &e);
        if let Some(t) = &telemetry {
            t.refused(route, model, &e);
        }
        e
    };
    let refused = |e: GatewayError| refused_as("", e);
    if let (Some(gov), Some(principal)) = (&state.governance, principal) {
        parsed = llmux::ParsedBody::parse(&body).map_err(refused)?;
        // A malformed request is refused before it counts against budgets and limits.
        parsed.validate(op).map_err(refused)?;
        let end_user = request_headers
            .get(headers::X_LITELLM_END_USER_ID)
            .and_then(|v| v.to_str().ok());
        let (mut facts, rewritten) =
            governance::request_facts(&parsed, principal, end_user, headers::tags(request_headers))
                .map_err(refused)?;
        facts.client_request_id = client_request_id;
        input = Some(match rewritten {
            None => &parsed,
            Some(bytes) => {
                aliased = bytes;
                reparsed = llmux::ParsedBody::parse(&aliased).map_err(refused)?;
                &reparsed
            }
        });
        let model = facts.model.clone();
        requested_model.clone_from(&model);
        let admission = match gov.admit(principal, facts, &state.client, call_type).await {
            Ok(admission) => admission,
            Err(e) => return Err(refused_as(&model, e)),
        };
        remaining = Some(admission.remaining.clone());
        let admission = Arc::new(admission);
        if admission.durable() {
            durable = Some(Arc::clone(&admission));
        }
        hook = Some(admission as Arc<dyn llmux::RequestHook>);
    }
    let hook: Option<Arc<dyn llmux::RequestHook>> = Some(Arc::new(metrics::MetricsHook {
        metrics: Arc::clone(&state.metrics),
        caller,
        route,
        inner: hook,
        requested_model,
        finished: std::sync::atomic::AtomicBool::new(false),
        telemetry,
        alerter: state.alerter.load_full(),
    }));
    let options = RequestOptions {
        request_id: request_id.to_owned(),
        received_at,
        num_retries: headers::parse_header(request_headers, &headers::X_LITELLM_NUM_RETRIES),
        timeout: headers::parse_header::<f64>(request_headers, &headers::X_LITELLM_TIMEOUT)
            .filter(|t| *t > 0.0 && *t < 1.0e6)
            .map(std::time::Duration::from_secs_f64),
        tags: headers::tags(request_headers),
        hook,
        // Only the Anthropic dialect carries a client's own Anthropic body.
        native_dialect: call_type == "anthropic_messages",
        observe,
        // Without governance every caller is the operator: one tenant.
        cache_scope: principal.and_then(|p| {
            let scope = state.client.snapshot().cache.as_ref()?.settings().scope;
            p.cache_scope(scope)
        }),
    };
    let result = match input {
        Some(parsed) => state.client.execute_parsed(op, parsed, options).await,
        None => state.client.execute(op, body.clone(), options).await,
    };
    // With `spend_log_durability: sync` a response completes only once its spend row is
    // committed: a JSON answer waits here, a stream's body ends after its last event once the
    // row is in.
    let streamed = matches!(&result, Ok(r) if matches!(r.body, ResponseBody::Stream(_)));
    if let Some(admission) = durable.as_ref().filter(|_| !streamed) {
        admission.committed().await;
    }
    Ok(Executed {
        response: result?,
        received_at,
        remaining,
        durable_stream: durable.filter(|_| streamed),
    })
}

/// The core's answer as an OpenAI client reads it: as it is.
fn openai_body(body: ResponseBody) -> Result<(Body, &'static str), GatewayError> {
    Ok(match body {
        ResponseBody::Json(bytes) => (Body::from(bytes), "application/json"),
        ResponseBody::Stream(stream) => (
            Body::from_stream(stream.map(Ok::<Bytes, Infallible>)),
            "text/event-stream",
        ),
    })
}

impl Executed {
    /// The HTTP response: the body and its content type as `shape` makes them (as they are
    /// for OpenAI clients, a dialect's conversion for others), with the gateway's headers.
    pub(crate) fn respond(
        self,
        shape: impl FnOnce(
            ResponseBody,
            &llmux::ResponseMeta,
        ) -> Result<(Body, &'static str), GatewayError>,
    ) -> Result<Response, GatewayError> {
        let (body, rest) = self.split();
        let (body, content_type) = shape(body, &rest.meta)?;
        Ok(rest.finish(body, content_type))
    }

    /// `respond` with a shaper that awaits (a dialect that stores the answer first).
    /// The shaper gets the usage the core read from a JSON answer.
    pub(crate) async fn respond_async<F>(
        self,
        shape: impl FnOnce(ResponseBody, Option<llmux::types::Usage>) -> F,
    ) -> Result<Response, GatewayError>
    where
        F: std::future::Future<Output = Result<(Body, &'static str), GatewayError>>,
    {
        let (body, rest) = self.split();
        let (body, content_type) = shape(body, rest.meta.usage).await?;
        Ok(rest.finish(body, content_type))
    }

    fn split(self) -> (ResponseBody, Finishing) {
        let Executed {
            response,
            received_at,
            remaining,
            durable_stream,
        } = self;
        (
            response.body,
            Finishing {
                meta: response.meta,
                received_at,
                remaining,
                durable_stream,
            },
        )
    }
}

/// What a response needs besides its body.
struct Finishing {
    meta: llmux::ResponseMeta,
    received_at: Instant,
    remaining: Option<governance::limits::Remaining>,
    durable_stream: Option<Arc<governance::Admission>>,
}

impl Finishing {
    fn finish(self, body: Body, content_type: &'static str) -> Response {
        let mut out = success_response(self.meta, body, content_type, self.received_at);
        if let Some(r) = self.remaining {
            headers::add_rate_limits(out.headers_mut(), &r);
        }
        match self.durable_stream {
            Some(admission) => {
                let (parts, body) = out.into_parts();
                let commit = futures_util::stream::once(async move {
                    admission.committed().await;
                })
                .filter_map(|()| std::future::ready(None::<Result<Bytes, axum::Error>>));
                let body = Body::from_stream(body.into_data_stream().chain(commit));
                Response::from_parts(parts, body)
            }
            None => out,
        }
    }
}

fn success_response(
    mut meta: llmux::ResponseMeta,
    body: Body,
    content_type: &'static str,
    received_at: Instant,
) -> Response {
    let mut out = Response::new(body);
    *out.status_mut() = StatusCode::from_u16(meta.status).unwrap_or(StatusCode::OK);
    let h = out.headers_mut();
    // Room for the gateway's ~20 headers at once, instead of growing (and rehashing) the map
    // several times while they are added.
    let _ = h.try_reserve(24 + meta.forwarded_headers.len());
    h.insert(
        axum::http::header::CONTENT_TYPE,
        HeaderValue::from_static(content_type),
    );
    if content_type != "application/json" {
        h.insert(
            axum::http::header::CACHE_CONTROL,
            HeaderValue::from_static("no-cache"),
        );
        h.insert(headers::X_ACCEL_BUFFERING, HeaderValue::from_static("no"));
    }
    headers::add_forwarded(h, std::mem::take(&mut meta.forwarded_headers));
    headers::add_gateway_headers(h, &meta, received_at.elapsed());
    out
}

/// An OpenAI-shaped error response with the request id and any upstream headers.
pub fn error_response(error: &GatewayError, request_id: &str) -> Response {
    let status = StatusCode::from_u16(error.status)
        .ok()
        .filter(|s| s.is_client_error() || s.is_server_error())
        .unwrap_or(StatusCode::BAD_GATEWAY);
    if status.is_server_error() {
        tracing::warn!(request_id, kind = %error.kind, status = status.as_u16(), error = %error.message(), "request failed");
    } else {
        tracing::info!(request_id, kind = %error.kind, status = status.as_u16(), error = %error.message(), "request rejected");
    }
    let mut out = Response::new(Body::from(error.envelope().to_json_bytes()));
    *out.status_mut() = status;
    let h = out.headers_mut();
    h.insert(
        axum::http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers::add_forwarded_text(h, &error.headers);
    if let Some(after) = error.retry_after {
        if !h.contains_key(axum::http::header::RETRY_AFTER) {
            if let Ok(v) = HeaderValue::from_str(&after.as_secs().max(1).to_string()) {
                h.insert(axum::http::header::RETRY_AFTER, v);
            }
        }
    }
    headers::add_request_id(h, request_id);
    out
}

async fn list_models(State(state): State<AppState>, request: Request) -> Response {
    let request_id = llmux::new_request_id();
    let principal = match authenticate(&state, request.headers(), request.uri().path()).await {
        Ok(p) => p,
        Err(e) => return error_response(&e, &request_id),
    };
    let mut models = state.client.models();
    if let Some(p) = &principal {
        // A key sees the models it may use, nothing else.
        models
            .data
            .retain(|m| governance::may_use_model(&state.client, p, &m.id));
    }
    let body = serde_json::to_vec(&models).unwrap_or_default();
    json_response(StatusCode::OK, body)
}

async fn get_model(
    State(state): State<AppState>,
    Path(id): Path<String>,
    request: Request,
) -> Response {
    let request_id = llmux::new_request_id();
    let principal = match authenticate(&state, request.headers(), request.uri().path()).await {
        Ok(p) => p,
        Err(e) => return error_response(&e, &request_id),
    };
    let snapshot = state.client.snapshot();
    let allowed = principal
        .as_ref()
        .is_none_or(|p| governance::may_use_model(&state.client, p, &id));
    let Some(route) = snapshot.router.route(&id).filter(|_| allowed) else {
        let e = GatewayError::new(
            ErrorKind::NotFound,
            format!("The model `{id}` does not exist or you do not have access to it."),
        )
        .with_param("model")
        .with_code("model_not_found");
        return error_response(&e, &request_id);
    };
    let owned_by = route
        .candidates
        .first()
        .map(|i| snapshot.router.deployment(*i).provider)
        .unwrap_or("llmux");
    let body = json!({"id": id, "object": "model", "created": 0, "owned_by": owned_by});
    json_response(StatusCode::OK, body.to_string().into_bytes())
}

/// Let an admin through (or anyone, without governance and a master key); the refusal otherwise.
async fn admins_only(
    state: &AppState,
    headers: &axum::http::HeaderMap,
    path: &str,
) -> Result<Option<Principal>, Response> {
    match authenticate(state, headers, path).await {
        Ok(Some(p)) if !p.role.is_admin() => Err(error_response(
            &GatewayError::new(ErrorKind::PermissionDenied, "Admins only.").with_code("forbidden"),
            &llmux::new_request_id(),
        )),
        Err(e) => Err(error_response(&e, &llmux::new_request_id())),
        Ok(principal) => Ok(principal),
    }
}

/// Admin view of every deployment's live routing state (health, cooldown, load, latency).
async fn router_deployments(State(state): State<AppState>, request: Request) -> Response {
    if let Err(refused) = admins_only(&state, request.headers(), request.uri().path()).await {
        return refused;
    }
    let snapshot = state.client.snapshot();
    let router = &snapshot.router;
    let deployments: Vec<serde_json::Value> = router
        .deployments()
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let h = router.stats(i).snapshot();
            json!({
                "id": d.id,
                "model_name": d.model_name,
                "provider": d.provider,
                "model": d.upstream_model,
                "order": (d.order != u32::MAX).then_some(d.order),
                "tags": d.tags,
                "max_parallel_requests": d.max_parallel_requests,
                "healthy": h.healthy,
                "cooling_for_seconds": h.cooling_for.map(|c| c.as_secs_f64()),
                "in_flight": h.in_flight,
                "requests_this_minute": h.requests_this_minute,
                "successes_this_minute": h.successes_this_minute,
                "failures_this_minute": h.failures_this_minute,
                "tokens_this_minute": h.tokens_this_minute,
                "last_failure": h.last_failure.map(|k| k.as_str()),
                "latency_ms_per_token": h.latency_ms_per_token,
                "time_to_first_token_ms": h.time_to_first_token_ms,
            })
        })
        .collect();
    let body = json!({"routing_strategy": router.settings().strategy.as_str(), "deployments": deployments});
    json_response(StatusCode::OK, body.to_string().into_bytes())
}

/// The Prometheus metrics. They name keys' hashes and aliases, teams and users: with a master
/// key they are for admins (`litellm_settings.require_auth_for_metrics_endpoint: false` opens
/// them to any scraper, as LiteLLM's older default did).
async fn metrics_text(State(state): State<AppState>, request: Request) -> Response {
    let config = state.base_config.load();
    let required = config
        .require_auth_for_metrics_endpoint
        .unwrap_or(config.master_key.is_some());
    if required {
        if let Err(refused) = admins_only(&state, request.headers(), request.uri().path()).await {
            return refused;
        }
    }
    // OpenMetrics for a scraper that asks for it; Prometheus's classic text otherwise.
    let openmetrics = request
        .headers()
        .get(axum::http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/openmetrics-text"));
    if let Some(gov) = &state.governance {
        // Requests finished so far first: a key first seen in them is reported too.
        state.metrics.drain_now();
        state.metrics.refresh_budgets(gov).await;
    }
    let text = metrics::render(&state);
    let (body, content_type) = if openmetrics {
        (
            text,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )
    } else {
        (
            metrics::classic_text(&text),
            "text/plain; version=0.0.4; charset=utf-8",
        )
    };
    let mut out = Response::new(Body::from(body));
    out.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        HeaderValue::from_static(content_type),
    );
    out
}

async fn liveliness() -> Response {
    json_response(StatusCode::OK, br#""I'm alive!""#.to_vec())
}

async fn readiness(State(state): State<AppState>) -> Response {
    let draining = state.draining.load(Ordering::Relaxed);
    // The database answers a query within a second, or is reported as not answering (the
    // instance stays ready: admission counts from its cache, spend waits in the writer's
    // queue).
    let db = match &state.governance {
        None => "Not connected",
        Some(gov) => {
            let recent = state
                .db_ping
                .lock()
                .ok()
                .and_then(|p| *p)
                .filter(|(at, _)| at.elapsed() < std::time::Duration::from_secs(2))
                .map(|(_, ok)| ok);
            let answered = match recent {
                Some(ok) => ok,
                None => {
                    let ok =
                        tokio::time::timeout(std::time::Duration::from_secs(1), gov.store.ping())
                            .await
                            .unwrap_or(false);
                    if let Ok(mut p) = state.db_ping.lock() {
                        *p = Some((std::time::Instant::now(), ok));
                    }
                    ok
                }
            };
            if answered {
                "connected"
            } else {
                "not answering"
            }
        }
    };
    let telemetry = state.telemetry.load_full();
    let sinks: Vec<serde_json::Value> = telemetry
        .as_ref()
        .map(|t| t.status())
        .unwrap_or_default()
        .into_iter()
        .map(|s| {
            json!({
                "name": s.name, "healthy": s.healthy, "queued": s.queued,
                "exported": s.exported, "dropped": s.dropped, "failed": s.failed,
            })
        })
        .collect();
    let body = json!({
        "status": if draining { "draining" } else { "healthy" },
        "db": db,
        // LiteLLM's list of the callbacks in use, and each sink's state (a sink that fails
        // does not make the instance unready: requests do not depend on it).
        "success_callbacks": sinks.iter().map(|s| s["name"].clone()).collect::<Vec<_>>(),
        "log_sinks": sinks,
        "cache": null,
        "litellm_version": env!("CARGO_PKG_VERSION"),
        "llmux_version": env!("CARGO_PKG_VERSION"),
        "models": state.client.snapshot().router.deployments().len(),
        // The live configuration: its file, a fingerprint of the text, when it was loaded and
        // how many reloads applied since start.
        "config": state.config_source.lock().ok().map(|s| s.view()),
        // The fleet's shared rate limits: `shared`, or `degraded` (counted per instance while
        // Redis does not answer); null without Redis.
        "redis": state.governance.as_ref().and_then(|g| g.shared_state()).map(|l| {
            if l.degraded() { "degraded" } else { "shared" }
        }),
    });
    let status = if draining {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    json_response(status, body.to_string().into_bytes())
}

async fn unknown_route(method: Method, uri: Uri) -> Response {
    let e = GatewayError::new(
        ErrorKind::NotFound,
        format!("Unknown route: {method} {}", uri.path()),
    )
    .with_code("unknown_route");
    error_response(&e, &llmux::new_request_id())
}

async fn method_not_allowed(method: Method, uri: Uri) -> Response {
    let e =
        GatewayError::invalid_request(format!("Method {method} is not allowed on {}", uri.path()))
            .with_code("method_not_allowed")
            .with_status(405);
    error_response(&e, &llmux::new_request_id())
}

pub(crate) fn json_response(status: StatusCode, body: Vec<u8>) -> Response {
    let mut out = Response::new(Body::from(body));
    *out.status_mut() = status;
    out.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    out
}
