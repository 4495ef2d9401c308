//! The operations and records of access: tokens and the audit trail.

use serde_json::{json, Value};

use super::{schema_ref, Op, Presence};

/// The token, audit and secret operations.
pub fn operations() -> Vec<Op> {
    vec![
        Op::new(
            "get",
            "/v1/apps/{app}/secrets",
            "listSecrets",
            "The app's secrets: names, versions, who set them and when; never values",
        )
        .answers_with(
            200,
            "application/json",
            json!({ "type": "array", "items": schema_ref("Secret") }),
        ),
        Op::new(
            "post",
            "/v1/apps/{app}/secrets",
            "setSecret",
            "Set a secret (a new version, encrypted at rest) and deploy a release naming it",
        )
        .describe(
            "The value is in this request and nowhere else: answers, history and releases \
             name the version only. Without a release yet, the app's first deployment gets it.",
        )
        .json_body("SecretValue", Presence::Required)
        .answers(200, "SecretOutcome")
        .errors(&[409]),
        Op::new(
            "delete",
            "/v1/apps/{app}/secrets/{secret}",
            "removeSecret",
            "Remove a secret and deploy a release without it",
        )
        .answers(200, "SecretOutcome")
        .errors(&[409]),
        Op::new(
            "get",
            "/v1/tokens",
            "listTokens",
            "Every token, revoked ones included",
        )
        .describe("Never a secret nor its hash.")
        .answers_with(
            200,
            "application/json",
            json!({ "type": "array", "items": schema_ref("Token") }),
        ),
        Op::new("post", "/v1/tokens", "createToken", "Make a token")
            .describe(
                "The answer holds the token's secret: the only time it is shown (molt keeps its \
                 SHA-256).",
            )
            .json_body("TokenRequest", Presence::Required)
            .answers(201, "TokenCreated")
            .errors(&[409]),
        Op::new(
            "delete",
            "/v1/tokens/{name}",
            "revokeToken",
            "Revoke a token: it stops working at once",
        )
        .describe("A token cannot revoke itself.")
        .answers(200, "Token")
        .errors(&[409]),
        Op::new(
            "get",
            "/v1/images/{reference}/signatures",
            "listImageSignatures",
            "The image's Ed25519 signatures",
        )
        .answers_with(
            200,
            "application/json",
            json!({ "type": "array", "items": schema_ref("ImageSignature") }),
        ),
        Op::new(
            "post",
            "/v1/images/{reference}/signatures",
            "signImage",
            "Keep a signature of the image (checked first)",
        )
        .describe(
            "The signature is Ed25519 over `molt image signature v1`, a NUL byte and the \
             image's digest (`sha256:<hex>`); `molt images sign` makes it with a key that never \
             leaves the client.",
        )
        .json_body("SignatureBody", Presence::Required)
        .answers(201, "ImageSignature"),
        Op::new(
            "get",
            "/v1/audit",
            "listAudit",
            "The newest mutating calls: who, from where, what, and how it was answered",
        )
        .query("app", schema_ref("AppName"), "only this app's")
        .query(
            "limit",
            json!({ "type": "integer", "minimum": 0, "maximum": u64::MAX, "default": 100 }),
            "how many (at most 10000)",
        )
        .answers_with(
            200,
            "application/json",
            json!({ "type": "array", "items": schema_ref("AuditEntry") }),
        ),
    ]
}

