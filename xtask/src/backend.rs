//! `xtask backend`: the app `bench core` deploys. A minimal hyper HTTP/1.1 server (keep-alive)
//! on 127.0.0.1:$PORT that answers every request, health checks included, with
//! `hello from $MOLT_APP $MOLT_RELEASE`, so that the benchmark measures molt and not the app.
//! `GET /big` answers [`BIG_BODY_LEN`] bytes instead, for `bench router`'s large responses.
//! A request body is read to its end before the answer.

use std::convert::Infallible;

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
                let (body, big) = (body.clone(), big.clone());
                connections.spawn(async move {
                    let service = service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                        let answer = if request.uri().path() == BIG_PATH {
                            big.clone()
                        } else {
                            body.clone()
                        };
                        async move {
                            // Read a request body to its end first, as an application does
                            // (hyper would otherwise close a connection whose body it
                            // cannot drain, and bench router's POST cells would measure
                            // reconnections).
                            let _ = request.into_body().collect().await;
                            Ok::<_, Infallible>(Response::new(Full::new(answer)))
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
