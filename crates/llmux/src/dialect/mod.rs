//! Inbound dialects: APIs a client may speak besides OpenAI chat completions. Each converts its
//! request into the internal (OpenAI chat) request, and the internal response and stream back
//! into its own shapes, so everything between (auth, limits, routing, retries, fallbacks,
//! spend, logs) is the same for every dialect.

pub mod anthropic;
pub mod responses;

use bytes::BytesMut;

/// The complete SSE events at the front of `pending` (LF or CRLF framed), taken off it, each as
/// its text without the blank line that ends it.
pub(crate) fn take_events(pending: &mut BytesMut) -> Vec<String> {
    let mut events = Vec::new();
    while let Some((end, gap)) = anthropic::find_event_end(pending) {
        let raw = pending.split_to(end + gap);
        events.push(String::from_utf8_lossy(&raw[..end]).into_owned());
    }
    events
}