/// The schemas of tokens and audit entries.
pub fn schemas() -> Value {
    let uint = json!({ "type": "integer", "minimum": 0 });
    let nullable_uint = json!({ "type": ["integer", "null"], "minimum": 0 });
    let string = json!({ "type": "string" });
    json!({
        "SecretValue": { "oneOf": [
            { "type": "object", "additionalProperties": false,
                "required": ["name", "value"], "properties": {
                    "name": schema_ref("EnvVarName"),
                    "value": { "type": "string", "minLength": 1, "maxLength": 65536,
                        "pattern": "^[^\\u0000]*$",
                        "description": "the value (UTF-8, no NUL); never sent back" },
                    "delivery": schema_ref("SecretDelivery") } },
            { "type": "object", "additionalProperties": false,
                "required": ["name", "value_base64", "delivery"], "properties": {
                    "name": schema_ref("EnvVarName"),
                    "value_base64": { "type": "string", "minLength": 4, "maxLength": 87380,
                        "pattern": "^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$",
                        "description": "the value as standard base64, any bytes (a file \
                            only); never sent back" },
                    "delivery": { "const": "file" } } } ] },
        "SecretDelivery": { "type": "string", "enum": ["env", "file"], "default": "env",
            "description": "env: an environment variable of the secret's name; file: \
                /run/secrets/NAME in a container ($MOLT_SECRETS_DIR/NAME everywhere), 0400, \
                on a tmpfs" },
        "Secret": { "type": "object",
            "required": ["app", "name", "version", "created_ms", "created_by", "delivery"],
            "properties": { "app": string, "name": string,
                "version": { "type": "integer", "minimum": 1 },
                "created_ms": uint, "created_by": string,
                "delivery": schema_ref("SecretDelivery") } },
        "SecretOutcome": { "type": "object", "required": ["secret", "removed", "deployment"],
            "properties": { "secret": schema_ref("Secret"), "removed": { "type": "boolean" },
                "deployment": { "anyOf": [schema_ref("Deployment"), { "type": "null" }] } } },
        "SignatureBody": { "type": "object", "additionalProperties": false,
            "required": ["public_key", "signature"], "properties": {
                "public_key": { "type": "string", "pattern": "^[0-9a-fA-F]{64}$" },
                "signature": { "type": "string", "pattern": "^[0-9a-fA-F]{128}$" } } },
        "ImageSignature": { "type": "object",
            "required": ["digest", "public_key", "signature", "created_ms", "created_by"],
            "properties": { "digest": string, "public_key": string, "signature": string,
                "created_ms": uint, "created_by": string } },
        "Role": { "type": "string", "enum": ["read", "deploy", "admin", "router"],
            "description": "read: GET only; deploy: read, plus deploys and the changes of its \
                apps and image uploads; admin: everything; router: the fleet's endpoints" },
        "TokenName": { "type": "string", "pattern": "^[A-Za-z0-9._-]{1,64}$",
            "description": "1 to 64 letters, digits, '-', '_' and '.'" },
        "TokenRequest": { "type": "object", "additionalProperties": false,
            "required": ["name", "role"], "properties": {
                "name": schema_ref("TokenName"),
                "role": schema_ref("Role"),
                "apps": { "anyOf": [
                    { "type": "array", "items": schema_ref("AppName"), "minItems": 1 },
                    { "type": "null" }],
                    "description": "limit the token to these apps" },
                "expires_in_secs": { "type": ["integer", "null"], "minimum": 1,
                    "maximum": 315_360_000_u64,
                    "description": "the token stops working this many seconds from now" } } },
        "Token": { "type": "object",
            "required": ["name", "role", "apps", "expires_ms", "created_ms", "created_by",
                "revoked_ms"],
            "properties": {
                "name": string, "role": schema_ref("Role"),
                "apps": { "type": ["array", "null"], "items": string },
                "expires_ms": nullable_uint, "created_ms": uint, "created_by": string,
                "revoked_ms": nullable_uint } },
        "TokenCreated": { "type": "object", "required": ["token", "secret"], "properties": {
            "token": schema_ref("Token"),
            "secret": { "type": "string", "description": "the bearer secret, shown once" } } },
        "AuditEntry": { "type": "object",
            "required": ["seq", "at_ms", "actor", "role", "source", "action", "target", "app",
                "status"],
            "properties": {
                "seq": uint, "at_ms": uint, "actor": string, "role": schema_ref("Role"),
                "source": string, "action": string, "target": string,
                "app": { "type": ["string", "null"] },
                "status": { "type": "integer", "minimum": 100, "maximum": 599 } } },
    })
}
