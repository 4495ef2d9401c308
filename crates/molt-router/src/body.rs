//! The response body the router hands to hyper: either an upstream's body, streamed through
//! while its request is counted in flight, or a short body the router wrote itself.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::{Body, Frame, SizeHint};

use crate::direct::SocketBody;
use crate::stats::InFlight;
use crate::upstream::UpstreamBody;

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
