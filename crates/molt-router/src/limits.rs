//! The request body limit, enforced while the body streams to the upstream.

use std::error::Error as StdError;
use std::fmt;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};

/// A client's request body, cut off with an error once it exceeds the limit.
///
/// The error makes hyper abort the upstream request mid-body, so the upstream never sees a
/// complete oversized (or broken) request; [`BodyFault`] tells the proxy why.
#[derive(Debug)]
pub(crate) struct LimitedBody {
    body: Incoming,
    remaining: u64,
    fault: Arc<AtomicU8>,
}

/// Why a client's request body was not passed on completely.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BodyFault {
    /// More bytes than the configured maximum.
    TooLarge,
    /// The client's body broke off (bad chunk framing, connection closed).
    Broken,
}

/// Reads the [`BodyFault`] of a [`LimitedBody`] after the upstream request ended.
#[derive(Debug, Clone)]
pub(crate) struct FaultProbe(Arc<AtomicU8>);

/// The error a [`LimitedBody`] ends with.
#[derive(Debug)]
pub(crate) struct BodyError(BodyFault, Option<hyper::Error>);

const NO_FAULT: u8 = 0;

impl LimitedBody {
    /// `body`, allowed to carry at most `limit` bytes.
    pub(crate) fn new(body: Incoming, limit: u64) -> (Self, FaultProbe) {
        let fault = Arc::new(AtomicU8::new(NO_FAULT));
        let probe = FaultProbe(Arc::clone(&fault));
        (
            Self {
                body,
                remaining: limit,
                fault,
            },
            probe,
        )
    }

    fn fail(&self, fault: BodyFault, cause: Option<hyper::Error>) -> BodyError {
        self.fault.store(fault as u8 + 1, Ordering::Release);
        BodyError(fault, cause)
    }
}

impl Body for LimitedBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.body).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let len = frame.data_ref().map_or(0, |data| data.len() as u64);
                if len > this.remaining {
                    this.remaining = 0;
                    return Poll::Ready(Some(Err(this.fail(BodyFault::TooLarge, None))));
                }
                this.remaining -= len;
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(error))) => {
                Poll::Ready(Some(Err(this.fail(BodyFault::Broken, Some(error)))))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl FaultProbe {
    /// The fault the body ended with, if any.
    pub(crate) fn fault(&self) -> Option<BodyFault> {
        match self.0.load(Ordering::Acquire) {
            NO_FAULT => None,
            1 => Some(BodyFault::TooLarge),
            _ => Some(BodyFault::Broken),
        }
    }
}

impl fmt::Display for BodyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            BodyFault::TooLarge => f.write_str("request body over the size limit"),
            BodyFault::Broken => f.write_str("request body broke off"),
        }
    }
}

impl StdError for BodyError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.1.as_ref().map(|error| error as _)
    }
}
