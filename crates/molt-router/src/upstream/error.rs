//! Why an upstream request got no response, and which failures leave the request safe to
//! send again elsewhere.

use std::io;
use std::net::SocketAddr;

/// Why an upstream request got no response.
#[derive(Debug)]
pub(crate) enum UpstreamError {
    /// The TCP connection could not be made.
    Connect(io::Error),
    /// The connection failed during the exchange.
    Http(hyper::Error),
    /// hyper-util's client failed (h2c upstreams).
    Client(hyper_util::client::legacy::Error),
    /// The address had its cap of open connections, and none was freed within the queue
    /// timeout.
    AtLimit(SocketAddr),
}

impl UpstreamError {
    /// True when the connection failed before the upstream could have acted on the request:
    /// connect errors, and connections closed or reset before a response.
    pub(crate) fn is_connection_failure(&self) -> bool {
        match self {
            UpstreamError::Connect(_) => true,
            UpstreamError::Client(error) if error.is_connect() => true,
            UpstreamError::AtLimit(_) => false,
            _ => is_broken_connection(self),
        }
    }
}

impl std::fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UpstreamError::Connect(error) => write!(f, "connecting failed: {error}"),
            UpstreamError::Http(error) => write!(f, "{error}"),
            UpstreamError::Client(error) => write!(f, "{error}"),
            UpstreamError::AtLimit(addr) => {
                write!(f, "instance {addr} at its connection limit")
            }
        }
    }
}

impl std::error::Error for UpstreamError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            UpstreamError::Connect(error) => Some(error),
            UpstreamError::Http(error) => Some(error),
            UpstreamError::Client(error) => Some(error),
            UpstreamError::AtLimit(_) => None,
        }
    }
}

/// Whether the error chain says the connection was closed, reset or canceled.
fn is_broken_connection(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(error);
    while let Some(cause) = source {
        if let Some(hyper_error) = cause.downcast_ref::<hyper::Error>() {
            if hyper_error.is_incomplete_message()
                || hyper_error.is_canceled()
                || hyper_error.is_closed()
            {
                return true;
            }
        }
        if let Some(io_error) = cause.downcast_ref::<io::Error>() {
            use std::io::ErrorKind::{
                BrokenPipe, ConnectionAborted, ConnectionRefused, ConnectionReset,
            };
            if matches!(
                io_error.kind(),
                BrokenPipe | ConnectionAborted | ConnectionRefused | ConnectionReset
            ) {
                return true;
            }
        }
        source = cause.source();
    }
    false
}
