//! One request from raw body to response: read the routing fields and gateway controls, route,
//! then per model group select a deployment, attempt, classify the failure and retry (another
//! deployment first, backoff when none is left), and fall back to other groups by error kind.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use llmux_config::{RecoveryMode, RouterSettings};
use llmux_providers::{Operation, RequestContext};
use llmux_router::{RouteMatch, SelectionInput};
use llmux_types::{ErrorKind, GatewayError, RawObject, Usage};
use serde_json::Value;

use crate::attempt::Attempt;
use crate::cache::{CachePlan, Lookup, ResponseCache};
use crate::delivered::DeliveredText;
use crate::deployment::{model_not_found, no_deployment_error, timeout_error, Claim};
use crate::log::UpstreamRemaining;
use crate::log::{AttemptLog, LogEmitter, Outcome, RequestDetail, RequestLog};
use crate::relay::{relay_stream, RecoveryPlan, RelayStream, StreamSummary, Watch};
use crate::response::{GatewayResponse, ResponseBody};
use crate::resume::{ObservedRecovery, RecoveryLog, Resumer};
use crate::tokens;
use crate::{RequestOptions, Snapshot};

/// What is known about a request so far, for its log record.
#[derive(Clone)]
struct Trace {
    request_id: String,
    received_at: Instant,
    op: Operation,
    stream: bool,
    requested_model: String,
    model_group: Option<String>,
    deployment_id: Option<String>,
    provider: Option<&'static str>,
    /// The chosen deployment's upstream model and price.
    model: Option<String>,
    price: Option<Arc<crate::pricing::ModelPrice>>,
    pricing: Arc<crate::pricing::Pricing>,
    hook: Option<Arc<dyn crate::log::RequestHook>>,
    /// What telemetry asked to keep ([`crate::RequestOptions::observe`]).
    detail: Option<Box<RequestDetail>>,
    /// Keep the bodies too.
    content: bool,
    /// Retries made so far (across groups).
    retries: u32,
    fallback: Option<Box<crate::log::FallbackLog>>,
    /// The response cache and what it does for this request (it missed: the answer is
    /// stored when it succeeds).
    cache: Option<(Arc<ResponseCache>, Arc<CachePlan>)>,
}

/// An attempt timed for its span.
#[derive(Clone, Copy)]
struct AttemptClock {
    span_id: u64,
    started_at: SystemTime,
    started: Instant,
}

impl Trace {
    /// Start timing an attempt at the chosen deployment (`None` unless observed).
    fn start_attempt(&self) -> Option<AttemptClock> {
        self.detail.as_ref().map(|_| AttemptClock {
            span_id: crate::log::new_span_id(),
            started_at: SystemTime::now(),
            started: Instant::now(),
        })
    }

    /// The upstream's `traceparent` and `tracestate` for an attempt.
    fn trace_headers(
        &self,
        clock: Option<AttemptClock>,
    ) -> Option<(http::HeaderValue, Option<http::HeaderValue>)> {
        let trace = self.detail.as_ref()?.trace.as_ref()?;
        let parent = http::HeaderValue::try_from(trace.traceparent(clock?.span_id)).ok()?;
        let state = trace
            .tracestate
            .as_deref()
            .and_then(|s| http::HeaderValue::try_from(s).ok());
        Some((parent, state))
    }

    /// Record the attempt timed by `clock` at the chosen deployment.
    fn record_attempt(
        &mut self,
        clock: Option<AttemptClock>,
        upstream_model: &str,
        status: u16,
        error: Option<&GatewayError>,
    ) {
        let (Some(clock), Some(detail)) = (clock, self.detail.as_mut()) else {
            return;
        };
        detail.attempts.push(AttemptLog {
            span_id: clock.span_id,
            model_group: self.model_group.clone().unwrap_or_default(),
            deployment_id: self.deployment_id.clone().unwrap_or_default(),
            provider: self.provider.unwrap_or(""),
            model: upstream_model.to_owned(),
            started_at: clock.started_at,
            duration: clock.started.elapsed(),
            status,
            error: error.map(|e| (e.kind, e.message().to_owned())),
        });
    }

    /// Someone will read this request's record.
    fn wanted(&self, logs: &LogEmitter) -> bool {
        self.hook.is_some() || logs.wanted()
    }

    /// USD for this usage at the chosen deployment's price (`None` without usage).
    fn cost(&self, usage: Option<&Usage>) -> Option<f64> {
        let usage = usage?;
        Some(self.pricing.cost_of(
            self.price.as_deref(),
            self.model.as_deref().unwrap_or(""),
            usage,
        ))
    }

    /// Hand the record to the hook, then to the broadcast.
    fn emit(&self, logs: &LogEmitter, log: RequestLog) {
        if let Some(hook) = &self.hook {
            hook.finished(&log);
        }
        logs.emit(log);
    }

    /// The record (the kept detail moves into it).
    fn log(
        &mut self,
        status: u16,
        outcome: Outcome,
        usage: Option<Usage>,
        overhead: Duration,
        ttfc: Option<Duration>,
        chunks: u64,
    ) -> RequestLog {
        let duration = self.received_at.elapsed();
        RequestLog {
            request_id: self.request_id.clone(),
            operation: self.op,
            stream: self.stream,
            requested_model: self.requested_model.clone(),
            model_group: self.model_group.clone(),
            deployment_id: self.deployment_id.clone(),
            provider: self.provider,
            status,
            outcome,
            usage,
            duration,
            overhead,
            time_to_first_chunk: ttfc,
            chunks,
            recoveries: 0,
            model: self.model.clone(),
            // Callers price the record (once: pricing counts unpriced requests).
            cost: None,
            started_at: crate::log::started_before(duration),
            detail: self.detail.take().map(Arc::from),
            retries: self.retries,
            fallback: self.fallback.clone(),
            upstream_remaining: None,
            cache_hit: self.cache.as_ref().map(|_| false),
        }
    }
}

/// A request body and its top-level members, parsed once: the server reads admission facts from
/// the same parse the core routes on (a second parse validated every byte of the body again).
/// Only [`ParsedBody::parse`] makes one, so the members always belong to the bytes.
#[derive(Debug)]
pub struct ParsedBody<'a> {
    bytes: &'a Bytes,
    object: RawObject<'a>,
    /// `validate` passed (for the operation it was run for): `execute` does not check again.
    validated: std::sync::atomic::AtomicBool,
}

