//! HTTP/1.1 upgrades (WebSocket and other protocols) relayed both ways.
//!
//! An upgrade request goes to its upstream over a dedicated connection (never the pool, since
//! the connection turns into a byte stream). When the upstream answers 101, the router answers
//! 101 too and joins the two upgraded streams. The tunnel counts as in flight for its
//! environment until it closes, so a drain waits for it; once a publish stops routing to the
//! environment, the tunnel is closed after [`RouterConfig::upgrade_grace`](crate::RouterConfig).

use std::net::IpAddr;

use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONNECTION, UPGRADE};
use hyper::http::uri::PathAndQuery;
use hyper::{Request, Response, StatusCode, Version};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tracing::debug;

use crate::body::{relay, ResponseBody};
use crate::config::ClientScheme;
use crate::forwarded::add_forwarded;
use crate::headers::{add_forwarding, strip_hop_by_hop};
use crate::page;
use crate::route::Route;
use crate::router::{Router, CONNECT_TIMEOUT};
use crate::stats::InFlight;
use crate::upstream::UpstreamBody;

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
        (client, scheme): (IpAddr, ClientScheme),
        host: HeaderValue,
    ) -> Response<ResponseBody> {
        let presence = in_flight.counters().presence().watch();
        let client_upgrade = hyper::upgrade::on(&mut request);
        let (mut head, body) = request.into_parts();
        let protocol = head.headers.get(UPGRADE).cloned();
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
            in_flight.failed();
            return page::text(
                StatusCode::BAD_GATEWAY,
                "molt: the application could not be reached\n",
            );
        };
        let instance = &route.upstreams()[index].instance;
        // The tunnel counts against its instance until it closes, so the instance drains.
        in_flight.sent_to(route.load_of(index));
        let abort = self.tunnels.aborted();
        let exchange = async {
            let (mut sender, connection) = hyper::client::conn::http1::Builder::new()
                .handshake::<_, Incoming>(TokioIo::new(stream))
                .await?;
            // Ends when the upgrade takes the connection over, or with the response.
            self.tunnels.spawn(async move {
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
                in_flight.answered();
                let upstream_upgrade = hyper::upgrade::on(&mut response);
                let (mut head, _empty) = response.into_parts();
                let protocol = head.headers.get(UPGRADE).cloned();
                strip_hop_by_hop(&mut head.headers);
                head.headers
                    .insert(CONNECTION, HeaderValue::from_static("upgrade"));
                if let Some(protocol) = protocol {
                    head.headers.insert(UPGRADE, protocol);
                }
                self.tunnels.open(
                    client_upgrade,
                    upstream_upgrade,
                    in_flight,
                    presence,
                    self.config.upgrade_grace,
                );
                Response::from_parts(head, ResponseBody::text(String::new()))
            }
            // The upstream declined the upgrade: an ordinary response.
            Ok(Ok(response)) => relay(response.map(UpstreamBody::detached), in_flight),
            Ok(Err(error)) => {
                debug!(env = route.env(), instance, %error, "upstream failed an upgrade");
                in_flight.failed();
                page::text(
                    StatusCode::BAD_GATEWAY,
                    "molt: the application could not be reached\n",
                )
            }
            Err(_elapsed) => {
                debug!(env = route.env(), instance, "upstream upgrade timed out");
                in_flight.failed();
                page::text(
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
}
