//! HTTP/1.1 upgrades (WebSocket and other protocols) relayed both ways.
//!
//! An upgrade request goes to its upstream over a dedicated connection (never the pool, since
//! the connection turns into a byte stream). When the upstream answers 101, the router answers
//! 101 too and joins the two upgraded streams. The tunnel counts as in flight for its
//! environment until it closes, so a drain waits for it; once a publish stops routing to the
//! environment, the tunnel is closed after [`RouterConfig::upgrade_grace`](crate::RouterConfig).

use std::net::IpAddr;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONNECTION, UPGRADE};
use hyper::http::uri::PathAndQuery;
use hyper::upgrade::OnUpgrade;
use hyper::{Request, Response, StatusCode, Version};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::debug;

use crate::body::ResponseBody;
use crate::forwarded::add_forwarded;
use crate::headers::{add_forwarding, strip_hop_by_hop};
use crate::proxy::{local_response, relay, CONNECT_TIMEOUT};
use crate::stats::{InFlight, StatsRegistry};
use crate::table::{Route, RouteTable};
use crate::upstream::UpstreamBody;
use crate::ClientScheme;
use crate::Router;

/// Whether the published table routes to an environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Presence {
    Routed,
    Unrouted,
}

/// The [`Presence`] of one environment, published by [`Router::publish`] and watched by the
/// environment's upgraded connections. Lives in the environment's counters, so the request
/// path reaches it without a lock.
#[derive(Debug)]
pub(crate) struct EnvPresence(watch::Sender<Presence>);

/// The tasks relaying upgraded connections, owned by the router so that shutdown can wait for
/// them and close the rest.
#[derive(Debug, Default)]
pub(crate) struct Tunnels {
    tasks: TaskTracker,
    abort: CancellationToken,
}

impl Default for EnvPresence {
    fn default() -> Self {
        Self(watch::Sender::new(Presence::Routed))
    }
}

impl EnvPresence {
    fn mark(&self, presence: Presence) {
        self.0.send_if_modified(|current| {
            let changed = *current != presence;
            *current = presence;
            changed
        });
    }

    fn watch(&self) -> watch::Receiver<Presence> {
        self.0.subscribe()
    }
}

impl Tunnels {
    /// Lets [`Tunnels::wait`] return once the open tunnels have closed.
    pub(crate) fn close(&self) {
        self.tasks.close();
    }

    /// Waits until closed and every tunnel has ended.
    pub(crate) async fn wait(&self) {
        self.tasks.wait().await;
    }

    /// Closes every open tunnel now.
    pub(crate) fn abort(&self) {
        self.abort.cancel();
    }

    /// Number of open tunnels (and of their upstream connections still being set up).
    pub(crate) fn len(&self) -> usize {
        self.tasks.len()
    }
}

