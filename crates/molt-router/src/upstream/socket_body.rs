//! An upstream response body read straight from a pooled plain socket, for the bodiless
//! requests hyper serves ([`super::exchange::send_bodiless`]): hyper writes it to the client
//! like any body, and the socket goes back to the pool once the body has been read to its end.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::{Bytes, BytesMut};
use hyper::body::Frame;

use super::body_framing::{ChunkScanner, Framing};
use super::pool::{Pool, Socket};
use crate::http1::BODY_READ;

/// An upstream response body read from a pooled plain socket; the socket goes back to the
/// pool when the body has been read to its end.
pub(crate) struct SocketBody {
    socket: Option<Socket>,
    pool: Arc<Pool<Socket>>,
    /// Bytes read and not yet handed on.
    buf: BytesMut,
    framing: Framing,
    /// Body bytes still to come, for a body of known length.
    remaining: u64,
    chunks: ChunkScanner,
    reusable: bool,
    done: bool,
}

impl SocketBody {
    /// The body framed by `framing` that follows a response head on `socket`, starting with
    /// `buf` (body bytes read with the head). `reusable`: the upstream keeps the connection
    /// open once the body has ended. A body that has no bytes is over at once.
    pub(crate) fn new(
        socket: Socket,
        pool: Arc<Pool<Socket>>,
        framing: Framing,
        buf: BytesMut,
        reusable: bool,
    ) -> Self {
        let mut body = SocketBody {
            socket: Some(socket),
            reusable,
            remaining: match framing {
                Framing::Length(length) => length,
                _ => 0,
            },
            framing,
            pool,
            buf,
            chunks: ChunkScanner::default(),
            done: false,
        };
        if body.framing == Framing::None {
            body.finish();
        }
        body
    }

    /// The body has ended: the socket goes back to the pool if nothing is left on it.
    fn finish(&mut self) {
        self.done = true;
        if let Some(socket) = self.socket.take() {
            if self.reusable && self.buf.is_empty() {
                self.pool.checkin(socket);
            }
        }
    }

    /// Reads more from the socket into `buf`; `Ok(0)` at its end.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let Some(socket) = self.socket.as_ref() else {
            return Poll::Ready(Ok(0));
        };
        self.buf.reserve(BODY_READ);
        loop {
            ready!(socket.stream.poll_read_ready(cx))?;
            match socket.stream.try_read_buf(&mut self.buf) {
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => continue,
                result => return Poll::Ready(result),
            }
        }
    }
}

impl hyper::body::Body for SocketBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            match this.framing {
                Framing::None => {
                    this.finish();
                    return Poll::Ready(None);
                }
                Framing::Length(_) if this.remaining == 0 => {
                    this.finish();
                    return Poll::Ready(None);
                }
                Framing::Length(_) if !this.buf.is_empty() => {
                    let take = (this.buf.len() as u64).min(this.remaining) as usize;
                    if this.buf.len() > take {
                        // More than the length said: the socket is in an unknown state.
                        this.reusable = false;
                        this.buf.truncate(take);
                    }
                    this.remaining -= take as u64;
                    let data = this.buf.split_to(take).freeze();
                    if this.remaining == 0 {
                        this.finish();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Framing::Chunked if !this.buf.is_empty() => {
                    let mut data = BytesMut::new();
                    let scanned = this
                        .chunks
                        .scan_with(&this.buf, |piece| data.extend_from_slice(piece))
                        .map_err(|reason| io::Error::new(io::ErrorKind::InvalidData, reason))?;
                    let _ = this.buf.split_to(scanned);
                    if this.chunks.is_done() {
                        if !this.buf.is_empty() {
                            this.reusable = false;
                            this.buf.clear();
                        }
                        this.finish();
                    }
                    if !data.is_empty() {
                        return Poll::Ready(Some(Ok(Frame::data(data.freeze()))));
                    }
                    if this.done {
                        return Poll::Ready(None);
                    }
                    // Only part of a chunk-size line: read on.
                }
                Framing::UntilClose if !this.buf.is_empty() => {
                    let data = this.buf.split().freeze();
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                _ => {}
            }
            match ready!(this.poll_fill(cx)) {
                Ok(0) if this.framing == Framing::UntilClose => {
                    this.reusable = false;
                    this.finish();
                    return Poll::Ready(None);
                }
                Ok(0) => {
                    this.reusable = false;
                    this.finish();
                    return Poll::Ready(Some(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the upstream closed the connection in the middle of the body",
                    ))));
                }
                Ok(_) => {}
                Err(error) => {
                    this.reusable = false;
                    this.finish();
                    return Poll::Ready(Some(Err(error)));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        match self.framing {
            Framing::Length(_) => hyper::body::SizeHint::with_exact(self.remaining),
            Framing::None => hyper::body::SizeHint::with_exact(0),
            Framing::Chunked | Framing::UntilClose => hyper::body::SizeHint::default(),
        }
    }
}

impl std::fmt::Debug for SocketBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SocketBody")
            .field("framing", &self.framing)
            .field("done", &self.done)
            .finish()
    }
}