impl<'a> ParsedBody<'a> {
    /// Parse `bytes` as a JSON object; an `invalid_json` error otherwise.
    pub fn parse(bytes: &'a Bytes) -> Result<Self, GatewayError> {
        let object = RawObject::parse(bytes).map_err(|e| {
            GatewayError::invalid_request(format!(
                "We could not parse the JSON body of your request: {e}"
            ))
            .with_code("invalid_json")
        })?;
        Ok(ParsedBody {
            bytes,
            object,
            validated: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Check the body for `op` (required fields, typed parameters) as `execute` would; a
    /// server checks first so that a malformed request is refused before it is admitted
    /// (counted against budgets and limits).
    pub fn validate(&self, op: Operation) -> Result<(), GatewayError> {
        validate_fields(op, &self.object)?;
        self.validated
            .store(true, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    pub fn object(&self) -> &RawObject<'a> {
        &self.object
    }

    pub fn bytes(&self) -> &Bytes {
        self.bytes
    }
}

/// A body to run: raw bytes (parsed inside, so a parse failure is logged like any other), or
/// one the caller already parsed.
pub(crate) enum Input<'a> {
    Raw(Bytes),
    Parsed(&'a ParsedBody<'a>),
}

pub(crate) async fn execute(
    logs: &LogEmitter,
    snapshot: Arc<Snapshot>,
    op: Operation,
    body: Input<'_>,
    options: RequestOptions,
) -> Result<GatewayResponse, GatewayError> {
    let mut trace = Trace {
        request_id: options.request_id.clone(),
        received_at: options.received_at,
        op,
        stream: false,
        requested_model: String::new(),
        model_group: None,
        deployment_id: None,
        provider: None,
        model: None,
        price: None,
        pricing: Arc::clone(&snapshot.pricing),
        hook: options.hook.clone(),
        detail: options.observe.as_ref().map(|o| {
            Box::new(RequestDetail {
                trace: o.trace.clone(),
                ..Default::default()
            })
        }),
        content: options.observe.as_ref().is_some_and(|o| o.content),
        retries: 0,
        fallback: None,
        cache: None,
    };
    let result = match body {
        Input::Parsed(parsed) => execute_traced(logs, snapshot, parsed, &mut trace, &options).await,
        Input::Raw(bytes) => match ParsedBody::parse(&bytes) {
            Ok(parsed) => execute_traced(logs, snapshot, &parsed, &mut trace, &options).await,
            Err(e) => Err(e),
        },
    };
    if let (Err(e), true) = (&result, trace.wanted(logs)) {
        if let Some(detail) = trace.detail.as_mut() {
            detail.error = Some(e.message().to_owned());
        }
        let log = trace.log(
            e.status,
            Outcome::Failed(e.kind),
            None,
            Duration::ZERO,
            None,
            0,
        );
        trace.emit(logs, log);
    }
    result
}
async fn execute_traced(
    logs: &LogEmitter,
    snapshot: Arc<Snapshot>,
    body: &ParsedBody<'_>,
    trace: &mut Trace,
    options: &RequestOptions,
) -> Result<GatewayResponse, GatewayError> {
    let op = trace.op;
    let request = body.object();
    let model = requested_model(request)?;
    trace.requested_model.clone_from(&model);
    if trace.content {
        if let Some(detail) = trace.detail.as_mut() {
            detail.request_body = Some(body.bytes().clone());
        }
    }
    if !body.validated.load(std::sync::atomic::Ordering::Relaxed) {
        validate_fields(op, request)?;
    }
    if !options.native_dialect && request.get(llmux_providers::NATIVE_ANTHROPIC).is_some() {
        return Err(GatewayError::invalid_request(format!(
            "Unrecognized request argument supplied: {}",
            llmux_providers::NATIVE_ANTHROPIC
        ))
        .with_param(llmux_providers::NATIVE_ANTHROPIC));
    }
    let stream = match op {
        Operation::Embeddings | Operation::Rerank => false,
        Operation::Chat | Operation::Completions => request
            .decode::<bool>("stream")
            .map_err(|_| {
                GatewayError::invalid_request("`stream` must be a boolean").with_param("stream")
            })?
            .unwrap_or(false),
    };
    trace.stream = stream;
    let controls = Controls::read(request, options)?;

    let router = &snapshot.router;
    let settings = router.settings();
    let first = router
        .route(&model)
        .ok_or_else(|| model_not_found(&model))?;
    trace.model_group = Some(first.group.to_owned());

    if let Some(cache) = &snapshot.cache {
        // A wildcard group answers for many models: the model asked for is the key's.
        let route_key = if first.wildcard.is_some() {
            model.as_str()
        } else {
            first.group
        };
        // With tag filtering, tags choose the deployments that may answer: they are the key's.
        let tags: &[String] = if settings.enable_tag_filtering {
            &controls.tags
        } else {
            &[]
        };
        if let Some(plan) =
            cache.plan(op, request, route_key, options.cache_scope.as_deref(), tags)?
        {
            let plan = Arc::new(plan);
            let include_usage = stream && include_usage(request);
            let answer = match cache.lookup(&plan).await {
                Lookup::Hit(found) => {
                    cached_answer(trace, logs, &plan, found.body, None, include_usage)
                }
                Lookup::Partial(found) if found.iter().all(Option::is_some) => {
                    let entries: Vec<Bytes> = found.into_iter().flatten().map(|c| c.body).collect();
                    crate::cache::replay::join_embeddings(&entries).and_then(|(body, usage)| {
                        cached_answer(trace, logs, &plan, body, Some(usage), false)
                    })
                }
                Lookup::Partial(found) => {
                    return partial_embeddings(
                        logs,
                        Arc::clone(&snapshot),
                        body,
                        trace,
                        options,
                        found,
                    )
                    .await;
                }
                Lookup::Miss => match (&plan.semantic, cache.semantic_model()) {
                    // Only a context with questions to compare with is worth an embedding.
                    (Some(question), Some(embedder))
                        if plan.read && cache.semantic_candidates(&plan).await =>
                    {
                        match embed(logs, &snapshot, embedder, &question.question).await {
                            Some(vector) => {
                                let _ = question.vector.set(Arc::clone(&vector));
                                match cache.semantic_lookup(&plan, &vector).await {
                                    Some((found, similarity, key)) => cached_answer(
                                        trace,
                                        logs,
                                        &plan,
                                        found.body,
                                        None,
                                        include_usage,
                                    )
                                    .map(|mut answer| {
                                        answer.meta.semantic_similarity = Some(similarity);
                                        answer.meta.cache_key = Some(key);
                                        answer
                                    }),
                                    None => None,
                                }
                            }
                            None => None,
                        }
                    }
                    _ => None,
                },
            };
            if let Some(answer) = answer {
                return Ok(answer);
            }
            trace.cache = Some((Arc::clone(cache), plan));
        }
    }

    let mut run = Run {
        snapshot: &snapshot,
        logs,
        op,
        stream,
        request,
        body: body.bytes().clone(),
        controls: &controls,
        trace,
        fallbacks: 0,
    };
    let mut result = run.group(&first, &model).await;
    let Err(first_error) = &result else {
        return run.finish(result);
    };
    if controls.disable_fallbacks || !triggers_fallback(first_error.kind) {
        return run.finish(result);
    }
    // Fallback groups, chosen by what went wrong in the requested group.
    let mut queue: Vec<String> = match &controls.fallbacks {
        Some(list) => list.clone(),
        None => fallback_list(settings, first.group, first_error.kind),
    };
    queue.retain(|g| g != first.group);
    queue.dedup();
    let cause = crate::log::FallbackLog {
        cause: first_error.kind,
        cause_status: first_error.status,
        cause_provider: run.trace.provider,
        groups: Vec::new(),
    };
    for group in queue.into_iter().take(settings.max_fallbacks) {
        let Some(route) = router.route(&group) else {
            tracing::warn!(fallback = %group, "fallback model group does not exist; skipped");
            continue;
        };
        run.fallbacks += 1;
        tracing::info!(request_id = %run.trace.request_id, from = %first.group, to = %route.group, "falling back");
        run.trace.model_group = Some(route.group.to_owned());
        run.trace
            .fallback
            .get_or_insert_with(|| Box::new(cause.clone()))
            .groups
            .push(route.group.to_owned());
        result = run.group(&route, &group).await;
        if result.is_ok() {
            break;
        }
    }
    run.finish(result)
}

/// `text` embedded by the model group `group` (through this gateway: routed, retried, itself
/// cached per input), normalized; `None` when it cannot be (the lookup is then a miss). The
/// call is the operator's: no key is billed for it.
pub(crate) async fn embed(
    logs: &LogEmitter,
    snapshot: &Arc<Snapshot>,
    group: &str,
    text: &str,
) -> Option<Arc<[f32]>> {
    #[derive(serde::Deserialize)]
    struct Item {
        embedding: Vec<f32>,
    }
    #[derive(serde::Deserialize)]
    struct Answer {
        data: Vec<Item>,
    }
    let body = serde_json::to_vec(&serde_json::json!({"model": group, "input": text})).ok()?;
    let answered = tokio::time::timeout(
        EMBED_DEADLINE,
        Box::pin(execute(
            logs,
            Arc::clone(snapshot),
            Operation::Embeddings,
            Input::Raw(Bytes::from(body)),
            RequestOptions::default(),
        )),
    )
    .await;
    let response = match answered {
        Ok(Ok(response)) => response,
        Err(_) => {
            tracing::warn!(
                group,
                "semantic cache: no embedding within 10 s; answering upstream"
            );
            return None;
        }
        Ok(Err(e)) => {
            tracing::warn!(group, error = %e.message(), "semantic cache: embedding failed; answering upstream");
            return None;
        }
    };
    let ResponseBody::Json(body) = response.body else {
        return None;
    };
    let answer: Answer = serde_json::from_slice(&body).ok()?;
    crate::cache::semantic_vector(&answer.data.first()?.embedding)
}

/// How long a semantic lookup waits for its question's embedding.
const EMBED_DEADLINE: Duration = Duration::from_secs(10);

/// `stream_options.include_usage`: the client wants the usage chunk.
fn include_usage(request: &RawObject<'_>) -> bool {
    #[derive(serde::Deserialize)]
    struct StreamOptions {
        #[serde(default)]
        include_usage: bool,
    }
    matches!(
        request.decode::<StreamOptions>("stream_options"),
        Ok(Some(StreamOptions {
            include_usage: true
        }))
    )
}

/// The answer to a request from the cache (a JSON answer, replayed as a stream for a stream
/// request), with its record: a hit costs nothing and calls no upstream. `None` when a stream
/// cannot carry it (the request then goes upstream).
fn cached_answer(
    trace: &mut Trace,
    logs: &LogEmitter,
    plan: &CachePlan,
    body: Bytes,
    usage: Option<Usage>,
    include_usage: bool,
) -> Option<GatewayResponse> {
    let usage = usage.or_else(|| {
        RawObject::parse(&body)
            .ok()
            .and_then(|o| o.decode::<Usage>("usage").ok().flatten())
    });
    let (response_body, chunks) = if trace.stream {
        let events = crate::cache::replay::to_stream(trace.op, &body, include_usage)?;
        let chunks = events.len() as u64;
        (
            ResponseBody::Stream(RelayStream::from_events(events)),
            chunks,
        )
    } else {
        (ResponseBody::Json(body.clone()), 0)
    };
    let elapsed = trace.received_at.elapsed();
    if trace.wanted(logs) {
        if let Some(detail) = trace.detail.as_mut() {
            if trace.content {
                detail.response_body = Some(body);
            }
        }
        let mut log = trace.log(
            200,
            Outcome::Success,
            usage,
            elapsed,
            trace.stream.then_some(elapsed),
            chunks,
        );
        log.cache_hit = Some(true);
        log.cost = Some(0.0);
        trace.emit(logs, log);
    }
    Some(GatewayResponse {
        meta: crate::response::ResponseMeta {
            request_id: trace.request_id.clone(),
            model_group: trace.model_group.clone().unwrap_or_default(),
            deployment_id: String::new(),
            provider: "cache",
            status: 200,
            forwarded_headers: Vec::new(),
            usage: if trace.stream { None } else { usage },
            upstream_latency: Duration::ZERO,
            overhead: elapsed,
            attempted_retries: 0,
            attempted_fallbacks: 0,
            cost: Some(0.0),
            native: false,
            cache_key: Some(plan.hash.clone()),
            semantic_similarity: None,
        },
        body: response_body,
    })
}

/// An embeddings batch some of whose inputs the cache holds: the others are sent upstream (as
/// a batch of their own, whose answer is cached per input as usual), and the answer joins
/// both in the request's order. The record is the upstream call's (what was billed).
async fn partial_embeddings(
    logs: &LogEmitter,
    snapshot: Arc<Snapshot>,
    body: &ParsedBody<'_>,
    trace: &mut Trace,
    options: &RequestOptions,
    found: Vec<Option<crate::cache::Cached>>,
) -> Result<GatewayResponse, GatewayError> {
    let inputs = crate::cache::embedding_inputs(body.object())?;
    let missing: Vec<usize> = (0..found.len()).filter(|i| found[*i].is_none()).collect();
    let rest: Vec<&serde_json::Value> = missing.iter().filter_map(|i| inputs.get(*i)).collect();
    let rest = serde_json::to_vec(&rest).map_err(|e| GatewayError::internal(e.to_string()))?;
    let reduced = Bytes::from(body.object().edit().set("input", rest).render());
    let reduced = ParsedBody::parse(&reduced)?;
    let mut response = Box::pin(execute_traced(logs, snapshot, &reduced, trace, options)).await?;
    let ResponseBody::Json(fresh) = &response.body else {
        return Ok(response);
    };
    let fresh = crate::cache::replay::split_embeddings(fresh, missing.len());
    if fresh.len() != missing.len() {
        return Err(GatewayError::new(
            ErrorKind::UpstreamError,
            "the upstream's embeddings answer did not hold a vector per input",
        ));
    }
    let mut fresh = fresh.into_iter();
    let entries: Vec<Bytes> = found
        .into_iter()
        .map(|c| c.map(|c| c.body).or_else(|| fresh.next()))
        .collect::<Option<_>>()
        .ok_or_else(|| GatewayError::internal("cached and fresh embeddings do not add up"))?;
    let (joined, _) = crate::cache::replay::join_embeddings(&entries)
        .ok_or_else(|| GatewayError::internal("cached embeddings could not be joined"))?;
    response.body = ResponseBody::Json(joined);
    Ok(response)
}

/// Fallback groups for a failure of `kind` in `group`: the list for that kind of failure, then
/// the general one, then `default_fallbacks`.
fn fallback_list(settings: &RouterSettings, group: &str, kind: ErrorKind) -> Vec<String> {
    let specific = match kind {
        ErrorKind::ContextLengthExceeded => settings.context_window_fallbacks.get(group),
        ErrorKind::ContentFiltered => settings.content_policy_fallbacks.get(group),
        _ => None,
    };
    let mut list: Vec<String> = specific.cloned().unwrap_or_default();
    list.extend(settings.fallbacks.get(group).cloned().unwrap_or_default());
    if list.is_empty() {
        list.extend(settings.default_fallbacks.iter().cloned());
    }
    list
}

/// Client mistakes are not fixed by another model; everything else may be.
fn triggers_fallback(kind: ErrorKind) -> bool {
    match kind {
        ErrorKind::InvalidRequest
        | ErrorKind::PayloadTooLarge
        | ErrorKind::BudgetExceeded
        | ErrorKind::Internal => false,
        ErrorKind::Authentication
        | ErrorKind::PermissionDenied
        | ErrorKind::NotFound
        | ErrorKind::RateLimited
        | ErrorKind::ContextLengthExceeded
        | ErrorKind::ContentFiltered
        | ErrorKind::Timeout
        | ErrorKind::UpstreamUnavailable
        | ErrorKind::UpstreamError => true,
    }
}

/// Gateway controls a request may carry: LiteLLM's body fields (stripped before forwarding) and
/// headers (`x-litellm-num-retries`, `x-litellm-timeout`, `x-litellm-tags`).
#[derive(Debug, Default)]
struct Controls {
    num_retries: Option<u32>,
    timeout: Option<Duration>,
    fallbacks: Option<Vec<String>>,
    disable_fallbacks: bool,
    tags: Vec<String>,
}

impl Controls {
    fn read(request: &RawObject<'_>, options: &RequestOptions) -> Result<Controls, GatewayError> {
        let bad = |field: &str, what: &str| {
            GatewayError::invalid_request(format!("`{field}` must be {what}")).with_param(field)
        };
        let num_retries = match request.decode::<u32>("num_retries") {
            Ok(v) => v.or(options.num_retries),
            Err(_) => return Err(bad("num_retries", "a non-negative integer")),
        };
        let timeout = match request.decode::<f64>("timeout") {
            Ok(Some(t)) if t > 0.0 && t < 1.0e6 => Some(Duration::from_secs_f64(t)),
            Ok(Some(_)) | Err(_) => return Err(bad("timeout", "a positive number of seconds")),
            Ok(None) => options.timeout,
        };
        let fallbacks = match request.decode::<Vec<Value>>("fallbacks") {
            Ok(list) => list.map(|items| {
                items
                    .iter()
                    .filter_map(|v| {
                        v.as_str()
                            .or_else(|| v.get("model").and_then(Value::as_str))
                            .map(str::to_owned)
                    })
                    .collect()
            }),
            Err(_) => return Err(bad("fallbacks", "a list of model names")),
        };
        let disable_fallbacks = request
            .decode::<bool>("disable_fallbacks")
            .map_err(|_| bad("disable_fallbacks", "a boolean"))?
            .unwrap_or(false);
        let mut tags: Vec<String> = options.tags.clone();
        if let Ok(Some(list)) = request.decode::<Vec<String>>("tags") {
            tags.extend(list);
        }
        if let Ok(Some(metadata)) = request.decode::<Value>("metadata") {
            if let Some(list) = metadata.get("tags").and_then(Value::as_array) {
                tags.extend(list.iter().filter_map(Value::as_str).map(str::to_owned));
            }
        }
        Ok(Controls {
            num_retries: num_retries.map(|n| n.min(20)),
            timeout,
            fallbacks,
            disable_fallbacks,
            tags,
        })
    }
}

/// Longest single wait before a retry; a longer `Retry-After` ends the retries instead.
const MAX_RETRY_WAIT: Duration = Duration::from_secs(60);

/// Exponential backoff with jitter (0.5 s doubling, capped at 8 s), at least `retry_after`
/// (the setting) and the upstream's `Retry-After` when it sent one.
fn backoff(retry: u32, upstream_retry_after: Option<Duration>, min_wait: Duration) -> Duration {
    if let Some(after) = upstream_retry_after {
        return after.max(min_wait);
    }
    let base = Duration::from_millis(500)
        .saturating_mul(1u32 << retry.saturating_sub(1).min(4))
        .min(Duration::from_secs(8));
    let jittered = base.mul_f64(rand::random_range(0.5..=1.0));
    jittered.max(min_wait)
}

/// The state of one request across attempts and fallback groups.
struct Run<'a> {
    /// The request body as received (recovery resends it with the delivered text appended).
    body: Bytes,
    snapshot: &'a Arc<Snapshot>,
    logs: &'a LogEmitter,
    op: Operation,
    stream: bool,
    request: &'a RawObject<'a>,
    controls: &'a Controls,
    trace: &'a mut Trace,
    fallbacks: u32,
}

impl Run<'_> {
    /// Attach the attempt counters to the outcome (headers on success and on error).
    fn finish(
        &self,
        result: Result<GatewayResponse, GatewayError>,
    ) -> Result<GatewayResponse, GatewayError> {
        match result {
            Ok(mut response) => {
                response.meta.attempted_retries = self.trace.retries;
                response.meta.attempted_fallbacks = self.fallbacks;
                Ok(response)
            }
            Err(mut e) => {
                for (name, value) in [
                    ("x-litellm-attempted-retries", self.trace.retries),
                    ("x-llmux-attempted-retries", self.trace.retries),
                    ("x-litellm-attempted-fallbacks", self.fallbacks),
                    ("x-llmux-attempted-fallbacks", self.fallbacks),
                ] {
                    e.headers.push((name.to_owned(), value.to_string()));
                }
                Err(e)
            }
        }
    }

    /// Prompt tokens, when pre-call checks are on and some deployment of the group has a limit.
    fn prompt_tokens(&self, route: &RouteMatch<'_>) -> Option<u64> {
        let router = &self.snapshot.router;
        if !router.settings().enable_pre_call_checks
            || matches!(self.op, Operation::Embeddings | Operation::Rerank)
        {
            return None;
        }
        let smallest = route
            .candidates
            .iter()
            .filter_map(|i| router.deployment(*i).config.model_info.max_input_tokens)
            .min()?;
        // A token is at least one byte of the body, so a body this small always fits.
        if (self.request_len() as u64) <= smallest {
            return None;
        }
        let model = &router.deployment(route.candidates[0]).upstream_model;
        Some(tokens::count_prompt_tokens(self.request, model))
    }

    fn request_len(&self) -> usize {
        self.request
            .iter()
            .map(|(k, v)| k.len() + v.get().len() + 4)
            .sum()
    }

    /// Attempts within one model group: select, try, classify, maybe retry (another deployment
    /// first; waiting only when none is available).
    /// `route_model` is the name `route` was found by (a continuation routes by it again).
    async fn group(
        &mut self,
        route: &RouteMatch<'_>,
        route_model: &str,
    ) -> Result<GatewayResponse, GatewayError> {
        let router = &self.snapshot.router;
        let settings = router.settings();
        let prompt_tokens = self.prompt_tokens(route);
        let mut excluded: Vec<usize> = Vec::new();
        let mut group_retries = 0u32;
        loop {
            let input = SelectionInput {
                op: self.op,
                stream: self.stream,
                tags: &self.controls.tags,
                prompt_tokens,
                exclude: &excluded,
            };
            let index = router.select(route, &input).map_err(|no| {
                let last = matches!(no, llmux_router::NoDeployment::Cooling { .. })
                    .then(|| self.snapshot.last_failure(route.candidates))
                    .flatten();
                no_deployment_error(no, route.group, self.op, prompt_tokens, last.as_deref())
            })?;
            let claim = Claim {
                snapshot: Arc::clone(self.snapshot),
                index,
            };
            let chosen = router.deployment(index);
            self.trace.deployment_id = Some(chosen.id.clone());
            self.trace.provider = Some(chosen.provider);
            self.trace.model = Some(chosen.config.model.clone());
            self.trace.price = self
                .snapshot
                .pricing
                .deployment_price(&chosen.id, &chosen.config);
            let clock = self.trace.start_attempt();
            let result = self.attempt(route, route_model, claim, clock).await;
            let error = match result {
                Ok(response) => return Ok(response),
                Err(e) => e,
            };
            self.trace
                .record_attempt(clock, &chosen.upstream_model, error.status, Some(&error));
            self.snapshot
                .deployment_failed(index, &error, route.candidates.len());
            let allowed = match self.controls.num_retries {
                Some(n)
                    if error.kind.is_retryable()
                        && !settings.retry_policy.contains_key(&error.kind) =>
                {
                    n
                }
                _ => settings.retries_for(error.kind),
            };
            if group_retries >= allowed {
                return Err(error);
            }
            group_retries += 1;
            self.trace.retries += 1;
            excluded.push(index);
            let input = SelectionInput {
                op: self.op,
                stream: self.stream,
                tags: &self.controls.tags,
                prompt_tokens,
                exclude: &excluded,
            };
            let wait = if router.has_fresh_candidate(route, &input) {
                settings.retry_after
            } else {
                backoff(group_retries, error.retry_after, settings.retry_after)
            };
            if wait > MAX_RETRY_WAIT {
                return Err(error);
            }
            tracing::info!(request_id = %self.trace.request_id, kind = %error.kind, retry = group_retries, wait_ms = wait.as_millis() as u64, "retrying");
            tokio::time::sleep(wait).await;
        }
    }

    /// One attempt on the claimed deployment.
    async fn attempt(
        &mut self,
        route: &RouteMatch<'_>,
        route_model: &str,
        claim: Claim,
        clock: Option<AttemptClock>,
    ) -> Result<GatewayResponse, GatewayError> {
        let snapshot = Arc::clone(self.snapshot);
        let index = claim.index;
        let deployment = Arc::clone(snapshot.router.deployment(index));
        let http = &snapshot.clients[index];
        let ctx = RequestContext {
            wildcard: route.wildcard,
            drop_params: snapshot.config.drop_params,
        };
        let total_timeout = self
            .controls
            .timeout
            .or(deployment.timeout)
            .unwrap_or(snapshot.config.request_timeout);
        let stream_timeout = deployment
            .stream_timeout
            .or(self.controls.timeout)
            .unwrap_or(total_timeout);
        let native = self
            .request
            .get(llmux_providers::NATIVE_ANTHROPIC)
            .is_some()
            && deployment.speaks_anthropic();
        let mut attempt = Attempt {
            request_id: self.trace.request_id.clone(),
            received_at: self.trace.received_at,
            model_group: route.group.to_owned(),
            deployment,
            sent_at: Instant::now(),
            hide_usage_chunk: false,
            native,
            trace_headers: self.trace.trace_headers(clock),
        };
        if !self.stream {
            let response = tokio::time::timeout(
                total_timeout,
                attempt.unary(
                    http,
                    self.op,
                    self.request,
                    ctx,
                    (
                        &snapshot.buffers,
                        snapshot.config.max_buffered_response_bytes,
                    ),
                ),
            )
            .await
            .map_err(|_| timeout_error("waiting for the upstream response", total_timeout))??;
            snapshot.deployment_answered(index);
            snapshot.deployment_served(
                index,
                response.meta.upstream_latency,
                response.meta.usage.as_ref(),
            );
            let mut response = response;
            response.meta.cost = self.trace.cost(response.meta.usage.as_ref());
            // A fallback group's answer is not the requested group's to keep.
            if let (Some((cache, plan)), ResponseBody::Json(body), None) =
                (&self.trace.cache, &response.body, &self.trace.fallback)
            {
                if !response.meta.native {
                    let embedder = plan.semantic.is_some().then(|| crate::cache::Embedder {
                        logs: self.logs.clone(),
                        snapshot: Arc::clone(self.snapshot),
                    });
                    cache.store(plan, body.clone(), None, embedder);
                }
            }
            let meta = &response.meta;
            if self.trace.wanted(self.logs) {
                self.trace.record_attempt(
                    clock,
                    &attempt.deployment.upstream_model,
                    meta.status,
                    None,
                );
                if let (Some(detail), ResponseBody::Json(body)) =
                    (self.trace.detail.as_mut(), &response.body)
                {
                    detail.response_body = Some(body.clone());
                }
                let mut log = self.trace.log(
                    meta.status,
                    Outcome::Success,
                    meta.usage,
                    meta.overhead,
                    None,
                    0,
                );
                log.cost = meta.cost;
                log.upstream_remaining = UpstreamRemaining::from_headers(&meta.forwarded_headers);
                self.trace.emit(self.logs, log);
            }
            drop(claim);
            return Ok(response);
        }
        let response = tokio::time::timeout(
            stream_timeout,
            attempt.send(http, self.op, self.request, ctx),
        )
        .await
        .map_err(|_| {
            timeout_error(
                "waiting for the upstream to start the stream",
                stream_timeout,
            )
        })??;
        let peeked = attempt.peek(self.op, response, stream_timeout).await?;
        snapshot.deployment_answered(index);
        snapshot
            .router
            .stats(index)
            .record_ttft(peeked.meta.upstream_latency);
        let meta = peeked.meta.clone();
        let time_to_first_chunk = self.trace.received_at.elapsed();
        let logs = self.logs.clone();
        let upstream_model = if clock.is_some() {
            attempt.deployment.upstream_model.clone()
        } else {
            String::new()
        };
        let mut trace = self.trace.clone();
        if let Some(detail) = trace.detail.as_mut() {
            detail.response_body = peeked.initial.last().cloned();
        }
        let finished_snapshot = Arc::clone(&snapshot);
        let group_size = route.candidates.len();
        // An observed stream's recovery attempts, for their spans.
        let recovery_log = clock.map(|_| Arc::new(std::sync::Mutex::new(RecoveryLog::default())));
        let finished_recovery = recovery_log.clone();
        let body = self.body.clone();
        let on_finish = move |mut summary: StreamSummary| {
            let outcome = match (&summary.error, summary.completed) {
                (Some(e), _) => Outcome::Failed(e.kind),
                (None, true) => Outcome::Success,
                (None, false) => Outcome::ClientDisconnected,
            };
            if summary.usage.is_none() && summary.chunks > 0 {
                // The usage never arrived (the client left first, or the upstream broke off):
                // what was sent is still billed, counted here.
                let model = trace.model.as_deref().unwrap_or(&trace.requested_model);
                summary.usage = Some(estimate_usage(&body, model, &summary.delivered));
            }
            // After a recovery (or a try at one) the resumer has already recorded this
            // deployment's failure.
            // A budget that ran out (the hook ended the stream) is no fault of the deployment.
            if let Some(e) = summary
                .error
                .as_ref()
                .filter(|e| !summary.recovery_tried && e.kind != ErrorKind::BudgetExceeded)
            {
                finished_snapshot.deployment_failed(index, e, group_size);
            }
            if summary.usage.is_some() {
                finished_snapshot.deployment_served(
                    index,
                    summary.duration + meta.upstream_latency,
                    summary.usage.as_ref(),
                );
            }
            if let (Some((cache, plan)), Outcome::Success) = (&trace.cache, outcome) {
                if let Some(events) = summary.delivered.take_events() {
                    let embedder = plan.semantic.is_some().then(|| crate::cache::Embedder {
                        logs: logs.clone(),
                        snapshot: Arc::clone(&finished_snapshot),
                    });
                    cache.store_stream(plan, trace.op, events, summary.usage, embedder);
                }
            }
            if trace.wanted(&logs) {
                let recovered = finished_recovery
                    .as_ref()
                    .and_then(|log| log.lock().ok().map(|mut log| std::mem::take(&mut *log)));
                match recovered.as_ref().and_then(|r| r.first_failure.clone()) {
                    // The first attempt failed mid-stream; the continuations carried it on.
                    Some((at, kind, message)) => {
                        trace.record_attempt(clock, &upstream_model, meta.status, None);
                        if let Some(first) =
                            trace.detail.as_mut().and_then(|d| d.attempts.last_mut())
                        {
                            first.duration =
                                at.duration_since(first.started_at).unwrap_or_default();
                            first.error = Some((kind, message));
                        }
                    }
                    None => trace.record_attempt(
                        clock,
                        &upstream_model,
                        meta.status,
                        summary.error.as_ref(),
                    ),
                }
                if let (Some(recovered), Some(detail)) = (recovered, trace.detail.as_mut()) {
                    let last = recovered.attempts.len().checked_sub(1);
                    for (i, mut attempt) in recovered.attempts.into_iter().enumerate() {
                        if Some(i) == last && attempt.error.is_none() {
                            attempt.duration = SystemTime::now()
                                .duration_since(attempt.started_at)
                                .unwrap_or_default();
                            attempt.error = summary
                                .error
                                .as_ref()
                                .map(|e| (e.kind, e.message().to_owned()));
                        }
                        detail.attempts.push(attempt);
                    }
                }
                if let Some(detail) = trace.detail.as_mut() {
                    detail.finish_reasons = summary.delivered.finish_reasons().to_vec();
                    if let Some(e) = &summary.error {
                        detail.error = Some(e.message().to_owned());
                    }
                    if trace.content {
                        detail.delivered = Some(std::mem::take(&mut summary.delivered));
                    }
                }
                let mut log = trace.log(
                    meta.status,
                    outcome,
                    summary.usage,
                    meta.overhead,
                    Some(time_to_first_chunk),
                    summary.chunks,
                );
                log.recoveries = summary.recoveries;
                log.cost = trace.cost(summary.usage.as_ref());
                log.upstream_remaining = UpstreamRemaining::from_headers(&meta.forwarded_headers);
                trace.emit(&logs, log);
            }
            // The in-flight slot is held until the stream ends.
            drop(claim);
        };
        let recovery_settings = snapshot.router.settings().stream_recovery;
        let recovery = (recovery_settings.mode == RecoveryMode::Continue
            && self.op == Operation::Chat)
            .then(|| RecoveryPlan {
                resume: Box::new(Resumer {
                    snapshot: Arc::clone(&snapshot),
                    body: self.body.clone(),
                    route_model: route_model.to_owned(),
                    tags: self.controls.tags.clone(),
                    timeout: self.controls.timeout,
                    request_id: self.trace.request_id.clone(),
                    received_at: self.trace.received_at,
                    used: vec![index],
                    claims: Vec::new(),
                    observed: recovery_log.as_ref().map(|log| ObservedRecovery {
                        trace: self.trace.detail.as_ref().and_then(|d| d.trace.clone()),
                        log: Arc::clone(log),
                    }),
                }),
                max_attempts: recovery_settings.max_attempts,
                max_buffered_bytes: recovery_settings.max_buffered_bytes,
            });
        let watch = Watch {
            hook: self.trace.hook.clone().filter(|h| h.watches_stream()),
            finish_reasons: self.trace.detail.is_some(),
            keep_events: self
                .trace
                .cache
                .as_ref()
                .filter(|(_, plan)| plan.write && !meta.native && self.trace.fallback.is_none())
                .map(|(cache, _)| cache.settings().max_item_bytes),
        };
        let stream = relay_stream(
            peeked.initial,
            peeked.first_usage,
            peeked.relay,
            peeked.finished,
            recovery,
            watch,
            on_finish,
        );
        Ok(GatewayResponse {
            meta: peeked.meta,
            body: ResponseBody::Stream(stream),
        })
    }
}

fn requested_model(request: &RawObject<'_>) -> Result<String, GatewayError> {
    match request.decode::<String>("model") {
        Ok(Some(model)) if !model.is_empty() => Ok(model),
        Ok(_) => Err(
            GatewayError::invalid_request("you must provide a model parameter")
                .with_param("model")
                .with_code("missing_required_parameter"),
        ),
        Err(_) => {
            Err(GatewayError::invalid_request("`model` must be a string").with_param("model"))
        }
    }
}

/// The fields each operation cannot do without; everything else is the upstream's to judge.
fn validate_fields(op: Operation, request: &RawObject<'_>) -> Result<(), GatewayError> {
    let (field, want_array) = match op {
        Operation::Chat => ("messages", true),
        Operation::Completions => ("prompt", false),
        Operation::Embeddings => ("input", false),
        Operation::Rerank => ("documents", true),
    };
    let missing = || {
        GatewayError::invalid_request(format!("Missing required parameter: '{field}'."))
            .with_param(field)
            .with_code("missing_required_parameter")
    };
    let value = request.get_non_null(field).ok_or_else(missing)?;
    let first = value.get().as_bytes().first().copied();
    if want_array && first != Some(b'[') {
        return Err(
            GatewayError::invalid_request(format!("`{field}` must be an array")).with_param(field),
        );
    }
    if op == Operation::Rerank && !matches!(request.decode::<String>("query"), Ok(Some(_))) {
        return Err(
            GatewayError::invalid_request("Missing required parameter: 'query'.")
                .with_param("query")
                .with_code("missing_required_parameter"),
        );
    }
    if op == Operation::Embeddings && !matches!(first, Some(b'"') | Some(b'[')) {
        return Err(GatewayError::invalid_request(
            "`input` must be a string, an array of strings, or an array of token arrays",
        )
        .with_param("input"));
    }
    if want_array
        && value
            .get()
            .trim_start_matches('[')
            .trim_start()
            .starts_with(']')
    {
        return Err(
            GatewayError::invalid_request(format!("`{field}` must not be empty"))
                .with_param(field)
                .with_code("empty_array"),
        );
    }
    validate_params(op, request)
}

/// Usage counted locally for a stream whose provider never reported it: the prompt as the
/// pre-call checks count it, and the generated text the client received with the model's
/// tokenizer (text past the kept cap at four bytes a token).
fn estimate_usage(body: &Bytes, model: &str, delivered: &DeliveredText) -> Usage {
    // Counted exactly up to a size that takes a few milliseconds, estimated past it: a client
    // that repeats "huge prompt, leave after the first chunk" must not tie up the runtime.
    const EXACT_PROMPT_UP_TO: usize = 256 * 1024;
    let request = RawObject::parse(body).ok();
    // A client's own Anthropic body riding along (`/v1/messages`) is the same prompt again.
    let carried = request
        .as_ref()
        .and_then(|r| r.get(llmux_providers::NATIVE_ANTHROPIC))
        .map_or(0, |raw| raw.get().len());
    let size = body.len().saturating_sub(carried);
    let prompt = match &request {
        Some(request) if size <= EXACT_PROMPT_UP_TO => tokens::count_prompt_tokens(request, model),
        _ => (size as u64).div_ceil(4),
    };
    let bpe = tokens::encoding_for(model);
    let (text, beyond) = delivered.text();
    let completion = bpe.encode_with_special_tokens(&text).len() as u64 + beyond.div_ceil(4);
    Usage::new(prompt, completion)
}

/// The typed OpenAI parameters a request sets hold values of their type and range, so a value
/// no provider accepts (`max_tokens: -1`, `"10"`, `1.5`, `1e30`) is refused here, naming the
/// parameter, instead of travelling upstream. One pass over the top-level keys; unknown keys
/// and nulls pass (providers have their own).
fn validate_params(op: Operation, request: &RawObject<'_>) -> Result<(), GatewayError> {
    for (key, value) in request.iter() {
        let text = value.get();
        if text == "null" {
            continue;
        }
        let ok = match key {
            // Types everywhere; ranges only where no provider reads them differently (vLLM,
            // Ollama and others take temperatures above 2 and more logprobs than OpenAI).
            "max_tokens" | "max_completion_tokens" => int_in(text, 0, i64::from(i32::MAX)),
            "n" => int_in(text, 1, 128),
            "best_of" => int_in(text, 0, 128),
            "top_logprobs" => int_in(text, 0, 1000),
            "dimensions" | "top_n" => int_in(text, 1, i64::from(i32::MAX)),
            "seed" => text.parse::<i64>().is_ok(),
            "temperature" => num_in(text, 0.0, f64::MAX),
            "top_p" => num_in(text, 0.0, 1.0),
            "presence_penalty" | "frequency_penalty" => num_in(text, -2.0, 2.0),
            "logprobs" => match op {
                Operation::Completions => int_in(text, 0, 1000),
                _ => text == "true" || text == "false",
            },
            "stream" | "parallel_tool_calls" | "echo" | "store" => {
                text == "true" || text == "false"
            }
            "stop" => {
                text.starts_with('"')
                    || serde_json::from_str::<Vec<String>>(text).is_ok_and(|v| v.len() <= 16)
            }
            "user" => text.starts_with('"'),
            "logit_bias" | "response_format" | "stream_options" | "metadata" => {
                text.starts_with('{')
            }
            "tools" | "functions" => text.starts_with('['),
            "tool_choice" | "function_call" => text.starts_with('"') || text.starts_with('{'),
            _ => true,
        };
        if !ok {
            return Err(GatewayError::invalid_request(format!(
                "Invalid value for '{key}': {} is not {}.",
                shorten(text),
                expected_type(op, key)
            ))
            .with_param(key)
            .with_code("invalid_value"));
        }
    }
    Ok(())
}

fn int_in(text: &str, min: i64, max: i64) -> bool {
    text.parse::<i64>().is_ok_and(|v| (min..=max).contains(&v))
}

fn num_in(text: &str, min: f64, max: f64) -> bool {
    text.parse::<f64>()
        .is_ok_and(|v| v.is_finite() && (min..=max).contains(&v))
        && !text.starts_with('"')
}

fn expected_type(op: Operation, key: &str) -> &'static str {
    match key {
        "max_tokens" | "max_completion_tokens" => "a non-negative integer",
        "dimensions" | "top_n" => "an integer of at least 1",
        "n" => "an integer from 1 to 128",
        "best_of" => "an integer from 0 to 128",
        "top_logprobs" => "a non-negative integer",
        "seed" => "an integer",
        "temperature" => "a non-negative number",
        "top_p" => "a number from 0 to 1",
        "presence_penalty" | "frequency_penalty" => "a number from -2 to 2",
        "logprobs" if op == Operation::Completions => "a non-negative integer",
        "logprobs" | "stream" | "parallel_tool_calls" | "echo" | "store" => "a boolean",
        "stop" => "a string or a list of up to 16 strings",
        "user" => "a string",
        "tools" | "functions" => "an array",
        "tool_choice" | "function_call" => "a string or an object",
        _ => "an object",
    }
}

