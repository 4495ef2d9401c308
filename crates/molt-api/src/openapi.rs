//! The OpenAPI 3.1 document served at `/openapi.json`, kept next to the routes it describes.

use serde_json::{json, Map, Value};

/// Every API operation: (method, path in OpenAPI syntax, summary, request body schema name).
pub const PATHS: &[(&str, &str, &str, Option<&str>)] = &[
    ("get", "/v1/health", "Liveness; no token needed", None),
    (
        "get",
        "/v1/status",
        "Apps, what serves, environments and instances",
        None,
    ),
    ("get", "/v1/apps", "Every app with its status", None),
    ("get", "/v1/apps/{app}", "One app's status", None),
    (
        "get",
        "/v1/apps/{app}/releases",
        "Releases, newest first",
        None,
    ),
    (
        "post",
        "/v1/apps/{app}/releases/{number}/pin",
        "Pin or unpin a release",
        Some("Pin"),
    ),
    (
        "get",
        "/v1/apps/{app}/envs",
        "Live environments (?all=true adds retired ones)",
        None,
    ),
    (
        "get",
        "/v1/apps/{app}/deployments",
        "Deployments, newest first",
        None,
    ),
    (
        "post",
        "/v1/apps/{app}/deployments",
        "Deploy an image with a manifest, or an existing release (with shadow: mirror to it \
         instead of swapping, until promoted or abandoned)",
        Some("DeployRequest"),
    ),
    (
        "post",
        "/v1/apps/{app}/swap",
        "Point the route at a ready environment",
        Some("Swap"),
    ),
    (
        "post",
        "/v1/apps/{app}/rollback",
        "Swap back to a warm environment (or redeploy, cold)",
        Some("Rollback"),
    ),
    (
        "get",
        "/v1/apps/{app}/config",
        "Environment variables of the newest release",
        None,
    ),
    (
        "post",
        "/v1/apps/{app}/config",
        "Set or unset variables: makes and deploys a new release",
        Some("Config"),
    ),
    (
        "get",
        "/v1/apps/{app}/logs",
        "Last lines of each live instance's output",
        None,
    ),
    ("get", "/v1/apps/{app}/events", "The app's history", None),
    (
        "post",
        "/v1/apps/{app}/maintenance",
        "Maintenance mode on or off: the app's hostnames answer 503 with Retry-After",
        Some("Maintenance"),
    ),
    (
        "post",
        "/v1/apps/{app}/scale",
        "Set the live environment's instance count and/or the app's autoscaling bounds: no new \
         release, no swap; leaving instances are drained first",
        Some("Scale"),
    ),
    (
        "post",
        "/v1/apps/{app}/shadow",
        "Mirror a share of idempotent requests to one of the app's ready environments, or stop (env null)",
        Some("Shadow"),
    ),
    (
        "get",
        "/v1/apps/{app}/shadow",
        "Live and shadow traffic side by side: status classes, mean and bucketed p50/p99 latency",
        None,
    ),
    (
        "post",
        "/v1/apps/{app}/promote",
        "Promote the app's shadowing deployment: it swaps, drains and watches like any \
         deployment; the live/shadow comparison is recorded on it",
        None,
    ),
    ("post", "/v1/apps/{app}/abort", "Abort the app's canary deployment: weight 0 at once, its environment retired", None),
    (
        "post",
        "/v1/apps/{app}/abandon",
        "Abandon the app's shadowing deployment: its environment is retired, the route never \
         moved; the live/shadow comparison is recorded on it",
        None,
    ),
    (
        "get",
        "/v1/deployments/{id}",
        "A deployment with its journal",
        None,
    ),
    ("get", "/v1/images", "Stored images", None),
    (
        "post",
        "/v1/images",
        "Import a tree tar, OCI or Docker archive (?tag=shop:42&force=false&format=auto|tree|oci|docker&reference=…&actor=…)",
        Some("Tar"),
    ),
    (
        "get",
        "/v1/images/{reference}",
        "Inspect an image (digest or tag): config, layers, sizes, annotations, tags, releases using it",
        None,
    ),
    (
        "delete",
        "/v1/images/{reference}",
        "Remove an image, its tags and blobs; refused while a kept release uses it",
        None,
    ),
    (
        "get",
        "/v1/images/{reference}/history",
        "Tag history of an image (digest) or of a tag",
        None,
    ),
    (
        "post",
        "/v1/images/{reference}/tags",
        "Tag an image; moving a tag needs force and is recorded",
        Some("Tag"),
    ),
    (
        "get",
        "/v1/images/{reference}/export",
        "Stream the image as an archive (?format=oci|docker&name=tag)",
        None,
    ),
    ("get", "/v1/tags/history", "Every tag change", None),
    (
        "post",
        "/v1/images/{reference}/push",
        "Push an image to a registry (chunked uploads, cross-repository mount with mount_from)",
        Some("Push"),
    ),
    (
        "post",
        "/v1/images/pull",
        "Pull an image from a registry, optionally tagging it",
        Some("Pull"),
    ),
    (
        "post",
        "/v1/images/gc",
        "Collect unkept images and sweep unreferenced blobs and rootfs dirs (dry_run to preview)",
        Some("Gc"),
    ),
    (
        "post",
        "/v1/bake",
        "Bake the [build] of a build context (tar body of the app folder; ?commit=&dirty=&source_date_epoch=&tag=)",
        Some("Tar"),
    ),
    (
        "get",
        "/v1/images/diff",
        "Files added, removed and changed from image ?a= to image ?b=",
        None,
    ),
    (
        "post",
        "/v1/gc",
        "Collect unreachable environments and images (dry_run to preview)",
        Some("Gc"),
    ),
    (
        "get",
        "/v1/cluster",
        "The routers of the fleet (version applied, lag, fenced) and the engine's nodes",
        None,
    ),
    (
        "get",
        "/v1/fleet/stream",
        "A router's stream of route tables, probes and pings (newline-delimited JSON; router token)",
        None,
    ),
    (
        "post",
        "/v1/fleet/acks",
        "A router applied a version of the route table (router token)",
        Some("Ack"),
    ),
    (
        "post",
        "/v1/fleet/reports",
        "A router's counters per environment (router token)",
        Some("RouterReport"),
    ),
    (
        "post",
        "/v1/fleet/probes/{id}",
        "The result of a health check a router ran for the control plane (router token)",
        Some("ProbeReport"),
    ),
    (
        "get",
        "/v1/fleet/status",
        "The fleet's routers and the version in force (router token)",
        None,
    ),
    (
        "get",
        "/v1/tls",
        "Hostnames the TLS listener has certificates for",
        None,
    ),
    (
        "post",
        "/v1/tls/reload",
        "Reload TLS certificates from --tls-cert-dir now (bad files keep the old certificate)",
        None,
    ),
    (
        "post",
        "/v1/verify",
        "Verify the unpacked image trees of live environments (one app or all); drifted trees \
         are re-unpacked and their instances replaced",
        Some("Verify"),
    ),
];

