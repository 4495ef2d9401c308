use axum::http::Method;

use super::*;

fn principal(role: Role, apps: Option<&[&str]>) -> Principal {
    Principal {
        name: "t".into(),
        role,
        apps: apps.map(|apps| apps.iter().map(|a| (*a).to_owned()).collect()),
    }
}

#[test]
fn literal_segments_win_over_parameters() {
    let route = route_for(&Method::GET, "/v1/images/diff").unwrap();
    assert_eq!(route.operation, "imageDiff");
    let route = route_for(&Method::GET, "/v1/images/shop%3A1").unwrap();
    assert_eq!(route.operation, "inspectImage");
    let route = route_for(&Method::POST, "/v1/fleet/probes/7").unwrap();
    assert_eq!(route.operation, "fleetProbe");
    assert!(route_for(&Method::GET, "/v1/apps//releases").is_none());
    assert!(route_for(&Method::PUT, "/v1/status").is_none());
}

#[test]
fn roles_and_scopes() {
    let swap = route_for(&Method::POST, "/v1/apps/shop/swap").unwrap();
    assert!(authorize(&principal(Role::Deploy, None), swap, Some("shop")).is_ok());
    let why = authorize(&principal(Role::Read, None), swap, Some("shop")).unwrap_err();
    assert!(why.contains("role deploy or admin"), "{why}");
    let scoped = principal(Role::Deploy, Some(&["shop"]));
    assert!(authorize(&scoped, swap, Some("shop")).is_ok());
    assert!(authorize(&scoped, swap, Some("blog")).is_err());
    let import = route_for(&Method::POST, "/v1/images").unwrap();
    assert!(authorize(&scoped, import, None).is_ok());
    let gc = route_for(&Method::POST, "/v1/gc").unwrap();
    assert!(authorize(&principal(Role::Admin, Some(&["shop"])), gc, None).is_err());
    let stream = route_for(&Method::GET, "/v1/fleet/stream").unwrap();
    assert!(authorize(&principal(Role::Router, None), stream, None).is_ok());
    assert!(authorize(&principal(Role::Read, None), stream, None).is_err());
    let status = route_for(&Method::GET, "/v1/status").unwrap();
    assert!(authorize(&principal(Role::Router, None), status, None).is_err());
}
