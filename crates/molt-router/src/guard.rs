//! The client connection's socket as hyper sees it: framing checked before hyper reads a
//! byte ([`crate::framing`]), refusals answered, and activity recorded for the idle timeout.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tracing::debug;

use crate::config::ClientScheme;
use crate::framing::{FrameChecker, FrameLimits, Rejection};
use crate::http1::{BODY_READ, HEAD_READ};

/// Sent when a connection closes in the middle of a request head (header read timeout).
const REQUEST_TIMEOUT: &[u8] =
    b"HTTP/1.1 408 Request Timeout\r\nconnection: close\r\ncontent-length: 0\r\n\r\n";

/// A client socket behind a [`FrameChecker`].
///
/// A refused request is never passed to hyper: the stream ends (EOF) after the requests
/// before it, and the refusal is written when hyper shuts the connection down (or, failing
/// that, when the stream is dropped).
pub(crate) struct GuardedStream<S: ClientSocket> {
    inner: S,
    checker: FrameChecker,
    activity: Arc<Activity>,
    /// A response still to be written before closing, and how much of it was.
    farewell: Option<(Vec<u8>, usize)>,
    eof: bool,
    /// The client and scheme for the access log's line of a refusal, when it is on.
    access: Option<(std::net::IpAddr, ClientScheme)>,
}

/// A client connection's byte stream: a TCP socket, or the plaintext side of a TLS session.
pub(crate) trait ClientSocket: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// Writes what it can of `bytes` without blocking (best effort, when the stream is
    /// dropped with a refusal still unsent).
    fn write_now(&mut self, bytes: &[u8]);

    /// Whether the connection negotiated h2 (by ALPN) before its first byte.
    fn negotiated_h2(&self) -> bool {
        false
    }
}

impl ClientSocket for TcpStream {
    fn write_now(&mut self, bytes: &[u8]) {
        let _ = self.try_write(bytes);
    }
}

impl ClientSocket for tokio_rustls::server::TlsStream<TcpStream> {
    /// Nothing: a TLS record cannot be written without waiting on the socket, so a refusal
    /// not sent by shutdown is lost with the connection.
    fn write_now(&mut self, _bytes: &[u8]) {}

    fn negotiated_h2(&self) -> bool {
        self.get_ref().1.alpn_protocol() == Some(b"h2")
    }
}

/// When a connection last moved a byte, and how many requests it is serving.
#[derive(Debug)]
pub(crate) struct Activity {
    origin: Instant,
    /// Microseconds since `origin` of the last read or write.
    last: AtomicU64,
    busy: AtomicUsize,
}

/// Keeps its connection busy (not idle) until dropped.
#[derive(Debug)]
pub(crate) struct Busy(Arc<Activity>);

/// A response body that keeps its connection busy until it is finished or dropped.
#[derive(Debug)]
pub(crate) struct BusyBody<B> {
    body: B,
    busy: Option<Busy>,
}

impl<S: ClientSocket> GuardedStream<S> {
    pub(crate) fn new(inner: S, limits: FrameLimits) -> (Self, Arc<Activity>) {
        let activity = Arc::new(Activity::new());
        let stream = Self {
            inner,
            checker: FrameChecker::new(limits),
            activity: Arc::clone(&activity),
            farewell: None,
            eof: false,
            access: None,
        };
        (stream, activity)
    }

    /// Writes an access log line for each request refused here (the access log is on).
    pub(crate) fn log_refusals(&mut self, client: std::net::IpAddr, scheme: ClientScheme) {
        self.access = Some((client, scheme));
    }

    fn refuse(&mut self, rejection: Rejection) {
        debug!(%rejection, "request refused before parsing");
        let reason = match rejection.status {
            431 => "Request Header Fields Too Large",
            _ => "Bad Request",
        };
        let body = format!("molt: {}\n", rejection.reason);
        let response = format!(
            "HTTP/1.1 {} {reason}\r\nconnection: close\r\ncontent-type: text/plain; charset=utf-8\r\n\
             content-length: {}\r\n\r\n{body}",
            rejection.status,
            body.len()
        );
        if let Some((client, scheme)) = self.access {
            crate::access::refused(client, scheme, rejection.status, body.len() as u64);
        }
        self.farewell = Some((response.into_bytes(), 0));
    }