impl Router {
    /// Forwards an upgrade request over a fresh connection to one of the route's upstreams
    /// (starting at `start`, moving on only when connecting fails) and, on 101, relays the
    /// upgraded connection until either side closes it.
    pub(crate) async fn forward_upgrade(
        &self,
        route: &Route,
        start: usize,
        mut in_flight: InFlight,
        mut request: Request<Incoming>,
        client: IpAddr,
        host: HeaderValue,
    ) -> Response<ResponseBody> {
        let presence = in_flight.counters().presence().watch();
        let client_upgrade = hyper::upgrade::on(&mut request);
        let (mut head, body) = request.into_parts();
        let protocol = head.headers.get(UPGRADE).cloned();
        let scheme = ClientScheme::of(&head.extensions);
        strip_hop_by_hop(&mut head.headers);
        add_forwarded(&mut head.headers, client, scheme, &host);
        add_forwarding(&mut head.headers, client, scheme, host);
        head.headers
            .insert(CONNECTION, HeaderValue::from_static("upgrade"));
        if let Some(protocol) = protocol {
            head.headers.insert(UPGRADE, protocol);
        }
        head.uri = head
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"))
            .into();
        head.version = Version::HTTP_11;
        let upstream_request = Request::from_parts(head, body);

        let Some((stream, index)) = self.connect_upstream(route, start).await else {
            in_flight.counters().record_failed();
            return local_response(
                StatusCode::BAD_GATEWAY,
                "molt: the application could not be reached\n",
            );
        };
        let instance = &route.upstreams()[index].instance;
        // The tunnel counts against its instance until it closes, so the instance drains.
        in_flight.sent_to(route.load_of(index));
        let abort = self.tunnels.abort.clone();
        let exchange = async {
            let (mut sender, connection) = hyper::client::conn::http1::Builder::new()
                .handshake::<_, Incoming>(TokioIo::new(stream))
                .await?;
            // Ends when the upgrade takes the connection over, or with the response.
            self.tunnels.tasks.spawn(async move {
                tokio::select! {
                    result = connection.with_upgrades() => {
                        if let Err(error) = result {
                            debug!(%error, "upstream upgrade connection failed");
                        }
                    }
                    () = abort.cancelled() => {}
                }
            });
            sender.send_request(upstream_request).await
        };
        match tokio::time::timeout(self.config.upstream_timeout, exchange).await {
            Ok(Ok(mut response)) if response.status() == StatusCode::SWITCHING_PROTOCOLS => {
                in_flight.counters().record_answered();
                let upstream_upgrade = hyper::upgrade::on(&mut response);
                let (mut head, _empty) = response.into_parts();
                let protocol = head.headers.get(UPGRADE).cloned();
                strip_hop_by_hop(&mut head.headers);
                head.headers
                    .insert(CONNECTION, HeaderValue::from_static("upgrade"));
                if let Some(protocol) = protocol {
                    head.headers.insert(UPGRADE, protocol);
                }
                let tunnel = Tunnel {
                    client: client_upgrade,
                    upstream: upstream_upgrade,
                    in_flight,
                    presence,
                    grace: self.config.upgrade_grace,
                    abort: self.tunnels.abort.clone(),
                };
                self.tunnels.tasks.spawn(tunnel.relay());
                Response::from_parts(head, ResponseBody::text(String::new()))
            }
            // The upstream declined the upgrade: an ordinary response.
            Ok(Ok(response)) => relay(response.map(UpstreamBody::detached), in_flight),
            Ok(Err(error)) => {
                debug!(env = route.env(), instance, %error, "upstream failed an upgrade");
                in_flight.counters().record_failed();
                local_response(
                    StatusCode::BAD_GATEWAY,
                    "molt: the application could not be reached\n",
                )
            }
            Err(_elapsed) => {
                debug!(env = route.env(), instance, "upstream upgrade timed out");
                in_flight.counters().record_failed();
                local_response(
                    StatusCode::GATEWAY_TIMEOUT,
                    "molt: the application did not answer in time\n",
                )
            }
        }
    }

    /// A new TCP connection to the first upstream of `route` from `start` that accepts one.
    async fn connect_upstream(&self, route: &Route, start: usize) -> Option<(TcpStream, usize)> {
        let upstreams = route.upstreams();
        let limit = CONNECT_TIMEOUT.min(self.config.upstream_timeout);
        for attempt in 0..upstreams.len() {
            let index = (start + attempt) % upstreams.len();
            let upstream = &upstreams[index];
            match tokio::time::timeout(limit, TcpStream::connect(upstream.addr)).await {
                Ok(Ok(stream)) => {
                    if let Err(error) = stream.set_nodelay(true) {
                        debug!(instance = upstream.instance, %error, "could not set TCP_NODELAY");
                    }
                    return Some((stream, index));
                }
                Ok(Err(error)) => {
                    debug!(env = route.env(), instance = upstream.instance, %error, "upstream unreachable for an upgrade");
                }
                Err(_elapsed) => {
                    debug!(
                        env = route.env(),
                        instance = upstream.instance,
                        "connecting upstream for an upgrade timed out"
                    );
                }
            }
        }
        None
    }
}

/// One upgraded connection: both halves, the in-flight mark of its environment and what
/// closes it early.
struct Tunnel {
    client: OnUpgrade,
    upstream: OnUpgrade,
    in_flight: InFlight,
    presence: watch::Receiver<Presence>,
    grace: Duration,
    abort: CancellationToken,
}

impl Tunnel {
    /// Copies bytes both ways until both sides are done, the environment has been unrouted
    /// for longer than the grace period, or the router shuts down.
    async fn relay(self) {
        let Tunnel {
            client,
            upstream,
            in_flight,
            presence,
            grace,
            abort,
        } = self;
        let joined = async {
            let (client, upstream) = match tokio::try_join!(client, upstream) {
                Ok(both) => both,
                Err(error) => {
                    debug!(%error, "upgrade did not complete");
                    return;
                }
            };
            let (mut client, mut upstream) = (TokioIo::new(client), TokioIo::new(upstream));
            match tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
                Ok((sent, received)) => debug!(sent, received, "upgraded connection closed"),
                Err(error) => debug!(%error, "upgraded connection ended with an error"),
            }
        };
        tokio::select! {
            () = joined => {}
            () = unrouted_for(presence, grace) => {
                debug!("closing an upgraded connection: its environment is no longer routed");
            }
            () = abort.cancelled() => debug!("closing an upgraded connection: shutting down"),
        }
        drop(in_flight);
    }
}

