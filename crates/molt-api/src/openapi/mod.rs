//! The OpenAPI 3.1 document served at `/openapi.json`: every operation with the constraints
//! the server enforces on its parameters and bodies, every status and content type it answers,
//! the one error body, and links from the operations that list or create apps, releases,
//! images and deployments to those that need one.
//!
//! Kept by hand next to the routes (`schemas.rs` for the records); `tests` below fails when a
//! route of [`crate::router`] is not documented here, or a documented one does not exist.

mod access;
mod operations;
mod schemas;

use serde_json::{json, Map, Value};

pub use operations::operations;

/// One documented operation, built by [`Op`]'s methods.
pub struct Op {
    /// `get`, `post` or `delete`.
    pub method: &'static str,
    /// In OpenAPI syntax (`/v1/apps/{app}`).
    pub path: &'static str,
    value: Value,
}

impl Op {
    /// An operation answering `200` with JSON of schema `answer` (a component name).
    fn new(method: &'static str, path: &'static str, id: &str, summary: &str) -> Op {
        let mut value = json!({
            "operationId": id,
            "summary": summary,
            "responses": {
                "400": error_ref(),
                "401": error_ref(),
                "500": error_ref(),
                "503": error_ref(),
            },
        });
        let params: Vec<Value> = path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{')?.strip_suffix('}'))
            .map(path_parameter)
            .collect();
        if !params.is_empty() {
            value["parameters"] = Value::Array(params);
            value["responses"]["404"] = error_ref();
        }
        Op {
            method,
            path,
            value,
        }
    }

    /// The success answer: `status` with JSON of component `schema`.
    fn answers(mut self, status: u16, schema: &str) -> Op {
        self.value["responses"][status.to_string()] = json!({
            "description": "Done",
            "content": { "application/json": { "schema": schema_ref(schema) } },
        });
        self
    }

    /// The success answer: `status` with a body of `content_type` described by `schema`.
    fn answers_with(mut self, status: u16, content_type: &str, schema: Value) -> Op {
        self.value["responses"][status.to_string()] = json!({
            "description": "Done",
            "content": { content_type: { "schema": schema } },
        });
        self
    }

    /// The success answer: `status`, no body.
    fn answers_empty(mut self, status: u16) -> Op {
        self.value["responses"][status.to_string()] = json!({ "description": "Done" });
        self
    }

    /// More error statuses this operation can answer (all with the error body).
    fn errors(mut self, statuses: &[u16]) -> Op {
        for status in statuses {
            self.value["responses"][status.to_string()] = error_ref();
        }
        self
    }

    /// A query parameter.
    fn query(mut self, name: &str, schema: Value, description: &str) -> Op {
        self.parameter(json!({
            "name": name, "in": "query", "required": false,
            "description": description, "schema": schema,
        }));
        self
    }

    /// A required query parameter.
    fn required_query(mut self, name: &str, schema: Value, description: &str) -> Op {
        self.parameter(json!({
            "name": name, "in": "query", "required": true,
            "description": description, "schema": schema,
        }));
        self
    }

    fn parameter(&mut self, parameter: Value) {
        match self.value["parameters"].as_array_mut() {
            Some(params) => params.push(parameter),
            None => self.value["parameters"] = json!([parameter]),
        }
    }

    /// A JSON body of component `schema` (required unless `optional`); a request without the
    /// JSON content type is answered `415`.
    fn json_body(mut self, schema: &str, presence: Presence) -> Op {
        self.value["requestBody"] = json!({
            "required": presence == Presence::Required,
            "content": { "application/json": { "schema": schema_ref(schema) } },
        });
        self.value["responses"]["415"] = error_ref();
        self
    }

    /// A tar body (`application/x-tar`), streamed to disk before it is read; empty is `400`.
    fn tar_body(mut self, description: &str) -> Op {
        self.value["requestBody"] = json!({
            "required": true,
            "description": description,
            "content": { "application/x-tar": {
                "schema": { "type": "string", "format": "binary", "minLength": 1 } } },
        });
        self.value["responses"]["507"] = error_ref();
        self
    }

