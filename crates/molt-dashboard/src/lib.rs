//! molt's dashboard, served by `molt serve` on the API listener at `/`: server-rendered HTML
//! with a little hand-written JavaScript (`assets/dashboard.js`: it swaps each page's live
//! section for the one the server sends over Server-Sent Events; every page reads the same
//! without it). Nothing is loaded from anywhere else.
//!
//! Login is a pasted token; the session is an HttpOnly, SameSite=Strict cookie, and every
//! action (a form posted to `/apps/<app>/<action>`, `/logout`, `/login` itself) carries the
//! session's CSRF token. Actions call the same controller operations as the REST API.
//!
//! Architecture invariant: the dashboard never checks a token itself: the mounting code hands
//! it one [`Authenticate`] function, asked again on every request.

mod actions;
mod pages;
mod samples;
mod session;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, Form, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use futures_util::Stream;
use molt_control::{Authenticate, Caller, Controller};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use pages::app::AppView;
use samples::Samples;
use session::{Sessions, COOKIE, LOGIN_COOKIE};

/// How often a page's live section is sent again.
const LIVE_EVERY: Duration = Duration::from_secs(1);

/// What every handler shares.
#[derive(Clone)]
struct Dashboard {
    controller: Controller,
    authenticate: Authenticate,
    sessions: Arc<Sessions>,
    samples: Arc<Samples>,
    /// Cancelled when `molt serve` stops: the live streams end then, so an open page never
    /// holds the API listener's graceful shutdown.
    stop: CancellationToken,
}

/// Who is looking: a session whose token is still valid.
struct Viewer {
    session: String,
    caller: Caller,
    csrf: String,
}

impl Viewer {
    /// The CSRF token for the action buttons of `app`'s page, or "" (no buttons) when the
    /// viewer's token cannot change the app.
    fn action_csrf(&self, app: &str) -> &str {
        if self.caller.can_change(app) {
            &self.csrf
        } else {
            ""
        }
    }
}

/// Which page's live section `/events` streams.
#[derive(Deserialize)]
struct LiveQuery {
    view: String,
    app: Option<String>,
}

#[derive(Deserialize)]
struct LoginForm {
    token: Option<String>,
    csrf: Option<String>,
}

/// Builds the dashboard's routes (`/`, `/login`, `/logout`, `/apps/…`, `/images`, `/events`,
/// `/static/…`) and starts sampling the router's counters for the charts (until the routes
/// are dropped, or `stop`). `stop` also ends every page's live stream.
pub fn router(
    controller: Controller,
    authenticate: Authenticate,
    stop: CancellationToken,
) -> Router {
    let samples = Arc::new(Samples::default());
    tokio::spawn(samples::run(
        controller.clone(),
        Arc::downgrade(&samples),
        stop.clone(),
    ));
    let state = Dashboard {
        controller,
        authenticate,
        sessions: Arc::new(Sessions::default()),
        samples,
        stop,
    };
    Router::new()
        .route("/", get(apps_page))
        .route("/login", get(login_page).post(login))
        .route("/logout", post(actions::logout))
        .route("/apps/:app", get(app_page))
        .route("/apps/:app/:action", post(actions::act))
        .route("/images", get(images_page))
        .route("/events", get(events))
        .route("/static/dashboard.js", get(script))
        .route("/static/dashboard.css", get(style))
        .with_state(state)
}

impl Dashboard {
    /// The viewer of a request, if its session is on and its token still valid (and one that
    /// may look: every role but `router`).
    async fn viewer(&self, headers: &HeaderMap) -> Option<Viewer> {
        let (session, s) = self.sessions.of(headers)?;
        // A session's token again: not a fresh attempt, so no address to count it against.
        let caller = (self.authenticate)(s.token.clone(), None)
            .await
            .filter(Caller::can_read)?;
        Some(Viewer {
            session,
            caller,
            csrf: s.csrf,
        })
    }

    async fn apps_live(&self) -> Result<String, molt_control::ControlError> {
        let status = self.controller.status(None).await?;
        Ok(pages::apps::live(&status, &self.samples))
    }

    async fn app_view(&self, app: &str) -> Result<AppView, molt_control::ControlError> {
        self.controller.app(app).await?;
        let status = self.controller.status(Some(app.to_string())).await?;
        let status = status.apps.into_iter().next().ok_or_else(|| {
            molt_control::ControlError::Internal(format!("no status for app {app}"))
        })?;
        let deployment = match &status.last_deployment {
            Some(d) => Some(self.controller.deployment(d.id).await?),
            None => None,
        };
        Ok(AppView {
            releases: self.controller.releases(app).await?,
            events: self.controller.events(Some(app.to_string()), 20).await?,
            samples: self.samples.of(app),
            now_ms: self.controller.now_ms(),
            deployment,
            status,
        })
    }

    async fn images_live(&self) -> Result<String, molt_control::ControlError> {
        let images = self.controller.images().await?;
        let mut releases = Vec::new();
        for app in self.controller.status(None).await?.apps {
            releases.extend(self.controller.releases(&app.app.name).await?);
        }
        let gc = self.controller.gc(true).await.ok();
        Ok(pages::images::live(
            &images,
            &releases,
            gc.as_ref(),
            self.controller.now_ms(),
        ))
    }
}

/// The way to the login page, for a request without a (valid) session.
fn to_login() -> Response {
    Redirect::to("/login").into_response()
}

