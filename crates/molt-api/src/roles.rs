//! Who may call what: [`ROUTES`], the one table of every operation's required role, and the
//! middleware ([`guard`]) that authenticates a call, checks its role and app scope against
//! that table, and records every mutating call in the audit trail.
//!
//! A route missing from the table is refused to everyone but an admin (and a test fails:
//! `tests.rs` checks the table against the OpenAPI document, every route × every role).

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use molt_wire::{AuditEntry, Role};

use crate::auth::{bearer_token, AuthError, Principal};
use crate::{ApiError, ApiState};

/// What an operation requires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Nothing: no token.
    Public,
    /// Any token of role `read`, `deploy` or `admin`.
    Read,
    /// `deploy` or `admin`.
    Deploy,
    /// `admin`.
    Admin,
    /// `router` or `admin`: the fleet's endpoints.
    Router,
}

impl Need {
    /// Whether a token of `role` meets this.
    pub fn allows(self, role: Role) -> bool {
        match self {
            Need::Public => true,
            Need::Read => role != Role::Router,
            Need::Deploy => matches!(role, Role::Deploy | Role::Admin),
            Need::Admin => role == Role::Admin,
            Need::Router => matches!(role, Role::Router | Role::Admin),
        }
    }

    /// The least role that meets this (what a refusal names).
    pub fn least_role(self) -> Option<Role> {
        match self {
            Need::Public => None,
            Need::Read => Some(Role::Read),
            Need::Deploy => Some(Role::Deploy),
            Need::Admin => Some(Role::Admin),
            Need::Router => Some(Role::Router),
        }
    }
}

/// One operation: method, path (OpenAPI syntax), its `operationId` and what it requires.
#[derive(Debug, Clone, Copy)]
pub struct RouteAccess {
    /// `get`, `post` or `delete`.
    pub method: &'static str,
    /// Like `/v1/apps/{app}/swap`.
    pub path: &'static str,
    /// The operation's id in the document (the audit trail's action).
    pub operation: &'static str,
    /// What a caller needs.
    pub need: Need,
}

const fn at(
    method: &'static str,
    path: &'static str,
    operation: &'static str,
    need: Need,
) -> RouteAccess {
    RouteAccess {
        method,
        path,
        operation,
        need,
    }
}

/// Every operation of the API with the role it requires: the one table.
pub const ROUTES: &[RouteAccess] = &[
    at("get", "/openapi.json", "openapi", Need::Public),
    at("get", "/v1/health", "health", Need::Public),
    at("get", "/v1/status", "status", Need::Read),
    at("get", "/v1/apps", "listApps", Need::Read),
    at("get", "/v1/apps/{app}", "getApp", Need::Read),
    at("get", "/v1/apps/{app}/releases", "listReleases", Need::Read),
    at(
        "post",
        "/v1/apps/{app}/releases/{number}/pin",
        "pinRelease",
        Need::Deploy,
    ),
    at("get", "/v1/apps/{app}/envs", "listEnvs", Need::Read),
    at(
        "get",
        "/v1/apps/{app}/deployments",
        "listDeployments",
        Need::Read,
    ),
    at("post", "/v1/apps/{app}/deployments", "deploy", Need::Deploy),
    at("post", "/v1/apps/{app}/swap", "swap", Need::Deploy),
    at("post", "/v1/apps/{app}/rollback", "rollback", Need::Deploy),
    at("get", "/v1/apps/{app}/config", "getConfig", Need::Read),
    at("post", "/v1/apps/{app}/config", "setConfig", Need::Deploy),
    at("get", "/v1/apps/{app}/logs", "getLogs", Need::Read),
    at(
        "post",
        "/v1/apps/{app}/maintenance",
        "setMaintenance",
        Need::Deploy,
    ),
    at("post", "/v1/apps/{app}/scale", "scaleApp", Need::Deploy),
    at("post", "/v1/apps/{app}/shadow", "setShadow", Need::Deploy),
    at("get", "/v1/apps/{app}/shadow", "getShadow", Need::Read),
    at("post", "/v1/apps/{app}/promote", "promote", Need::Deploy),
    at("post", "/v1/apps/{app}/abort", "abort", Need::Deploy),
    at("post", "/v1/apps/{app}/abandon", "abandon", Need::Deploy),
    at("get", "/v1/apps/{app}/events", "listEvents", Need::Read),
    at("get", "/v1/apps/{app}/secrets", "listSecrets", Need::Read),
    at("post", "/v1/apps/{app}/secrets", "setSecret", Need::Deploy),
    at(
        "delete",
        "/v1/apps/{app}/secrets/{secret}",
        "removeSecret",
        Need::Deploy,
    ),
    at("get", "/v1/deployments/{id}", "getDeployment", Need::Read),
    at("get", "/v1/images", "listImages", Need::Read),
    at("post", "/v1/images", "importImage", Need::Deploy),
    at("get", "/v1/images/{reference}", "inspectImage", Need::Read),
    at(
        "delete",
        "/v1/images/{reference}",
        "removeImage",
        Need::Admin,
    ),
    at(
        "get",
        "/v1/images/{reference}/history",
        "imageHistory",
        Need::Read,
    ),
    at(
        "post",
        "/v1/images/{reference}/tags",
        "tagImage",
        Need::Deploy,
    ),
    at(
        "get",
        "/v1/images/{reference}/signatures",
        "listImageSignatures",
        Need::Read,
    ),
    at(
        "post",
        "/v1/images/{reference}/signatures",
        "signImage",
        Need::Deploy,
    ),
    at(
        "get",
        "/v1/images/{reference}/export",
        "exportImage",
        Need::Read,
    ),
    at("get", "/v1/tags/history", "tagHistory", Need::Read),
    at(
        "post",
        "/v1/images/{reference}/push",
        "pushImage",
        Need::Deploy,
    ),
    at("post", "/v1/images/pull", "pullImage", Need::Deploy),
    at("post", "/v1/images/gc", "gcImages", Need::Admin),
    at("post", "/v1/bake", "bake", Need::Deploy),
    at("get", "/v1/images/diff", "imageDiff", Need::Read),
    at("post", "/v1/gc", "gc", Need::Admin),
    at("get", "/v1/tls", "tls", Need::Read),
    at("post", "/v1/tls/reload", "tlsReload", Need::Admin),
    at("post", "/v1/verify", "verify", Need::Admin),
    at("get", "/v1/cluster", "cluster", Need::Read),
    at("get", "/metrics", "metrics", Need::Read),
    at("get", "/v1/tokens", "listTokens", Need::Admin),
    at("post", "/v1/tokens", "createToken", Need::Admin),
    at("delete", "/v1/tokens/{name}", "revokeToken", Need::Admin),
    at("get", "/v1/audit", "listAudit", Need::Admin),
    at("get", "/v1/fleet/stream", "fleetStream", Need::Router),
    at("post", "/v1/fleet/acks", "fleetAck", Need::Router),
    at("post", "/v1/fleet/reports", "fleetReport", Need::Router),
    at("post", "/v1/fleet/probes/{id}", "fleetProbe", Need::Router),
    at("get", "/v1/fleet/status", "fleetStatus", Need::Router),
];