    /// A link from the answer of `status` to operation `to`, with its parameters (runtime
    /// expressions such as `$response.body#/id`).
    fn link(mut self, status: u16, name: &str, to: &str, parameters: Value) -> Op {
        self.value["responses"][status.to_string()]["links"][name] = json!({
            "operationId": to,
            "parameters": parameters,
        });
        self
    }

    /// The operation needs no token.
    fn public(mut self) -> Op {
        self.value["security"] = json!([]);
        if let Some(responses) = self.value["responses"].as_object_mut() {
            responses.remove("401");
        }
        self
    }

    /// The operation's description, beyond its summary.
    fn describe(mut self, description: &str) -> Op {
        self.value["description"] = json!(description);
        self
    }
}

/// Whether a body must be sent.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Presence {
    Required,
    Optional,
}

fn schema_ref(name: &str) -> Value {
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

fn error_ref() -> Value {
    json!({ "$ref": "#/components/responses/Error" })
}

/// The path parameters the API has, each with what the server accepts.
fn path_parameter(name: &str) -> Value {
    let (schema, description) = match name {
        "app" => (schema_ref("AppName"), "an app's name"),
        "number" => (
            json!({ "type": "integer", "minimum": 1, "maximum": u64::MAX }),
            "a release number of the app (v1 is 1)",
        ),
        "id" => (
            json!({ "type": "integer", "minimum": 0, "maximum": u64::MAX }),
            "an id the server handed out",
        ),
        "reference" => (
            schema_ref("ImageReference"),
            "an image's digest or one of its tags",
        ),
        "name" => (schema_ref("TokenName"), "a token's name"),
        "secret" => (schema_ref("EnvVarName"), "a secret's name"),
        other => unreachable!("undocumented path parameter {other}"),
    };
    json!({ "name": name, "in": "path", "required": true, "description": description,
            "schema": schema })
}

/// Builds the document.
pub fn document() -> Value {
    let mut paths = Map::new();
    for mut op in operations() {
        let role = crate::roles::ROUTES
            .iter()
            .find(|route| route.method == op.method && route.path == op.path)
            .map(|route| route.need);
        if let Some(need) = role.filter(|need| *need != crate::roles::Need::Public) {
            op.value["x-molt-role"] = json!(need.least_role().map(|role| role.as_str()));
            op.value["responses"]["403"] = error_ref();
            op.value["responses"]["429"] = json!({
                "description": "Too many failed authentications from this address",
                "headers": { "Retry-After": { "description": "seconds to wait",
                    "schema": { "type": "integer", "minimum": 1 } } },
                "content": { "application/json": { "schema": schema_ref("Error") } } });
        }
        let entry = paths
            .entry(op.path.to_string())
            .or_insert_with(|| json!({}));
        entry[op.method] = op.value;
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "molt API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Control plane of molt: immutable releases, environments, atomic \
                swaps. Every error is answered with the `Error` body. Bodies are JSON unless \
                an operation says otherwise (`application/x-tar` uploads and exports, \
                Prometheus text, newline-delimited JSON for a router's stream)."
        },
        "servers": [{ "url": "http://127.0.0.1:7070" }],
        "security": [{ "token": [] }],
        "paths": paths,
        "components": {
            "securitySchemes": { "token": { "type": "http", "scheme": "bearer",
                "description": "A token's secret. Each operation names the least role it needs \
                    (x-molt-role): read < deploy < admin, and router for the fleet's endpoints \
                    (admin too). molt serve makes the token `admin` from <data dir>/admin.token \
                    and `router` from <data dir>/router.token; POST /v1/tokens makes more. A \
                    missing, unknown, revoked or expired token is answered 401, a token \
                    without the role 403, too many failures from one address 429." } },
            "responses": { "Error": {
                "description": "An error: what went wrong, in words, and its kind",
                "content": { "application/json": { "schema": schema_ref("Error") } } } },
            "schemas": schemas::all(),
        }
    })
}

#[cfg(test)]
mod tests;
