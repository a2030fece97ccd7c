//! The stream relay: reads upstream bytes only as fast as the client takes them, frames them into
//! SSE events, lets the provider's decoder classify each one, forwards the bytes, and turns every
//! failure (error event, broken connection, idle past `stream_timeout`) into one final OpenAI
//! error event instead of a silently truncated stream.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_util::{FutureExt, Stream};
use llmux_providers::eventstream::EventStreamSplitter;
use llmux_providers::sse::{SseError, SseSplitter};
use llmux_providers::{DecodedEvent, StreamDecoder, StreamFraming};
use llmux_types::{ErrorKind, GatewayError, Usage};

use crate::delivered::DeliveredText;
use crate::log::RequestHook;
use crate::splice::{ContinuationRewriter, StreamTracker};

use crate::upstream::UpstreamResponse;

/// What the relay produced next.
pub(crate) enum RelayItem {
    Event(DecodedEvent),
    /// The upstream ended the body (with or without `[DONE]`).
    End,
    Failed(GatewayError),
}

/// Splits upstream bytes into the events a decoder takes.
enum Framer {
    Sse(SseSplitter),
    EventStream(EventStreamSplitter),
}

impl Framer {
    fn push(&mut self, bytes: &[u8]) {
        match self {
            Framer::Sse(s) => s.push(bytes),
            Framer::EventStream(s) => s.push(bytes),
        }
    }

    fn next_event(&mut self) -> Result<Option<Bytes>, GatewayError> {
        match self {
            Framer::Sse(s) => s.next_event().map_err(|SseError::EventTooLarge| {
                GatewayError::new(
                    ErrorKind::UpstreamError,
                    "upstream stream event exceeds the size limit",
                )
            }),
            Framer::EventStream(s) => s.next_message().map_err(|e| {
                GatewayError::new(ErrorKind::UpstreamError, format!("upstream stream: {e}"))
            }),
        }
    }

    /// What is left when the upstream closes: a last SSE event without its blank line still
    /// counts; a partial binary message is a truncated stream.
    fn finish(&mut self) -> Result<Option<Bytes>, GatewayError> {
        match self {
            Framer::Sse(s) => Ok(s.take_remainder().map(|rest| {
                let mut owned = rest.to_vec();
                owned.extend_from_slice(b"\n\n");
                Bytes::from(owned)
            })),
            Framer::EventStream(s) if s.has_remainder() => Err(GatewayError::new(
                ErrorKind::UpstreamError,
                "upstream closed the stream in the middle of a message",
            )),
            Framer::EventStream(_) => Ok(None),
        }
    }
}

/// Upstream stream state shared by the peek (before the 200 is committed) and the relay after it.
pub(crate) struct Relay {
    upstream: UpstreamResponse,
    framer: Framer,
    decoder: Box<dyn StreamDecoder>,
    idle_timeout: Duration,
    ended: bool,
}

impl Relay {
    pub(crate) fn new(
        upstream: UpstreamResponse,
        decoder: Box<dyn StreamDecoder>,
        framing: StreamFraming,
        idle_timeout: Duration,
    ) -> Self {
        Relay {
            upstream,
            framer: match framing {
                StreamFraming::Sse => Framer::Sse(SseSplitter::new()),
                StreamFraming::AwsEventStream => Framer::EventStream(EventStreamSplitter::new()),
            },
            decoder,
            idle_timeout,
            ended: false,
        }
    }

    /// The next event if it is already in our buffer (several events in one upstream read),
    /// without waiting on the upstream, so events that arrived together leave together.
    pub(crate) fn next_buffered(&mut self) -> Option<RelayItem> {
        match self.framer.next_event() {
            Ok(Some(event)) => Some(RelayItem::Event(self.decoder.decode(event))),
            Ok(None) => None,
            Err(e) => Some(RelayItem::Failed(e)),
        }
    }

