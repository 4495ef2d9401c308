//! Requests through the routers while swaps happen: a probe per router, on a thread of its
//! own with a current-thread runtime, sending a request every [`PROBE_INTERVAL`] (a blocking
//! sleep, so the interval is not rounded up to the timer's millisecond) while a swap is under
//! way and idle between swaps; and closed-loop keep-alive load clients, bounded in count and
//! time, counting every answer that is not a 200 from one of the two environments as failed.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use tokio::sync::oneshot;
use tokio::task::JoinSet;

use super::routers::Watched;
use super::HOST;
use crate::load::Connection;

/// Pause between two requests of a probe while a swap is under way.
pub(crate) const PROBE_INTERVAL: Duration = Duration::from_micros(250);
/// A request that takes longer than this counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest a router may take to show a swap before the benchmark gives up.
const SHOW_LIMIT: Duration = Duration::from_secs(10);
/// Bounds of the load clients, whatever happens to the swaps.
const LOAD_LIMIT: Duration = Duration::from_secs(300);
const LOAD_MAX_REQUESTS: u64 = 2_000_000;
/// Failed requests kept as examples.
const EXAMPLES: usize = 5;

/// What the load clients saw.
pub(crate) struct LoadTally {
    pub(crate) connections: usize,
    pub(crate) answered: u64,
    pub(crate) failed: u64,
    pub(crate) examples: Vec<String>,
    pub(crate) elapsed: Duration,
    /// Latency percentiles of the successful requests, µs.
    pub(crate) p50_us: u32,
    pub(crate) p99_us: u32,
    pub(crate) max_us: u32,
}

/// One probe: a thread watching one router.
pub(crate) struct Probe {
    name: String,
    watches: Option<mpsc::Sender<Watch>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// What a probe is asked to watch for.
struct Watch {
    started: Instant,
    new: Bytes,
    old: Bytes,
    answer: oneshot::Sender<Result<Seen>>,
}

/// What a probe saw of one swap (times from the swap's start, by when the request was sent).
pub(crate) struct Seen {
    /// When the first request answered by the new environment was sent.
    pub(crate) first_new: Duration,
    /// When the last request answered by the old one was sent.
    pub(crate) last_old: Option<Duration>,
    /// Requests that failed meanwhile, with examples.
    pub(crate) failed: u64,
    pub(crate) examples: Vec<String>,
}

/// Closed-loop keep-alive load clients, stopped by [`Clients::finish`].
pub(crate) struct Clients {
    tasks: JoinSet<ClientTally>,
    stop: Arc<AtomicBool>,
    started: Instant,
    connections: usize,
}

/// What one load connection saw.
#[derive(Default)]
struct ClientTally {
    latencies_us: Vec<u32>,
    failed: u64,
    examples: Vec<String>,
}

impl Probe {
    /// Starts a probe's thread for `watched` (idle until it is handed a swap to watch).
    pub(crate) fn start(watched: &Watched) -> Result<Probe> {
        let (watches, receiver) = mpsc::channel::<Watch>();
        let addr = watched.addr;
        let thread = std::thread::Builder::new()
            .name(format!("probe-{}", watched.name))
            .spawn(move || probe_thread(addr, receiver))
            .context("starting a probe thread")?;
        Ok(Probe {
            name: watched.name.clone(),
            watches: Some(watches),
            thread: Some(thread),
        })
    }

    /// Starts watching for `new` (the router answers `old` until the swap is in force).
    pub(crate) fn watch(
        &self,
        started: Instant,
        new: &Bytes,
        old: &Bytes,
    ) -> Result<oneshot::Receiver<Result<Seen>>> {
        let (answer, receiver) = oneshot::channel();
        let watch = Watch {
            started,
            new: new.clone(),
            old: old.clone(),
            answer,
        };
        self.watches
            .as_ref()
            .and_then(|w| w.send(watch).ok())
            .ok_or_else(|| anyhow!("the probe of {} has stopped", self.name))?;
        Ok(receiver)
    }

    /// The router it watches.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }
}

impl Clients {
    /// Starts `per_router` connections to each of `routers`; a 200 answering one of `bodies`
    /// is a success, anything else a failure.
    pub(crate) fn start(routers: &[Watched], per_router: usize, bodies: [Bytes; 2]) -> Clients {
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = JoinSet::new();
        for router in routers {
            for _ in 0..per_router {
                tasks.spawn(load_client(router.addr, bodies.clone(), stop.clone()));
            }
        }
        Clients {
            tasks,
            stop,
            started: Instant::now(),
            connections: routers.len() * per_router,
        }
    }

