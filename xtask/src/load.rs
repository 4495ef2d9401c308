//! A closed-loop load generator: `concurrency` keep-alive connections (HTTP/1.1, or h2c with
//! prior knowledge), each with one request in flight at a time, for a fixed time and at most a
//! fixed number of requests.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

/// A request that takes longer than this counts as an error (and the connection is replaced).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// One measurement run.
pub struct LoadSpec {
    /// Where to connect; connection `k` goes to `targets[k % targets.len()]`.
    pub targets: Vec<SocketAddr>,
    /// The `Host` header of every request.
    pub host: String,
    /// The path of every request.
    pub path: String,
    /// When set, a 200 whose body is not this many bytes counts as an error.
    pub expected_body_len: Option<usize>,
    /// Connections, each with one request in flight.
    pub concurrency: usize,
    /// How long to send for.
    pub duration: Duration,
    /// Upper bound on requests per connection, whatever the duration.
    pub max_requests_per_connection: usize,
    /// What each connection speaks.
    pub protocol: Protocol,
    /// A body to POST with every request (sent with its length); a GET without one.
    pub upload: Option<Bytes>,
}

/// The protocol of a load run's connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.1 keep-alive.
    Http1,
    /// HTTP/2 over cleartext with prior knowledge, one stream in flight per connection.
    H2c,
}

/// What a run measured.
pub struct LoadResult {
    /// Requests answered 200.
    pub ok: u64,
    /// Requests that failed, timed out or answered anything but 200.
    pub errors: u64,
    /// From the first request to the last answer.
    pub elapsed: Duration,
    /// Median latency of the successful requests.
    pub p50: Duration,
    /// 99th percentile latency of the successful requests.
    pub p99: Duration,
    /// 99.9th percentile latency of the successful requests.
    pub p999: Duration,
}

/// One keep-alive client connection.
pub struct Connection {
    sender: Sender,
}

enum Sender {
    Http1(http1::SendRequest<Full<Bytes>>),
    H2c(http2::SendRequest<Full<Bytes>>),
}

/// The request a worker sends and the answer it counts as a success.
struct Expected {
    host: String,
    path: String,
    body_len: Option<usize>,
    upload: Option<Bytes>,
}

/// What one connection's loop measured.
#[derive(Default)]
struct WorkerTally {
    latencies_us: Vec<u32>,
    errors: u64,
}

impl LoadResult {
    /// Successful requests per second.
    pub fn per_second(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

impl Connection {
    /// Opens a connection (TCP_NODELAY, HTTP/1.1 handshake).
    pub async fn open(addr: SocketAddr) -> Result<Connection> {
        Connection::open_with(addr, Protocol::Http1).await
    }

    /// Opens a connection speaking `protocol` (TCP_NODELAY, then its handshake).
    pub async fn open_with(addr: SocketAddr, protocol: Protocol) -> Result<Connection> {
        let stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true).context("setting TCP_NODELAY")?;
        // Each connection task ends when its sender is dropped or the peer closes.
        let sender = match protocol {
            Protocol::Http1 => {
                let (sender, connection) = http1::handshake(TokioIo::new(stream))
                    .await
                    .with_context(|| format!("HTTP/1.1 handshake with {addr}"))?;
                tokio::spawn(async move {
                    let _ = connection.await;
                });
                Sender::Http1(sender)
            }
            Protocol::H2c => {
                let (sender, connection) =
                    http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                        .await
                        .with_context(|| format!("h2c handshake with {addr}"))?;
                tokio::spawn(async move {
                    let _ = connection.await;
                });
                Sender::H2c(sender)
            }
        };
        Ok(Connection { sender })
    }

    /// Sends GET `path` (or POST `upload` to it) with `Host: host`; the response body is
    /// still to be read.
    async fn send(
        &mut self,
        host: &str,
        path: &str,
        upload: Option<&Bytes>,
    ) -> Result<hyper::Response<hyper::body::Incoming>> {
        self.send_with(host, path, upload, None).await
    }

    /// [`Connection::send`] with a `Cookie` header when one is given.
    async fn send_with(
        &mut self,
        host: &str,
        path: &str,
        upload: Option<&Bytes>,
        cookie: Option<&str>,
    ) -> Result<hyper::Response<hyper::body::Incoming>> {
        let method = if upload.is_some() {
            hyper::Method::POST
        } else {
            hyper::Method::GET
        };
        let body = Full::new(upload.cloned().unwrap_or_default());
        match &mut self.sender {
            Sender::Http1(sender) => {
                sender.ready().await.context("connection closed")?;
                let mut request = hyper::Request::builder()
                    .method(method)
                    .uri(path)
                    .header(hyper::header::HOST, host);
                if let Some(cookie) = cookie {
                    request = request.header(hyper::header::COOKIE, cookie);
                }
                let request = request.body(body).context("building the request")?;
                Ok(sender.send_request(request).await?)
            }
            Sender::H2c(sender) => {
                sender.ready().await.context("connection closed")?;
                // HTTP/2 names the host in the URI's authority (`:authority`).
                let mut request = hyper::Request::builder()
                    .method(method)
                    .uri(format!("http://{host}{path}"));
                if let Some(cookie) = cookie {
                    request = request.header(hyper::header::COOKIE, cookie);
                }
                let request = request.body(body).context("building the request")?;
                Ok(sender.send_request(request).await?)
            }
        }
    }

    /// GET `path` with `Host: host`; returns the status and the whole body.
    pub async fn get(&mut self, host: &str, path: &str) -> Result<(u16, Bytes)> {
        let response = self.send(host, path, None).await?;
        let status = response.status().as_u16();
        let body = response.into_body().collect().await?.to_bytes();
        Ok((status, body))
    }

    /// GET `path` with `Host: host` as the user whose sticky bucket (molt's `molt-bucket`
    /// cookie) is `bucket`; returns the status and the whole body.
    pub async fn get_as_user(
        &mut self,
        host: &str,
        path: &str,
        bucket: u32,
    ) -> Result<(u16, Bytes)> {
        let cookie = format!("molt-bucket={bucket}");
        let response = self.send_with(host, path, None, Some(&cookie)).await?;
        let status = response.status().as_u16();
        let body = response.into_body().collect().await?.to_bytes();
        Ok((status, body))
    }

    /// GET `path` (or POST `upload` to it) with `Host: host`; reads the body without keeping
    /// it and returns the status and the body's length, so large answers cost the load
    /// generator no copies.
    pub async fn send_discarding(
        &mut self,
        host: &str,
        path: &str,
        upload: Option<&Bytes>,
    ) -> Result<(u16, usize)> {
        let response = self.send(host, path, upload).await?;
        let status = response.status().as_u16();
        let mut body = response.into_body();
        let mut len = 0;
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame?.into_data() {
                len += data.len();
            }
        }
        Ok((status, len))
    }
}

