//! `git push` deploys: a smart-HTTP git remote per app at `/git/<app>.git` on the API
//! listener, the API token as the HTTP Basic password.
//!
//! The git protocol is Debian's `git http-backend` (CGI, `cgi.rs`), run per request over a bare
//! repository per app under `<data dir>/git/` (`repo.rs`). Why not gitoxide: its server side
//! (receive-pack, with quarantine and hooks) is not there, so molt would write the pack
//! negotiation itself; `git http-backend` is the protocol as git ships it, already installed
//! wherever `git` is, and costs molt no build time.
//!
//! A push runs the repository's `pre-receive` hook, which molt installs: the hook hands the
//! pushed refs to molt through the push's own directory and prints what molt writes back,
//! which git relays to the pusher as `remote:` lines (`push.rs`). molt checks the ref (the
//! deploy branch, fast-forward only), checks the commit out into a clean build context, bakes
//! it when its `molt.toml` has `[build]` (else imports it as the image's single layer), makes
//! the release with the commit recorded and deploys it with the app's strategy. The hook exits
//! non-zero when any of that fails, so git refuses the ref update and drops the pushed objects
//! (git's quarantine): a refused push stores nothing.
//!
//! Architecture invariant: this crate never checks a token itself; the mounting code hands it
//! one [`Authenticate`] function (molt-control's), and it checks the caller's role: any but
//! `router` may fetch, a push needs `deploy` for the app, or `admin`.

mod cgi;
mod push;
mod repo;
mod source;

use std::net::SocketAddr;
use std::path::PathBuf;

use axum::body::Body;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;
use molt_control::{Authenticate, Caller, Controller, ErrorKind};
use molt_core::AppName;

/// What every request shares.
#[derive(Clone)]
struct GitState {
    controller: Controller,
    authenticate: Authenticate,
    /// `<data dir>/git`: one bare repository per app, and the pushes in progress.
    root: PathBuf,
}

/// The part of a repository URL after `<app>.git` that molt serves (the smart protocol only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Service {
    /// `GET info/refs?service=…`: the refs advertisement.
    Refs,
    /// `POST git-upload-pack`: a fetch or clone.
    UploadPack,
    /// `POST git-receive-pack`: a push.
    ReceivePack,
}

/// Builds the routes of the git remote: `/git/<app>.git/…`, served from bare repositories
/// under `root` (created as needed).
pub fn router(controller: Controller, authenticate: Authenticate, root: PathBuf) -> Router {
    let state = GitState {
        controller,
        authenticate,
        root,
    };
    Router::new()
        .route("/git/*path", any(serve))
        .with_state(state)
}

async fn serve(
    State(s): State<GitState>,
    peer: Option<ConnectInfo<SocketAddr>>,
    Path(path): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let caller = match basic_password(&headers) {
        Some(token) => (s.authenticate)(token, peer.map(|ConnectInfo(addr)| addr.ip())).await,
        None => None,
    };
    let Some(caller) = caller.filter(Caller::can_read) else {
        return unauthorized();
    };
    let Some((app, service)) = parse_path(&path, &method) else {
        return refusal(
            StatusCode::NOT_FOUND,
            "not a git remote of molt: use http://HOST:PORT/git/<app>.git".into(),
        );
    };
    // A push begins with the receive-pack advertisement: refused there already, so git says
    // why before it sends anything.
    let pushing = service == Service::ReceivePack
        || (service == Service::Refs
            && uri
                .query()
                .is_some_and(|q| q.split('&').any(|p| p == "service=git-receive-pack")));
    if pushing && !caller.can_change(app.as_str()) {
        return refusal(
            StatusCode::FORBIDDEN,
            format!(
                "the token '{}' ({}) cannot push to {app}: a push needs a deploy token for the \
                 app, or an admin token",
                caller.name, caller.role
            ),
        );
    }
    let principal = caller.name;
    match s.controller.app(app.as_str()).await {
        Ok(_) => {}
        Err(e) if e.kind() == ErrorKind::NotFound => {
            return refusal(
                StatusCode::NOT_FOUND,
                format!(
                    "molt has no app named '{app}': deploy it once with `molt deploy` (its \
                     molt.toml names it), then push"
                ),
            )
        }
        Err(e) => return refusal(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
    let repo = match repo::ensure(&s.root, &app).await {
        Ok(repo) => repo,
        Err(e) => return refusal(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let mut request = cgi::CgiRequest::new(&s.root, &app, &method, &uri, &headers, &principal);
    let watcher = if service == Service::ReceivePack {
        match push::Push::prepare(&s.root, s.controller.clone(), app, repo, principal).await {
            Ok(push) => {
                request.push_dir = Some(push.dir().to_path_buf());
                Some(push)
            }
            Err(e) => return refusal(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        }
    } else {
        None
    };
    let ended = watcher.map(|push| {
        let (ended_tx, ended_rx) = tokio::sync::oneshot::channel();
        tokio::spawn(push.watch(ended_rx));
        ended_tx
    });
    match cgi::run(request, body, ended).await {
        Ok(response) => response,
        Err(e) => refusal(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// The app and the service a path (after `/git/`) names, if it is one molt serves.
fn parse_path(path: &str, method: &Method) -> Option<(AppName, Service)> {
    let (repo, rest) = path.split_once('/')?;
    let app: AppName = repo.strip_suffix(".git")?.parse().ok()?;
    let service = match (method, rest) {
        (&Method::GET, "info/refs") => Service::Refs,
        (&Method::POST, "git-upload-pack") => Service::UploadPack,
        (&Method::POST, "git-receive-pack") => Service::ReceivePack,
        _ => return None,
    };
    Some((app, service))
}

/// The password of an HTTP Basic `Authorization` header (the user name is ignored; parsed by
/// `molt_core::authorization`, fuzzed there).
fn basic_password(headers: &HeaderMap) -> Option<String> {
    molt_core::authorization::basic_password(headers.get(header::AUTHORIZATION)?.as_bytes())
}

/// 401 with the challenge git answers by asking for credentials.
fn unauthorized() -> Response {
    let mut response = refusal(
        StatusCode::UNAUTHORIZED,
        "missing or wrong token: use the API token as the password (user name: anything)".into(),
    );
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"molt\", charset=\"UTF-8\""),
    );
    response
}

/// A plain-text refusal (git prints the status; a person with curl reads the text).
fn refusal(status: StatusCode, message: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        format!("{message}\n"),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_an_app_and_a_smart_service() {
        let get = Method::GET;
        let post = Method::POST;
        assert_eq!(
            parse_path("shop.git/info/refs", &get).map(|(a, s)| (a.to_string(), s)),
            Some(("shop".into(), Service::Refs))
        );
        assert_eq!(
            parse_path("shop.git/git-receive-pack", &post).map(|(_, s)| s),
            Some(Service::ReceivePack)
        );
        assert!(parse_path("shop.git/git-receive-pack", &get).is_none());
        assert!(parse_path("shop.git/HEAD", &get).is_none());
        assert!(parse_path("Shop.git/info/refs", &get).is_none());
        assert!(parse_path("../x.git/info/refs", &get).is_none());
        assert!(parse_path("shop/info/refs", &get).is_none());
    }

    #[test]
    fn the_password_is_the_token() {
        let mut headers = HeaderMap::new();
        assert_eq!(basic_password(&headers), None);
        // "git:s3cret"
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Basic Z2l0OnMzY3JldA=="),
        );
        assert_eq!(basic_password(&headers).as_deref(), Some("s3cret"));
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic !!"));
        assert_eq!(basic_password(&headers), None);
    }
}
