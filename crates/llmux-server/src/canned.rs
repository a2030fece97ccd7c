//! hyper answers a message it cannot parse as HTTP (a malformed request line or header, a
//! header block past its buffer, a URI too long, an unknown version) itself, before any of our
//! code runs, with an empty body. This wraps a client connection and gives those answers the
//! OpenAI error body every other refusal has. Written by hand: hyper offers no hook for its
//! automatic responses.
//!
//! hyper's automatic response is recognisable: its head is written alone, it says
//! `connection: close` and `content-length: 0`, and it has no `content-type`; the gateway's own
//! error responses always carry a JSON body and its content type.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use llmux_types::{ErrorKind, GatewayError};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A connection whose automatic error responses get a body.
#[derive(Debug)]
pub struct ShapeCanned<T> {
    inner: T,
    /// A rewritten response being written: its bytes, how many are written, and the length of
    /// the original write to report once all are.
    pending: Option<(Vec<u8>, usize, usize)>,
}

impl<T> ShapeCanned<T> {
    pub fn new(inner: T) -> Self {
        ShapeCanned {
            inner,
            pending: None,
        }
    }
}

/// The response hyper wrote by itself, rewritten with a JSON error body; `None` for any other
/// write.
fn reshape(buf: &[u8]) -> Option<Vec<u8>> {
    let head = buf.strip_prefix(b"HTTP/1.1 ")?;
    let status: u16 = std::str::from_utf8(head.get(..3)?).ok()?.parse().ok()?;
    if !(400..600).contains(&status) || !buf.ends_with(b"\r\n\r\n") {
        return None;
    }
    let lower = buf.to_ascii_lowercase();
    let has = |needle: &[u8]| memchr::memmem::find(&lower, needle).is_some();
    if !has(b"\r\nconnection: close\r\n")
        || !has(b"\r\ncontent-length: 0\r\n")
        || has(b"\r\ncontent-type:")
    {
        return None;
    }
    let (message, code) = match status {
        431 => (
            "request headers are too large",
            "request_header_fields_too_large",
        ),
        414 => ("the request URI is too long", "uri_too_long"),
        505 => (
            "only HTTP/1.1 and HTTP/1.0 are served",
            "http_version_not_supported",
        ),
        _ => ("the request is not valid HTTP", "malformed_request"),
    };
    let body = GatewayError::new(ErrorKind::InvalidRequest, message)
        .with_code(code)
        .with_status(status)
        .envelope()
        .to_json_bytes();
    let head_end = buf.len() - 2;
    let mut out = Vec::with_capacity(buf.len() + body.len() + 64);
    for line in buf[..head_end].split(|b| *b == b'\n') {
        if line.to_ascii_lowercase().starts_with(b"content-length:") {
            continue;
        }
        out.extend_from_slice(line);
        out.push(b'\n');
    }
    // `out` ends with the last header's "\r\n" (the split left an empty last line).
    out.pop();
    out.extend_from_slice(b"content-type: application/json\r\ncontent-length: ");
    out.extend_from_slice(body.len().to_string().as_bytes());
    out.extend_from_slice(b"\r\n\r\n");
    out.extend_from_slice(&body);
    Some(out)
}

impl<T: AsyncWrite + Unpin> ShapeCanned<T> {
    fn drive(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        while let Some((bytes, written, report)) = self.pending.as_mut() {
            if *written == bytes.len() {
                let report = *report;
                self.pending = None;
                return Poll::Ready(Ok(report));
            }
            match Pin::new(&mut self.inner).poll_write(cx, &bytes[*written..]) {
                Poll::Ready(Ok(0)) => {
                    self.pending = None;
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                Poll::Ready(Ok(n)) => *written += n,
                Poll::Ready(Err(e)) => {
                    self.pending = None;
                    return Poll::Ready(Err(e));
                }
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(0))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for ShapeCanned<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for ShapeCanned<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.pending.is_none() {
            // The gateway's own responses start with a 2xx, or carry a body: one comparison.
            if buf.starts_with(b"HTTP/1.1 4") || buf.starts_with(b"HTTP/1.1 5") {
                if let Some(out) = reshape(buf) {
                    self.pending = Some((out, 0, buf.len()));
                }
            }
            if self.pending.is_none() {
                return Pin::new(&mut self.inner).poll_write(cx, buf);
            }
        }
        self.drive(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let mut non_empty = bufs.iter().filter(|b| !b.is_empty());
        if let (Some(only), None) = (non_empty.next(), non_empty.next()) {
            if self.pending.is_some()
                || only.starts_with(b"HTTP/1.1 4")
                || only.starts_with(b"HTTP/1.1 5")
            {
                let only: &[u8] = only;
                return self.poll_write(cx, only);
            }
        }
        if self.pending.is_some() {
            return self.drive(cx);
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.pending.is_some() {
            match self.drive(cx) {
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hypers_automatic_answers_get_a_json_body_and_ours_pass() {
        let canned = b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\ndate: Mon, 07 Dec 2026 11:35:33 GMT\r\n\r\n";
        let out = String::from_utf8(reshape(canned).unwrap()).unwrap();
        let (head, body) = out.split_once("\r\n\r\n").unwrap();
        assert!(
            head.starts_with("HTTP/1.1 400 Bad Request\r\nconnection: close\r\n"),
            "{head}"
        );
        assert!(head.contains("\r\ncontent-type: application/json\r\n"));
        assert!(head.contains(&format!("\r\ncontent-length: {}", body.len())));
        assert!(!head.contains("content-length: 0"));
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["error"]["code"], "malformed_request");
        let canned = b"HTTP/1.1 431 Request Header Fields Too Large\r\nconnection: close\r\ncontent-length: 0\r\n\r\n";
        assert!(String::from_utf8(reshape(canned).unwrap())
            .unwrap()
            .contains("request_header_fields_too_large"));
        // Ours: a body and a content type, or a success.
        assert!(reshape(b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: 10\r\n\r\n").is_none());
        assert!(
            reshape(b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 0\r\n\r\n").is_none()
        );
        assert!(reshape(b"HTTP/1.1 204 No Content\r\n\r\n").is_none());
    }
}
