//! The response body the router hands to hyper: either an upstream's body, streamed through
//! while its request is counted in flight, or a short body the router wrote itself; and the
//! relay of an upstream's response to the client ([`relay`], [`relay_socket`]).

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::{Body, Frame, SizeHint};
use hyper::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use hyper::Response;

use crate::headers::strip_hop_by_hop;
use crate::stats::InFlight;
use crate::upstream::{SocketBody, UpstreamBody};

/// Body of every response the router sends to a client.
#[derive(Debug)]
pub(crate) enum ResponseBody {
    /// Streamed from an upstream; `in_flight` is released at the end of the stream (or when
    /// hyper drops the body, e.g. because the client went away).
    Upstream {
        body: UpstreamBody,
        in_flight: Option<InFlight>,
    },
    /// Made by the router (errors, 404).
    Local(Full<Bytes>),
    /// An upstream's body read from a plain socket (a bodiless request hyper serves).
    Socket {
        body: SocketBody,
        in_flight: Option<InFlight>,
    },
}

/// What a response body can fail with.
pub(crate) type BodyError = Box<dyn std::error::Error + Send + Sync>;

impl ResponseBody {
    pub(crate) fn upstream(body: UpstreamBody, in_flight: InFlight) -> Self {
        Self::Upstream {
            body,
            in_flight: Some(in_flight),
        }
    }

    pub(crate) fn text(text: String) -> Self {
        Self::Local(Full::new(Bytes::from(text)))
    }

    /// The bytes of a body the router wrote itself (`None` for an upstream's).
    pub(crate) fn into_local_bytes(self) -> Option<Bytes> {
        let ResponseBody::Local(mut body) = self else {
            return None;
        };
        let mut cx = std::task::Context::from_waker(futures_util::task::noop_waker_ref());
        match Pin::new(&mut body).poll_frame(&mut cx) {
            std::task::Poll::Ready(Some(Ok(frame))) => frame.into_data().ok(),
            _ => Some(Bytes::new()),
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.get_mut() {
            Self::Upstream { body, in_flight } => {
                let frame = Pin::new(body).poll_frame(cx);
                if matches!(frame, Poll::Ready(None | Some(Err(_)))) {
                    in_flight.take();
                }
                frame.map_err(BodyError::from)
            }
            Self::Socket { body, in_flight } => {
                let frame = Pin::new(body).poll_frame(cx);
                if matches!(frame, Poll::Ready(None | Some(Err(_)))) {
                    in_flight.take();
                }
                frame.map_err(BodyError::from)
            }
            Self::Local(body) => Pin::new(body)
                .poll_frame(cx)
                .map_err(|never: Infallible| match never {}),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Upstream { body, .. } => body.is_end_stream(),
            Self::Socket { body, .. } => body.is_end_stream(),
            Self::Local(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Upstream { body, .. } => body.size_hint(),
            Self::Socket { body, .. } => body.size_hint(),
            Self::Local(body) => body.size_hint(),
        }
    }
}

/// Passes an upstream response on to the client; the request stays in flight until its
/// body has been streamed.
pub(crate) fn relay(
    response: Response<UpstreamBody>,
    mut in_flight: InFlight,
) -> Response<ResponseBody> {
    in_flight.answered();
    let (mut head, body) = response.into_parts();
    // hyper read a body with both framings by its chunks (RFC 9112 §6.3): the length, which
    // the client would believe instead, must not be passed on.
    if head.headers.contains_key(TRANSFER_ENCODING) {
        head.headers.remove(CONTENT_LENGTH);
    }
    strip_hop_by_hop(&mut head.headers);
    Response::from_parts(head, ResponseBody::upstream(body, in_flight))
}

/// [`relay`] for an answer read from a plain socket (its head has no hop-by-hop fields).
pub(crate) fn relay_socket(
    response: Response<SocketBody>,
    mut in_flight: InFlight,
) -> Response<ResponseBody> {
    in_flight.answered();
    response.map(|body| ResponseBody::Socket {
        body,
        in_flight: Some(in_flight),
    })
}
