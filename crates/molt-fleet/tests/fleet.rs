//! The fleet in one process, over real sockets on 127.0.0.1: the control plane's endpoints
//! served by axum, three routers following it, real upstreams, a client spread over the
//! routers. Swaps are in force only once all three acknowledged, no request fails across
//! them, a router that stops acknowledging is fenced and comes back when it catches up,
//! health checks run through a router, and the routers keep serving while the control plane
//! is away, then follow a new one.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use molt_fleet::{
    Ack, BackendSpec, ControlClient, Event, Fleet, FleetConfig, Follower, FollowerConfig,
    TableSpec, UpstreamSpec,
};
use molt_router::{Router, RouterConfig};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const HOST: &str = "shop.test";
const STEP: Duration = Duration::from_secs(10);

async fn within<F: std::future::Future>(future: F) -> F::Output {
    tokio::time::timeout(STEP, future)
        .await
        .expect("test step timed out")
}

/// An upstream answering its name, on a fresh port.
async fn upstream(name: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let service = service_fn(move |request: Request<hyper::body::Incoming>| async move {
                let status = if request.uri().path() == "/broken" {
                    StatusCode::INTERNAL_SERVER_ERROR
                } else {
                    StatusCode::OK
                };
                let mut response = Response::new(Full::new(Bytes::from_static(name.as_bytes())));
                *response.status_mut() = status;
                Ok::<_, Infallible>(response)
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service),
            );
        }
    });
    addr
}

fn table(env: &str, addr: SocketAddr) -> TableSpec {
    let mut table = TableSpec::new();
    table.insert(
        HOST,
        BackendSpec {
            env: env.to_owned(),
            upstreams: vec![UpstreamSpec {
                instance: format!("{env}-1"),
                addr,
            }],
            ..BackendSpec::default()
        },
    );
    table
}

/// The control plane's fleet endpoints on a fresh port (or `addr`), until `stop`.
struct ControlPlane {
    fleet: Arc<Fleet>,
    addr: SocketAddr,
    stop: CancellationToken,
    serving: JoinHandle<()>,
}

