//! [`ChunkBody`]: a request body made of the chunks received from the application, sent on
//! upstream as they are (no copy into one buffer), with an exact length.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

/// The received body, chunk by chunk. The first chunk is held apart, so a body that arrived
/// in one piece (the usual case up to a few KiB) costs no vector.
#[derive(Debug, Default)]
pub struct ChunkBody {
    first: Option<Bytes>,
    rest: std::collections::VecDeque<Bytes>,
    remaining: u64,
}

impl ChunkBody {
    /// A body of one chunk.
    pub fn full(bytes: Bytes) -> Self {
        let mut body = Self::default();
        body.push(bytes);
        body
    }

    /// Appends a received chunk.
    pub fn push(&mut self, chunk: Bytes) {
        self.remaining += chunk.len() as u64;
        if self.first.is_none() && self.rest.is_empty() {
            self.first = Some(chunk);
        } else {
            self.rest.push_back(chunk);
        }
    }

    /// The length in bytes not yet yielded.
    pub fn len(&self) -> u64 {
        self.remaining
    }

    /// No bytes left to yield.
    pub fn is_empty(&self) -> bool {
        self.remaining == 0
    }
}

impl Body for ChunkBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let next = match self.first.take() {
            Some(chunk) => Some(chunk),
            None => self.rest.pop_front(),
        };
        Poll::Ready(next.map(|chunk| {
            self.remaining -= chunk.len() as u64;
            Ok(Frame::data(chunk))
        }))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;

    use super::*;

    #[tokio::test]
    async fn yields_the_chunks_in_order_with_an_exact_size() {
        let mut body = ChunkBody::default();
        for chunk in ["ab", "", "cde", "f"] {
            body.push(Bytes::from_static(chunk.as_bytes()));
        }
        assert_eq!(body.size_hint().exact(), Some(6));
        assert_eq!(body.len(), 6);
        assert!(!body.is_end_stream());
        let collected = body.collect().await.unwrap().to_bytes();
        assert_eq!(&collected[..], b"abcdef");
        assert!(ChunkBody::default().is_end_stream());
    }
}
