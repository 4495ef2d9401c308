//! Passive ejection, the retry budget and shadow traffic, end to end: real upstream servers
//! (some killed mid-load, some closing every connection), a real router, real clients.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::server::conn::http1 as server_http1;
use hyper::service::service_fn;
use hyper::{Response, StatusCode};
use hyper_util::rt::TokioIo;
use molt_router::{Backend, EjectionPolicy, RetryBudget, RouterConfig, Upstream};
use support::{dead_addr, eventually, silent_upstream, table, upstream, within, Harness, Reply};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// An upstream answering `name` that can be killed: it stops accepting and closes every open
/// connection. Counts the requests it answered, and how many of them were mirrors.
struct Killable {
    addr: SocketAddr,
    kill: CancellationToken,
    answered: Arc<AtomicUsize>,
    mirrored: Arc<AtomicUsize>,
}

async fn killable(name: &'static str) -> Killable {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind upstream");
    let addr = listener.local_addr().expect("upstream addr");
    let kill = CancellationToken::new();
    let answered = Arc::new(AtomicUsize::new(0));
    let mirrored = Arc::new(AtomicUsize::new(0));
    let (stop, counted, shadowed) = (kill.clone(), Arc::clone(&answered), Arc::clone(&mirrored));
    tokio::spawn(async move {
        loop {
            let stream = tokio::select! {
                () = stop.cancelled() => return,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(_) => return,
                },
            };
            let (counted, shadowed) = (Arc::clone(&counted), Arc::clone(&shadowed));
            let service = service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                counted.fetch_add(1, Ordering::SeqCst);
                if request.headers().contains_key("x-molt-shadow") {
                    shadowed.fetch_add(1, Ordering::SeqCst);
                }
                async move { Ok::<_, Infallible>(Response::new(Full::<bytes::Bytes>::from(name))) }
            });
            let stop = stop.clone();
            tokio::spawn(async move {
                let connection =
                    server_http1::Builder::new().serve_connection(TokioIo::new(stream), service);
                tokio::select! {
                    () = stop.cancelled() => {}
                    _ = connection => {}
                }
            });
        }
    });
    Killable {
        addr,
        kill,
        answered,
        mirrored,
    }
}

/// An upstream that accepts connections and closes them at once; counts the connections.
async fn counting_closer() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind upstream");
    let addr = listener.local_addr().expect("upstream addr");
    let connections = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&connections);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            drop(stream);
        }
    });
    (addr, connections)
}

fn config(ejection: EjectionPolicy, retry_budget: RetryBudget) -> RouterConfig {
    RouterConfig {
        ejection,
        retry_budget,
        ..RouterConfig::default()
    }
}

fn backoff(base: Duration) -> EjectionPolicy {
    EjectionPolicy {
        base_backoff: base,
        max_backoff: base * 4,
        ..EjectionPolicy::default()
    }
}

#[tokio::test]
async fn killing_an_upstream_mid_load_loses_no_get() {
    let upstreams = [
        killable("a").await,
        killable("b").await,
        killable("c").await,
    ];
    let addrs: Vec<SocketAddr> = upstreams.iter().map(|u| u.addr).collect();
    let harness = Harness::start(RouterConfig::default()).await;
    harness
        .router
        .publish(table(&[("app.test", "app", &addrs)]))
        .await;

    const CLIENTS: usize = 4;
    const REQUESTS: usize = 150;
    let sent = Arc::new(AtomicUsize::new(0));
    let mut load = Vec::new();
    for _ in 0..CLIENTS {
        let (addr, sent) = (harness.addr, Arc::clone(&sent));
        load.push(tokio::spawn(async move {
            let mut client = support::Client::connect(addr).await;
            let mut statuses = Vec::new();
            for _ in 0..REQUESTS {
                statuses.push(client.get(Some("app.test"), "/").await.0);
                sent.fetch_add(1, Ordering::SeqCst);
            }
            statuses
        }));
    }
    // Kill one upstream once a quarter of the load is through.
    assert!(eventually(|| sent.load(Ordering::SeqCst) >= CLIENTS * REQUESTS / 4).await);
    upstreams[1].kill.cancel();

    for client in load {
        let statuses = within(client).await.expect("client task");
        assert!(
            statuses.iter().all(|status| *status == StatusCode::OK),
            "{statuses:?}"
        );
    }
    let stats = harness.router.env_stats("app");
    assert_eq!(
        (stats.answered, stats.failed),
        ((CLIENTS * REQUESTS) as u64, 0)
    );
    let traffic = harness.router.env_traffic("app");
    assert_eq!(traffic.live.classes[1], (CLIENTS * REQUESTS) as u64);
    assert_eq!(traffic.live.requests(), (CLIENTS * REQUESTS) as u64);
    assert_eq!(traffic.retry_budget_exhausted, 0);
    // Its refused connections got it ejected (and re-ejected on probation if the load
    // outlasted the first backoff).
    assert!(traffic.ejections >= 1, "{traffic:?}");
    println!(
        "killed upstream: {} ejections, {} retries",
        traffic.ejections, traffic.retries
    );
}

