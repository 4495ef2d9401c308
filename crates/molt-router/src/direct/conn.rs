//! One client connection on the direct path: its buffers, reused from request to request,
//! its timer, and the client side of its I/O — reading a request head, writing an answer the
//! router made itself, closing.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::time::Duration;

use hyper::header::{CONNECTION, CONTENT_LENGTH};
use hyper::Response;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Sleep;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::body::ResponseBody;
use crate::guard::{ClientSocket, GuardedStream};
use crate::http1::{find_head_end, push_field, push_status_line, HEAD_READ};
use crate::reqid::InlineId;

/// Largest buffer a connection keeps between requests.
const IDLE_BUFFER: usize = 16 * 1024;

/// One client connection on the direct path, with its buffers and its timer.
pub(super) struct Conn<S: ClientSocket> {
    pub(super) stream: GuardedStream<S>,
    /// Client bytes read and not yet consumed.
    pub(super) input: Vec<u8>,
    /// The upstream request head being sent.
    pub(super) request_head: Vec<u8>,
    /// The response head for the client.
    pub(super) out: Vec<u8>,
    /// Upstream bytes read and not yet relayed.
    pub(super) relay: Vec<u8>,
    /// The deadline of the current wait: the next request head, or an upstream's answer.
    pub(super) timer: Pin<Box<Sleep>>,
}

/// How waiting for a request head ended.
pub(super) enum HeadWait {
    Complete,
    /// The client closed (or the frame checker refused what it sent).
    Ended,
    TimedOut,
    /// Shutting down, and no request had begun.
    ShuttingDown,
}

impl<S: ClientSocket> Conn<S> {
    /// Reads until `input` holds a whole request head (or something that cannot be one).
    pub(super) async fn read_head(
        &mut self,
        wait: Duration,
        shutdown: &CancellationToken,
    ) -> HeadWait {
        let mut scanned = 0;
        let mut armed = false;
        loop {
            if find_head_end(&self.input, scanned).is_some() {
                return HeadWait::Complete;
            }
            scanned = self.input.len().saturating_sub(3);
            if self.input.capacity() - self.input.len() < 1024 {
                self.input.reserve(HEAD_READ);
            }
            // The timer is armed only when the head is not there at once.
            if !armed {
                self.timer
                    .as_mut()
                    .reset(tokio::time::Instant::now() + wait);
                armed = true;
            }
            let idle = self.input.is_empty();
            let read = tokio::select! {
                biased;
                read = self.stream.read_buf(&mut self.input) => read,
                () = self.timer.as_mut() => {
                    debug!("no complete request head within the header read timeout; closing");
                    return HeadWait::TimedOut;
                }
                () = shutdown.cancelled(), if idle => return HeadWait::ShuttingDown,
            };
            match read {
                Ok(0) | Err(_) => return HeadWait::Ended,
                Ok(_) => {}
            }
        }
    }

    /// Writes a response the router made itself; whether the connection stays open.
    pub(super) async fn write_local(
        &mut self,
        response: Response<ResponseBody>,
        request_id: &InlineId,
        head_only: bool,
        close: bool,
    ) -> bool {
        let (head, body) = response.into_parts();
        let body = body.into_local_bytes().unwrap_or_default();
        let close = close
            || head
                .headers
                .get(CONNECTION)
                .is_some_and(|value| value.as_bytes().eq_ignore_ascii_case(b"close"));
        let out = &mut self.out;
        out.clear();
        push_status_line(out, head.status.as_u16(), "");
        for (name, value) in &head.headers {
            if name == CONTENT_LENGTH || name == CONNECTION {
                continue;
            }
            push_field(out, name.as_str().as_bytes(), value.as_bytes());
        }
        push_field(out, b"content-length", body.len().to_string().as_bytes());
        push_field(out, b"x-request-id", request_id.as_bytes());
        if close {
            push_field(out, b"connection", b"close");
        }
        out.extend_from_slice(b"\r\n");
        let body: &[u8] = if head_only { &[] } else { &body };
        write_two(&mut self.stream, &self.out, body).await.is_ok() && !close
    }

    /// Gives back buffers a large answer or head grew, so an idle keep-alive connection
    /// holds a few KiB, not 64.
    pub(super) fn trim(&mut self) {
        if self.relay.capacity() > IDLE_BUFFER {
            self.relay = Vec::new();
        }
        if self.input.capacity() > IDLE_BUFFER && self.input.len() <= HEAD_READ {
            self.input.shrink_to(HEAD_READ);
        }
    }

    /// Ends the connection: sends what the frame checker still owes the client (a refusal)
    /// and closes the write side, within the current timer.
    pub(super) async fn close(&mut self) {
        self.timer
            .as_mut()
            .reset(tokio::time::Instant::now() + Duration::from_secs(1));
        tokio::select! {
            _ = self.stream.shutdown() => {}
            () = self.timer.as_mut() => {}
        }
    }
}

/// Writes `a` then `b` with as few writes as the socket allows.
pub(super) async fn write_two<W: tokio::io::AsyncWrite + Unpin>(
    stream: &mut W,
    mut a: &[u8],
    mut b: &[u8],
) -> io::Result<()> {
    while !a.is_empty() || !b.is_empty() {
        let written = if a.is_empty() {
            stream.write(b).await?
        } else if b.is_empty() {
            stream.write(a).await?
        } else {
            stream
                .write_vectored(&[IoSlice::new(a), IoSlice::new(b)])
                .await?
        };
        if written == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        let from_a = written.min(a.len());
        a = &a[from_a..];
        b = &b[written - from_a..];
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_buffers_are_written_whole() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let mut sink = Vec::new();
            write_two(&mut sink, b"head", b"body").await.expect("write");
            write_two(&mut sink, b"", b"!").await.expect("write");
            assert_eq!(sink, b"headbody!");
        });
    }
}
