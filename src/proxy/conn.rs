//! The application's connection, as hyper's HTTP/1 server sees it: a [`Marked`] socket that
//! gives hyper's own answers (the 400, 414 and 431 it writes by itself when a request head does
//! not parse) hooksign's error envelope and `X-Hooksign-Error`, like every other response
//! hooksign makes.
//!
//! hyper offers no hook for those answers, so they are recognised on the way out. hyper writes
//! one only when no response is in progress: after the previous response was written and
//! flushed, and before the service is called again. [`Answering`] counts the service's calls
//! and the response bodies hyper has dropped (it drops a body once it has taken its last bytes,
//! which it then writes and flushes); `Marked` takes the count of dropped bodies as settled at
//! each completed flush. A write made while every call is settled, that is one bare head (one
//! of hyper's automatic status lines, ending the head, short) is hyper's own: it is replaced by
//! hooksign's JSON refusal. Everything else passes through untouched; the check is an atomic
//! load and a prefix test, on writes made between requests only.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use uuid::Uuid;

use super::Outcome;
use crate::state::AppState;

/// hyper's automatic answers to heads it cannot parse, as it writes their status lines.
const AUTOMATIC: [(&[u8], Outcome); 3] = [
    (b"HTTP/1.1 400 Bad Request\r\n", Outcome::MalformedRequest),
    (
        b"HTTP/1.1 431 Request Header Fields Too Large\r\n",
        Outcome::RequestHeadTooLarge,
    ),
    (b"HTTP/1.1 414 URI Too Long\r\n", Outcome::UriTooLong),
];

/// The longest automatic answer hyper writes (status line, `connection`, `content-length`,
/// `date`).
const AUTOMATIC_MAX: usize = 200;

/// A socket whose hyper-made refusals are rewritten (see the module docs).
pub struct Marked<T> {
    inner: T,
    calls: Arc<Calls>,
    /// `calls.answered` as of the last completed flush.
    settled: usize,
    state: Arc<AppState>,
    /// The replacement being written, and how much of it is written.
    pending: Option<(Vec<u8>, usize)>,
}

/// The service's calls on one connection, and the responses hyper is done with.
#[derive(Debug, Default)]
pub struct Calls {
    started: AtomicUsize,
    answered: AtomicUsize,
}

/// One call of the service, answered when its response body is dropped (hyper drops it once it
/// has taken its last bytes, or when the connection ends).
pub struct Answering(Arc<Calls>);

/// A response body that keeps its request's [`Answering`] mark.
pub struct Guarded<B> {
    body: B,
    _answering: Answering,
}

impl<T> Marked<T> {
    /// Wraps `inner`; `calls` is shared with the connection's [`Answering`] marks.
    pub fn new(inner: T, calls: Arc<Calls>, state: Arc<AppState>) -> Self {
        Self {
            inner,
            calls,
            settled: 0,
            state,
            pending: None,
        }
    }

    /// The outcome of `buf` when it is one of hyper's automatic answers.
    fn automatic(&self, buf: &[u8]) -> Option<Outcome> {
        if buf.len() > AUTOMATIC_MAX
            || !buf.ends_with(b"\r\n\r\n")
            || self.calls.started.load(Ordering::Acquire) != self.settled
        {
            return None;
        }
        AUTOMATIC
            .iter()
            .find(|(line, _)| buf.starts_with(line))
            .map(|&(_, outcome)| outcome)
    }
}

impl<T: AsyncWrite + Unpin> Marked<T> {
    /// Writes the pending replacement to the end.
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Some((bytes, written)) = &mut self.pending {
            while *written < bytes.len() {
                let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &bytes[*written..]))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                *written += n;
            }
            self.pending = None;
        }
        Poll::Ready(Ok(()))
    }

    fn replace(&mut self, outcome: Outcome) {
        self.state.metrics.delivery(outcome);
        tracing::warn!(
            status = outcome.status().as_u16(),
            code = outcome.as_label(),
            "request refused by the HTTP layer"
        );
        self.pending = Some((raw_refusal(outcome), 0));
    }
}

/// The whole response of a refusal, as bytes: the same envelope as [`super::refusal`], and
/// `connection: close` (hyper closes the connection after its automatic answers).
fn raw_refusal(outcome: Outcome) -> Vec<u8> {
    let request_id = Uuid::new_v4().to_string();
    let body = serde_json::json!({
        "error": {"code": outcome.as_label(), "message": outcome.message()},
        "meta": {"requestId": request_id},
    })
    .to_string();
    let status = outcome.status();
    format!(
        "HTTP/1.1 {} {}\r\nconnection: close\r\ncontent-type: application/json\r\nx-hooksign-error: {}\r\nx-request-id: {request_id}\r\ncontent-length: {}\r\n\r\n{body}",
        status.as_str(),
        status.canonical_reason().unwrap_or_default(),
        outcome.as_label(),
        body.len(),
    )
    .into_bytes()
}

impl<T: AsyncRead + Unpin> AsyncRead for Marked<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Marked<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.pending.is_none() {
            if let Some(outcome) = this.automatic(buf) {
                this.replace(outcome);
            }
        }
        if this.pending.is_some() {
            ready!(this.poll_pending(cx))?;
            return Poll::Ready(Ok(buf.len()));
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.pending.is_none() {
            let mut filled = bufs.iter().filter(|b| !b.is_empty());
            if let (Some(only), None) = (filled.next(), filled.next()) {
                if let Some(outcome) = this.automatic(only) {
                    this.replace(outcome);
                }
            }
        }
        if this.pending.is_some() {
            ready!(this.poll_pending(cx))?;
            return Poll::Ready(Ok(bufs.iter().map(|b| b.len()).sum()));
        }
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Read before flushing: a body dropped after this load may still have bytes to write.
        let answered = self.calls.answered.load(Ordering::Acquire);
        ready!(self.poll_pending(cx))?;
        ready!(Pin::new(&mut self.inner).poll_flush(cx))?;
        self.settled = answered;
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_pending(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

// === impl Answering ===

impl Answering {
    pub fn new(calls: &Arc<Calls>) -> Self {
        calls.started.fetch_add(1, Ordering::AcqRel);
        Self(Arc::clone(calls))
    }

    /// `body` keeps this mark until it is dropped.
    pub fn guard<B>(self, body: B) -> Guarded<B> {
        Guarded {
            body,
            _answering: self,
        }
    }
}

impl Drop for Answering {
    fn drop(&mut self) {
        self.0.answered.fetch_add(1, Ordering::AcqRel);
    }
}

impl<B> Body for Guarded<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_refusals_are_whole_responses() {
        let text = String::from_utf8(raw_refusal(Outcome::RequestHeadTooLarge)).unwrap();
        assert!(text.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"));
        assert!(text.contains("x-hooksign-error: request_head_too_large\r\n"));
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("content-length: {}", body.len())));
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(json["error"]["code"], "request_head_too_large");
    }
}
