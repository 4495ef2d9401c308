//! The REST API (axum) over the controller: what the CLI, scripts and a future dashboard use.
//!
//! Architecture invariant: every route except `/openapi.json` and `/v1/health` requires a
//! token whose role the one table in `roles.rs` names (`auth.rs` turns a bearer secret into a
//! [`Principal`]); every mutating call is recorded in the audit trail; handlers only
//! translate HTTP to controller calls and errors to status codes.

mod auth;
mod bake;
mod errors;
mod images;
mod json_body;
mod metrics;
mod openapi;
mod roles;
mod secrets;
mod tokens;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{header, StatusCode};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use images::*;
use molt_control::{
    ControlError, Controller, DeployRequest, ErrorKind, MaintenanceMode, ShadowOutcome,
};
use molt_wire::{DeploymentJournal, ErrorBody, Health, InstanceLog, PinOutcome, ReleaseConfig};
use serde::{Deserialize, Serialize};

pub use auth::{
    bearer_token, token_hash, Auth, AuthError, FailureLimiter, FailurePolicy, Principal,
};
pub use openapi::{document, operations, Op};
pub use roles::{authorize, route_for, Need, RouteAccess, Scope, ROUTES};

/// What every handler shares.
#[derive(Clone)]
pub struct ApiState {
    controller: Controller,
    auth: Auth,
    upload_dir: PathBuf,
}

/// The secrets of `molt serve`'s token files: they become the tokens `admin` and `router`.
#[derive(Debug, Clone)]
pub struct Tokens {
    /// Everything (`<data dir>/admin.token`).
    pub admin: String,
    /// Only the fleet's endpoints: what a `molt router` needs to follow the route table
    /// (`<data dir>/router.token`).
    pub router: String,
}

/// The one [`molt_control::Authenticate`] function the server hands the parts mounted beside
/// the API (the git remote, the dashboard): `auth`'s answer for a bearer secret, as a
/// [`molt_control::Caller`] (name, role, apps). Failed attempts from an address it is handed
/// count toward that address's limit, as the API's do.
pub fn authenticator(auth: &Auth) -> molt_control::Authenticate {
    let auth = auth.clone();
    Arc::new(move |secret: String, source: Option<std::net::IpAddr>| {
        let auth = auth.clone();
        Box::pin(async move {
            let principal = auth.authenticate(&secret, source).await.ok()?;
            Some(molt_control::Caller {
                name: principal.name,
                role: principal.role,
                apps: principal.apps,
            })
        })
    })
}

/// An error as the API returns it: a status code and `{"error": "...", "kind": "..."}`.
pub struct ApiError(pub(crate) StatusCode, pub(crate) String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: self.1,
            kind: error_kind(self.0).into(),
        };
        (self.0, Json(body)).into_response()
    }
}

/// The `kind` of an error body, from its status alone (the values the document lists).
pub(crate) fn error_kind(status: StatusCode) -> &'static str {
    match status {
        StatusCode::BAD_REQUEST => "invalid",
        StatusCode::UNAUTHORIZED => "unauthorized",
        StatusCode::FORBIDDEN => "forbidden",
        StatusCode::TOO_MANY_REQUESTS => "rate_limited",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::CONFLICT => "conflict",
        StatusCode::PAYLOAD_TOO_LARGE => "too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::INSUFFICIENT_STORAGE => "disk_full",
        StatusCode::SERVICE_UNAVAILABLE => "unavailable",
        StatusCode::BAD_GATEWAY => "registry",
        _ => "internal",
    }
}

