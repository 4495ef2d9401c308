//! The document against the code: every route the API's router (and the fleet's, nested
//! under `/v1/fleet`) registers is documented and every documented operation is routed; every
//! reference resolves and every link names an operation.

use std::collections::BTreeSet;

use serde_json::Value;

use super::{document, operations};

/// The API's routes, read from where they are registered.
const API_ROUTES: &str = include_str!("../lib.rs");
const FLEET_ROUTES: &str = include_str!("../../../molt-fleet/src/http.rs");

/// `(method, path)` of every `.route("PATH", get(…).post(…))` in `source`, paths in OpenAPI
/// syntax under `prefix`.
fn routes_in(source: &str, prefix: &str) -> BTreeSet<(String, String)> {
    let mut routes = BTreeSet::new();
    for (at, _) in source.match_indices(".route(") {
        let call = &source[at + ".route(".len()..];
        let open = call.find('"').expect("a route's path") + 1;
        let close = open + call[open..].find('"').expect("the end of the path");
        let path: Vec<String> = call[open..close]
            .split('/')
            .map(|seg| match seg.strip_prefix(':') {
                Some(name) => format!("{{{name}}}"),
                None => seg.to_owned(),
            })
            .collect();
        let path = format!("{prefix}{}", path.join("/"));
        // The method routers up to the call's closing parenthesis.
        let mut depth = 1;
        let end = call
            .char_indices()
            .find(|(_, c)| {
                match c {
                    '(' => depth += 1,
                    ')' => depth -= 1,
                    _ => {}
                }
                depth == 0
            })
            .map(|(i, _)| i)
            .expect("the end of the route call");
        let args = &call[close..end];
        for method in ["get", "post", "put", "patch", "delete"] {
            let named = args.match_indices(&format!("{method}(")).any(|(i, _)| {
                !args[..i]
                    .chars()
                    .next_back()
                    .is_some_and(|c| c.is_alphanumeric() || c == '_')
            });
            if named {
                routes.insert((method.to_owned(), path.clone()));
            }
        }
    }
    routes
}

#[test]
fn every_route_is_documented_and_every_operation_routed() {
    let mut routed = routes_in(API_ROUTES, "");
    routed.extend(routes_in(FLEET_ROUTES, "/v1/fleet"));
    assert!(routed.len() > 40, "the route scan found {routed:?}");
    let documented: BTreeSet<(String, String)> = operations()
        .iter()
        .map(|op| (op.method.to_owned(), op.path.to_owned()))
        .collect();
    let undocumented: Vec<_> = routed.difference(&documented).collect();
    let unrouted: Vec<_> = documented.difference(&routed).collect();
    assert!(
        undocumented.is_empty(),
        "routes missing from the OpenAPI document (crates/molt-api/src/openapi/operations.rs): \
         {undocumented:?}"
    );
    assert!(
        unrouted.is_empty(),
        "documented operations no route serves: {unrouted:?}"
    );
}

/// Every `$ref` in `value`.
fn refs<'a>(value: &'a Value, out: &mut Vec<&'a str>) {
    match value {
        Value::Object(map) => {
            for (key, value) in map {
                match (key.as_str(), value) {
                    ("$ref", Value::String(target)) => out.push(target),
                    _ => refs(value, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|item| refs(item, out)),
        _ => {}
    }
}

#[test]
fn references_resolve_links_name_operations_and_ids_are_unique() {
    let doc = document();
    let mut targets = Vec::new();
    refs(&doc, &mut targets);
    for target in targets {
        let pointer = target.strip_prefix('#').expect("a local reference");
        assert!(doc.pointer(pointer).is_some(), "{target} does not resolve");
    }
    let ops: Vec<&Value> = doc["paths"]
        .as_object()
        .unwrap()
        .values()
        .flat_map(|item| item.as_object().unwrap().values())
        .collect();
    let ids: BTreeSet<&str> = ops
        .iter()
        .map(|op| op["operationId"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), ops.len(), "operation ids are unique");
    for op in &ops {
        let responses = op["responses"].as_object().unwrap();
        assert!(
            responses.keys().any(|status| status.starts_with('2')),
            "{} has no success answer",
            op["operationId"]
        );
        for response in responses.values() {
            for link in response["links"].as_object().into_iter().flatten() {
                let to = link.1["operationId"].as_str().unwrap();
                assert!(ids.contains(to), "link to unknown operation {to}");
            }
        }
    }
}

/// The role table and the document name the same operations: a route added to the document
/// without a role (or a role for a route that is gone) fails here.
#[test]
fn every_operation_has_a_role_and_every_role_an_operation() {
    use crate::roles::{Need, ROUTES};
    let doc = document();
    let ops = operations();
    for op in &ops {
        let id = doc["paths"][op.path][op.method]["operationId"]
            .as_str()
            .unwrap();
        let route = ROUTES
            .iter()
            .find(|route| route.method == op.method && route.path == op.path)
            .unwrap_or_else(|| {
                panic!(
                    "{} {} has no role in crates/molt-api/src/roles.rs ROUTES",
                    op.method, op.path
                )
            });
        assert_eq!(route.operation, id, "{} {}", op.method, op.path);
        let responses = &doc["paths"][op.path][op.method]["responses"];
        if route.need != Need::Public {
            for status in ["401", "403", "429"] {
                assert!(responses[status].is_object(), "{id} documents no {status}");
            }
        }
    }
    for route in ROUTES {
        assert!(
            ops.iter()
                .any(|op| op.method == route.method && op.path == route.path),
            "{} {} has a role but no operation",
            route.method,
            route.path
        );
    }
}
