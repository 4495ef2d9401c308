//! Shadow traffic: copies of live requests sent to another environment, fire-and-forget.
//!
//! A mirror is started before the live request is forwarded and runs on its own task, so it
//! never delays or alters the live answer; its response is read to the end (so the upstream
//! connection can be reused) and discarded, and only its status class and latency are
//! counted, in the shadow environment's [`EnvTraffic::shadow`](crate::EnvTraffic). At most
//! `shadow_concurrency` mirrors run at once; beyond that a mirror is skipped and counted as
//! dropped, never queued.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Either, Empty};
use hyper::header::{HeaderName, HeaderValue};
use hyper::http::uri::PathAndQuery;
use hyper::{Request, Version};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use crate::config::{ClientScheme, EjectionPolicy};
use crate::eject::Verdict;
use crate::forwarded::add_forwarded;
use crate::headers::{add_forwarding, strip_hop_by_hop};
use crate::route::Route;
use crate::upstream::{upstream_uri, RequestBody, Upstreams};

/// Marks a mirrored request, so the shadow environment can tell it from live traffic.
pub static X_MOLT_SHADOW: HeaderName = HeaderName::from_static("x-molt-shadow");

/// The mirror tasks, owned by the router: stopped when it is dropped.
#[derive(Debug)]
pub(crate) struct Shadows {
    tasks: TaskTracker,
    stop: CancellationToken,
    permits: Arc<Semaphore>,
}

/// What a mirror task needs besides the request.
pub(crate) struct MirrorSettings {
    pub timeout: Duration,
    pub ejection: EjectionPolicy,
}

impl Shadows {
    pub(crate) fn new(concurrency: usize) -> Self {
        Self {
            tasks: TaskTracker::new(),
            stop: CancellationToken::new(),
            permits: Arc::new(Semaphore::new(concurrency)),
        }
    }

    /// Sends a copy of the request `head` (bodiless) to one instance of `route`, in the
    /// background.
    pub(crate) fn mirror<B>(
        &self,
        upstreams: &Arc<Upstreams>,
        route: Arc<Route>,
        head: &Request<B>,
        (peer, scheme): (IpAddr, ClientScheme),
        host: &HeaderValue,
        settings: MirrorSettings,
    ) {
        let traffic = &route.counters().traffic;
        let Ok(permit) = Arc::clone(&self.permits).try_acquire_owned() else {
            traffic.record_shadow_dropped();
            return;
        };
        let Some(index) = route.next_index() else {
            traffic.record_shadow_dropped();
            return;
        };
        let request = mirrored_request(
            &route,
            index,
            head,
            (peer, scheme),
            host,
            upstreams.wants_absolute_uri(),
        );
        let upstreams = Arc::clone(upstreams);
        let stop = self.stop.clone();
        self.tasks.spawn(async move {
            let _permit = permit;
            let _load = route.load_of(index);
            let started = Instant::now();
            let shadow = &route.counters().traffic.shadow;
            let exchange = async {
                let deadline = tokio::time::Instant::now() + settings.timeout;
                let destination = route.destination(index, deadline);
                match upstreams.send(destination, request).await {
                    Ok(response) => {
                        route.record_success(index);
                        shadow.record(response.status().as_u16(), started.elapsed());
                        let mut body = response.into_body();
                        while let Some(frame) = body.frame().await {
                            if frame.is_err() {
                                break;
                            }
                        }
                    }
                    Err(error) => {
                        debug!(env = route.env(), %error, "shadow request failed");
                        if error.is_connection_failure() {
                            if let Verdict::Ejected(ms) =
                                route.record_failure(index, &settings.ejection)
                            {
                                warn!(
                                    env = route.env(),
                                    instance = route.upstreams()[index].instance,
                                    backoff_ms = ms,
                                    "upstream ejected after connection failures"
                                );
                            }
                        }
                        shadow.record_failed(started.elapsed());
                    }
                }
            };
            tokio::select! {
                () = stop.cancelled() => {}
                finished = tokio::time::timeout(settings.timeout, exchange) => {
                    if finished.is_err() {
                        shadow.record_failed(started.elapsed());
                    }
                }
            }
        });
    }
}

impl Drop for Shadows {
    fn drop(&mut self) {
        self.tasks.close();
        self.stop.cancel();
    }
}

/// The copy of a live request for upstream `index` of the shadow `route`.
fn mirrored_request<B>(
    route: &Route,
    index: usize,
    head: &Request<B>,
    (peer, scheme): (IpAddr, ClientScheme),
    host: &HeaderValue,
    absolute: bool,
) -> Request<RequestBody> {
    let mut headers = head.headers().clone();
    strip_hop_by_hop(&mut headers);
    add_forwarded(&mut headers, peer, scheme, host);
    add_forwarding(&mut headers, peer, scheme, host.clone());
    headers.insert(&X_MOLT_SHADOW, HeaderValue::from_static("1"));
    let path = head
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    let mut request = Request::new(Either::Right(Empty::new()));
    *request.method_mut() = head.method().clone();
    *request.uri_mut() = upstream_uri(route.authority(index), path, absolute);
    *request.version_mut() = Version::HTTP_11;
    *request.headers_mut() = headers;
    request
}