impl From<ControlError> for ApiError {
    /// The status code comes from the error's kind alone: the API never looks into the layers
    /// below the controller, nor at the words of a message.
    fn from(e: ControlError) -> Self {
        let status = match e.kind() {
            ErrorKind::BadInput => StatusCode::BAD_REQUEST,
            ErrorKind::NotFound => StatusCode::NOT_FOUND,
            ErrorKind::Conflict => StatusCode::CONFLICT,
            ErrorKind::DiskFull => StatusCode::INSUFFICIENT_STORAGE,
            ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::Upstream => StatusCode::BAD_GATEWAY,
            ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError(status, e.to_string())
    }
}

pub(crate) type ApiResult = std::result::Result<Response, ApiError>;

pub(crate) fn ok<T: Serialize>(value: T) -> ApiResult {
    Ok(Json(value).into_response())
}

/// Answers with `value`'s keys sorted in every object: how the answers that were first built
/// as JSON values (a deployment with its journal) have always been sent, kept byte for byte.
fn ok_sorted<T: Serialize>(value: T) -> ApiResult {
    let value = serde_json::to_value(value)
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    ok(value)
}

/// Builds the API router. `upload_dir` holds image uploads while they are imported.
pub fn router(controller: Controller, tokens: Tokens, upload_dir: PathBuf) -> Router {
    let auth = Auth::new(controller.clone(), tokens);
    router_with(controller, auth, upload_dir)
}

/// Builds the API router over an [`Auth`] the caller keeps too (a dashboard's login).
pub fn router_with(controller: Controller, auth: Auth, upload_dir: PathBuf) -> Router {
    let fleet = molt_fleet::routes(Arc::clone(controller.fleet()));
    let state = ApiState {
        controller,
        auth,
        upload_dir,
    };
    let fleet = Router::new()
        .nest_service("/v1/fleet", fleet)
        .layer(middleware::from_fn(json_body::objects_only));
    let protected = Router::new()
        .route("/v1/status", get(status))
        .route("/v1/apps", get(apps))
        .route("/v1/apps/:app", get(app_status))
        .route("/v1/apps/:app/releases", get(releases))
        .route("/v1/apps/:app/releases/:number/pin", post(pin))
        .route("/v1/apps/:app/envs", get(envs))
        .route(
            "/v1/apps/:app/deployments",
            get(app_deployments).post(deploy),
        )
        .route("/v1/apps/:app/swap", post(swap))
        .route("/v1/apps/:app/rollback", post(rollback))
        .route("/v1/apps/:app/config", get(config_get).post(config_set))
        .route("/v1/apps/:app/logs", get(logs))
        .route("/v1/apps/:app/maintenance", post(maintenance))
        .route("/v1/apps/:app/scale", post(scale))
        .route("/v1/apps/:app/shadow", get(shadow_report).post(shadow))
        .route("/v1/apps/:app/promote", post(promote))
        .route("/v1/apps/:app/abandon", post(abandon))
        .route("/v1/apps/:app/abort", post(abort))
        .route("/v1/apps/:app/events", get(events))
        .route(
            "/v1/apps/:app/secrets",
            get(secrets::list).post(secrets::set),
        )
        .route("/v1/apps/:app/secrets/:secret", delete(secrets::remove))
        .route("/v1/deployments/:id", get(deployment))
        .route(
            "/v1/images",
            get(images)
                .post(import_image)
                .layer(DefaultBodyLimit::disable()),
        )
        .route("/v1/images/gc", post(gc_images))
        .route("/v1/images/pull", post(pull_image))
        .route("/v1/images/:reference/push", post(push_image))
        .route(
            "/v1/images/:reference",
            get(inspect_image).delete(remove_image),
        )
        .route("/v1/images/:reference/history", get(image_history))
        .route("/v1/images/:reference/tags", post(tag_image))
        .route(
            "/v1/images/:reference/signatures",
            get(image_signatures).post(sign_image),
        )
        .route("/v1/images/:reference/export", get(export_image))
        .route("/v1/tags/history", get(tag_history))
        .route(
            "/v1/bake",
            post(bake::bake).layer(DefaultBodyLimit::disable()),
        )
        .route("/v1/images/diff", get(bake::diff))
        .route("/v1/gc", post(gc))
        .route("/v1/tls", get(tls_status))
        .route("/v1/tls/reload", post(tls_reload))
        .route("/v1/verify", post(verify))
        .route("/v1/cluster", get(cluster))
        .route("/metrics", get(prometheus))
        .route("/v1/tokens", get(tokens::list).post(tokens::create))
        .route("/v1/tokens/:name", delete(tokens::revoke))
        .route("/v1/audit", get(tokens::audit))
        .layer(middleware::from_fn(json_body::objects_only));
    Router::new()
        .route("/openapi.json", get(|| async { Json(document()) }))
        .route("/v1/health", get(health))
        .merge(protected)
        .merge(fleet)
        .fallback(|| async {
            ApiError(
                StatusCode::NOT_FOUND,
                "no such API route: see /openapi.json".into(),
            )
        })
        .layer(middleware::from_fn_with_state(state.clone(), roles::guard))
        .layer(middleware::map_response(errors::as_error_body))
        .with_state(state)
}

async fn health() -> ApiResult {
    ok(Health {
        ok: true,
        version: env!("CARGO_PKG_VERSION").into(),
    })
}

#[derive(Deserialize)]
struct AppQuery {
    app: Option<String>,
}

async fn status(State(s): State<ApiState>, Query(q): Query<AppQuery>) -> ApiResult {
    if let Some(app) = &q.app {
        s.controller.app(app).await?;
    }
    ok(s.controller.status(q.app).await?)
}

async fn apps(State(s): State<ApiState>) -> ApiResult {
    ok(s.controller.status(None).await?.apps)
}

async fn app_status(State(s): State<ApiState>, Path(app): Path<String>) -> ApiResult {
    s.controller.app(&app).await?;
    let status = s.controller.status(Some(app)).await?;
    ok(status.apps.into_iter().next())
}

async fn releases(State(s): State<ApiState>, Path(app): Path<String>) -> ApiResult {
    ok(s.controller.releases(&app).await?)
}

#[derive(Deserialize)]
struct PinBody {
    pinned: bool,
}

async fn pin(
    State(s): State<ApiState>,
    Path((app, number)): Path<(String, u64)>,
    Json(body): Json<PinBody>,
) -> ApiResult {
    s.controller.pin(&app, number, body.pinned).await?;
    ok(PinOutcome {
        app,
        pinned: body.pinned,
        release: number,
    })
}

#[derive(Deserialize)]
struct EnvsQuery {
    #[serde(default)]
    all: bool,
}

async fn envs(
    State(s): State<ApiState>,
    Path(app): Path<String>,
    Query(q): Query<EnvsQuery>,
) -> ApiResult {
    ok(s.controller.envs(&app, q.all).await?)
}

#[derive(Deserialize)]
struct LimitQuery {
    limit: Option<usize>,
}

async fn app_deployments(
    State(s): State<ApiState>,
    Path(app): Path<String>,
    Query(q): Query<LimitQuery>,
) -> ApiResult {
    s.controller.app(&app).await?;
    ok(s.controller
        .deployments(Some(app), q.limit.unwrap_or(20))
        .await?)
}

async fn deploy(
    State(s): State<ApiState>,
    Path(app): Path<String>,
    Json(req): Json<DeployRequest>,
) -> ApiResult {
    let rec = s.controller.deploy(&app, req).await?;
    Ok((StatusCode::ACCEPTED, Json(rec)).into_response())
}

async fn deployment(State(s): State<ApiState>, Path(id): Path<u64>) -> ApiResult {
    let (deployment, journal) = s.controller.deployment(id).await?;
    ok_sorted(DeploymentJournal {
        deployment,
        journal,
    })
}

#[derive(Deserialize)]
struct SwapBody {
    env: String,
}

async fn swap(
    State(s): State<ApiState>,
    Path(app): Path<String>,
    Json(body): Json<SwapBody>,
) -> ApiResult {
    ok(s.controller.swap(&app, &body.env).await?)
}

#[derive(Deserialize, Default)]
struct RollbackBody {
    to: Option<u64>,
}

/// The body is optional; one that is sent must be a rollback request (a body that is not is
/// refused, never taken for none).
async fn rollback(
    State(s): State<ApiState>,
    Path(app): Path<String>,
    headers: axum::http::HeaderMap,
    body: bytes::Bytes,
) -> ApiResult {
    let to = if body.trim_ascii().is_empty() {
        None
    } else {
        let is_json = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json"));
        if !is_json {
            return Err(ApiError(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "a rollback body must be JSON (Content-Type: application/json)".into(),
            ));
        }
        serde_json::from_slice::<RollbackBody>(&body)
            .map_err(|e| ApiError(StatusCode::BAD_REQUEST, format!("the rollback body: {e}")))?
            .to
    };
    ok(s.controller.rollback(&app, to).await?)
}

async fn config_get(State(s): State<ApiState>, Path(app): Path<String>) -> ApiResult {
    let latest = s.controller.releases(&app).await?.into_iter().next();
    ok(latest.map(|r| ReleaseConfig {
        env: r.config.env,
        secrets: r.config.secrets,
        release: r.number,
    }))
}

#[derive(Deserialize)]
struct ConfigBody {
    #[serde(default)]
    set: BTreeMap<String, String>,
    #[serde(default)]
    unset: Vec<String>,
}

async fn config_set(
    State(s): State<ApiState>,
    Path(app): Path<String>,
    Json(body): Json<ConfigBody>,
) -> ApiResult {
    let rec = s.controller.config_set(&app, body.set, body.unset).await?;
    Ok((StatusCode::ACCEPTED, Json(rec)).into_response())
}

#[derive(Deserialize)]
struct MaintenanceBody {
    enabled: bool,
    message: Option<String>,
    retry_after: Option<u32>,
}

async fn maintenance(
    State(s): State<ApiState>,
    Path(app): Path<String>,
    Json(body): Json<MaintenanceBody>,
) -> ApiResult {
    let mode = body.enabled.then(|| MaintenanceMode {
        message: body
            .message
            .unwrap_or_else(|| format!("{app} is down for maintenance; please try again soon")),
        retry_after_secs: body.retry_after.unwrap_or(120),
    });
    ok(s.controller.set_maintenance(&app, mode).await?)
}

async fn scale(
    State(s): State<ApiState>,
    axum::Extension(by): axum::Extension<Principal>,
    Path(app): Path<String>,
    Json(mut body): Json<molt_wire::ScaleRequest>,
) -> ApiResult {
    body.actor = Some(by.name.clone());
    ok(s.controller.scale(&app, body).await?)
}

#[derive(Deserialize)]
struct ShadowBody {
    /// The environment to mirror to; absent or null stops shadow traffic.
    env: Option<String>,
    /// Percent of idempotent requests mirrored (default 10).
    share: Option<u32>,
}

async fn shadow(
    State(s): State<ApiState>,
    Path(app): Path<String>,
    Json(body): Json<ShadowBody>,
) -> ApiResult {
    if let Some(share) = body.share.filter(|share| !(1..=100).contains(share)) {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            format!("shadow share must be 1 to 100 (percent), not {share}"),
        ));
    }
    let target = body.env.map(|env| (env, body.share.unwrap_or(10)));
    ok(s.controller.set_shadow(&app, target).await?)
}