    /// The next event if the upstream has already delivered it, without waiting on the network.
    ///
    /// The HTTP client hands a response body over one HTTP chunk at a time from its connection
    /// task, so events that reached the socket together still come out of `next_bytes` one by
    /// one, each after a wake-up of that task. Yielding (at most `READY_YIELDS` times) lets the
    /// connection task, and the I/O driver when the rest is still in the socket, hand them over,
    /// so they leave in one write. The batch has not been given to the server yet while this
    /// yields, so the server's flush on our `Pending` writes nothing. Measured: 24 `writev` per
    /// 20-event stream without this, 3 with it (nginx: 4).
    pub(crate) async fn next_ready(&mut self) -> Option<RelayItem> {
        /// Two: with one, a stream read by the gateway as fast as the upstream writes it still
        /// went out one event per write.
        const READY_YIELDS: u32 = 2;
        if let Some(item) = self.next_buffered() {
            return Some(item);
        }
        if self.ended {
            return None;
        }
        let mut polled = self.upstream.next_bytes().now_or_never();
        let mut yields = 0;
        while polled.is_none() && yields < READY_YIELDS {
            yields += 1;
            tokio::task::yield_now().await;
            polled = self.upstream.next_bytes().now_or_never();
        }
        match polled? {
            Some(Ok(bytes)) => {
                self.framer.push(&bytes);
                self.next_buffered()
            }
            Some(Err(e)) => Some(RelayItem::Failed(e)),
            None => {
                // `next_item` turns the end into the remainder or `End`.
                self.ended = true;
                None
            }
        }
    }

    pub(crate) async fn next_item(&mut self) -> RelayItem {
        loop {
            match self.framer.next_event() {
                Ok(Some(event)) => return RelayItem::Event(self.decoder.decode(event)),
                Ok(None) => {}
                Err(e) => return RelayItem::Failed(e),
            }
            if self.ended {
                return match self.framer.finish() {
                    Ok(Some(rest)) => RelayItem::Event(self.decoder.decode(rest)),
                    Ok(None) => RelayItem::End,
                    Err(e) => RelayItem::Failed(e),
                };
            }
            match tokio::time::timeout(self.idle_timeout, self.upstream.next_bytes()).await {
                Ok(Some(Ok(bytes))) => self.framer.push(&bytes),
                Ok(Some(Err(e))) => return RelayItem::Failed(e),
                Ok(None) => self.ended = true,
                Err(_) => {
                    return RelayItem::Failed(GatewayError::new(
                        ErrorKind::Timeout,
                        format!(
                            "upstream sent nothing for {:.1}s (stream_timeout)",
                            self.idle_timeout.as_secs_f64()
                        ),
                    ));
                }
            }
        }
    }
}

/// `data: {"error": {...}}` — the OpenAI SDKs raise `APIError` on it.
pub(crate) fn error_event(error: &GatewayError) -> Bytes {
    let mut out = b"data: ".to_vec();
    out.extend_from_slice(&error.envelope().to_json_bytes());
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

/// How a relayed stream finished, for logs and accounting.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamSummary {
    pub usage: Option<Usage>,
    /// `None` when the stream completed; the error otherwise.
    pub error: Option<GatewayError>,
    pub chunks: u64,
    pub duration: Duration,
    /// The upstream finished the stream (`[DONE]` or end of body) and the client received it all.
    pub completed: bool,
    /// Times the stream was continued on another deployment after a failure.
    pub recoveries: u32,
    /// A recovery was tried: the failed deployment's failure is already recorded (by the
    /// resumer), whether or not another deployment took over.
    pub recovery_tried: bool,
    /// The generated text the client received (for billing when no usage arrives).
    pub delivered: DeliveredText,
}

impl StreamSummary {
    /// One more chunk relayed; the last usage reported is the stream's.
    fn count_chunk(&mut self, usage: Option<Usage>) {
        if usage.is_some() {
            self.usage = usage;
        }
        self.chunks += 1;
    }
}

