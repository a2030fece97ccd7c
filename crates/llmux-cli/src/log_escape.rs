//! Log lines that cannot be forged: every control character a logged field carries (a newline
//! in a model name, a carriage return, a terminal escape) is written escaped, so one event is
//! always one line and a client cannot write a line that looks like another entry.

use std::io::{self, Write};

/// Wraps the log sink. The formatter hands over one whole event per write (its own newline
/// last), which is what lets the writer tell the event's terminator from newlines inside it.
pub struct EscapeControl<W>(pub W);

impl<W: Write> Write for EscapeControl<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write_all(&escape_event(buf))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

/// One event with its control characters escaped, keeping a final newline as the terminator.
pub fn escape_event(event: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    let (body, terminator) = match event.strip_suffix(b"\n") {
        Some(body) => (body, true),
        None => (event, false),
    };
    let clean = !body.iter().any(|b| b.is_ascii_control() && *b != b'\t')
        && !(0..body.len()).any(|i| unicode_break(&body[i..]).is_some());
    if clean {
        return std::borrow::Cow::Borrowed(event);
    }
    let mut out = Vec::with_capacity(event.len() + 16);
    let mut i = 0;
    while i < body.len() {
        if let Some((len, code)) = unicode_break(&body[i..]) {
            out.extend_from_slice(b"\\u");
            out.extend_from_slice(code.as_bytes());
            i += len;
            continue;
        }
        let b = body[i];
        i += 1;
        match b {
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.push(b'\t'),
            b if b.is_ascii_control() => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.extend_from_slice(b"\\x");
                out.push(HEX[usize::from(b >> 4)]);
                out.push(HEX[usize::from(b & 15)]);
            }
            b => out.push(b),
        }
    }
    if terminator {
        out.push(b'\n');
    }
    std::borrow::Cow::Owned(out)
}

/// Unicode's line breaks outside ASCII (NEL U+0085, LINE and PARAGRAPH SEPARATOR U+2028/9),
/// which some log viewers also break on: their UTF-8 length and code point, if `at` starts
/// with one.
fn unicode_break(at: &[u8]) -> Option<(usize, &'static str)> {
    match at {
        [0xc2, 0x85, ..] => Some((2, "0085")),
        [0xe2, 0x80, 0xa8, ..] => Some((3, "2028")),
        [0xe2, 0x80, 0xa9, ..] => Some((3, "2029")),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_inside_an_event_are_escaped_and_its_end_kept() {
        let forged =
            b"INFO request rejected model=x\n2026-12-07T00:00:00Z  INFO admin logged in\r\x1b[2K\n";
        let out = escape_event(forged);
        let text = std::str::from_utf8(&out).unwrap();
        assert_eq!(text.matches('\n').count(), 1, "{text}");
        assert!(text.ends_with('\n'));
        assert!(text.contains("model=x\\n2026-12-07T00:00:00Z  INFO admin logged in\\r\\x1b[2K"));
        let clean = b"INFO ok\tfine\n";
        assert!(matches!(escape_event(clean), std::borrow::Cow::Borrowed(_)));
        assert_eq!(
            &*escape_event(b"no newline\nat end"),
            b"no newline\\nat end"
        );
        assert_eq!(
            &*escape_event("a\u{2028}b\u{85}c\u{2029}\n".as_bytes()),
            b"a\\u2028b\\u0085c\\u2029\n"
        );
    }

    #[test]
    fn the_writer_passes_whole_events_through_escaped() {
        let mut w = EscapeControl(Vec::new());
        w.write_all(b"a\nb\n").unwrap();
        w.write_all(b"c\n").unwrap();
        assert_eq!(w.0, b"a\\nb\nc\n");
    }
}