async fn shadow_report(State(s): State<ApiState>, Path(app): Path<String>) -> ApiResult {
    ok(s.controller.shadow_report(&app).await?)
}

async fn promote(State(s): State<ApiState>, Path(app): Path<String>) -> ApiResult {
    ok(s.controller
        .end_shadow_phase(&app, ShadowOutcome::Promote)
        .await?)
}

async fn abandon(State(s): State<ApiState>, Path(app): Path<String>) -> ApiResult {
    ok(s.controller
        .end_shadow_phase(&app, ShadowOutcome::Abandon)
        .await?)
}

async fn abort(State(s): State<ApiState>, Path(app): Path<String>) -> ApiResult {
    ok(s.controller.abort_canary(&app).await?)
}

#[derive(Deserialize)]
struct LogsQuery {
    instance: Option<String>,
    lines: Option<usize>,
}

async fn logs(
    State(s): State<ApiState>,
    Path(app): Path<String>,
    Query(q): Query<LogsQuery>,
) -> ApiResult {
    let lines = q.lines.unwrap_or(100).min(10_000);
    let out = s.controller.logs(&app, q.instance, lines).await?;
    let out: Vec<_> = out
        .into_iter()
        .map(|(instance, log)| InstanceLog { instance, log })
        .collect();
    ok(out)
}

