//! AWS event-stream framing (`application/vnd.amazon.eventstream`, used by Bedrock's
//! ConverseStream): splitting the byte stream into whole messages by their length prefix, and
//! decoding a message (CRC-checked) with `aws-smithy-eventstream`.

use aws_smithy_types::event_stream::HeaderValue;
use bytes::{Buf, Bytes, BytesMut};

/// Messages larger than this are refused (AWS caps event-stream messages at 16 MiB).
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024 + 1024;
/// Prelude (total length, headers length, prelude CRC) plus the message CRC.
const MIN_MESSAGE_BYTES: usize = 16;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventStreamError {
    #[error("event-stream message length {0} is out of range")]
    BadLength(usize),
    #[error("malformed event-stream message: {0}")]
    Malformed(String),
}

/// Accumulates upstream bytes and hands out whole messages.
#[derive(Debug, Default)]
pub struct EventStreamSplitter {
    buf: BytesMut,
}

impl EventStreamSplitter {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next whole message, if buffered.
    pub fn next_message(&mut self) -> Result<Option<Bytes>, EventStreamError> {
        if self.buf.len() < 4 {
            return Ok(None);
        }
        let total =
            u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]) as usize;
        if !(MIN_MESSAGE_BYTES..=MAX_MESSAGE_BYTES).contains(&total) {
            return Err(EventStreamError::BadLength(total));
        }
        if self.buf.len() < total {
            return Ok(None);
        }
        Ok(Some(self.buf.split_to(total).freeze()))
    }

    /// Bytes left over at the end of the stream (a truncated message), if any.
    pub fn has_remainder(&self) -> bool {
        !self.buf.is_empty()
    }
}

/// What a message carries: `:message-type` (`event`, `exception`, `error`), the event or
/// exception type, and the payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventMessage {
    pub message_type: String,
    /// `:event-type`, `:exception-type` or `:error-code`.
    pub kind: String,
    /// `:error-message` of `error` messages.
    pub error_message: Option<String>,
    pub payload: Bytes,
}

/// Decode one whole message, checking both CRCs.
pub fn decode_message(mut message: Bytes) -> Result<EventMessage, EventStreamError> {
    let decoded = aws_smithy_eventstream::frame::read_message_from(&mut message)
        .map_err(|e| EventStreamError::Malformed(e.to_string()))?;
    if message.has_remaining() {
        return Err(EventStreamError::Malformed(
            "trailing bytes after the message".into(),
        ));
    }
    let header = |name: &str| {
        decoded.headers().iter().find_map(|h| {
            (h.name().as_str() == name).then(|| match h.value() {
                HeaderValue::String(s) => s.as_str().to_owned(),
                other => format!("{other:?}"),
            })
        })
    };
    let message_type = header(":message-type").unwrap_or_else(|| "event".to_owned());
    let kind = header(":event-type")
        .or_else(|| header(":exception-type"))
        .or_else(|| header(":error-code"))
        .unwrap_or_default();
    Ok(EventMessage {
        message_type,
        kind,
        error_message: header(":error-message"),
        payload: decoded.payload().clone(),
    })
}

/// Encode an event message (`:message-type: event`, `:event-type`, JSON content type). For tests
/// and the mock upstream.
pub fn encode_event(event_type: &str, payload: &[u8]) -> Bytes {
    encode(
        &[
            (":event-type", event_type),
            (":content-type", "application/json"),
            (":message-type", "event"),
        ],
        payload,
    )
}

/// Encode an exception message, as Bedrock sends mid-stream failures.
pub fn encode_exception(exception_type: &str, payload: &[u8]) -> Bytes {
    encode(
        &[
            (":exception-type", exception_type),
            (":content-type", "application/json"),
            (":message-type", "exception"),
        ],
        payload,
    )
}

fn encode(headers: &[(&str, &str)], payload: &[u8]) -> Bytes {
    use aws_smithy_types::event_stream::{Header, Message};
    let mut message = Message::new(Bytes::copy_from_slice(payload));
    for (name, value) in headers {
        message = message.add_header(Header::new(
            (*name).to_owned(),
            HeaderValue::String((*value).to_owned().into()),
        ));
    }
    let mut out = Vec::new();
    // Writing string headers and a payload into a Vec cannot fail.
    let _ = aws_smithy_eventstream::frame::write_message_to(&message, &mut out);
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_split_at_any_byte_boundary_and_round_trip() {
        let a = encode_event("messageStart", br#"{"role":"assistant"}"#);
        let b = encode_exception("throttlingException", br#"{"message":"slow down"}"#);
        let mut all = a.to_vec();
        all.extend_from_slice(&b);
        for cut in 0..all.len() {
            let mut s = EventStreamSplitter::new();
            let mut out = Vec::new();
            for piece in [&all[..cut], &all[cut..]] {
                s.push(piece);
                while let Some(m) = s.next_message().unwrap() {
                    out.push(m);
                }
            }
            assert_eq!(out, vec![a.clone(), b.clone()], "cut at {cut}");
            assert!(!s.has_remainder());
        }
        let first = decode_message(a).unwrap();
        assert_eq!(first.message_type, "event");
        assert_eq!(first.kind, "messageStart");
        assert_eq!(&first.payload[..], br#"{"role":"assistant"}"#);
        let second = decode_message(b).unwrap();
        assert_eq!(second.message_type, "exception");
        assert_eq!(second.kind, "throttlingException");
    }

    #[test]
    fn corruption_and_bad_lengths_are_errors() {
        let mut bytes = encode_event("messageStop", br#"{"stopReason":"end_turn"}"#).to_vec();
        let last = bytes.len() - 6;
        bytes[last] ^= 0xff;
        assert!(
            decode_message(Bytes::from(bytes)).is_err(),
            "CRC catches a flipped byte"
        );

        let mut s = EventStreamSplitter::new();
        s.push(&[0, 0, 0, 3, 1, 2, 3]);
        assert_eq!(s.next_message(), Err(EventStreamError::BadLength(3)));
        let mut s = EventStreamSplitter::new();
        s.push(&[0xff, 0xff, 0xff, 0xff]);
        assert!(s.next_message().is_err());
    }
}