/// A value as quoted in an error: at most 40 characters of it.
fn shorten(text: &str) -> String {
    match text.char_indices().nth(40) {
        Some((i, _)) => format!("{}...", &text[..i]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_and_honors_retry_after() {
        for retry in 1..=6 {
            let base = Duration::from_millis(500) * (1 << (retry - 1).min(4));
            let base = base.min(Duration::from_secs(8));
            for _ in 0..50 {
                let wait = backoff(retry, None, Duration::ZERO);
                assert!(wait >= base / 2 && wait <= base, "retry {retry}: {wait:?}");
            }
        }
        assert_eq!(
            backoff(1, Some(Duration::from_secs(3)), Duration::ZERO),
            Duration::from_secs(3)
        );
        assert_eq!(
            backoff(1, Some(Duration::from_secs(1)), Duration::from_secs(2)),
            Duration::from_secs(2)
        );
        assert!(backoff(1, None, Duration::from_secs(5)) >= Duration::from_secs(5));
    }

    #[test]
    fn fallback_lists_follow_the_failure() {
        let mut s = RouterSettings::default();
        s.fallbacks.insert("a".into(), vec!["b".into()]);
        s.context_window_fallbacks
            .insert("a".into(), vec!["big".into()]);
        s.content_policy_fallbacks
            .insert("a".into(), vec!["lenient".into()]);
        s.default_fallbacks = vec!["safe".into()];
        assert_eq!(
            fallback_list(&s, "a", ErrorKind::ContextLengthExceeded),
            vec!["big", "b"]
        );
        assert_eq!(
            fallback_list(&s, "a", ErrorKind::ContentFiltered),
            vec!["lenient", "b"]
        );
        assert_eq!(fallback_list(&s, "a", ErrorKind::RateLimited), vec!["b"]);
        assert_eq!(
            fallback_list(&s, "other", ErrorKind::UpstreamError),
            vec!["safe"]
        );
        assert!(!triggers_fallback(ErrorKind::InvalidRequest));
        assert!(triggers_fallback(ErrorKind::Authentication));
    }
}