    /// Writes what is left of the farewell response.
    fn poll_farewell(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some((bytes, written)) = self.farewell.as_mut() {
            if *written == bytes.len() {
                self.farewell = None;
                break;
            }
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &bytes[*written..]))?;
            if n == 0 {
                self.farewell = None;
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *written += n;
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: ClientSocket> GuardedStream<S> {
    pub(crate) fn negotiated_h2(&self) -> bool {
        self.inner.negotiated_h2()
    }
}

/// A guarded stream that first gives back bytes read from it before (by the direct path):
/// how hyper takes over a connection mid-way.
pub(crate) struct Prefixed<S: ClientSocket> {
    prefix: Vec<u8>,
    at: usize,
    inner: GuardedStream<S>,
}

impl<S: ClientSocket> Prefixed<S> {
    pub(crate) fn new(prefix: Vec<u8>, inner: GuardedStream<S>) -> Self {
        Self {
            prefix,
            at: 0,
            inner,
        }
    }
}

impl<S: ClientSocket> AsyncRead for Prefixed<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.at < this.prefix.len() {
            let n = (this.prefix.len() - this.at).min(buf.remaining());
            buf.put_slice(&this.prefix[this.at..this.at + n]);
            this.at += n;
            if this.at == this.prefix.len() {
                this.prefix = Vec::new();
                this.at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: ClientSocket> AsyncWrite for Prefixed<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

impl<S: ClientSocket> AsyncRead for GuardedStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            let ready = this.checker.releasable();
            if !ready.is_empty() {
                let n = ready.len().min(buf.remaining());
                buf.put_slice(&ready[..n]);
                this.checker.consume(n);
                return Poll::Ready(Ok(()));
            }
            if this.eof || this.farewell.is_some() {
                return Poll::Ready(Ok(()));
            }
            // Uninitialized: zeroing 8 KiB on every read (most of which find nothing to
            // read) cost more than the rest of the request path. A reader with room for more
            // than a head (a request body streamed upstream) reads up to 64 KiB at a time:
            // a 1 MiB body in 16 reads instead of 128.
            let mut small = [std::mem::MaybeUninit::<u8>::uninit(); HEAD_READ];
            let mut large;
            let chunk: &mut [std::mem::MaybeUninit<u8>] = if buf.remaining() > HEAD_READ {
                large = [std::mem::MaybeUninit::<u8>::uninit(); BODY_READ];
                &mut large
            } else {
                &mut small
            };
            let mut read = ReadBuf::uninit(chunk);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut read))?;
            if read.filled().is_empty() {
                this.eof = true;
                continue;
            }
            this.activity.touch();
            match this.checker.push(read.filled()) {
                Ok(()) => {}
                Err(rejection) if !rejection.after_release => this.refuse(rejection),
                Err(rejection) => {
                    debug!(%rejection, "request broke off after it was passed on");
                    return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, rejection)));
                }
            }
        }
    }
}

impl<S: ClientSocket> AsyncWrite for GuardedStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = ready!(Pin::new(&mut this.inner).poll_write(cx, buf))?;
        this.activity.touch();
        Poll::Ready(Ok(written))
    }

    /// Passed through, so hyper writes a response head and its body chunks with one
    /// `writev` instead of first copying them into one buffer.
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = ready!(Pin::new(&mut this.inner).poll_write_vectored(cx, bufs))?;
        this.activity.touch();
        Poll::Ready(Ok(written))
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_farewell(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

impl<S: ClientSocket> Drop for GuardedStream<S> {
    fn drop(&mut self) {
        // Best effort, without blocking: the connection is closing either way.
        if let Some((bytes, written)) = self.farewell.take() {
            self.inner.write_now(&bytes[written..]);
        } else if !self.eof && self.checker.has_partial_head() {
            self.inner.write_now(REQUEST_TIMEOUT);
        }
    }
}

impl Activity {
    fn new() -> Self {
        Self {
            origin: Instant::now(),
            last: AtomicU64::new(0),
            busy: AtomicUsize::new(0),
        }
    }

    fn touch(&self) {
        let now = self.origin.elapsed().as_micros() as u64;
        self.last.store(now, Ordering::Relaxed);
    }

    /// Marks one request as being served on this connection.
    pub(crate) fn busy(self: &Arc<Self>) -> Busy {
        self.busy.fetch_add(1, Ordering::Relaxed);
        Busy(Arc::clone(self))
    }

    /// Resolves once the connection has served no request and moved no byte for `timeout`.
    pub(crate) async fn idle_for(&self, timeout: Duration) {
        loop {
            let last = Duration::from_micros(self.last.load(Ordering::Relaxed));
            let quiet = self.origin.elapsed().saturating_sub(last);
            if self.busy.load(Ordering::Relaxed) == 0 && quiet >= timeout {
                return;
            }
            let wait = if self.busy.load(Ordering::Relaxed) > 0 {
                timeout
            } else {
                timeout - quiet
            };
            tokio::time::sleep(wait.max(Duration::from_millis(1))).await;
        }
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.touch();
        self.0.busy.fetch_sub(1, Ordering::Relaxed);
    }
}

impl<B> BusyBody<B> {
    pub(crate) fn new(body: B, busy: Busy) -> Self {
        Self {
            body,
            busy: Some(busy),
        }
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for BusyBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.get_mut();
        let frame = Pin::new(&mut this.body).poll_frame(cx);
        if matches!(frame, Poll::Ready(None | Some(Err(_)))) {
            this.busy.take();
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