/// The protocol an HTTP/1.1 request asks to upgrade to (`Connection: upgrade` plus an
/// `Upgrade` header), if it is one the router relays. `h2c` is not relayed: the router speaks
/// HTTP/2 itself, so such a request is answered as a plain HTTP/1.1 request.
pub(crate) fn requested_upgrade<B>(request: &Request<B>) -> Option<&HeaderValue> {
    if request.version() != Version::HTTP_11 {
        return None;
    }
    let connection_upgrade = request
        .headers()
        .get_all(CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("upgrade"));
    let protocol = request.headers().get(UPGRADE)?;
    let h2c = protocol
        .to_str()
        .is_ok_and(|value| value.trim().eq_ignore_ascii_case("h2c"));
    (connection_upgrade && !h2c).then_some(protocol)
}

/// Marks the environments of `new` as routed and those only in `old` as unrouted, so their
/// upgraded connections start their grace period.
pub(crate) fn mark_presence(registry: &StatsRegistry, old: &RouteTable, new: &RouteTable) {
    // Sets, not `references`: a table of 10 000 environments would otherwise cost 10 000²
    // comparisons per publish.
    let routed = new.env_set();
    for env in &routed {
        registry.counters(env).presence().mark(Presence::Routed);
    }
    for env in old
        .env_set()
        .into_iter()
        .filter(|env| !routed.contains(env))
    {
        if let Some(counters) = registry.get(env) {
            counters.presence().mark(Presence::Unrouted);
        }
    }
}

/// Completes once the environment has been unrouted for `grace` without being routed again.
async fn unrouted_for(mut presence: watch::Receiver<Presence>, grace: Duration) {
    loop {
        // The sender lives in the environment's counters, which outlive every tunnel of the
        // environment: a closed channel means nothing will change any more.
        let unrouted = presence
            .wait_for(|now| *now == Presence::Unrouted)
            .await
            .is_ok();
        if !unrouted {
            return std::future::pending().await;
        }
        let routed_again =
            tokio::time::timeout(grace, presence.wait_for(|now| *now == Presence::Routed))
                .await
                .map(|routed| routed.is_ok());
        match routed_again {
            Ok(true) => continue,
            Ok(false) => return std::future::pending().await,
            Err(_elapsed) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(version: Version, headers: &[(&str, &str)]) -> Request<()> {
        let mut request = Request::builder().version(version);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.body(()).expect("test request")
    }

    #[test]
    fn upgrades_need_connection_upgrade_and_a_protocol_other_than_h2c() {
        let cases = [
            (
                Version::HTTP_11,
                &[("connection", "Upgrade"), ("upgrade", "websocket")][..],
                Some("websocket"),
            ),
            (
                Version::HTTP_11,
                &[("connection", "keep-alive, upgrade"), ("upgrade", "foo/2")],
                Some("foo/2"),
            ),
            (Version::HTTP_11, &[("upgrade", "websocket")], None),
            (Version::HTTP_11, &[("connection", "upgrade")], None),
            (
                Version::HTTP_11,
                &[("connection", "upgrade"), ("upgrade", "H2C")],
                None,
            ),
            (
                Version::HTTP_10,
                &[("connection", "upgrade"), ("upgrade", "websocket")],
                None,
            ),
            (Version::HTTP_2, &[("upgrade", "websocket")], None),
        ];
        for (version, headers, want) in cases {
            let request = request(version, headers);
            let got = requested_upgrade(&request).map(|value| value.to_str().expect("ascii"));
            assert_eq!(got, want, "{version:?} {headers:?}");
        }
    }

    async fn closes_within(presence: &watch::Receiver<Presence>, wait: Duration) -> bool {
        tokio::time::timeout(wait, unrouted_for(presence.clone(), GRACE))
            .await
            .is_ok()
    }

    const GRACE: Duration = Duration::from_secs(30);

    #[tokio::test(start_paused = true)]
    async fn grace_starts_when_unrouted_and_resets_when_routed_again() {
        let env = EnvPresence::default();
        let presence = env.watch();
        assert!(
            !closes_within(&presence, GRACE * 4).await,
            "routed: stays open"
        );

        env.mark(Presence::Unrouted);
        let watcher = tokio::spawn(unrouted_for(env.watch(), GRACE));
        tokio::time::sleep(GRACE / 2).await;
        env.mark(Presence::Routed);
        tokio::time::sleep(GRACE * 4).await;
        assert!(
            !watcher.is_finished(),
            "routed again within the grace: stays open"
        );

        env.mark(Presence::Unrouted);
        tokio::time::sleep(GRACE - Duration::from_secs(1)).await;
        assert!(!watcher.is_finished(), "still within the grace");
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(watcher.is_finished(), "closed once the grace is over");

        // A watcher that starts while already unrouted gets the full grace too.
        assert!(!closes_within(&presence, GRACE - Duration::from_secs(1)).await);
        assert!(closes_within(&presence, GRACE + Duration::from_secs(1)).await);
    }
}