/// The body of a streamed response: SSE bytes, each item one or more complete events.
pub struct RelayStream {
    inner: std::pin::Pin<Box<dyn Stream<Item = Bytes> + Send>>,
}

impl std::fmt::Debug for RelayStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RelayStream")
    }
}

impl Stream for RelayStream {
    type Item = Bytes;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Bytes>> {
        self.inner.as_mut().poll_next(cx)
    }
}

impl RelayStream {
    /// A stream of events known in full (an answer from the cache).
    pub(crate) fn from_events(events: Vec<Bytes>) -> RelayStream {
        RelayStream {
            inner: Box::pin(futures_util::stream::iter(events)),
        }
    }
}

/// Largest burst of events gathered into one write to the client.
const MAX_BATCH_BYTES: usize = 64 * 1024;

/// Add `event` to the write being gathered, which starts with `first`.
fn gather(batch: &mut Option<BytesMut>, first: Option<&Bytes>, event: &[u8]) {
    batch
        .get_or_insert_with(|| {
            let mut buf = BytesMut::with_capacity(4096);
            if let Some(f) = first {
                buf.extend_from_slice(f);
            }
            buf
        })
        .extend_from_slice(event);
}

/// Starts continuation attempts for a stream that failed after its first chunk.
pub(crate) trait Resume: Send {
    /// Record that the current attempt failed with `failure`, then start a continuation of
    /// `delivered` on another deployment, peeked to its first event.
    fn resume<'a>(
        &'a mut self,
        failure: &'a GatewayError,
        delivered: &'a str,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Resumed, GatewayError>> + Send + 'a>,
    >;
}

/// A continuation that has produced its first event.
pub(crate) struct Resumed {
    pub initial: Vec<(Bytes, Option<Usage>)>,
    pub relay: Relay,
    pub finished: bool,
}

/// What watches a stream as it is relayed.
#[derive(Default)]
pub(crate) struct Watch {
    /// Told the running token count (a budget that may run out mid-stream).
    pub hook: Option<Arc<dyn RequestHook>>,
    /// Note the finish reasons delivered (telemetry).
    pub finish_reasons: bool,
    /// Keep the delivered events, up to this many bytes (the response cache stores them).
    pub keep_events: Option<usize>,
}

impl Watch {
    /// How the delivered events are kept: scanned as they go for a hook's running count.
    fn delivered(&self) -> DeliveredText {
        let delivered = if self.hook.is_some() {
            DeliveredText::scanning()
        } else {
            DeliveredText::default()
        };
        let delivered = if self.finish_reasons {
            delivered.noting_finish_reasons()
        } else {
            delivered
        };
        match self.keep_events {
            Some(limit) => delivered.keeping_events(limit),
            None => delivered,
        }
    }
}

/// Mid-stream recovery settings for one stream.
pub(crate) struct RecoveryPlan {
    pub resume: Box<dyn Resume>,
    pub max_attempts: u32,
    pub max_buffered_bytes: usize,
}

/// Pass an upstream event to the client: as is before any recovery (noting what was delivered),
/// rewritten into the original stream's identity after one.
fn deliver(
    bytes: Bytes,
    usage: Option<Usage>,
    tracker: &mut Option<StreamTracker>,
    rewriter: &mut Option<ContinuationRewriter>,
    delivered: &mut DeliveredText,
) -> Option<Bytes> {
    let out = deliver_event(bytes, usage, tracker, rewriter);
    if let Some(b) = &out {
        delivered.observe(without_native_marks(b));
        delivered.keep_event(b);
    }
    out
}

/// The chunk without the Anthropic events marked ahead of it (`NATIVE_ANTHROPIC` streams): the
/// text they carry is also in the translated chunk, and must be counted once.
fn without_native_marks(mut bytes: &[u8]) -> &[u8] {
    while bytes.starts_with(b": llmux-anthropic") {
        match bytes.windows(2).position(|w| w == b"\n\n") {
            Some(end) => bytes = &bytes[end + 2..],
            None => return &[],
        }
    }
    bytes
}