/// How an operation sits with a token limited to apps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Under `/v1/apps/{app}`: only for the token's apps.
    App,
    /// Images, bakes and tags: shared by every app (content-addressed), open to scoped tokens.
    Shared,
    /// Everything else (whole-server views and actions): unscoped tokens only.
    Server,
}

impl RouteAccess {
    /// How a token limited to apps may use it.
    pub fn scope(&self) -> Scope {
        if self.path.contains("{app}") {
            Scope::App
        } else if ["/v1/images", "/v1/bake", "/v1/tags/"]
            .iter()
            .any(|prefix| self.path.starts_with(prefix))
        {
            Scope::Shared
        } else {
            Scope::Server
        }
    }
}

/// The table's entry for a request: the template with the most literal segments among those
/// matching (`/v1/images/diff` before `/v1/images/{reference}`), as axum routes.
pub fn route_for(method: &Method, path: &str) -> Option<&'static RouteAccess> {
    let method = method.as_str();
    ROUTES
        .iter()
        .filter(|route| route.method.eq_ignore_ascii_case(method))
        .filter(|route| template_matches(route.path, path))
        .max_by_key(|route| {
            route
                .path
                .split('/')
                .filter(|seg| !seg.starts_with('{'))
                .count()
        })
}

fn template_matches(template: &str, path: &str) -> bool {
    let (mut t, mut p) = (template.split('/'), path.split('/'));
    loop {
        match (t.next(), p.next()) {
            (None, None) => return true,
            (Some(want), Some(got)) if want.starts_with('{') => {
                if got.is_empty() {
                    return false;
                }
            }
            (Some(want), Some(got)) if want == got => {}
            _ => return false,
        }
    }
}

/// The `{app}` segment of a request's path under `template`.
fn app_of(template: &str, path: &str) -> Option<String> {
    template
        .split('/')
        .zip(path.split('/'))
        .find(|(want, _)| *want == "{app}")
        .map(|(_, got)| got.to_owned())
}

