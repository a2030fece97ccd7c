//! Inbound dialects: APIs a client may speak besides OpenAI chat completions. Each converts its
//! request into the internal (OpenAI chat) request, and the internal response and stream back
//! into its own shapes, so everything between (auth, limits, routing, retries, fallbacks,
//! spend, logs) is the same for every dialect.

pub mod anthropic;
mod internal;
pub mod responses;

use std::borrow::Cow;

use bytes::BytesMut;
use serde::{Deserialize, Deserializer};

/// A JSON string read from a body, borrowed from it when it carries no escapes. (serde's own
/// `Cow<str>` borrows only as a bare field marked `borrow`; inside an `Option` it always copies.)
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Str<'a>(Cow<'a, str>);

impl<'a> Str<'a> {
    pub(crate) fn into_cow(self) -> Cow<'a, str> {
        self.0
    }
}

impl std::ops::Deref for Str<'_> {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Str<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Str<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: serde::de::Error>(self, s: &'de str) -> Result<Str<'de>, E> {
                Ok(Str(Cow::Borrowed(s)))
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Str<'de>, E> {
                Ok(Str(Cow::Owned(s.to_owned())))
            }
            fn visit_string<E: serde::de::Error>(self, s: String) -> Result<Str<'de>, E> {
                Ok(Str(Cow::Owned(s)))
            }
        }
        deserializer.deserialize_str(Visitor)
    }
}

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

/// `io::Write` into a `BytesMut`, for serializing events straight into the outgoing buffer.
pub(crate) struct BytesWriter<'a>(pub(crate) &'a mut BytesMut);

impl std::io::Write for BytesWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