fn deliver_event(
    bytes: Bytes,
    usage: Option<Usage>,
    tracker: &mut Option<StreamTracker>,
    rewriter: &mut Option<ContinuationRewriter>,
) -> Option<Bytes> {
    if bytes.is_empty() {
        // A hidden event (the usage chunk the client did not ask for): counted, not sent. An
        // empty write could also end a chunked response early.
        if let Some(t) = tracker.as_mut() {
            t.observe(&bytes, usage);
        }
        return None;
    }
    match (tracker.as_mut(), rewriter.as_mut()) {
        (Some(t), Some(r)) => r.rewrite(&bytes, t),
        (Some(t), None) => {
            t.observe(&bytes, usage);
            Some(bytes)
        }
        (None, _) => Some(bytes),
    }
}

/// Build the client-facing stream: first the events read while peeking, then the rest of the
/// upstream. `on_finish` runs once when the stream ends, fails, or the client goes away. With a
/// `recovery` plan, a failure after the first chunk continues on another deployment (see
/// `splice` for the rules) instead of ending the stream.
pub(crate) fn relay_stream(
    initial: Vec<Bytes>,
    first_usage: Option<Usage>,
    mut relay: Relay,
    finished: bool,
    mut recovery: Option<RecoveryPlan>,
    watch: Watch,
    on_finish: impl FnOnce(StreamSummary) + Send + 'static,
) -> RelayStream {
    let started = Instant::now();
    let stream = async_stream::stream! {
        let mut guard = FinishGuard {
            summary: StreamSummary { usage: first_usage, error: None, chunks: initial.len() as u64, duration: Duration::ZERO, completed: false, recoveries: 0, recovery_tried: false, delivered: watch.delivered() },
            started,
            on_finish: Some(on_finish),
        };
        let mut tracker = recovery.as_ref().map(|_| StreamTracker::default());
        let mut pending: Option<RelayItem> = None;
        let mut rewriter: Option<ContinuationRewriter> = None;
        for (n, bytes) in initial.into_iter().enumerate() {
            let usage = if n == 0 { first_usage } else { None };
            if let Some(b) = deliver(bytes, usage, &mut tracker, &mut rewriter, &mut guard.summary.delivered) {
                yield b;
            }
        }
        guard.summary.completed = finished;
        if !finished {
            loop {
                let item = match pending.take() {
                    Some(item) => item,
                    None => relay.next_item().await,
                };
                let failure = match item {
                    RelayItem::Event(DecodedEvent::Chunk { bytes, usage }) => {
                        guard.summary.count_chunk(usage);
                        let first = deliver(bytes, usage, &mut tracker, &mut rewriter, &mut guard.summary.delivered);
                        // Events that arrived together leave together: one write, not one per event.
                        let mut batch: Option<BytesMut> = None;
                        let mut done = false;
                        while batch.as_ref().is_none_or(|b| b.len() < MAX_BATCH_BYTES) {
                            let Some(next) = relay.next_ready().await else { break };
                            match next {
                                RelayItem::Event(DecodedEvent::Chunk { bytes, usage }) => {
                                    guard.summary.count_chunk(usage);
                                    if let Some(b) = deliver(bytes, usage, &mut tracker, &mut rewriter, &mut guard.summary.delivered) {
                                        gather(&mut batch, first.as_ref(), &b);
                                    }
                                }
                                RelayItem::Event(DecodedEvent::Done(bytes)) => {
                                    // The end usually arrives with the last events: same write.
                                    if let Some(b) = deliver(bytes, None, &mut tracker, &mut rewriter, &mut guard.summary.delivered) {
                                        gather(&mut batch, first.as_ref(), &b);
                                    }
                                    done = true;
                                    break;
                                }
                                other => {
                                    pending = Some(other);
                                    break;
                                }
                            }
                        }
                        match (batch, first) {
                            (Some(buf), _) => yield buf.freeze(),
                            (None, Some(b)) => yield b,
                            (None, None) => {}
                        }
                        if done {
                            guard.summary.completed = true;
                            break;
                        }
                        if let Some(hook) = &watch.hook {
                            // At least a token per chunk; about four bytes a token of text.
                            let tokens = guard.summary.chunks.max(guard.summary.delivered.approx_tokens());
                            if let Err(e) = hook.stream_progress(tokens) {
                                tracing::info!(kind = %e.kind, "stream ended by its hook: {}", e.message());
                                yield error_event(&e);
                                guard.summary.error = Some(e);
                                break;
                            }
                        }
                        continue;
                    }
                    RelayItem::Event(DecodedEvent::KeepAlive(bytes)) => {
                        if !bytes.is_empty() {
                            yield bytes;
                        }
                        continue;
                    }
                    RelayItem::Event(DecodedEvent::Done(bytes)) => {
                        if let Some(b) = deliver(bytes, None, &mut tracker, &mut rewriter, &mut guard.summary.delivered) {
                            yield b;
                        }
                        guard.summary.completed = true;
                        break;
                    }
                    RelayItem::End if tracker.as_ref().is_none_or(|t| t.finished) => {
                        guard.summary.completed = true;
                        break;
                    }
                    RelayItem::End => GatewayError::new(ErrorKind::UpstreamError, "upstream ended the stream before finishing it"),
                    RelayItem::Event(DecodedEvent::Error(e)) | RelayItem::Failed(e) => e,
                };
                tracing::warn!(kind = %failure.kind, error = %failure.message(), "upstream stream failed after the first chunk");
                let plan = recovery.as_mut();
                let t = tracker.as_ref();
                let can_splice = match (plan.as_ref(), t) {
                    (Some(p), Some(t)) => guard.summary.recoveries < p.max_attempts && t.splice_allowed(p.max_buffered_bytes),
                    _ => false,
                };
                if can_splice && t.is_some_and(|t| t.finished) {
                    // The answer was complete; only the tail of the stream was lost.
                    yield Bytes::from_static(b"data: [DONE]\n\n");
                    guard.summary.completed = true;
                    break;
                }
                let resumed = match (can_splice, plan, t) {
                    (true, Some(plan), Some(t)) => {
                        let delivered = t.text.clone();
                        guard.summary.recovery_tried = true;
                        Some(plan.resume.resume(&failure, &delivered).await)
                    }
                    _ => None,
                };
                match resumed {
                    Some(Ok(resumed)) => {
                        guard.summary.recoveries += 1;
                        tracing::info!(recoveries = guard.summary.recoveries, "stream continued on another deployment");
                        if let Some(t) = tracker.as_ref() {
                            rewriter = Some(ContinuationRewriter::new(t, guard.summary.recoveries));
                        }
                        relay = resumed.relay;
                        for (bytes, usage) in resumed.initial {
                            if let Some(b) = deliver(bytes, usage, &mut tracker, &mut rewriter, &mut guard.summary.delivered) {
                                yield b;
                            }
                        }
                        if resumed.finished {
                            guard.summary.completed = true;
                            break;
                        }
                    }
                    Some(Err(e)) => {
                        tracing::warn!(kind = %e.kind, error = %e.message(), "stream recovery failed");
                        yield error_event(&failure);
                        guard.summary.error = Some(failure);
                        break;
                    }
                    None => {
                        yield error_event(&failure);
                        guard.summary.error = Some(failure);
                        break;
                    }
                }
            }
        }
        if let Some(t) = tracker {
            if guard.summary.recoveries > 0 {
                guard.summary.usage = t.usage.or(guard.summary.usage);
            }
        }
        drop(recovery);
    };
    RelayStream {
        inner: Box::pin(stream),
    }
}

