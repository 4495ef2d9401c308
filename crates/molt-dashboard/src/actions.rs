//! The dashboard's actions: forms posted with the session's CSRF token, each calling the same
//! controller operation as the REST API, then back to the app's page (303, so a reload does
//! not post again).

use axum::extract::{Form, Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use molt_control::ShadowOutcome;
use serde::Deserialize;

use crate::session::{self, COOKIE};
use crate::{failure, pages, to_login, Dashboard};

/// The fields an action's form may carry.
#[derive(Deserialize)]
pub(crate) struct ActionForm {
    csrf: Option<String>,
    /// The environment of a swap.
    env: Option<String>,
}

/// The actions there are, by the last part of their path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Rollback,
    Swap,
    Promote,
    Abort,
    Abandon,
}

impl Action {
    fn parse(name: &str) -> Option<Action> {
        Some(match name {
            "rollback" => Action::Rollback,
            "swap" => Action::Swap,
            "promote" => Action::Promote,
            "abort" => Action::Abort,
            "abandon" => Action::Abandon,
            _ => return None,
        })
    }
}

/// 403 for a form without the session's CSRF token.
fn forged() -> Response {
    (
        StatusCode::FORBIDDEN,
        Html(pages::problem(
            "this form is not one this session was given (missing or wrong CSRF token): reload \
             the page and try again",
        )),
    )
        .into_response()
}

/// `POST /apps/<app>/<action>`.
pub(crate) async fn act(
    State(d): State<Dashboard>,
    Path((app, action)): Path<(String, String)>,
    headers: HeaderMap,
    Form(form): Form<ActionForm>,
) -> Response {
    let Some(viewer) = d.viewer(&headers).await else {
        return to_login();
    };
    if !session::same_secret(form.csrf.as_deref().unwrap_or(""), &viewer.csrf) {
        return forged();
    }
    if !viewer.caller.can_change(&app) {
        return (
            StatusCode::FORBIDDEN,
            Html(pages::problem(&format!(
                "the token '{}' ({}) cannot change {app}: that takes a deploy token for the app, \
                 or an admin token",
                viewer.caller.name, viewer.caller.role
            ))),
        )
            .into_response();
    }
    let Some(action) = Action::parse(&action) else {
        return (
            StatusCode::NOT_FOUND,
            Html(pages::problem(&format!("there is no action '{action}'"))),
        )
            .into_response();
    };
    let c = &d.controller;
    let done = match action {
        Action::Rollback => c.rollback(&app, None).await.map(drop),
        Action::Swap => match form.env.as_deref() {
            Some(env) => c.swap(&app, env).await.map(drop),
            None => {
                return (
                    StatusCode::BAD_REQUEST,
                    Html(pages::problem("a swap names the environment")),
                )
                    .into_response()
            }
        },
        Action::Promote => c
            .end_shadow_phase(&app, ShadowOutcome::Promote)
            .await
            .map(drop),
        Action::Abandon => c
            .end_shadow_phase(&app, ShadowOutcome::Abandon)
            .await
            .map(drop),
        Action::Abort => c.abort_canary(&app).await.map(drop),
    };
    match done {
        Ok(()) => Redirect::to(&format!("/apps/{app}")).into_response(),
        Err(e) => failure(e),
    }
}

/// `POST /logout`: ends the session and removes its cookie.
pub(crate) async fn logout(
    State(d): State<Dashboard>,
    headers: HeaderMap,
    Form(form): Form<ActionForm>,
) -> Response {
    let Some(viewer) = d.viewer(&headers).await else {
        return to_login();
    };
    if !session::same_secret(form.csrf.as_deref().unwrap_or(""), &viewer.csrf) {
        return forged();
    }
    d.sessions.end(&viewer.session);
    (
        [(header::SET_COOKIE, session::set_cookie(COOKIE, "", 0))],
        Redirect::to("/login"),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_are_named() {
        assert_eq!(Action::parse("rollback"), Some(Action::Rollback));
        assert_eq!(Action::parse("swap"), Some(Action::Swap));
        assert_eq!(Action::parse("delete"), None);
    }
}
