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
use super::upload::{send_request, BodyLeft, Sent, UploadError};
use crate::access::Served;
use crate::attempts::{self, at_connection_limit, Attempt, Attempted, Settled};
use crate::body::ResponseBody;
use crate::guard::ClientSocket;
use crate::limits::BodyFault;
use crate::page;
use crate::route::{Route, Upstream};
use crate::router::Router;
use crate::stats::InFlight;
use crate::upstream::{ask, read_head, socket_for, AskError, Pool, Socket, UpstreamError};

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
    /// What is left of the request's body to send (`None` for a bodiless request).
    body: Option<BodyLeft>,
    expect_continue: bool,
    /// The upstream answered before the whole body was sent.
    answered_early: bool,
}

/// Why a direct-path attempt got no usable answer.
enum Failure {
    Upstream(AskError),
    /// The client's body broke off or outgrew the limit.
    Body(BodyFault),
}

impl<S: ClientSocket> Attempt for SocketAttempt<'_, S> {
    type Answer = (Socket, Answer);
    type Unreachable = UpstreamError;
    type Failure = Failure;

    async fn send(
        &mut self,
        _upstream: &Upstream,
        index: usize,
        _last: bool,
    ) -> Attempted<(Socket, Answer), UpstreamError, Failure> {
        if self.body.is_some() {
            return self.send_with_body(index).await;
        }
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
            Err(failure) => Attempted::Failed(Failure::Upstream(failure)),
        }
    }
}

impl<S: ClientSocket> SocketAttempt<'_, S> {
    /// The one attempt a request with a body gets: its head and body streamed to a pooled
    /// socket (see `upload`), then the answer's head read, all within the request's timer.
    /// Once the body has begun to go upstream a failure is never `Unreachable`: the request
    /// is not sent again.
    async fn send_with_body(
        &mut self,
        index: usize,
    ) -> Attempted<(Socket, Answer), UpstreamError, Failure> {
        let conn = &mut *self.conn;
        let destination = self.route.destination(index, conn.timer.deadline());
        let body = self.body.as_mut().expect("a request with a body");
        let acquired = tokio::select! {
            biased;
            acquired = socket_for(self.sockets, destination) => acquired,
            () = conn.timer.as_mut() => return Attempted::TimedOut,
        };
        let (mut socket, _reused) = match acquired {
            Ok(acquired) => acquired,
            Err(AskError::Unreachable(error)) => {
                return Attempted::Unreachable(UpstreamError::Connect(error))
            }
            Err(failure) => return Attempted::Failed(Failure::Upstream(failure)),
        };
        conn.relay.clear();
        let sent = tokio::select! {
            biased;
            sent = send_request(
                &mut conn.stream,
                &mut conn.input,
                &mut socket,
                &conn.request_head,
                body,
                self.expect_continue,
                &mut conn.relay,
            ) => sent,
            () = conn.timer.as_mut() => return Attempted::TimedOut,
        };
        match sent {
            Ok(Sent::Whole) => {}
            Ok(Sent::AnsweredEarly) => self.answered_early = true,
            Err(UploadError::Client(fault)) => return Attempted::Failed(Failure::Body(fault)),
            Err(UploadError::Upstream(error)) => {
                return Attempted::Failed(Failure::Upstream(AskError::Unreachable(error)))
            }
        }
        // An answer that came before the whole body closes both connections after it.
        let closing = self.close || self.answered_early || self.shutdown.is_cancelled();
        let extras = &self.extras;
        let out = &mut conn.out;
        let mut rewrite = |head: &[u8]| rewrite_response(head, extras, closing, out);
        let read = tokio::select! {
            biased;
            read = read_head(&mut socket, &mut conn.relay, &mut rewrite) => read,
            () = conn.timer.as_mut() => return Attempted::TimedOut,
        };
        match read {
            Ok((mut answer, head_len)) => {
                answer.head_len = head_len;
                if self.answered_early {
                    answer.keep_alive = false;
                    answer.close = true;
                }
                Attempted::Answered((socket, answer))
            }
            Err(failure) => Attempted::Failed(Failure::Upstream(failure)),
        }
    }

    /// Whether the client connection is left in a state where another request can follow:
    /// the request's body, if it had one, was read to its end — or is all in the buffer
    /// already (a request that failed before its body went anywhere), and is dropped.
    fn body_read(&mut self) -> bool {
        if self.answered_early {
            return false;
        }
        let Some(body) = self.body.as_mut() else {
            return true;
        };
        if !body.is_done() {
            if let Ok(take) = body.take(&self.conn.input) {
                self.conn.input.drain(..take);
            }
        }
        body.is_done()
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
            body,
            expect_continue,
            replayable,
            max_body,
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
            body: BodyLeft::new(body, max_body),
            expect_continue,
            answered_early: false,
        };
        // A request with a body, or one that is not a read, gets one attempt only.
        let limit = if replayable {
            route.upstreams().len()
        } else {
            1
        };
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
        let body_read = attempt.body_read();
        served.upstream = asked.map(|asked| asked.elapsed());
        let upstream = &route.upstreams()[index];
        let failure = match outcome {
            Attempted::Answered((socket, answer)) => {
                in_flight.answered();
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
                in_flight.failed();
                page::text(
                    StatusCode::GATEWAY_TIMEOUT,
                    "molt: the application did not answer in time\n",
                )
            }
            Attempted::Unreachable(_) => bad_gateway(&mut in_flight),
            Attempted::Failed(Failure::Upstream(AskError::AtLimit(_))) => {
                at_connection_limit(&route, upstream);
                in_flight.failed();
                page::at_connection_limit()
            }
            Attempted::Failed(Failure::Body(fault)) => {
                debug!(env = route.env(), ?fault, "request body not passed on");
                in_flight.failed();
                body_refusal(fault)
            }
            Attempted::Failed(Failure::Upstream(failure)) => {
                debug!(
                    env = route.env(),
                    instance = upstream.instance,
                    %failure,
                    "upstream failed"
                );
                bad_gateway(&mut in_flight)
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
        // A body not read to its end leaves nothing to read the next request from.
        let close = close || shutdown.is_cancelled() || !body_read;
        let keep = conn
            .write_local(failure, &request_id, head_only, close)
            .await;
        drop(in_flight);
        keep
    }
}

/// The answer to a request whose body broke off (400) or outgrew the limit (413).
fn body_refusal(fault: BodyFault) -> Response<ResponseBody> {
    match fault {
        BodyFault::TooLarge => page::text(
            StatusCode::PAYLOAD_TOO_LARGE,
            "molt: the request body is larger than this app accepts\n",
        ),
        BodyFault::Broken => page::text(
            StatusCode::BAD_REQUEST,
            "molt: the request body broke off\n",
        ),
    }
}

/// The 502 for a request no upstream answered usably, counted as failed.
fn bad_gateway(in_flight: &mut InFlight) -> Response<ResponseBody> {
    in_flight.failed();
    page::text(
        StatusCode::BAD_GATEWAY,
        "molt: the application could not be reached\n",
    )
}