/// Whether `principal` may call `route` (on app `app`); the refusal names what it needs.
pub fn authorize(
    principal: &Principal,
    route: &RouteAccess,
    app: Option<&str>,
) -> Result<(), String> {
    if !route.need.allows(principal.role) {
        let needed = match route.need {
            Need::Read => "role read, deploy or admin".to_owned(),
            Need::Deploy => "role deploy or admin".to_owned(),
            Need::Router => "role router or admin".to_owned(),
            other => format!("role {}", other.least_role().map_or("none", Role::as_str)),
        };
        return Err(format!(
            "{} {} needs a token with {needed}; token '{}' has role {}",
            route.method.to_uppercase(),
            route.path,
            principal.name,
            principal.role
        ));
    }
    let Some(apps) = &principal.apps else {
        return Ok(());
    };
    match (route.scope(), app) {
        (Scope::Shared, _) => Ok(()),
        (Scope::App, Some(app)) if apps.iter().any(|a| a == app) => Ok(()),
        (Scope::App, _) => Err(format!(
            "token '{}' is limited to apps {}: it cannot act on app '{}'",
            principal.name,
            apps.join(", "),
            app.unwrap_or("")
        )),
        (Scope::Server, _) => Err(format!(
            "{} {} concerns the whole server; token '{}' is limited to apps {} (use \
             /v1/apps/{{app}}/… routes, or a token without --apps)",
            route.method.to_uppercase(),
            route.path,
            principal.name,
            apps.join(", ")
        )),
    }
}

/// The middleware every request passes: authentication, role and scope, then the audit
/// record of a mutating call once it is answered.
pub(crate) async fn guard(State(state): State<ApiState>, mut req: Request, next: Next) -> Response {
    let path = req.uri().path().to_owned();
    let route = match route_for(req.method(), &path) {
        Some(route) if route.need == Need::Public => return next.run(req).await,
        Some(route) => Some(route),
        // A path or method no operation has: axum answers 404/405 (nothing behind it).
        None if !is_routed_path(&path) => return next.run(req).await,
        None => None,
    };
    let source = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip());
    // Owned before any await: a request's body is not `Sync`, so no borrow of it may cross one.
    let header = req
        .headers()
        .get(header::AUTHORIZATION)
        .map(|value| value.as_bytes().to_vec());
    let secret = bearer_token(header.as_deref()).map(str::to_owned);
    let principal = match secret {
        Ok(secret) => state.auth.authenticate(&secret, source).await,
        Err(AuthError::Missing) => Err(AuthError::Missing),
        // A malformed header counts as a failure (and is refused while the address is limited).
        Err(error) => match state.auth.authenticate("", source).await {
            Err(AuthError::Limited(secs)) => Err(AuthError::Limited(secs)),
            _ => Err(error),
        },
    };
    let principal = match principal {
        Ok(principal) => principal,
        Err(error) => return refusal(error),
    };
    let Some(route) = route else {
        return next.run(req).await;
    };
    let app = app_of(route.path, &path);
    let call = Call {
        route,
        path,
        app,
        source,
    };
    if let Err(why) = authorize(&principal, route, call.app.as_deref()) {
        let response = ApiError(StatusCode::FORBIDDEN, why).into_response();
        call.audit(&state, &principal, response.status()).await;
        return response;
    }
    req.extensions_mut().insert(principal.clone());
    let response = next.run(req).await;
    call.audit(&state, &principal, response.status()).await;
    response
}

/// What the audit trail needs of a call.
struct Call {
    route: &'static RouteAccess,
    path: String,
    app: Option<String>,
    source: Option<IpAddr>,
}

impl Call {
    /// Records a mutating call (every method but GET) with how it was answered.
    async fn audit(self, state: &ApiState, principal: &Principal, status: StatusCode) {
        if self.route.method == "get" {
            return;
        }
        let entry = AuditEntry {
            seq: 0,
            at_ms: 0,
            actor: principal.name.clone(),
            role: principal.role,
            source: self
                .source
                .map_or_else(|| "unknown".to_owned(), |ip| ip.to_string()),
            action: self.route.operation.to_owned(),
            target: self.path,
            app: self.app,
            status: status.as_u16(),
        };
        if let Err(error) = state.controller.record_audit(entry).await {
            tracing::warn!(%error, "could not record an audit entry");
        }
    }
}

/// Whether `path` is one some operation serves with another method (a 405 then needs a
/// token, like the operation).
fn is_routed_path(path: &str) -> bool {
    ROUTES
        .iter()
        .any(|route| template_matches(route.path, path))
}

/// The answer to a failed authentication: 401, or 429 with `Retry-After`.
fn refusal(error: AuthError) -> Response {
    match error {
        AuthError::Limited(secs) => {
            let mut response =
                ApiError(StatusCode::TOO_MANY_REQUESTS, error.to_string()).into_response();
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
            response
        }
        AuthError::Unavailable(_) => {
            ApiError(StatusCode::SERVICE_UNAVAILABLE, error.to_string()).into_response()
        }
        other => ApiError(StatusCode::UNAUTHORIZED, other.to_string()).into_response(),
    }
}

#[cfg(test)]
mod tests;