impl ControlPlane {
    async fn start(addr: SocketAddr, config: FleetConfig) -> Self {
        let fleet = Fleet::new(config);
        let app = axum::Router::new().nest("/v1/fleet", molt_fleet::routes(Arc::clone(&fleet)));
        let listener = TcpListener::bind(addr).await.expect("bind control plane");
        let addr = listener.local_addr().expect("addr");
        let stop = CancellationToken::new();
        let serving = tokio::spawn({
            let stop = stop.clone();
            async move {
                let _ = axum::serve(listener, app)
                    .with_graceful_shutdown(async move { stop.cancelled().await })
                    .await;
            }
        });
        Self {
            fleet,
            addr,
            stop,
            serving,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops serving and drops every open stream, as a killed process would.
    async fn kill(self) {
        self.stop.cancel();
        self.serving.abort();
        let _ = self.serving.await;
    }
}

/// A router following the control plane, serving on its own port.
struct FleetRouter {
    router: Arc<Router>,
    follower: Arc<Follower>,
    addr: SocketAddr,
    stop: CancellationToken,
}

impl FleetRouter {
    async fn start(name: &str, control: &str, state: &std::path::Path) -> Self {
        Self::start_at(name, control, state, "127.0.0.1:0".parse().expect("addr")).await
    }

    async fn start_at(name: &str, control: &str, state: &std::path::Path, at: SocketAddr) -> Self {
        let router = Router::new(RouterConfig::default());
        let client = ControlClient::new(control, "token", None).expect("client");
        let listener = TcpListener::bind(at).await.expect("bind router");
        let addr = listener.local_addr().expect("addr");
        let config = FollowerConfig {
            report_interval: Duration::from_millis(100),
            ..FollowerConfig::new(name, addr.to_string(), state.join(name))
        };
        let follower = Follower::new(Arc::clone(&router), client, config);
        follower.restore().await.expect("restore");
        let stop = CancellationToken::new();
        tokio::spawn(Arc::clone(&follower).run(stop.clone()));
        // Serve only once a table is in force.
        let mut ready = follower.ready();
        within(ready.wait_for(|ready| *ready)).await.expect("ready");
        tokio::spawn(Arc::clone(&router).serve(listener, stop.clone()));
        Self {
            router,
            follower,
            addr,
            stop,
        }
    }

    fn kill(&self) {
        self.stop.cancel();
    }
}

/// GET `/` on `HOST` through `router` on a new connection: status and body.
async fn get(router: SocketAddr) -> (StatusCode, String) {
    let stream = within(TcpStream::connect(router)).await.expect("connect");
    let (mut sender, connection) =
        within(hyper::client::conn::http1::handshake(TokioIo::new(stream)))
            .await
            .expect("handshake");
    tokio::spawn(connection);
    let request = Request::get("/")
        .header("host", HOST)
        .body(Empty::<Bytes>::new())
        .expect("request");
    let response = within(sender.send_request(request))
        .await
        .expect("response");
    let status = response.status();
    let body = within(response.into_body().collect())
        .await
        .expect("body")
        .to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swaps_are_in_force_once_every_router_acknowledged_and_fail_no_request() {
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    let control =
        ControlPlane::start("127.0.0.1:0".parse().expect("addr"), FleetConfig::default()).await;
    let first = control.fleet.publish(&table("blue", blue)).await;
    assert_eq!(first.version, 1);
    assert!(first.acknowledged.is_empty(), "no router yet: {first:?}");

    let state = tempfile::tempdir().expect("state dir");
    let mut routers = Vec::new();
    for name in ["r1", "r2", "r3"] {
        routers.push(FleetRouter::start(name, &control.url(), state.path()).await);
    }
    for router in &routers {
        assert_eq!(get(router.addr).await, (StatusCode::OK, "blue".to_owned()));
    }

    // A client spread over the three routers, keep-alive, while 20 swaps happen.
    let stop = CancellationToken::new();
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut clients = Vec::new();
    for router in &routers {
        let (addr, stop, ok, failed) = (router.addr, stop.clone(), ok.clone(), failed.clone());
        clients.push(tokio::spawn(async move {
            let stream = TcpStream::connect(addr).await.expect("connect");
            let (mut sender, connection) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream))
                    .await
                    .expect("handshake");
            tokio::spawn(connection);
            // Bounded: at most 20 000 requests or until stopped.
            for _ in 0..20_000 {
                if stop.is_cancelled() {
                    break;
                }
                let request = Request::get("/")
                    .header("host", HOST)
                    .body(Empty::<Bytes>::new())
                    .expect("request");
                let outcome = async {
                    sender.ready().await.ok()?;
                    let response = sender.send_request(request).await.ok()?;
                    let status = response.status();
                    response.into_body().collect().await.ok()?;
                    Some(status)
                };
                match within(outcome).await {
                    Some(StatusCode::OK) => ok.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    for swap in 0..20 {
        let (env, addr) = if swap % 2 == 0 {
            ("green", green)
        } else {
            ("blue", blue)
        };
        let publication = within(control.fleet.publish(&table(env, addr))).await;
        assert_eq!(
            publication.acknowledged,
            ["r1", "r2", "r3"],
            "swap {swap}: {publication:?}"
        );
        assert!(publication.fenced.is_empty(), "{publication:?}");
        // In force: the very next request on every router goes to the new environment.
        for router in &routers {
            assert_eq!(
                get(router.addr).await.1,
                env,
                "swap {swap} via {}",
                router.addr
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.cancel();
    for client in clients {
        within(client).await.expect("client");
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    eprintln!("{ok} requests answered 200 across 20 swaps, {failed} failed");
    assert!(ok > 0);
    assert_eq!(failed, 0);
    let status = control.fleet.status();
    assert_eq!(status.version, 21);
    assert!(status
        .routers
        .iter()
        .all(|r| r.connected && r.lag == 0 && !r.fenced));

    // Counters reach the control plane: every router's reports summed.
    let answered =
        |fleet: &Fleet| fleet.env_counts("blue").answered + fleet.env_counts("green").answered;
    let deadline = tokio::time::Instant::now() + STEP;
    while answered(&control.fleet) < ok && tokio::time::Instant::now() < deadline {
        control.fleet.changed(Duration::from_millis(200)).await;
    }
    assert!(answered(&control.fleet) >= ok);
    // With the live traffic the canary and watch analyses judge: status classes and latency.
    let live = |fleet: &Fleet| {
        let (blue, green) = (
            fleet.env_counts("blue").live,
            fleet.env_counts("green").live,
        );
        (
            blue.classes[1] + green.classes[1],
            blue.classes[4] + green.classes[4],
            blue.cumulative[12] + green.cumulative[12],
        )
    };
    let deadline = tokio::time::Instant::now() + STEP;
    while live(&control.fleet).0 < ok && tokio::time::Instant::now() < deadline {
        control.fleet.changed(Duration::from_millis(200)).await;
    }
    let (answered_2xx, answered_5xx, timed) = live(&control.fleet);
    assert!(
        answered_2xx >= ok,
        "{answered_2xx} 2xx reported, {ok} answered"
    );
    assert_eq!(answered_5xx, 0);
    assert_eq!(
        timed, answered_2xx,
        "every answer is in the latency histogram"
    );
    assert!(control.fleet.is_drained("green", status.version));
    for router in &routers {
        router.kill();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_that_stops_acknowledging_is_fenced_until_it_catches_up() {
    let blue = upstream("blue").await;
    let config = FleetConfig {
        ack_deadline: Duration::from_millis(300),
        ..FleetConfig::default()
    };
    let control = ControlPlane::start("127.0.0.1:0".parse().expect("addr"), config).await;
    control.fleet.publish(&table("blue", blue)).await;
    let state = tempfile::tempdir().expect("state dir");
    let live = FleetRouter::start("live", &control.url(), state.path()).await;

    // A router that reads its stream but never acknowledges.
    let client = ControlClient::new(&control.url(), "token", None).expect("client");
    let mut stuck = within(client.stream("router=stuck&listen=nowhere&version=0"))
        .await
        .expect("stream");
    let first = within(stuck.next_line())
        .await
        .expect("line")
        .expect("a table");
    let Event::Table { generation, .. } = serde_json::from_slice(&first).expect("event") else {
        panic!("first line is not a table");
    };

    let publication = within(control.fleet.publish(&table("blue", blue))).await;
    assert_eq!(publication.acknowledged, ["live"]);
    assert_eq!(publication.fenced, ["stuck"]);
    // It is told, on its stream.
    let fenced = loop {
        let line = within(stuck.next_line())
            .await
            .expect("line")
            .expect("an event");
        match serde_json::from_slice::<Event>(&line).expect("event") {
            Event::Fenced { version } => break version,
            _ => continue,
        }
    };
    assert_eq!(fenced, publication.version);
    // The next publish does not wait for it.
    let next = within(control.fleet.publish(&table("blue", blue))).await;
    assert!(u128::from(next.elapsed_ms) < 300, "{next:?}");
    assert_eq!(next.acknowledged, ["live"]);

    // It catches up: back in the fleet.
    within(client.post(
        "/acks",
        &Ack {
            router: "stuck".into(),
            generation,
            version: next.version,
        },
    ))
    .await
    .expect("ack");
    let status = control.fleet.status();
    let stuck_status = status
        .routers
        .iter()
        .find(|r| r.name == "stuck")
        .expect("listed");
    assert!(!stuck_status.fenced && stuck_status.lag == 0, "{status:?}");
    assert_eq!(live.follower.version(), next.version);
    live.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_checks_run_through_a_router() {
    let blue = upstream("blue").await;
    let control =
        ControlPlane::start("127.0.0.1:0".parse().expect("addr"), FleetConfig::default()).await;
    let timeout = Duration::from_secs(2);
    let none = control.fleet.probe(blue, "/", timeout).await;
    assert_eq!(none, Err(molt_fleet::ProbeError::NoRouter));
    assert!(molt_fleet::ProbeError::NoRouter.is_unknown());
    control.fleet.publish(&table("blue", blue)).await;
    let state = tempfile::tempdir().expect("state dir");
    let router = FleetRouter::start("r1", &control.url(), state.path()).await;
    assert_eq!(control.fleet.probe(blue, "/", timeout).await, Ok(200));
    assert_eq!(control.fleet.probe(blue, "/broken", timeout).await, Ok(500));
    let dead = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let dead_addr = dead.local_addr().expect("addr");
    drop(dead);
    let error = control
        .fleet
        .probe(dead_addr, "/", timeout)
        .await
        .expect_err("nothing listens");
    assert!(!error.is_unknown(), "{error}");
    assert!(error.to_string().contains("r1"), "{error}");
    router.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routers_keep_serving_without_the_control_plane_and_follow_the_next_one() {
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    let control =
        ControlPlane::start("127.0.0.1:0".parse().expect("addr"), FleetConfig::default()).await;
    let control_addr = control.addr;
    control.fleet.publish(&table("blue", blue)).await;
    let state = tempfile::tempdir().expect("state dir");
    let router = FleetRouter::start("r1", &control.url(), state.path()).await;
    assert_eq!(get(router.addr).await.1, "blue");

    // The control plane dies: the router keeps serving its table.
    control.kill().await;
    for _ in 0..20 {
        assert_eq!(get(router.addr).await, (StatusCode::OK, "blue".to_owned()));
    }

    // A router restarted alone serves the table it saved.
    router.kill();
    let restarted = FleetRouter::start("r1", &format!("http://{control_addr}"), state.path()).await;
    assert_eq!(
        get(restarted.addr).await,
        (StatusCode::OK, "blue".to_owned())
    );

    // A new control plane (a new generation, counting from 1 again) on the same address:
    // the router follows it.
    let control = ControlPlane::start(control_addr, FleetConfig::default()).await;
    let mut connected = restarted.follower.connected();
    within(connected.wait_for(|c| *c))
        .await
        .expect("reconnected");
    let publication = within(control.fleet.publish(&table("green", green))).await;
    assert_eq!(publication.version, 1);
    assert_eq!(publication.acknowledged, ["r1"]);
    assert_eq!(get(restarted.addr).await.1, "green");
    let _ = &restarted.router;
    restarted.kill();
}