/// Runs the load described by `spec`. Every connection is opened before the clock starts.
pub async fn run(spec: &LoadSpec) -> Result<LoadResult> {
    if spec.targets.is_empty() || spec.concurrency == 0 {
        bail!("a load run needs at least one target and one connection");
    }
    let mut connections = Vec::with_capacity(spec.concurrency);
    for k in 0..spec.concurrency {
        let addr = spec.targets[k % spec.targets.len()];
        connections.push((addr, Connection::open_with(addr, spec.protocol).await?));
    }
    let started = Instant::now();
    let deadline = started + spec.duration;
    let mut workers = JoinSet::new();
    for (addr, connection) in connections {
        let request = Expected {
            host: spec.host.clone(),
            path: spec.path.clone(),
            body_len: spec.expected_body_len,
            upload: spec.upload.clone(),
        };
        let limit = spec.max_requests_per_connection;
        workers.spawn(drive(
            addr,
            spec.protocol,
            connection,
            request,
            deadline,
            limit,
        ));
    }
    let mut latencies_us = Vec::new();
    let mut errors = 0;
    while let Some(tally) = workers.join_next().await {
        let tally = tally.context("a load worker panicked")?;
        latencies_us.extend(tally.latencies_us);
        errors += tally.errors;
    }
    let elapsed = started.elapsed();
    latencies_us.sort_unstable();
    Ok(LoadResult {
        ok: latencies_us.len() as u64,
        errors,
        elapsed,
        p50: percentile_us(&latencies_us, 0.50),
        p99: percentile_us(&latencies_us, 0.99),
        p999: percentile_us(&latencies_us, 0.999),
    })
}

/// Sends requests one after the other on one connection until `deadline` or `limit`.
async fn drive(
    addr: SocketAddr,
    protocol: Protocol,
    mut connection: Connection,
    request: Expected,
    deadline: Instant,
    limit: usize,
) -> WorkerTally {
    let mut tally = WorkerTally {
        latencies_us: Vec::with_capacity(limit.min(1 << 16)),
        errors: 0,
    };
    while Instant::now() < deadline && tally.latencies_us.len() + (tally.errors as usize) < limit {
        let sent = Instant::now();
        let answer = tokio::time::timeout(
            REQUEST_TIMEOUT,
            connection.send_discarding(&request.host, &request.path, request.upload.as_ref()),
        )
        .await;
        match answer {
            Ok(Ok((200, len))) if request.body_len.unwrap_or(len) == len => {
                let us = sent.elapsed().as_micros().min(u32::MAX as u128) as u32;
                tally.latencies_us.push(us);
            }
            Ok(Ok(_)) => tally.errors += 1,
            Ok(Err(_)) | Err(_) => {
                tally.errors += 1;
                // The connection is gone or stuck: replace it, or give up for this run.
                match Connection::open_with(addr, protocol).await {
                    Ok(fresh) => connection = fresh,
                    Err(_) => break,
                }
            }
        }
    }
    tally
}

/// Nearest-rank percentile of sorted microsecond samples.
fn percentile_us(sorted: &[u32], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Duration::from_micros(u64::from(sorted[rank - 1]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let samples: Vec<u32> = (1..=100).collect();
        assert_eq!(percentile_us(&samples, 0.50), Duration::from_micros(50));
        assert_eq!(percentile_us(&samples, 0.99), Duration::from_micros(99));
        assert_eq!(percentile_us(&samples, 0.999), Duration::from_micros(100));
        assert_eq!(percentile_us(&[7], 0.99), Duration::from_micros(7));
        assert_eq!(percentile_us(&[], 0.5), Duration::ZERO);
    }
}
