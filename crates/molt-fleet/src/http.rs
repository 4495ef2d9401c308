//! The control plane's fleet endpoints, as an axum router that the API nests under
//! `/v1/fleet` behind its token check:
//!
//! | method and path | what |
//! |---|---|
//! | `GET /stream?router=R&listen=A&version=V` | the router's stream: newline-delimited [`Event`](crate::Event)s |
//! | `POST /acks` | an [`Ack`] |
//! | `POST /reports` | a [`RouterReport`] |
//! | `POST /probes/{id}` | a [`ProbeReport`] |
//! | `GET /status` | the [`FleetStatus`](crate::FleetStatus) |

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Json;

use crate::wire::{Ack, Hello, ProbeReport, RouterReport};
use crate::Fleet;

/// Longest router name accepted.
const MAX_NAME: usize = 128;

/// The fleet's endpoints over `fleet`.
pub fn routes(fleet: Arc<Fleet>) -> axum::Router {
    axum::Router::new()
        .route("/stream", get(stream))
        .route("/acks", post(ack))
        .route("/reports", post(report))
        .route("/probes/:id", post(probe))
        .route("/status", get(status))
        .with_state(fleet)
}

async fn stream(State(fleet): State<Arc<Fleet>>, Query(hello): Query<Hello>) -> Response {
    if let Err(why) = check_name(&hello.router) {
        return (StatusCode::BAD_REQUEST, why).into_response();
    }
    let subscription = fleet.subscribe(&hello);
    let lines = futures_util::stream::unfold(subscription, |mut subscription| async move {
        let line = subscription.next_line().await?;
        Some((Ok::<_, Infallible>(line), subscription))
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "application/x-ndjson")
        .header(header::CACHE_CONTROL, "no-store")
        .body(Body::from_stream(lines))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

async fn ack(State(fleet): State<Arc<Fleet>>, Json(ack): Json<Ack>) -> StatusCode {
    fleet.acknowledge(&ack);
    StatusCode::NO_CONTENT
}

async fn report(State(fleet): State<Arc<Fleet>>, Json(report): Json<RouterReport>) -> StatusCode {
    fleet.report(report);
    StatusCode::NO_CONTENT
}

async fn probe(
    State(fleet): State<Arc<Fleet>>,
    Path(id): Path<u64>,
    Json(report): Json<ProbeReport>,
) -> StatusCode {
    fleet.probe_answered(id, report);
    StatusCode::NO_CONTENT
}

async fn status(State(fleet): State<Arc<Fleet>>) -> Json<crate::FleetStatus> {
    Json(fleet.status())
}

/// A router name: 1 to 128 characters of letters, digits, `-`, `_` and `.`.
pub fn check_name(name: &str) -> Result<(), String> {
    let valid = !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if valid {
        Ok(())
    } else {
        Err(format!(
            "router name {name:?} must be 1 to {MAX_NAME} letters, digits, '-', '_' or '.'"
        ))
    }
}
