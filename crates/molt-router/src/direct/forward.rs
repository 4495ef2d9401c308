//! Sending a direct-path request upstream: the shared attempt loop ([`crate::attempts`])
//! with molt's plain-socket exchange as the attempt, then the answer relayed to the client,
//! or the router's own 502/504 written instead.

use std::sync::Arc;

use hyper::{Response, StatusCode};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::conn::Conn;
use super::request::Exchange;
use super::response::{rewrite_response, Answer, Extras};
use crate::access::Served;
use crate::attempts::{self, at_connection_limit, Attempt, Attempted, Settled};
use crate::body::ResponseBody;
use crate::guard::ClientSocket;
use crate::page;
use crate::route::{Route, Upstream};
use crate::router::Router;
use crate::stats::InFlight;
use crate::upstream::{ask, AskError, Pool, Socket, UpstreamError};

/// One attempt of a direct-path request: its head (in `Conn::request_head`) over a pooled
/// plain socket, the answer's head read into `Conn::relay` and rewritten into `Conn::out`,
/// all within the request's timer (`Conn::timer`, armed once for every attempt).
struct SocketAttempt<'a, S: ClientSocket> {
    conn: &'a mut Conn<S>,
    sockets: &'a Pool<Socket>,
    route: &'a Route,
    extras: Extras<'a>,
    /// The client asked to close after this request.
    close: bool,
    shutdown: &'a CancellationToken,
}

impl<S: ClientSocket> Attempt for SocketAttempt<'_, S> {
    type Answer = (Socket, Answer);
    type Unreachable = UpstreamError;
    type Failure = AskError;

    async fn send(
        &mut self,
        _upstream: &Upstream,
        index: usize,
        _last: bool,
    ) -> Attempted<(Socket, Answer), UpstreamError, AskError> {
        let closing = self.close || self.shutdown.is_cancelled();
        let conn = &mut *self.conn;
        let extras = &self.extras;
        let out = &mut conn.out;
        let rewrite = |head: &[u8]| rewrite_response(head, extras, closing, out);
        let destination = self.route.destination(index, conn.timer.deadline());
        let asked = tokio::select! {
            biased;
            asked = ask(self.sockets, destination, &conn.request_head, &mut conn.relay, rewrite)
                => asked,
            () = conn.timer.as_mut() => return Attempted::TimedOut,
        };
        match asked {
            Ok((socket, mut answer, head_len)) => {
                answer.head_len = head_len;
                Attempted::Answered((socket, answer))
            }
            Err(AskError::Unreachable(error)) => {
                Attempted::Unreachable(UpstreamError::Connect(error))
            }
            Err(failure) => Attempted::Failed(failure),
        }
    }
}

impl Router {
    /// Sends the exchange's head to its route's upstreams (moving on after connection
    /// failures, like hyper's path) and relays the answer; whether the client connection
    /// stays open.
    pub(super) async fn forward_direct<S: ClientSocket>(
        &self,
        conn: &mut Conn<S>,
        sockets: &Arc<Pool<Socket>>,
        exchange: Exchange,
        shutdown: &CancellationToken,
    ) -> bool {
        let Exchange {
            head_only,
            close,
            request_id,
            route,
            start,
            mut in_flight,
            sticky,
            started,
            access,
            client,
            ..
        } = exchange;
        let mut served = Served::default();
        if access.is_some() {
            served.route(&route);
        }
        let timeout = self.allowance(&route).timeout;
        let counters = route.counters();
        conn.timer
            .as_mut()
            .reset(tokio::time::Instant::now() + timeout);
        let mut attempt = SocketAttempt {
            conn: &mut *conn,
            sockets,
            route: &route,
            extras: Extras {
                request_id: &request_id,
                sticky,
                head_only,
            },
            close,
            shutdown,
        };
        let limit = route.upstreams().len();
        let asked = access.is_some().then(std::time::Instant::now);
        let Settled { index, outcome } = attempts::run(
            &self.config,
            &route,
            start,
            limit,
            &mut in_flight,
            &mut attempt,
        )
        .await;
        served.upstream = asked.map(|asked| asked.elapsed());
        let upstream = &route.upstreams()[index];
        let failure = match outcome {
            Attempted::Answered((socket, answer)) => {
                in_flight.counters().record_answered();
                let elapsed = started.elapsed();
                counters.traffic.live.record(answer.status, elapsed);
                if let Some(entry) = access {
                    served.instance = Some(upstream.instance.clone());
                    let status =
                        StatusCode::from_u16(answer.status).unwrap_or(StatusCode::BAD_GATEWAY);
                    let id = request_id.as_str();
                    entry.finish(id, client, status, &served, answer.length);
                }
                let keep = conn.relay_answer(socket, sockets, &answer).await;
                drop(in_flight);
                return keep && !answer.close;
            }
            Attempted::TimedOut => {
                debug!(
                    env = route.env(),
                    instance = upstream.instance,
                    "upstream timed out"
                );
                in_flight.counters().record_failed();
                page::text(
                    StatusCode::GATEWAY_TIMEOUT,
                    "molt: the application did not answer in time\n",
                )
            }
            Attempted::Unreachable(_) => bad_gateway(&in_flight),
            Attempted::Failed(AskError::AtLimit(_)) => {
                at_connection_limit(&route, upstream);
                in_flight.counters().record_failed();
                page::at_connection_limit()
            }
            Attempted::Failed(failure) => {
                debug!(
                    env = route.env(),
                    instance = upstream.instance,
                    %failure,
                    "upstream failed"
                );
                bad_gateway(&in_flight)
            }
        };
        let status = failure.status();
        counters
            .traffic
            .live
            .record(status.as_u16(), started.elapsed());
        if let Some(entry) = access {
            entry.finish(request_id.as_str(), client, status, &served, None);
        }
        let close = close || shutdown.is_cancelled();
        let keep = conn
            .write_local(failure, &request_id, head_only, close)
            .await;
        drop(in_flight);
        keep
    }
}

/// The 502 for a request no upstream answered usably, counted as failed.
fn bad_gateway(in_flight: &InFlight) -> Response<ResponseBody> {
    in_flight.counters().record_failed();
    page::text(
        StatusCode::BAD_GATEWAY,
        "molt: the application could not be reached\n",
    )
}