#[tokio::test]
async fn retries_stay_within_budget_when_every_upstream_fails() {
    let mut addrs = Vec::new();
    let mut counters = Vec::new();
    for _ in 0..3 {
        let (addr, connections) = counting_closer().await;
        addrs.push(addr);
        counters.push(connections);
    }
    let budget = RetryBudget {
        ratio_percent: 20,
        min_per_second: 0,
    };
    let harness = Harness::start(config(EjectionPolicy::default(), budget)).await;
    harness
        .router
        .publish(table(&[("app.test", "app", &addrs)]))
        .await;

    const REQUESTS: usize = 50;
    let mut client = harness.client().await;
    for _ in 0..REQUESTS {
        let (status, _) = client.get(Some("app.test"), "/").await;
        assert_eq!(status, StatusCode::BAD_GATEWAY);
    }
    let attempts = || {
        counters
            .iter()
            .map(|c| c.load(Ordering::SeqCst))
            .sum::<usize>()
    };
    let traffic = harness.router.env_traffic("app");
    // Every request was tried once; retries are at most 20 % of the requests (without the
    // budget each request would have tried all three instances: 150 connections).
    assert_eq!(traffic.retries, (REQUESTS / 5) as u64);
    assert!(eventually(|| attempts() == REQUESTS + REQUESTS / 5).await);
    // Each request wanted one more retry than it got (every fifth got its first one).
    assert_eq!(traffic.retry_budget_exhausted, REQUESTS as u64);
    assert!(traffic.ejections >= 3, "{traffic:?}");
    assert_eq!(harness.router.env_stats("app").failed, REQUESTS as u64);
}

#[tokio::test]
async fn an_ejected_upstream_is_skipped_across_publishes() {
    let live = upstream(Reply::Name("live")).await;
    let (closer, connections) = counting_closer().await;
    let harness = Harness::start(config(
        backoff(Duration::from_secs(3600)),
        RetryBudget::default(),
    ))
    .await;
    let routes = table(&[("app.test", "app", &[closer, live])]);
    harness.router.publish(routes.clone()).await;

    let mut client = harness.client().await;
    // Every GET succeeds (a failed connection is retried on the other instance) until the
    // closing one has failed three times and is ejected.
    let mut requests = 0;
    while connections.load(Ordering::SeqCst) < 3 {
        assert!(requests < 500, "the closing upstream was never picked");
        assert_eq!(
            client.get(Some("app.test"), "/").await,
            (StatusCode::OK, "live".to_owned())
        );
        requests += 1;
    }
    let traffic = harness.router.env_traffic("app");
    assert_eq!((traffic.ejections, traffic.ejected), (1, 1));

    // A republished table (the controller does that on every instance change) keeps it out.
    harness.router.publish(routes.clone()).await;
    for _ in 0..30 {
        assert_eq!(
            client.get(Some("app.test"), "/").await,
            (StatusCode::OK, "live".to_owned())
        );
    }
    assert_eq!(connections.load(Ordering::SeqCst), 3);
    assert_eq!(harness.router.env_traffic("app").ejected, 1);
    assert_eq!(harness.router.env_stats("app").failed, 0);

    // Once it is no longer routed its state is forgotten.
    harness
        .router
        .publish(table(&[("app.test", "app", &[live])]))
        .await;
    assert_eq!(harness.router.env_traffic("app").ejected, 0);
}