/// Builds the document.
pub fn document() -> Value {
    let mut paths = Map::new();
    for (method, path, summary, body) in PATHS {
        let mut op = json!({
            "summary": summary,
            "responses": {
                "200": { "description": "OK" },
                "400": { "$ref": "#/components/responses/Error" },
                "401": { "$ref": "#/components/responses/Error" },
                "404": { "$ref": "#/components/responses/Error" },
                "409": { "$ref": "#/components/responses/Error" }
            }
        });
        if *path == "/v1/health" {
            op["security"] = json!([]);
        }
        let params: Vec<Value> = path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{')?.strip_suffix('}'))
            .map(|name| json!({ "name": name, "in": "path", "required": true, "schema": { "type": "string" } }))
            .collect();
        if !params.is_empty() {
            op["parameters"] = Value::Array(params);
        }
        if let Some(schema) = body {
            let content = if *schema == "Tar" {
                json!({ "application/x-tar": { "schema": { "type": "string", "format": "binary" } } })
            } else {
                json!({ "application/json": { "schema": { "$ref": format!("#/components/schemas/{schema}") } } })
            };
            op["requestBody"] = json!({ "required": true, "content": content });
        }
        let entry = paths.entry(path.to_string()).or_insert_with(|| json!({}));
        entry[*method] = op;
    }
    let mut document = json!({
        "openapi": "3.1.0",
        "info": { "title": "molt API", "version": env!("CARGO_PKG_VERSION"),
                  "description": "Control plane of molt: immutable releases, environments, atomic swaps." },
        "servers": [{ "url": "http://127.0.0.1:7070" }],
        "security": [{ "token": [] }],
        "paths": paths,
        "components": {
            "securitySchemes": { "token": { "type": "http", "scheme": "bearer",
                "description": "The admin token molt serve writes to <data dir>/admin.token; the fleet's endpoints also take the router token (<data dir>/router.token)" } },
            "responses": { "Error": { "description": "An error", "content": { "application/json": {
                "schema": { "type": "object", "required": ["error", "kind"], "properties": {
                    "error": { "type": "string" }, "kind": { "type": "string" } } } } } } },
            "schemas": {
                "DeployRequest": { "type": "object", "properties": {
                    "image": { "type": "string", "description": "digest or tag" },
                    "manifest": { "type": "string", "description": "text of molt.toml" },
                    "release": { "type": "integer", "description": "redeploy this release" },
                    "from": { "type": "string", "description": "APP or APP@vN: deploy that release's exact image with this manifest (promotion across stages)" },
                    "shadow": { "type": "integer", "minimum": 1, "maximum": 100,
                        "description": "percent of GET/HEAD/OPTIONS mirrored to the new environment once healthy, instead of swapping (state shadowing) until POST …/promote or …/abandon; needs a routed environment" } } },
                "Swap": { "type": "object", "required": ["env"], "properties": { "env": { "type": "string" } } },
                "Rollback": { "type": "object", "properties": { "to": { "type": "integer" } } },
                "Config": { "type": "object", "properties": {
                    "set": { "type": "object", "additionalProperties": { "type": "string" } },
                    "unset": { "type": "array", "items": { "type": "string" } } } },
                "Pin": { "type": "object", "required": ["pinned"], "properties": { "pinned": { "type": "boolean" } } },
                "Gc": { "type": "object", "properties": { "dry_run": { "type": "boolean" } } },
                "Push": { "type": "object", "required": ["target"], "properties": {
                    "target": { "type": "string", "description": "host[:port]/repository:tag" },
                    "mount_from": { "type": "string", "description": "repository on the same registry to mount blobs from" },
                    "username": { "type": "string" }, "password": { "type": "string" } } },
                "Pull": { "type": "object", "required": ["source"], "properties": {
                    "source": { "type": "string", "description": "host[:port]/repository:tag or @sha256:…" },
                    "tag": { "type": "string" }, "force": { "type": "boolean" }, "actor": { "type": "string" },
                    "username": { "type": "string" }, "password": { "type": "string" } } },
                "Tag": { "type": "object", "required": ["tag"], "properties": {
                    "tag": { "type": "string", "description": "e.g. shop:42" },
                    "force": { "type": "boolean", "description": "move a tag that names another image" },
                    "actor": { "type": "string", "description": "who, for the tag history" } } },
                "Verify": { "type": "object", "properties": { "app": { "type": "string" } } },
                "Maintenance": { "type": "object", "required": ["enabled"], "properties": {
                    "enabled": { "type": "boolean" },
                    "message": { "type": "string" },
                    "retry_after": { "type": "integer", "description": "seconds, default 120" } } },
                "Shadow": { "type": "object", "properties": {
                    "env": { "type": ["string", "null"], "description": "environment to mirror to; null stops" },
                    "share": { "type": "integer", "description": "percent 1-100, default 10" } } },
                "Ack": { "type": "object", "required": ["router", "generation", "version"], "properties": {
                    "router": { "type": "string" },
                    "generation": { "type": "integer", "description": "of the table event applied" },
                    "version": { "type": "integer" } } },
                "RouterReport": { "type": "object", "required": ["router", "generation", "version", "envs"], "properties": {
                    "router": { "type": "string" }, "generation": { "type": "integer" }, "version": { "type": "integer" },
                    "envs": { "type": "object", "additionalProperties": { "type": "object", "properties": {
                        "accepted": { "type": "integer" }, "in_flight": { "type": "integer" },
                        "answered": { "type": "integer" }, "failed": { "type": "integer" } } } } } },
                "ProbeReport": { "type": "object", "required": ["router"], "properties": {
                    "router": { "type": "string" },
                    "status": { "type": "integer", "description": "what the instance answered" },
                    "error": { "type": "string", "description": "why it did not answer" } } }
            }
        }
    });
    document["components"]["schemas"]["Scale"] = scale_schema();
    document
}

/// `POST /v1/apps/{app}/scale`'s body.
fn scale_schema() -> Value {
    json!({ "type": "object", "additionalProperties": false, "properties": {
        "instances": { "type": "integer", "minimum": 0, "maximum": 1000,
            "description": "the live environment's count now" },
        "min": { "type": "integer", "minimum": 0, "maximum": 1000,
            "description": "fewest instances the autoscaler keeps (0: scale to zero when idle)" },
        "max": { "type": "integer", "minimum": 1, "maximum": 1000 },
        "reset": { "type": "boolean", "description": "forget bounds set earlier" },
        "actor": { "type": "string", "description": "who, for the history" } } })
}
