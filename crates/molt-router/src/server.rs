//! Accepting client connections and shutting them down gracefully.

use std::convert::Infallible;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::framing::FrameLimits;
use crate::guard::{BusyBody, GuardedStream};
use crate::Router;

/// Pause after an accept error that is not about one connection (e.g. out of file
/// descriptors), so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// hyper's own limit on header fields; setting another moves its header array to the heap.
const DEFAULT_MAX_HEADERS: usize = 100;

impl Router {
    /// Serves connections from `listener` until `shutdown` is cancelled; then stops
    /// accepting, asks every connection to close once its current response is sent, waits
    /// for them up to `shutdown_grace` and closes the rest.
    ///
    /// Accept errors are logged and retried, so this returns `Ok` once shut down.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> io::Result<()> {
        let connections = TaskTracker::new();
        let abort = CancellationToken::new();
        let mut http = http1::Builder::new();
        http.timer(TokioTimer::new())
            .keep_alive(true)
            // A refused pipelined request ends the stream early (see `guard`); the requests
            // before it still get their responses.
            .half_close(true)
            .header_read_timeout(self.config.header_read_timeout)
            // The frame checker refuses larger heads first; hyper's buffer must hold them.
            .max_buf_size(self.config.max_header_bytes.max(8192) + 8192);
        if self.config.max_headers != DEFAULT_MAX_HEADERS {
            http.max_headers(self.config.max_headers);
        }
        let limits = self.frame_limits();
        let idle_timeout = self.config.idle_timeout;
        if let Ok(addr) = listener.local_addr() {
            info!(%addr, "router listening");
        }

        loop {
            let accepted = tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                accepted = listener.accept() => accepted,
            };
            let (stream, peer) = match accepted {
                Ok(connection) => connection,
                Err(error) if is_connection_error(&error) => {
                    debug!(%error, "accept failed for one connection");
                    continue;
                }
                Err(error) => {
                    warn!(%error, "accept failed; retrying shortly");
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = tokio::time::sleep(ACCEPT_BACKOFF) => continue,
                    }
                }
            };
            if let Err(error) = stream.set_nodelay(true) {
                debug!(%peer, %error, "could not set TCP_NODELAY");
            }

            let (stream, activity) = GuardedStream::new(stream, limits);
            let router = Arc::clone(&self);
            let requests = Arc::clone(&activity);
            let service = service_fn(move |request| {
                let router = Arc::clone(&router);
                let busy = requests.busy();
                async move {
                    let response = router.handle(request, peer.ip()).await;
                    Ok::<_, Infallible>(response.map(|body| BusyBody::new(body, busy)))
                }
            });
            let connection = http.serve_connection(TokioIo::new(stream), service);
            let (shutdown, abort) = (shutdown.clone(), abort.clone());
            connections.spawn(async move {
                let mut connection = std::pin::pin!(connection);
                let result = tokio::select! {
                    result = connection.as_mut() => result,
                    () = activity.idle_for(idle_timeout) => {
                        debug!(%peer, "closing idle client connection");
                        Ok(())
                    }
                    () = shutdown.cancelled() => {
                        connection.as_mut().graceful_shutdown();
                        tokio::select! {
                            result = connection.as_mut() => result,
                            () = abort.cancelled() => Ok(()),
                        }
                    }
                };
                if let Err(error) = result {
                    debug!(%peer, %error, "client connection ended with an error");
                }
            });
        }

        drop(listener);
        connections.close();
        let grace = self.config.shutdown_grace;
        if tokio::time::timeout(grace, connections.wait())
            .await
            .is_err()
        {
            warn!(
                open = connections.len(),
                "connections still open after {grace:?}; closing them"
            );
            abort.cancel();
            connections.wait().await;
        }
        info!("router stopped");
        Ok(())
    }
}

impl Router {
    fn frame_limits(&self) -> FrameLimits {
        FrameLimits {
            max_head_bytes: self.config.max_header_bytes,
            max_headers: self.config.max_headers,
        }
    }
}

/// Errors that concern only the connection being accepted, not the listener.
fn is_connection_error(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    )
}
