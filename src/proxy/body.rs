//! [`ChunkBody`]: a request body made of the chunks received from the application, sent on
//! upstream as they are (no copy into one buffer), with an exact length.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

/// The received body, chunk by chunk.
#[derive(Debug, Default)]
pub struct ChunkBody {
    chunks: std::vec::IntoIter<Bytes>,
    remaining: u64,
}

impl ChunkBody {
    /// A body of `chunks`, `len` bytes in all.
    pub fn new(chunks: Vec<Bytes>, len: u64) -> Self {
        Self {
            chunks: chunks.into_iter(),
            remaining: len,
        }
    }

    /// A body of one chunk.
    pub fn full(bytes: Bytes) -> Self {
        let len = bytes.len() as u64;
        Self::new(vec![bytes], len)
    }
}

impl Body for ChunkBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.chunks.next() {
            Some(chunk) => {
                self.remaining -= chunk.len() as u64;
                Poll::Ready(Some(Ok(Frame::data(chunk))))
            }
            None => Poll::Ready(None),
        }
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
        let body = ChunkBody::new(
            vec![Bytes::from_static(b"ab"), Bytes::from_static(b"cde")],
            5,
        );
        assert_eq!(body.size_hint().exact(), Some(5));
        assert!(!body.is_end_stream());
        let collected = body.collect().await.unwrap().to_bytes();
        assert_eq!(&collected[..], b"abcde");
        assert!(ChunkBody::default().is_end_stream());
    }
}
