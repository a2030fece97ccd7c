//! Server-sent events framing: splits an arbitrary byte stream into complete events without
//! copying them, and reads an event's `data:` payload.
//!
//! Written by hand: the SSE crates in the field decode events into owned strings, while the relay
//! needs each event's original bytes to forward them untouched.

use bytes::{Bytes, BytesMut};

/// Upper bound on one event; a peer that never ends an event cannot make us buffer forever.
pub const MAX_EVENT_BYTES: usize = 16 * 1024 * 1024;

/// Accumulates bytes and yields complete events (each including its terminating blank line).
#[derive(Debug, Default)]
pub struct SseSplitter {
    buf: BytesMut,
    /// Where to resume scanning for the end of the current event.
    scanned: usize,
}

/// The stream broke the framing rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SseError {
    EventTooLarge,
}

impl SseSplitter {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete event, if one is buffered.
    pub fn next_event(&mut self) -> Result<Option<Bytes>, SseError> {
        let mut from = self.scanned;
        while let Some(pos) = memchr::memchr(b'\n', &self.buf[from..]) {
            let nl = from + pos;
            let rest = &self.buf[nl + 1..];
            let end = if rest.first() == Some(&b'\n') {
                Some(nl + 2)
            } else if rest.starts_with(b"\r\n") {
                Some(nl + 3)
            } else if rest.is_empty() || (rest.len() == 1 && rest[0] == b'\r') {
                // The blank line may still be on its way.
                self.scanned = nl;
                return self.check_size().map(|()| None);
            } else {
                None
            };
            if let Some(end) = end {
                self.scanned = 0;
                return Ok(Some(self.buf.split_to(end).freeze()));
            }
            from = nl + 1;
        }
        self.scanned = self.buf.len();
        self.check_size().map(|()| None)
    }

    fn check_size(&self) -> Result<(), SseError> {
        if self.buf.len() > MAX_EVENT_BYTES {
            Err(SseError::EventTooLarge)
        } else {
            Ok(())
        }
    }

    /// Bytes left after the stream ended: an event without its blank line, if any.
    pub fn take_remainder(&mut self) -> Option<Bytes> {
        self.scanned = 0;
        let rest = self.buf.split().freeze();
        if rest.iter().all(u8::is_ascii_whitespace) {
            None
        } else {
            Some(rest)
        }
    }
}

/// The `data:` payload of an event (several `data:` lines joined with `\n`), and its `event:` name.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SseFields<'a> {
    pub event: Option<&'a [u8]>,
    pub data: std::borrow::Cow<'a, [u8]>,
    pub has_data: bool,
}

pub fn parse_fields(event: &[u8]) -> SseFields<'_> {
    fields_of_lines(Lines { rest: Some(event) })
}

/// The lines of an event, found with `memchr` (vectorized): `split` on a closure tested every
/// byte, which was the largest cost of relaying a stream. Yields what `split(b'\n')` yields.
struct Lines<'a> {
    rest: Option<&'a [u8]>,
}

impl<'a> Iterator for Lines<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let rest = self.rest?;
        match memchr::memchr(b'\n', rest) {
            Some(i) => {
                self.rest = rest.get(i + 1..);
                rest.get(..i)
            }
            None => self.rest.take(),
        }
    }
}