async fn events(
    State(s): State<ApiState>,
    Path(app): Path<String>,
    Query(q): Query<LimitQuery>,
) -> ApiResult {
    s.controller.app(&app).await?;
    ok(s.controller
        .events(Some(app), q.limit.unwrap_or(50))
        .await?)
}

async fn images(State(s): State<ApiState>) -> ApiResult {
    ok(s.controller.images().await?)
}

/// A fresh path in the upload dir for one request body.
fn upload_path(s: &ApiState) -> PathBuf {
    s.upload_dir.join(format!("upload-{}.tar", rand_suffix()))
}

pub(crate) async fn receive_to_file(body: Body, path: &std::path::Path) -> Result<(), ApiError> {
    use http_body_util::BodyExt;
    use tokio::io::AsyncWriteExt;
    let io_err = |e: std::io::Error| {
        let status = if e.raw_os_error() == Some(28) {
            StatusCode::INSUFFICIENT_STORAGE
        } else {
            StatusCode::INTERNAL_SERVER_ERROR
        };
        ApiError(status, format!("storing the upload: {e}"))
    };
    let mut file = tokio::fs::File::create(path).await.map_err(io_err)?;
    let mut body = body;
    let mut received = 0;
    while let Some(frame) = body.frame().await {
        let frame = frame
            .map_err(|e| ApiError(StatusCode::BAD_REQUEST, format!("reading the upload: {e}")))?;
        if let Ok(data) = frame.into_data() {
            received += data.len();
            file.write_all(&data).await.map_err(io_err)?;
        }
    }
    file.flush().await.map_err(io_err)?;
    if received == 0 {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            "the request has no body: send the tar archive (Content-Type: application/x-tar)"
                .into(),
        ));
    }
    Ok(())
}