#[tokio::test]
async fn an_ejected_upstream_comes_back_on_probation() {
    let live = upstream(Reply::Name("live")).await;
    let (closer, connections) = counting_closer().await;
    let harness = Harness::start(config(
        backoff(Duration::from_millis(50)),
        RetryBudget::default(),
    ))
    .await;
    harness
        .router
        .publish(table(&[("app.test", "app", &[closer, live])]))
        .await;

    let mut client = harness.client().await;
    // Requests keep succeeding; the closing upstream gets tried again each time its ejection
    // runs out, and each single failure on probation ejects it again.
    let mut requests = 0;
    while harness.router.env_traffic("app").ejections < 3 {
        assert!(requests < 5000, "the upstream was not re-admitted");
        assert_eq!(
            client.get(Some("app.test"), "/").await,
            (StatusCode::OK, "live".to_owned())
        );
        requests += 1;
        if requests % 20 == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // Three failures to eject it once, then one per re-admission.
    assert_eq!(connections.load(Ordering::SeqCst), 5);
}

#[tokio::test]
async fn when_every_upstream_is_ejected_they_are_tried_anyway() {
    let (closer, connections) = counting_closer().await;
    let harness = Harness::start(config(
        backoff(Duration::from_secs(3600)),
        RetryBudget::default(),
    ))
    .await;
    harness
        .router
        .publish(table(&[("app.test", "app", &[closer])]))
        .await;
    let mut client = harness.client().await;
    for _ in 0..6 {
        let (status, _) = client.get(Some("app.test"), "/").await;
        assert_eq!(status, StatusCode::BAD_GATEWAY);
    }
    assert!(eventually(|| connections.load(Ordering::SeqCst) == 6).await);
    assert_eq!(harness.router.env_traffic("app").ejected, 1);
}

fn shadow_table(live: SocketAddr, shadow: SocketAddr, share: u32) -> molt_router::RouteTable {
    let mut routes = table(&[("app.test", "live", &[live])]);
    let backend = Backend::new(
        "preview",
        vec![Upstream {
            instance: "preview-0".to_owned(),
            addr: shadow,
        }],
    );
    routes.insert_shadow("app.test", backend, share);
    routes
}

#[tokio::test]
async fn shadow_gets_its_share_and_users_only_see_live_answers() {
    let live = killable("live").await;
    let shadow = killable("shadow").await;
    let harness = Harness::start(RouterConfig::default()).await;
    harness
        .router
        .publish(shadow_table(live.addr, shadow.addr, 25))
        .await;

    let mut client = harness.client().await;
    for _ in 0..40 {
        assert_eq!(
            client.get(Some("app.test"), "/").await,
            (StatusCode::OK, "live".to_owned())
        );
    }
    // Writes are never mirrored.
    let response = client
        .send("POST", Some("app.test"), "/", "order")
        .await
        .expect("response");
    assert_eq!(
        support::read(response).await,
        (StatusCode::OK, "live".to_owned())
    );
    assert!(eventually(|| shadow.answered.load(Ordering::SeqCst) == 10).await);
    assert_eq!(shadow.mirrored.load(Ordering::SeqCst), 10);
    assert_eq!(live.answered.load(Ordering::SeqCst), 41);
    assert_eq!(live.mirrored.load(Ordering::SeqCst), 0);
    // Testers can still reach the shadow environment directly.
    let pinned = get_pinned(harness.addr, "app.test", "preview").await;
    assert_eq!(pinned, (StatusCode::OK, "shadow".to_owned()));
    assert_eq!(shadow.mirrored.load(Ordering::SeqCst), 10);

    assert!(eventually(|| harness.router.env_traffic("preview").shadow.requests() == 10).await);
    let preview = harness.router.env_traffic("preview");
    assert_eq!(preview.shadow.classes, [0, 10, 0, 0, 0]);
    assert_eq!(preview.live.requests(), 1);
    let live_traffic = harness.router.env_traffic("live");
    assert_eq!(live_traffic.live.classes, [0, 41, 0, 0, 0]);
    assert_eq!(live_traffic.shadow.requests(), 0);
    // Mirrors are not the shadow env's own traffic: they are not counted as accepted.
    assert_eq!(harness.router.env_stats("preview").accepted, 1);
}

#[tokio::test]
async fn a_dead_or_hanging_shadow_does_not_touch_live_traffic() {
    let live = upstream(Reply::Name("live")).await;
    let harness = Harness::start(RouterConfig {
        shadow_concurrency: 4,
        ..RouterConfig::default()
    })
    .await;
    let mut client = harness.client().await;

    let dead = dead_addr().await;
    harness.router.publish(shadow_table(live, dead, 100)).await;
    for _ in 0..20 {
        assert_eq!(
            client.get(Some("app.test"), "/").await,
            (StatusCode::OK, "live".to_owned())
        );
    }
    // Every mirror failed (or was skipped while four were under way).
    assert!(
        eventually(|| {
            let t = harness.router.env_traffic("preview");
            t.shadow.failed + t.shadow_dropped == 20
        })
        .await
    );
    assert!(harness.router.env_traffic("preview").shadow.failed > 0);

    let hanging = silent_upstream().await;
    harness
        .router
        .publish(shadow_table(live, hanging, 100))
        .await;
    let dropped_before = harness.router.env_traffic("preview").shadow_dropped;
    for _ in 0..20 {
        assert_eq!(
            client.get(Some("app.test"), "/").await,
            (StatusCode::OK, "live".to_owned())
        );
    }
    // At most four mirrors hang (until the upstream timeout); the rest were skipped, not
    // queued behind them.
    let dropped = harness.router.env_traffic("preview").shadow_dropped - dropped_before;
    assert!((16..=20).contains(&dropped), "{dropped} dropped");
    let stats = harness.router.env_stats("live");
    assert_eq!((stats.answered, stats.failed), (40, 0));
    assert_eq!(harness.router.env_traffic("live").live.classes[1], 40);
}

/// GET `/` on `host` pinned to `env` with `X-Molt-Env`, on a fresh connection.
async fn get_pinned(router: SocketAddr, host: &str, env: &str) -> (StatusCode, String) {
    let stream = within(tokio::net::TcpStream::connect(router))
        .await
        .expect("connect");
    let (mut sender, connection) =
        within(hyper::client::conn::http1::handshake(TokioIo::new(stream)))
            .await
            .expect("handshake");
    tokio::spawn(connection);
    let request = hyper::Request::get("/")
        .header("host", host)
        .header("x-molt-env", env)
        .body(Full::<bytes::Bytes>::default())
        .expect("valid request");
    let response = within(sender.send_request(request))
        .await
        .expect("response");
    support::read(response).await
}