    /// Stops the clients and adds up what they saw.
    pub(crate) async fn finish(mut self) -> Result<LoadTally> {
        self.stop.store(true, Ordering::SeqCst);
        let elapsed = self.started.elapsed();
        let mut all = ClientTally::default();
        while let Some(tally) = self.tasks.join_next().await {
            let tally = tally.context("a load client panicked")?;
            all.latencies_us.extend(tally.latencies_us);
            all.failed += tally.failed;
            for example in tally.examples {
                note(&mut all.examples, example);
            }
        }
        all.latencies_us.sort_unstable();
        let sorted = &all.latencies_us;
        let percentile = |p: f64| -> u32 {
            if sorted.is_empty() {
                return 0;
            }
            let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
            sorted[rank - 1]
        };
        Ok(LoadTally {
            connections: self.connections,
            answered: sorted.len() as u64,
            failed: all.failed,
            examples: all.examples.clone(),
            elapsed,
            p50_us: percentile(0.5),
            p99_us: percentile(0.99),
            max_us: sorted.last().copied().unwrap_or(0),
        })
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        // Closing the channel ends the thread's loop.
        self.watches.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A probe's thread: watches one router for each swap it is handed, until the channel closes.
fn probe_thread(addr: SocketAddr, watches: mpsc::Receiver<Watch>) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            for watch in watches {
                let _ = watch
                    .answer
                    .send(Err(anyhow!("cannot start the probe's runtime: {e}")));
            }
            return;
        }
    };
    runtime.block_on(async move {
        let mut connection: Option<Connection> = None;
        // Blocking here is fine: this runtime has nothing else to run between swaps.
        while let Ok(watch) = watches.recv() {
            let outcome = watch_one(addr, &mut connection, &watch).await;
            let _ = watch.answer.send(outcome);
        }
    });
}

/// Sends requests through `addr` until one answers the new environment.
async fn watch_one(
    addr: SocketAddr,
    connection: &mut Option<Connection>,
    watch: &Watch,
) -> Result<Seen> {
    let mut seen = Seen {
        first_new: Duration::ZERO,
        last_old: None,
        failed: 0,
        examples: Vec::new(),
    };
    loop {
        if watch.started.elapsed() > SHOW_LIMIT {
            bail!("{addr} did not show the swap within {SHOW_LIMIT:?}");
        }
        let conn = match connection {
            Some(conn) => conn,
            None => connection.insert(Connection::open(addr).await?),
        };
        let sent = Instant::now();
        let at = sent.saturating_duration_since(watch.started);
        match tokio::time::timeout(REQUEST_TIMEOUT, conn.get(HOST, "/")).await {
            Ok(Ok((200, body))) if body == watch.new => {
                seen.first_new = at;
                return Ok(seen);
            }
            Ok(Ok((200, body))) if body == watch.old => seen.last_old = Some(at),
            Ok(Ok((status, body))) => {
                seen.failed += 1;
                note(
                    &mut seen.examples,
                    format!("{status} {:?}", String::from_utf8_lossy(&body)),
                );
            }
            Ok(Err(e)) => {
                seen.failed += 1;
                note(&mut seen.examples, format!("{e:#}"));
                *connection = None;
            }
            Err(_) => {
                seen.failed += 1;
                note(
                    &mut seen.examples,
                    format!("no answer within {REQUEST_TIMEOUT:?}"),
                );
                *connection = None;
            }
        }
        std::thread::sleep(PROBE_INTERVAL);
    }
}

/// One keep-alive load connection: requests back to back until `stop`, or its bounds.
async fn load_client(addr: SocketAddr, bodies: [Bytes; 2], stop: Arc<AtomicBool>) -> ClientTally {
    let mut tally = ClientTally::default();
    let deadline = Instant::now() + LOAD_LIMIT;
    let mut connection: Option<Connection> = None;
    let mut sent = 0u64;
    while !stop.load(Ordering::SeqCst) && Instant::now() < deadline && sent < LOAD_MAX_REQUESTS {
        let conn = match &mut connection {
            Some(conn) => conn,
            None => match Connection::open(addr).await {
                Ok(conn) => connection.insert(conn),
                Err(e) => {
                    tally.failed += 1;
                    note(&mut tally.examples, format!("{addr}: {e:#}"));
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        sent += 1;
        let started = Instant::now();
        match tokio::time::timeout(REQUEST_TIMEOUT, conn.get(HOST, "/")).await {
            Ok(Ok((200, body))) if bodies.contains(&body) => {
                let us = started.elapsed().as_micros().min(u128::from(u32::MAX)) as u32;
                tally.latencies_us.push(us);
            }
            Ok(Ok((status, body))) => {
                tally.failed += 1;
                note(
                    &mut tally.examples,
                    format!("{addr}: {status} {:?}", String::from_utf8_lossy(&body)),
                );
            }
            Ok(Err(e)) => {
                tally.failed += 1;
                note(&mut tally.examples, format!("{addr}: {e:#}"));
                connection = None;
            }
            Err(_) => {
                tally.failed += 1;
                note(
                    &mut tally.examples,
                    format!("{addr}: no answer within {REQUEST_TIMEOUT:?}"),
                );
                connection = None;
            }
        }
    }
    tally
}

pub(crate) fn note(examples: &mut Vec<String>, example: String) {
    if examples.len() < EXAMPLES {
        examples.push(example);
    }
}