fn fields_of_lines<'a>(lines: impl Iterator<Item = &'a [u8]>) -> SseFields<'a> {
    let mut fields = SseFields::default();
    let mut data_lines = 0;
    for line in lines {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() || line[0] == b':' {
            continue;
        }
        let (name, value) = match memchr::memchr(b':', line) {
            Some(i) => {
                let v = &line[i + 1..];
                (&line[..i], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (line, &b""[..]),
        };
        match name {
            b"data" => {
                data_lines += 1;
                fields.has_data = true;
                if data_lines == 1 {
                    fields.data = std::borrow::Cow::Borrowed(value);
                } else {
                    let mut joined = fields.data.into_owned();
                    joined.push(b'\n');
                    joined.extend_from_slice(value);
                    fields.data = std::borrow::Cow::Owned(joined);
                }
            }
            b"event" => fields.event = Some(value),
            _ => {}
        }
    }
    fields
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn drain(s: &mut SseSplitter) -> Vec<Bytes> {
        let mut out = Vec::new();
        while let Some(e) = s.next_event().unwrap() {
            out.push(e);
        }
        out
    }

    #[test]
    fn splits_lf_and_crlf_events() {
        let mut s = SseSplitter::new();
        s.push(b"data: a\n\ndata: b\r\n\r\n: comment\n\nevent: x\ndata: c\ndata: d\n\n");
        let events = drain(&mut s);
        assert_eq!(events.len(), 4);
        assert_eq!(&events[0][..], b"data: a\n\n");
        assert_eq!(&events[1][..], b"data: b\r\n\r\n");
        let f = parse_fields(&events[3]);
        assert_eq!(f.event, Some(&b"x"[..]));
        assert_eq!(&f.data[..], b"c\nd");
        assert!(!parse_fields(&events[2]).has_data);
    }

    #[test]
    fn holds_incomplete_events() {
        let mut s = SseSplitter::new();
        s.push(b"data: {\"a\":1}\n");
        assert!(s.next_event().unwrap().is_none());
        s.push(b"\r");
        assert!(s.next_event().unwrap().is_none());
        s.push(b"\n");
        assert_eq!(
            &s.next_event().unwrap().unwrap()[..],
            b"data: {\"a\":1}\n\r\n"
        );
        s.push(b"data: tail");
        assert!(s.next_event().unwrap().is_none());
        assert_eq!(&s.take_remainder().unwrap()[..], b"data: tail");
    }

    #[test]
    fn bounds_an_endless_event() {
        let mut s = SseSplitter::new();
        let chunk = vec![b'x'; 1024 * 1024];
        let mut failed = false;
        for _ in 0..20 {
            s.push(&chunk);
            if s.next_event().is_err() {
                failed = true;
                break;
            }
        }
        assert!(failed);
    }

    proptest! {
        #[test]
        fn any_split_yields_the_same_events(cuts in proptest::collection::vec(0usize..200, 0..10)) {
            let stream: &[u8] = b"data: {\"x\":\"\xc3\xa9\"}\n\ndata: two\r\n\r\n: ping\n\ndata: [DONE]\n\n";
            let mut points: Vec<usize> = cuts.into_iter().map(|c| c % (stream.len() + 1)).collect();
            points.sort_unstable();
            let mut s = SseSplitter::new();
            let mut events = Vec::new();
            let mut prev = 0;
            for p in points.into_iter().chain([stream.len()]) {
                s.push(&stream[prev..p]);
                prev = p;
                events.extend(drain(&mut s));
            }
            let joined: Vec<u8> = events.iter().flat_map(|e| e.iter().copied()).collect();
            prop_assert_eq!(events.len(), 4);
            prop_assert_eq!(joined, stream.to_vec());
        }

        /// The `memchr` line walk yields the lines a plain per-byte split does.
        #[test]
        fn fields_match_a_per_byte_line_split(
            pieces in proptest::collection::vec(proptest::sample::select(LINE_PIECES), 0..24)
        ) {
            let event: Vec<u8> = pieces.concat();
            let lines: Vec<&[u8]> = Lines { rest: Some(&event) }.collect();
            let split: Vec<&[u8]> = event.split(|b| *b == b'\n').collect();
            prop_assert_eq!(lines, split);
            prop_assert_eq!(parse_fields(&event), per_byte_split(&event));
        }
    }

    const LINE_PIECES: &[&[u8]] = &[
        b"data",
        b"event",
        b":",
        b": ",
        b"\n",
        b"\r\n",
        b"\r",
        b"x",
        b"{\"a\":1}",
        b"id",
    ];

    /// `parse_fields` as first written: lines from `split` with a per-byte closure.
    fn per_byte_split(event: &[u8]) -> SseFields<'_> {
        fields_of_lines(event.split(|b| *b == b'\n'))
    }
}