/// Runs the finish callback exactly once, including when the client disconnects and the stream
/// is dropped mid-way (which also drops, and so cancels, the upstream request).
struct FinishGuard<F: FnOnce(StreamSummary)> {
    summary: StreamSummary,
    started: Instant,
    on_finish: Option<F>,
}

impl<F: FnOnce(StreamSummary)> Drop for FinishGuard<F> {
    fn drop(&mut self) {
        if let Some(f) = self.on_finish.take() {
            let mut summary = std::mem::replace(
                &mut self.summary,
                StreamSummary {
                    usage: None,
                    error: None,
                    chunks: 0,
                    duration: Duration::ZERO,
                    completed: false,
                    recoveries: 0,
                    recovery_tried: false,
                    delivered: DeliveredText::default(),
                },
            );
            summary.duration = self.started.elapsed();
            f(summary);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use crate::upstream::UpstreamBody;
    use futures_util::StreamExt;
    use http::HeaderMap;
    use llmux_providers::OpenAiStreamDecoder;

    fn event(n: usize) -> Bytes {
        Bytes::from(format!(
            "data: {{\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"tok{n} \"}}}}]}}\n\n"
        ))
    }

    /// An upstream body read from a one-slot channel: the way the HTTP client's connection task
    /// hands over a response body, one chunk per wake-up.
    fn channel_upstream(rx: tokio::sync::mpsc::Receiver<Bytes>) -> Relay {
        let body = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|chunk| (Ok(chunk), rx))
        });
        let upstream = UpstreamResponse {
            status: 200,
            headers: HeaderMap::new(),
            body: UpstreamBody::Http(Box::pin(body)),
        };
        Relay::new(
            upstream,
            Box::new(OpenAiStreamDecoder),
            StreamFraming::Sse,
            Duration::from_secs(5),
        )
    }

    /// The same, fed by another task as fast as the relay takes the chunks.
    fn handed_over(chunks: Vec<Bytes>) -> Relay {
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(1);
        tokio::spawn(async move {
            for chunk in chunks {
                if tx.send(chunk).await.is_err() {
                    return;
                }
            }
        });
        channel_upstream(rx)
    }

    #[tokio::test]
    async fn events_already_delivered_leave_in_one_write() {
        let mut chunks: Vec<Bytes> = (0..20).map(event).collect();
        chunks.push(Bytes::from_static(b"data: [DONE]\n\n"));
        let expected: Vec<u8> = chunks.iter().flat_map(|c| c.to_vec()).collect();

        let writes: Vec<Bytes> = relay_stream(
            Vec::new(),
            None,
            handed_over(chunks),
            false,
            None,
            Watch::default(),
            |_| {},
        )
        .collect()
        .await;

        let relayed: Vec<u8> = writes.iter().flat_map(|c| c.to_vec()).collect();
        assert_eq!(relayed, expected);
        // Not one write per event: the 20 events and `[DONE]` leave together.
        assert_eq!(writes.len(), 1, "writes: {writes:?}");
    }

    #[tokio::test]
    async fn a_slow_upstream_is_relayed_event_by_event() {
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(1);
        let relay = channel_upstream(rx);
        let mut stream = relay_stream(
            Vec::new(),
            None,
            relay,
            false,
            None,
            Watch::default(),
            |_| {},
        );
        // Each event reaches the client while the upstream has not sent the next one yet.
        for n in 0..3 {
            tx.send(event(n)).await.unwrap();
            let got = tokio::time::timeout(Duration::from_secs(5), stream.next())
                .await
                .expect("an event must not wait for the next one")
                .unwrap();
            assert_eq!(got, event(n));
        }
        tx.send(Bytes::from_static(b"data: [DONE]\n\n"))
            .await
            .unwrap();
        drop(tx);
        assert_eq!(
            stream.next().await.unwrap(),
            Bytes::from_static(b"data: [DONE]\n\n")
        );
        assert!(stream.next().await.is_none());
    }
}
