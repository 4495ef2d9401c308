//! The schemas of the document: names and references with the rules the server parses them
//! by (molt-core's `AppName`, `ImageTag`, `Digest`, `EnvVarName`), the request bodies the
//! handlers read, and the records molt-wire sends.

use serde_json::{json, Value};

/// An unsigned integer field (`u64`, `u32`).
fn uint() -> Value {
    json!({ "type": "integer", "minimum": 0, "maximum": u64::MAX })
}

/// A field that may be `null`.
fn nullable(schema: Value) -> Value {
    json!({ "anyOf": [schema, { "type": "null" }] })
}

fn r(name: &str) -> Value {
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

fn string() -> Value {
    json!({ "type": "string" })
}

fn strings() -> Value {
    json!({ "type": "array", "items": { "type": "string" } })
}

/// An object with these required properties (every field the server always sends) and
/// these optional ones.
fn record(required: &[(&str, Value)], optional: &[(&str, Value)]) -> Value {
    let mut properties = serde_json::Map::new();
    for (name, schema) in required.iter().chain(optional) {
        properties.insert((*name).to_owned(), schema.clone());
    }
    let names: Vec<&str> = required.iter().map(|(name, _)| *name).collect();
    json!({ "type": "object", "required": names, "properties": properties })
}

/// Every schema, by name.
pub fn all() -> Value {
    let mut schemas = names();
    let merge = |schemas: &mut Value, more: Value| {
        if let (Some(into), Value::Object(more)) = (schemas.as_object_mut(), more) {
            into.extend(more);
        }
    };
    merge(&mut schemas, bodies());
    merge(&mut schemas, records());
    merge(&mut schemas, views());
    merge(&mut schemas, super::access::schemas());
    schemas
}

/// Names and references, as the server parses them.
fn names() -> Value {
    json!({
        "AppName": { "type": "string", "pattern": "^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$",
            "description": "1 to 63 lowercase letters, digits and '-', starting with a letter, \
                not ending with '-'", "example": "hello" },
        "Digest": { "type": "string", "pattern": "^(sha256:)?[0-9a-f]{64}$",
            "description": "sha256:<64 lowercase hex characters> (the prefix may be left out)" },
        "ImageTag": { "type": "string", "pattern": "^[a-z0-9][a-z0-9._:/-]{0,127}$",
            "not": { "pattern": "^(sha256:|[0-9a-f]{64}$)" },
            "description": "1 to 128 lowercase letters, digits and . _ - : /, starting with a \
                letter or digit, and not reading as a digest", "example": "shop:42" },
        "ImageReference": { "anyOf": [r("Digest"), r("ImageTag")],
            "description": "an image's digest, or one of its tags" },
        "EnvVarName": { "type": "string", "pattern": "^[A-Za-z_][A-Za-z0-9_]*$",
            "description": "letters, digits and '_', not starting with a digit" },
        "Id": { "type": "string", "minLength": 1, "maxLength": 256,
            "description": "an environment's or an instance's id, as the server handed it out" },
        "Actor": { "type": "string",
            "description": "ignored (kept for older clients): changes are recorded for the \
                authenticated token's name" },
        "Commit": { "type": "string", "pattern": "^[0-9a-fA-F]{1,64}$",
            "description": "a hex git object id" },
        "RouterName": { "type": "string", "pattern": "^[A-Za-z0-9._-]{1,128}$" },
        "ImportFormat": { "type": "string", "enum": ["auto", "tree", "oci", "docker"],
            "default": "auto" },
        "ArchiveFormat": { "type": "string", "enum": ["oci", "docker"], "default": "oci" },
        "DeployState": { "type": "string", "enum": [
            "pending", "env_created", "instances_started", "healthy", "shadowing", "canarying",
            "promoted", "swapped", "drained", "succeeded", "failed", "rolled_back",
            "superseded", "abandoned", "aborted"] },
        "Error": record(
            &[("error", json!({ "type": "string", "description": "what went wrong, in words" })),
              ("kind", json!({ "type": "string", "enum": [
                  "invalid", "unauthorized", "forbidden", "rate_limited", "not_found", "method_not_allowed", "conflict",
                  "too_large", "unsupported_media_type", "disk_full", "unavailable",
                  "registry", "internal"] }))],
            &[]),
    })
}

/// The request bodies.
fn bodies() -> Value {
    json!({
        "DeployRequest": {
            "type": "object",
            "description": "either an image with the text of its molt.toml (a new release), or \
                an existing release number (redeployed)",
            "properties": {
                "image": nullable(r("ImageReference")),
                "manifest": nullable(json!({ "type": "string", "description": "the text of \
                    molt.toml; its name must be the app's" })),
                "release": nullable(json!({ "type": "integer", "minimum": 1,
                    "maximum": u64::MAX })),
                "from": nullable(json!({ "type": "string",
                    "pattern": "^[a-z]([a-z0-9-]{0,61}[a-z0-9])?(@v[0-9]{1,19})?$",
                    "description": "APP or APP@vN: deploy that release's exact image with this \
                        manifest (promotion across stages)" })),
                "shadow": { "type": ["integer", "null"], "minimum": 1, "maximum": 100,
                    "description": "percent of GET/HEAD/OPTIONS mirrored to the new \
                        environment once healthy, instead of swapping (state shadowing) until \
                        POST …/promote or …/abandon; needs a routed environment (else 409)" } },
            "oneOf": [
                { "required": ["release"], "properties": { "release": { "type": "integer" } },
                  "not": { "anyOf": [
                      { "required": ["manifest"], "properties": { "manifest": { "type": "string" } } },
                      { "required": ["image"], "properties": { "image": { "type": "string" } } },
                      { "required": ["from"], "properties": { "from": { "type": "string" } } } ] } },
                { "required": ["image", "manifest"],
                  "properties": { "image": { "type": "string" }, "manifest": { "type": "string" } },
                  "not": { "anyOf": [
                      { "required": ["release"], "properties": { "release": { "type": "integer" } } },
                      { "required": ["from"], "properties": { "from": { "type": "string" } } } ] } },
                { "required": ["from", "manifest"],
                  "properties": { "from": { "type": "string" }, "manifest": { "type": "string" } },
                  "not": { "anyOf": [
                      { "required": ["release"], "properties": { "release": { "type": "integer" } } },
                      { "required": ["image"], "properties": { "image": { "type": "string" } } } ] } } ] },
        "Swap": { "type": "object", "required": ["env"], "properties": { "env": r("Id") } },
        "Rollback": { "type": "object", "properties": {
            "to": { "type": ["integer", "null"], "minimum": 0, "maximum": u64::MAX,
                "description": "the release to go back to (default: the previous one)" } } },
        "Config": {
            "type": "object",
            "properties": {
                "set": { "type": "object", "propertyNames": r("EnvVarName"),
                    "additionalProperties": { "type": "string" } },
                "unset": { "type": "array", "items": r("EnvVarName") } },
            "anyOf": [
                { "required": ["set"], "properties": { "set": { "minProperties": 1 } } },
                { "required": ["unset"], "properties": { "unset": { "minItems": 1 } } } ],
            "description": "at least one variable to set or unset" },
        "Pin": { "type": "object", "required": ["pinned"],
            "properties": { "pinned": { "type": "boolean" } } },
        "Gc": { "type": "object", "properties": {
            "dry_run": { "type": "boolean", "default": false } } },
        "Push": { "type": "object", "required": ["target"], "properties": {
            "target": { "type": "string", "description": "host[:port]/repository:tag" },
            "mount_from": { "type": ["string", "null"],
                "description": "repository on the same registry to mount blobs from" },
            "username": nullable(string()), "password": nullable(string()) } },
        "Pull": { "type": "object", "required": ["source"], "properties": {
            "source": { "type": "string",
                "description": "host[:port]/repository:tag or …@sha256:…" },
            "tag": nullable(r("ImageTag")), "force": { "type": "boolean" },
            "actor": nullable(r("Actor")),
            "username": nullable(string()), "password": nullable(string()) } },
        "Tag": { "type": "object", "required": ["tag"], "properties": {
            "tag": r("ImageTag"),
            "force": { "type": "boolean", "default": false,
                "description": "move a tag that names another image" },
            "actor": nullable(r("Actor")) } },
        "Verify": { "type": "object", "additionalProperties": false, "properties": {
            "app": nullable(r("AppName")) } },
        "Maintenance": { "type": "object", "required": ["enabled"], "properties": {
            "enabled": { "type": "boolean" },
            "message": { "type": ["string", "null"], "description": "shown to clients" },
            "retry_after": { "type": ["integer", "null"], "minimum": 0, "maximum": u32::MAX,
                "description": "seconds, default 120" } } },
        "Scale": { "type": "object", "additionalProperties": false, "properties": {
            "instances": { "type": ["integer", "null"], "minimum": 0, "maximum": 1000,
                "description": "the live environment's count now" },
            "min": { "type": ["integer", "null"], "minimum": 0, "maximum": 1000,
                "description": "fewest instances the autoscaler keeps (0: to zero when idle)" },
            "max": { "type": ["integer", "null"], "minimum": 1, "maximum": 1000 },
            "reset": { "type": "boolean", "default": false,
                "description": "forget bounds set earlier; not with min or max" },
            "actor": nullable(r("Actor")) },
            "description": "a count, bounds (min <= max), or reset: at least one" },
        "Shadow": { "type": "object", "properties": {
            "env": nullable(r("Id")),
            "share": { "type": ["integer", "null"], "minimum": 1, "maximum": 100,
                "description": "percent, default 10" } },
            "description": "env null (or absent) stops shadow traffic" },
        "Ack": record(&[("router", string()), ("generation", uint()), ("version", uint())], &[]),
        "RouterReport": record(
            &[("router", string()), ("generation", uint()), ("version", uint()),
              ("envs", json!({ "type": "object", "additionalProperties": record(&[
                  ("accepted", uint()), ("in_flight", uint()), ("answered", uint()),
                  ("failed", uint())], &[]) }))],
            &[]),
        "ProbeReport": record(&[("router", string())], &[
            ("status", json!({ "type": ["integer", "null"], "minimum": 0,
                "maximum": u16::MAX, "description": "what the instance answered" })),
            ("error", json!({ "type": ["string", "null"],
                "description": "why it did not answer" }))]),
    })
}

/// The store's records.
fn records() -> Value {
    let ms = uint;
    json!({
        "App": record(
            &[("name", string()), ("created_ms", ms()), ("routed_env", nullable(string()))],
            &[("maintenance", nullable(record(
                  &[("message", string()), ("retry_after_secs", uint())], &[]))),
              ("shadow", nullable(r("ShadowMode"))),
              ("scale", record(&[("min", uint()), ("max", uint())], &[]))]),
        "ShadowMode": record(&[("env", string()), ("share_percent", uint())], &[]),
        "Image": record(
            &[("digest", string()), ("size", uint()), ("created_ms", ms()), ("tags", strings())],
            &[]),
        "Release": record(
            &[("app", string()), ("number", uint()), ("image", string()),
              ("config", json!({ "type": "object" })), ("created_ms", ms()),
              ("pinned", json!({ "type": "boolean" })), ("note", string())],
            &[]),
        "Env": record(
            &[("id", string()), ("app", string()), ("release", uint()),
              ("state", json!({ "type": "string", "enum": ["starting", "ready", "retired"] })),
              ("created_ms", ms()), ("warm_until_ms", nullable(uint())),
              ("retired_ms", nullable(uint())), ("instances", nullable(uint()))],
            &[]),
        "Instance": record(
            &[("id", string()), ("env", string()), ("app", string()),
              ("state", json!({ "type": "string", "enum": [
                  "starting", "healthy", "unhealthy", "drifted", "stopping", "stopped"] })),
              ("pid", nullable(uint())), ("start_time", nullable(uint())), ("host", string()),
              ("port", uint()), ("started_ms", ms()), ("exit", nullable(string()))],
            &[]),
        "Deployment": record(
            &[("id", uint()), ("app", string()), ("release", uint()),
              ("env", nullable(string())), ("prev_env", nullable(string())),
              ("state", r("DeployState")), ("created_ms", ms()), ("updated_ms", ms()),
              ("error", nullable(string())),
              ("figures", nullable(json!({ "type": "object" })))],
            &[("shadow_share", nullable(uint())),
              ("shadow", nullable(json!({ "type": "object" })))]),
        "JournalEntry": record(
            &[("at_ms", ms()), ("state", r("DeployState")), ("detail", string())], &[]),
        "Event": record(
            &[("id", uint()), ("app", string()), ("at_ms", ms()), ("kind", string()),
              ("message", string())],
            &[]),
        "TagEvent": record(
            &[("seq", uint()), ("tag", string()), ("change", string()),
              ("old_digest", nullable(string())), ("new_digest", nullable(string())),
              ("actor", string()), ("at_ms", ms())],
            &[]),
        "TrafficSummary": record(
            &[("env", string()), ("requests", uint()),
              ("classes", json!({ "type": "object", "additionalProperties": uint() })),
              ("failed", uint()), ("mean_ms", json!({ "type": "number" })),
              ("p50_ms", nullable(json!({ "type": "number" }))),
              ("p99_ms", nullable(json!({ "type": "number" })))],
            &[]),
    })
}

/// The controller's and the server's answers.
fn views() -> Value {
    let object = || json!({ "type": "object" });
    json!({
        "Health": record(&[("ok", json!({ "type": "boolean" })), ("version", string())], &[]),
        "Status": record(&[("isolation", string()),
            ("apps", json!({ "type": "array", "items": r("AppStatus") }))], &[]),
        "AppStatus": record(
            &[("app", r("App")), ("serving", nullable(r("Release"))), ("hostnames", strings()),
              ("envs", json!({ "type": "array", "items": r("EnvStatus") })),
              ("last_deployment", nullable(r("Deployment")))],
            &[("scaling", object())]),
        "EnvStatus": record(
            &[("env", r("Env")), ("routed", json!({ "type": "boolean" })),
              ("instances", json!({ "type": "array", "items": r("Instance") })),
              ("requests", uint()), ("in_flight", uint()), ("failed", uint()),
              ("desired", uint())],
            &[("attestation", object())]),
        "ScaleOutcome": record(
            &[("app", string()), ("env", string()), ("from", uint()), ("to", uint()),
              ("autoscaling", nullable(object()))],
            &[]),
        "ShadowReport": record(
            &[("app", string()), ("mode", nullable(r("ShadowMode"))),
              ("live", nullable(r("TrafficSummary"))), ("shadow", nullable(r("TrafficSummary")))],
            &[]),
        "SwapOutcome": record(
            &[("app", string()), ("from", nullable(string())), ("to", string()),
              ("release", uint()), ("elapsed_us", uint())],
            &[]),
        "RollbackOutcome": record(
            &[("kind", string()), ("release", uint()), ("swap", nullable(r("SwapOutcome"))),
              ("deployment", nullable(r("Deployment")))],
            &[]),
        "GcReport": record(
            &[("dry_run", json!({ "type": "boolean" })), ("envs", strings()),
              ("images", strings()), ("orphans", strings()),
              ("kept", json!({ "type": "object", "additionalProperties": string() }))],
            &[("store", object())]),
        "VerifyReport": record(
            &[("image", string()), ("rootfs_digest", string()),
              ("intact", json!({ "type": "boolean" })), ("drift", nullable(string())),
              ("envs", strings()), ("replaced", strings())],
            &[]),
        "DeploymentJournal": record(
            &[("deployment", r("Deployment")),
              ("journal", json!({ "type": "array", "items": r("JournalEntry") }))],
            &[]),
        "ReleaseConfig": record(
            &[("env", json!({ "type": "object", "additionalProperties": string() })),
              ("release", uint())],
            &[("secrets", json!({ "type": "object", "additionalProperties": uint(),
                  "description": "secret names and versions (never values)" }))]),
        "PinOutcome": record(
            &[("app", string()), ("pinned", json!({ "type": "boolean" })), ("release", uint())],
            &[]),
        "InstanceLog": record(&[("instance", string()), ("log", string())], &[]),
        "ImportOutcome": { "allOf": [r("Image"), record(
            &[("format", string()), ("files", uint()), ("moved_from", nullable(string())),
              ("signatures", uint())],
            &[])] },
        "ImageInspect": { "allOf": [r("Image"), record(
            &[("details", object()),
              ("releases", json!({ "type": "array", "items": object() })),
              ("tag_history", json!({ "type": "array", "items": r("TagEvent") }))],
            &[])] },
        "TagOutcome": record(
            &[("tag", string()), ("digest", string()), ("moved_from", nullable(string()))], &[]),
        "RemoveOutcome": record(
            &[("digest", string()), ("tags", strings()),
              ("orphaned_releases", json!({ "type": "array", "items": object() }))],
            &[]),
        "ImageDiff": record(
            &[("added", strings()), ("removed", strings()), ("changed", strings())], &[]),
        "BakeReport": record(
            &[("digest", string()), ("inputs", string()), ("base", nullable(string())),
              ("steps", json!({ "type": "array", "items": object() })), ("files", uint()),
              ("size", uint()), ("millis", uint())],
            &[]),
        "PushReport": record(
            &[("reference", string()), ("digest", string()), ("uploaded", uint()),
              ("mounted", uint()), ("present", uint()), ("streamed", uint()),
              ("bytes", uint()), ("signatures", uint())],
            &[]),
        "TlsCertificates": record(
            &[("hostnames", strings()), ("reloadable", json!({ "type": "boolean" }))], &[]),
        "TlsReload": record(&[("errors", strings()), ("hostnames", strings())], &[]),
        "ClusterStatus": record(
            &[("routers", r("FleetStatus")), ("provider", string())],
            &[("engine", nullable(object()))]),
        "FleetStatus": record(
            &[("version", uint()),
              ("routers", json!({ "type": "array", "items": object() }))],
            &[]),
    })
}
