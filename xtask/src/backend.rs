//! `xtask backend`: the app `bench core` deploys. A minimal hyper HTTP/1.1 server (keep-alive)
//! on 127.0.0.1:$PORT that answers every request, health checks included, with
//! `hello from $MOLT_APP $MOLT_RELEASE`, so that the benchmark measures molt and not the app.
//! `GET /big` answers [`BIG_BODY_LEN`] bytes instead, for `bench router`'s large responses.
//! A request body is read to its end before the answer. With `FAIL_SHARE=N` (percent), N % of
//! the requests other than health checks (`/healthz`) are answered 500, spread evenly (25:
//! every fourth one): `bench canary`'s bad release.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::Response;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio::task::JoinSet;

/// The path that answers a large body.
pub const BIG_PATH: &str = "/big";
/// Length of the body at [`BIG_PATH`]: 64 KiB.
pub const BIG_BODY_LEN: usize = 64 * 1024;

/// Serves until SIGTERM or SIGINT; open connections are dropped with the process.
pub async fn run() -> Result<()> {
    let port: u16 = std::env::var("PORT")
        .context("PORT is not set (molt sets it for every instance)")?
        .parse()
        .context("PORT is not a port number")?;
    let app = std::env::var("MOLT_APP").unwrap_or_else(|_| "app".into());
    let release = std::env::var("MOLT_RELEASE").unwrap_or_else(|_| "v0".into());
    let body = Bytes::from(format!("hello from {app} {release}\n"));
    let fail_share: u64 = match std::env::var("FAIL_SHARE") {
        Ok(share) => share
            .parse()
            .ok()
            .filter(|share| *share <= 100)
            .context("FAIL_SHARE is not a percentage (0 to 100)")?,
        Err(_) => 0,
    };
    let answered = Arc::new(AtomicU64::new(0));
    let big = Bytes::from(vec![b'x'; BIG_BODY_LEN]);
    let listener = TcpListener::bind(("127.0.0.1", port))
        .await
        .with_context(|| format!("binding 127.0.0.1:{port}"))?;
    println!("backend {app} {release} listening on 127.0.0.1:{port}");
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    // Owns every connection task: they end when the set is dropped on the way out.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = interrupt.recv() => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        eprintln!("backend: accept failed: {e}");
                        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let (body, big, answered) = (body.clone(), big.clone(), answered.clone());
                connections.spawn(async move {
                    let service = service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                        let answer = if request.uri().path() == BIG_PATH {
                            big.clone()
                        } else {
                            body.clone()
                        };
                        let failing = fail_share > 0
                            && request.uri().path() != "/healthz"
                            && fails(answered.fetch_add(1, Ordering::Relaxed) + 1, fail_share);
                        async move {
                            // Read a request body to its end first, as an application does
                            // (hyper would otherwise close a connection whose body it
                            // cannot drain, and bench router's POST cells would measure
                            // reconnections).
                            let _ = request.into_body().collect().await;
                            let mut response = Response::new(Full::new(answer));
                            if failing {
                                *response.status_mut() = hyper::StatusCode::INTERNAL_SERVER_ERROR;
                            }
                            Ok::<_, Infallible>(response)
                        }
                    });
                    // A client going away mid-request is not the server's problem.
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        }
    }
    println!("backend {app} {release} stopping");
    Ok(())
}

/// Whether answer number `n` (from 1) is one of the `share` % answered 500, spread evenly.
fn fails(n: u64, share: u64) -> bool {
    (n * share) / 100 != ((n - 1) * share) / 100
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_share_of_answers_fails_spread_evenly() {
        let failed: Vec<u64> = (1..=20).filter(|n| super::fails(*n, 25)).collect();
        assert_eq!(failed, [4, 8, 12, 16, 20]);
        assert_eq!((1..=1000).filter(|n| super::fails(*n, 30)).count(), 300);
        assert!(!(1..=1000).any(|n| super::fails(n, 0)));
    }
}