/// A page that could not be made: the controller's words, with the status its kind gives.
fn failure(e: molt_control::ControlError) -> Response {
    let status = match e.kind() {
        molt_control::ErrorKind::BadInput => StatusCode::BAD_REQUEST,
        molt_control::ErrorKind::NotFound => StatusCode::NOT_FOUND,
        molt_control::ErrorKind::Conflict => StatusCode::CONFLICT,
        molt_control::ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    (status, Html(pages::problem(&e.to_string()))).into_response()
}

async fn apps_page(State(d): State<Dashboard>, headers: HeaderMap) -> Response {
    let Some(viewer) = d.viewer(&headers).await else {
        return to_login();
    };
    match d.apps_live().await {
        Ok(live) => Html(pages::page(
            "Apps",
            &viewer.caller.name,
            &viewer.csrf,
            "",
            pages::Live {
                query: "view=apps",
                html: live,
            },
        ))
        .into_response(),
        Err(e) => failure(e),
    }
}

async fn app_page(
    State(d): State<Dashboard>,
    Path(app): Path<String>,
    headers: HeaderMap,
) -> Response {
    let Some(viewer) = d.viewer(&headers).await else {
        return to_login();
    };
    match d.app_view(&app).await {
        Ok(view) => Html(pages::page(
            &app,
            &viewer.caller.name,
            &viewer.csrf,
            "",
            pages::Live {
                query: &format!("view=app&app={app}"),
                html: pages::app::live(&view, viewer.action_csrf(&app)),
            },
        ))
        .into_response(),
        Err(e) => failure(e),
    }
}

async fn images_page(State(d): State<Dashboard>, headers: HeaderMap) -> Response {
    let Some(viewer) = d.viewer(&headers).await else {
        return to_login();
    };
    match d.images_live().await {
        Ok(live) => Html(pages::page(
            "Images",
            &viewer.caller.name,
            &viewer.csrf,
            "",
            pages::Live {
                query: "view=images",
                html: live,
            },
        ))
        .into_response(),
        Err(e) => failure(e),
    }
}

/// The login form, with a fresh login CSRF token in a cookie and in the form.
async fn login_page() -> Response {
    let csrf = session::random_hex();
    (
        [(
            header::SET_COOKIE,
            session::set_cookie(LOGIN_COOKIE, &csrf, 3600),
        )],
        Html(pages::login(&csrf, None)),
    )
        .into_response()
}

/// Starts a session when the token is valid and the form is the one this browser was given.
async fn login(
    State(d): State<Dashboard>,
    peer: Option<ConnectInfo<SocketAddr>>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    let expected = session::cookie(&headers, LOGIN_COOKIE).unwrap_or_default();
    let sent = form.csrf.unwrap_or_default();
    if !session::same_secret(&sent, &expected) {
        return (
            StatusCode::FORBIDDEN,
            Html(pages::problem(
                "the login form expired or came from elsewhere: reload it and try again",
            )),
        )
            .into_response();
    }
    let token = form.token.unwrap_or_default();
    let source = peer.map(|ConnectInfo(addr)| addr.ip());
    let valid = (d.authenticate)(token.trim().to_string(), source)
        .await
        .is_some_and(|caller| caller.can_read());
    if !valid {
        let csrf = session::random_hex();
        return (
            StatusCode::UNAUTHORIZED,
            [(
                header::SET_COOKIE,
                session::set_cookie(LOGIN_COOKIE, &csrf, 3600),
            )],
            Html(pages::login(&csrf, Some("That token is not valid."))),
        )
            .into_response();
    }
    let id = d.sessions.start(token.trim().to_string());
    let mut response = Redirect::to("/").into_response();
    let headers = response.headers_mut();
    for cookie in [
        session::set_cookie(COOKIE, &id, 12 * 3600),
        session::set_cookie(LOGIN_COOKIE, "", 0),
    ] {
        if let Ok(value) = cookie.parse() {
            headers.append(header::SET_COOKIE, value);
        }
    }
    response
}

/// The live section of a page, again every [`LIVE_EVERY`], while the browser listens.
async fn events(
    State(d): State<Dashboard>,
    headers: HeaderMap,
    Query(q): Query<LiveQuery>,
) -> Response {
    let Some(viewer) = d.viewer(&headers).await else {
        return StatusCode::UNAUTHORIZED.into_response();
    };
    Sse::new(live_stream(d, viewer, q))
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// Each tick renders the section; the stream ends when the browser goes away (axum drops it),
/// when the session ends or its token stops being valid, and when `molt serve` stops.
fn live_stream(
    d: Dashboard,
    viewer: Viewer,
    q: LiveQuery,
) -> impl Stream<Item = Result<Event, Infallible>> {
    let ticker = tokio::time::interval(LIVE_EVERY);
    futures_util::stream::unfold(
        (d, viewer, q, ticker),
        |(d, viewer, q, mut ticker)| async move {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = d.stop.cancelled() => return None,
            }
            let session = d.sessions.get(&viewer.session)?;
            (d.authenticate)(session.token.clone(), None).await?;
            let html = match (q.view.as_str(), &q.app) {
                ("apps", _) => d.apps_live().await,
                ("app", Some(app)) => d
                    .app_view(app)
                    .await
                    .map(|view| pages::app::live(&view, viewer.action_csrf(app))),
                ("images", _) => d.images_live().await,
                _ => Ok("<p>Unknown view.</p>".to_string()),
            };
            let html = html.unwrap_or_else(|e| {
                format!("<p class=\"error\">{}</p>", pages::esc(&e.to_string()))
            });
            Some((
                Ok(Event::default().event("live").data(html)),
                (d, viewer, q, ticker),
            ))
        },
    )
}

async fn script() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("../assets/dashboard.js"),
    )
        .into_response()
}

async fn style() -> Response {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("../assets/dashboard.css"),
    )
        .into_response()
}
