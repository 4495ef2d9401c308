//! hyper's HTTP/1.1 client connections to upstreams, for the requests hyper serves that the
//! plain-socket exchange does not take (bodies, and every request when the direct path is
//! off).
//!
//! Each pooled connection is a `hyper::client::conn::http1` pair: the `SendRequest` handle
//! and the `Connection` that does the I/O. The connection is never spawned on a task of its
//! own: whoever holds it drives it — the request future until the response head arrives,
//! then the response body ([`UpstreamBody`]) while hyper streams it to the client. A request
//! therefore runs on one task from the client's socket to the upstream's and back, with no
//! channel hand-off to a connection task and no cross-thread wake-up. When the body ends
//! the connection goes back to the pool; an idle connection nobody drives is checked on its
//! way out (a poll that finds it closed, or not ready, drops it).

use std::future::{poll_fn, Future};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::{Either, Empty};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::cap::Slot;
use super::error::UpstreamError;
use super::pool::{Acquired, Destination, Pool, Pooled};
use crate::limits::LimitedBody;

/// Body of requests sent upstream: the client's body streamed through, or nothing (for
/// replayable requests, which have none).
pub(crate) type RequestBody = Either<LimitedBody, Empty<Bytes>>;

type Driver = http1::Connection<TokioIo<TcpStream>, RequestBody>;

/// One upstream connection: the handle requests are sent with and the I/O side.
pub(crate) struct Connection {
    sender: http1::SendRequest<RequestBody>,
    /// `None` once the connection has finished (closed, failed or shut down).
    driver: Option<Pin<Box<Driver>>>,
    addr: SocketAddr,
    /// Last, so the connection is closed before its place under the cap is given back.
    slot: Slot,
}

/// A connection on loan to one exchange; it goes back to its pool when the response body
/// ends, or is closed when the body is dropped unfinished.
struct Lease {
    connection: Connection,
    pool: Arc<Pool<Connection>>,
}

/// An upstream's response body: streamed from the connection that the body itself drives.
#[derive(Debug)]
pub(crate) struct UpstreamBody {
    body: Incoming,
    lease: Option<Lease>,
}

impl Pool<Connection> {
    /// Sends `request` to `destination` over a pooled connection (a new one when none is idle)
    /// and returns the response head; its body drives the connection from then on.
    pub(crate) async fn send(
        self: &Arc<Self>,
        destination: Destination<'_>,
        mut request: Request<RequestBody>,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        loop {
            let acquired = match self.acquire_now(destination) {
                Some(acquired) => acquired,
                None => self.acquire_at_cap(destination).await?,
            };
            let (mut connection, reused) = match acquired {
                Acquired::Idle(connection) => (connection, true),
                Acquired::New(slot) => (self.connect(destination.addr, slot).await?, false),
            };
            match connection.exchange(request).await {
                Ok(response) => {
                    let lease = Lease {
                        connection,
                        pool: Arc::clone(self),
                    };
                    return Ok(response.map(|body| UpstreamBody {
                        body,
                        lease: Some(lease),
                    }));
                }
                // A kept-alive connection the upstream closed before the request was written:
                // nothing was sent, so send it on another connection.
                Err(mut error) if reused => match error.take_message() {
                    Some(unsent) => request = unsent,
                    None => return Err(UpstreamError::Http(error.into_error())),
                },
                Err(error) => return Err(UpstreamError::Http(error.into_error())),
            }
        }
    }

    async fn connect(&self, addr: SocketAddr, slot: Slot) -> Result<Connection, UpstreamError> {
        let stream = self.connect_tcp(addr).await?;
        let (sender, driver) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(UpstreamError::Http)?;
        Ok(Connection {
            sender,
            driver: Some(Box::pin(driver)),
            addr,
            slot,
        })
    }
}

impl Pooled for Connection {
    fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn is_usable(&mut self) -> bool {
        // Let the connection notice a close or stray bytes before it is used.
        self.drive(&mut Context::from_waker(
            futures_util::task::noop_waker_ref(),
        ));
        self.is_reusable()
    }

    fn slot(&self) -> &Slot {
        &self.slot
    }
}

impl Connection {
    /// Sends `request` and drives the connection until the response head arrives.
    async fn exchange(
        &mut self,
        request: Request<RequestBody>,
    ) -> Result<Response<Incoming>, hyper::client::conn::TrySendError<Request<RequestBody>>> {
        let response = self.sender.try_send_request(request);
        let mut response = std::pin::pin!(response);
        poll_fn(|cx| {
            self.drive(cx);
            response.as_mut().poll(cx)
        })
        .await
    }

    /// Lets the connection do the I/O it can; notes when it has finished.
    fn drive(&mut self, cx: &mut Context<'_>) {
        if let Some(driver) = self.driver.as_mut() {
            if driver.as_mut().poll(cx).is_ready() {
                self.driver = None;
            }
        }
    }

    /// Open, and waiting for the next request.
    fn is_reusable(&self) -> bool {
        self.driver.is_some() && self.sender.is_ready()
    }
}

impl Lease {
    /// The exchange is over: back to the pool if the connection can take another request.
    fn release(mut self, cx: &mut Context<'_>) {
        // One more turn lets hyper finish the exchange and wait for the next request.
        self.connection.drive(cx);
        if self.connection.is_reusable() {
            self.pool.checkin(self.connection);
        }
    }
}

impl UpstreamBody {
    /// A body whose connection is driven elsewhere (h2c upstreams, upgrades).
    pub(crate) fn detached(body: Incoming) -> Self {
        Self { body, lease: None }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        if let Some(lease) = this.lease.as_mut() {
            lease.connection.drive(cx);
        }
        let frame = std::task::ready!(Pin::new(&mut this.body).poll_frame(cx));
        match &frame {
            None => {
                if let Some(lease) = this.lease.take() {
                    lease.release(cx);
                }
            }
            // A broken body leaves the connection in an unknown state: close it.
            Some(Err(_)) => this.lease = None,
            Some(Ok(_)) => {}
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        // hyper does not poll a body it knows to be empty (HEAD, 204, 304, length 0): the
        // exchange is complete, so the connection can still be reused.
        if let Some(lease) = self.lease.take() {
            if self.body.is_end_stream() {
                lease.release(&mut Context::from_waker(
                    futures_util::task::noop_waker_ref(),
                ));
            }
        }
    }
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("addr", &self.connection.addr)
            .finish()
    }
}