fn rand_suffix() -> String {
    use std::time::{SystemTime, UNIX_EPOCH};
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{}-{nanos}", std::process::id())
}

async fn prometheus(State(s): State<ApiState>) -> ApiResult {
    let snapshot = s.controller.metrics().await?;
    let mut text = metrics::render(&snapshot);
    metrics::render_router(&mut text, &snapshot.router);
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response())
}

#[derive(Deserialize)]
struct GcBody {
    #[serde(default)]
    dry_run: bool,
}

async fn gc(State(s): State<ApiState>, Json(body): Json<GcBody>) -> ApiResult {
    ok(s.controller.gc(body.dry_run).await?)
}

/// The routers of the fleet (and, on an engine, its nodes).
async fn cluster(State(s): State<ApiState>) -> ApiResult {
    ok(s.controller.cluster().await?)
}

/// The hostnames the TLS listener has certificates for.
async fn tls_status(State(s): State<ApiState>) -> ApiResult {
    ok(s.controller.tls_certificates())
}

/// Re-reads the certificate directory now; files that cannot be used keep their hostname's
/// previous certificate and are listed in `errors`.
async fn tls_reload(State(s): State<ApiState>) -> ApiResult {
    ok(s.controller.reload_tls().await?)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VerifyBody {
    #[serde(default)]
    app: Option<String>,
}

async fn verify(State(s): State<ApiState>, Json(body): Json<VerifyBody>) -> ApiResult {
    if let Some(app) = &body.app {
        s.controller.app(app).await?;
    }
    ok(s.controller.verify(body.app).await?)
}
