//! Every operation of the API, in the order of the router's routes.

use serde_json::{json, Value};

use super::{schema_ref, Op, Presence};

/// A list of `schema`.
fn list(schema: &str) -> Value {
    json!({ "type": "array", "items": schema_ref(schema) })
}

/// `limit` of the lists that take one.
fn limit(default: u32) -> Value {
    json!({ "type": "integer", "minimum": 0, "maximum": u64::MAX, "default": default })
}

/// Links from an answer naming an app (at JSON pointer `app` of the body) to the operations
/// on that app.
fn app_links(mut op: Op, status: u16, app: &str) -> Op {
    for to in [
        "getApp",
        "listReleases",
        "listEnvs",
        "listDeployments",
        "getConfig",
        "getLogs",
        "listEvents",
        "getShadow",
        "rollback",
        "promote",
        "abandon",
        "setMaintenance",
    ] {
        op = op.link(status, to, to, json!({ "app": app }));
    }
    op
}

/// Links from an answer naming an image (at JSON pointer `digest`) to the operations on it.
fn image_links(mut op: Op, status: u16, digest: &str) -> Op {
    for to in [
        "inspectImage",
        "imageHistory",
        "exportImage",
        "tagImage",
        "removeImage",
    ] {
        op = op.link(status, to, to, json!({ "reference": digest }));
    }
    op.link(
        status,
        "imageDiff",
        "imageDiff",
        json!({ "a": digest, "b": digest }),
    )
}

/// A link from an answer with a deployment (its id at `id`) to the deployment.
fn deployment_link(op: Op, status: u16, id: &str) -> Op {
    op.link(
        status,
        "getDeployment",
        "getDeployment",
        json!({ "id": id }),
    )
}

/// Every operation the API serves.
pub fn operations() -> Vec<Op> {
    let app_param = "$request.path.app";
    vec![
        Op::new("get", "/v1/health", "health", "Liveness; no token needed")
            .answers(200, "Health")
            .public(),
        Op::new(
            "get",
            "/v1/status",
            "status",
            "Apps, what serves, environments and instances",
        )
        .query("app", schema_ref("AppName"), "only this app")
        .answers(200, "Status")
        .errors(&[404]),
        app_links(
            Op::new("get", "/v1/apps", "listApps", "Every app with its status").answers_with(
                200,
                "application/json",
                list("AppStatus"),
            ),
            200,
            "$response.body#/0/app/name",
        ),
        Op::new("get", "/v1/apps/{app}", "getApp", "One app's status").answers(200, "AppStatus"),
        Op::new(
            "get",
            "/v1/apps/{app}/releases",
            "listReleases",
            "Releases, newest first",
        )
        .answers_with(200, "application/json", list("Release"))
        .link(
            200,
            "pinRelease",
            "pinRelease",
            json!({ "app": app_param, "number": "$response.body#/0/number" }),
        ),
        Op::new(
            "post",
            "/v1/apps/{app}/releases/{number}/pin",
            "pinRelease",
            "Pin or unpin a release (pinned releases are never collected)",
        )
        .json_body("Pin", Presence::Required)
        .answers(200, "PinOutcome"),
        Op::new(
            "get",
            "/v1/apps/{app}/envs",
            "listEnvs",
            "Live environments, newest first (all=true adds retired ones)",
        )
        .query(
            "all",
            json!({ "type": "boolean", "default": false }),
            "retired environments too",
        )
        .answers_with(200, "application/json", list("Env")),
        deployment_link(
            Op::new(
                "get",
                "/v1/apps/{app}/deployments",
                "listDeployments",
                "Deployments, newest first",
            )
            .query("limit", limit(20), "at most this many")
            .answers_with(200, "application/json", list("Deployment")),
            200,
            "$response.body#/0/id",
        ),
        deployment_link(
            Op::new(
                "post",
                "/v1/apps/{app}/deployments",
                "deploy",
                "Deploy an image with a manifest, or an existing release (with shadow: mirror \
                 to it instead of swapping, until promoted or abandoned)",
            )
            .describe(
                "Answers 202 once the release is written and the deployment started; follow \
                 it with GET /v1/deployments/{id}. A deployment of the app still running is \
                 superseded. The manifest is the text of molt.toml: one the server cannot \
                 read is a 400 naming the line.",
            )
            .json_body("DeployRequest", Presence::Required)
            .answers(202, "Deployment")
            .errors(&[409]),
            202,
            "$response.body#/id",
        ),
        Op::new(
            "post",
            "/v1/apps/{app}/swap",
            "swap",
            "Point the route at a ready environment of the app",
        )
        .json_body("Swap", Presence::Required)
        .answers(200, "SwapOutcome")
        .errors(&[409]),
        deployment_link(
            Op::new(
                "post",
                "/v1/apps/{app}/rollback",
                "rollback",
                "Swap back to a warm environment (or redeploy, cold)",
            )
            .json_body("Rollback", Presence::Optional)
            .answers(200, "RollbackOutcome")
            .errors(&[409]),
            200,
            "$response.body#/deployment/id",
        ),
        Op::new(
            "get",
            "/v1/apps/{app}/config",
            "getConfig",
            "Environment variables of the newest release (null before the first)",
        )
        .answers_with(
            200,
            "application/json",
            json!({ "anyOf": [schema_ref("ReleaseConfig"), { "type": "null" }] }),
        ),
        deployment_link(
            Op::new(
                "post",
                "/v1/apps/{app}/config",
                "setConfig",
                "Set or unset variables: makes and deploys a new release",
            )
            .json_body("Config", Presence::Required)
            .answers(202, "Deployment")
            .errors(&[409]),
            202,
            "$response.body#/id",
        ),
        Op::new(
            "get",
            "/v1/apps/{app}/logs",
            "getLogs",
            "Last lines of each live instance's output (or of one instance, stopped ones \
             too), across its rotated files",
        )
        .query("instance", schema_ref("Id"), "one instance of the app")
        .query(
            "lines",
            json!({ "type": "integer", "minimum": 0, "maximum": u64::MAX, "default": 100 }),
            "lines per instance (at most 10000 are sent)",
        )
        .answers_with(200, "application/json", list("InstanceLog")),
        Op::new(
            "post",
            "/v1/apps/{app}/maintenance",
            "setMaintenance",
            "Maintenance mode on or off: the app's hostnames answer 503 with Retry-After",
        )
        .json_body("Maintenance", Presence::Required)
        .answers(200, "App"),
        Op::new(
            "post",
            "/v1/apps/{app}/scale",
            "scaleApp",
            "Set the live environment's instance count and/or the app's autoscaling bounds: \
             no new release, no swap; leaving instances are drained first",
        )
        .json_body("Scale", Presence::Required)
        .answers(200, "ScaleOutcome")
        .errors(&[409]),
        Op::new(
            "post",
            "/v1/apps/{app}/shadow",
            "setShadow",
            "Mirror a share of idempotent requests to one of the app's ready environments, or \
             stop (env null)",
        )
        .json_body("Shadow", Presence::Required)
        .answers(200, "App")
        .errors(&[409]),
        Op::new(
            "get",
            "/v1/apps/{app}/shadow",
            "getShadow",
            "Live and shadow traffic side by side: status classes, mean and bucketed p50/p99 \
             latency",
        )
        .answers(200, "ShadowReport"),
        deployment_link(
            Op::new(
                "post",
                "/v1/apps/{app}/promote",
                "promote",
                "Promote the app's shadowing deployment: it swaps, drains and watches like any \
                 deployment; the live/shadow comparison is recorded on it",
            )
            .answers(200, "Deployment")
            .errors(&[409]),
            200,
            "$response.body#/id",
        ),
        deployment_link(
            Op::new(
                "post",
                "/v1/apps/{app}/abort",
                "abort",
                "Abort the app's canary deployment: its weight goes back to 0 at once and its \
                 environment is retired",
            )
            .answers(200, "Deployment")
            .errors(&[409]),
            200,
            "$response.body#/id",
        ),
        deployment_link(
            Op::new(
                "post",
                "/v1/apps/{app}/abandon",
                "abandon",
                "Abandon the app's shadowing deployment: its environment is retired, the route \
                 never moved; the live/shadow comparison is recorded on it",
            )
            .answers(200, "Deployment")
            .errors(&[409]),
            200,
            "$response.body#/id",
        ),
        Op::new(
            "get",
            "/v1/apps/{app}/events",
            "listEvents",
            "The app's history, newest first",
        )
        .query("limit", limit(50), "at most this many")
        .answers_with(200, "application/json", list("Event")),
        Op::new(
            "get",
            "/v1/deployments/{id}",
            "getDeployment",
            "A deployment with its journal",
        )
        .answers(200, "DeploymentJournal"),
        image_links(
            Op::new(
                "get",
                "/v1/images",
                "listImages",
                "Stored images, newest first",
            )
            .answers_with(200, "application/json", list("Image")),
            200,
            "$response.body#/0/digest",
        ),
        image_links(
            Op::new(
                "post",
                "/v1/images",
                "importImage",
                "Import a tree tar, an OCI or a Docker archive",
            )
            .describe(
                "The body is streamed to disk, then read: a plain tar of a folder becomes a \
                 one-layer image (format tree), an OCI archive (oci-layout, index.json, \
                 blobs/) or a `docker save` archive (manifest.json) is imported as it is. \
                 Archives are checked member by member (no absolute paths, no `..`, no writes \
                 through links, no devices); one that fails is a 400. The signatures an OCI \
                 archive carries (see exportImage) are verified and kept; one that does not \
                 verify is a 400 and nothing is imported.",
            )
            .tar_body("a tar archive: a folder's tree, an OCI archive or a Docker archive")
            .query("tag", schema_ref("ImageTag"), "tag the image")
            .query(
                "force",
                json!({ "type": "boolean", "default": false }),
                "move the tag if it names another image",
            )
            .query("format", schema_ref("ImportFormat"), "what the archive is")
            .query(
                "reference",
                json!({ "type": "string" }),
                "which image of a multi-image archive (its ref name annotation or repo tag); \
                 a tree has one",
            )
            .query("actor", schema_ref("Actor"), "who, for the tag history")
            .answers(201, "ImportOutcome")
            .errors(&[409]),
            201,
            "$response.body#/digest",
        ),
        Op::new(
            "get",
            "/v1/images/{reference}",
            "inspectImage",
            "Inspect an image: config, layers, sizes, annotations, tags, releases using it",
        )
        .answers(200, "ImageInspect"),
        Op::new(
            "delete",
            "/v1/images/{reference}",
            "removeImage",
            "Remove an image, its tags and blobs; refused while a kept release uses it",
        )
        .answers(200, "RemoveOutcome")
        .errors(&[409]),
        Op::new(
            "get",
            "/v1/images/{reference}/history",
            "imageHistory",
            "Tag history of an image (digest) or of a tag",
        )
        .answers_with(200, "application/json", list("TagEvent")),
        Op::new(
            "post",
            "/v1/images/{reference}/tags",
            "tagImage",
            "Tag an image; moving a tag needs force and is recorded",
        )
        .json_body("Tag", Presence::Required)
        .answers(200, "TagOutcome")
        .errors(&[409]),
        Op::new(
            "get",
            "/v1/images/{reference}/export",
            "exportImage",
            "Stream the image as an OCI or Docker archive",
        )
        .describe(
            "The archive is written as it is sent: a failure after the first byte aborts the \
             response, so a cut archive is never mistaken for a whole one. The digest is in \
             the X-Molt-Digest header. An OCI archive carries the image's signatures as \
             annotations of its index.json entry (dev.molt.signature.N = KEY:SIGNATURE, hex); \
             a Docker archive carries none.",
        )
        .query(
            "format",
            schema_ref("ArchiveFormat"),
            "the archive's layout",
        )
        .query(
            "name",
            schema_ref("ImageTag"),
            "the name the archive gives the image (its ref name or repo tag)",
        )
        .answers_with(
            200,
            "application/x-tar",
            json!({ "type": "string", "format": "binary" }),
        ),
        Op::new(
            "get",
            "/v1/tags/history",
            "tagHistory",
            "Every tag change, oldest first",
        )
        .answers_with(200, "application/json", list("TagEvent")),
        Op::new(
            "post",
            "/v1/images/{reference}/push",
            "pushImage",
            "Push an image to a registry (chunked uploads, cross-repository mount with \
             mount_from)",
        )
        .describe(
            "An image with signatures also gets an artifact that refers to it \
             (artifactType application/vnd.dev.molt.signature.v1), listed in the index \
             tagged sha256-HEX (the referrers tag schema).",
        )
        .json_body("Push", Presence::Required)
        .answers(200, "PushReport")
        .errors(&[502]),
        Op::new(
            "post",
            "/v1/images/pull",
            "pullImage",
            "Pull an image from a registry, optionally tagging it",
        )
        .describe(
            "Signatures the registry holds for the image (see pushImage) are verified and \
             kept; one that does not verify fails the pull (502) and nothing is cataloged.",
        )
        .json_body("Pull", Presence::Required)
        .answers(201, "ImportOutcome")
        .errors(&[409, 502, 507]),
        Op::new(
            "post",
            "/v1/images/gc",
            "gcImages",
            "Collect unkept images and sweep unreferenced blobs and rootfs dirs (dry_run to \
             preview)",
        )
        .json_body("Gc", Presence::Required)
        .answers(200, "GcReport"),
        Op::new(
            "post",
            "/v1/bake",
            "bake",
            "Bake the [build] of a build context: one layer per step, cached, with an SBOM and \
             provenance",
        )
        .tar_body(
            "the canonical tar of the app folder (what `molt bake` sends): its molt.toml \
             must have a [build] section",
        )
        .query(
            "commit",
            schema_ref("Commit"),
            "`git rev-parse HEAD` of the folder",
        )
        .query(
            "dirty",
            json!({ "type": "boolean", "default": false }),
            "the folder had uncommitted changes",
        )
        .query(
            "source_date_epoch",
            json!({ "type": "integer", "minimum": 0, "maximum": u64::MAX, "default": 0 }),
            "the client's SOURCE_DATE_EPOCH",
        )
        .query("tag", schema_ref("ImageTag"), "tag the image")
        .answers(201, "BakeReport")
        .errors(&[404, 409]),
        Op::new(
            "get",
            "/v1/images/diff",
            "imageDiff",
            "Files added, removed and changed from image a to image b",
        )
        .required_query("a", schema_ref("ImageReference"), "the image before")
        .required_query("b", schema_ref("ImageReference"), "the image after")
        .answers(200, "ImageDiff")
        .errors(&[404]),
        Op::new(
            "post",
            "/v1/gc",
            "gc",
            "Collect unreachable environments (with their instances' logs) and images \
             (dry_run to preview)",
        )
        .json_body("Gc", Presence::Required)
        .answers(200, "GcReport"),
        Op::new(
            "get",
            "/v1/tls",
            "tls",
            "Hostnames the TLS listener has certificates for",
        )
        .answers(200, "TlsCertificates"),
        Op::new(
            "post",
            "/v1/tls/reload",
            "tlsReload",
            "Reload TLS certificates from --tls-cert-dir now (bad files keep the old \
             certificate)",
        )
        .answers(200, "TlsReload")
        .errors(&[409]),
        Op::new(
            "post",
            "/v1/verify",
            "verify",
            "Verify the unpacked image trees of live environments (one app or all); drifted \
             trees are re-unpacked and their instances replaced",
        )
        .json_body("Verify", Presence::Required)
        .answers_with(200, "application/json", list("VerifyReport"))
        .errors(&[404]),
        Op::new(
            "get",
            "/v1/cluster",
            "cluster",
            "The routers of the fleet (version applied, lag, fenced) and the engine's nodes",
        )
        .answers(200, "ClusterStatus"),
        Op::new(
            "get",
            "/metrics",
            "metrics",
            "Prometheus text of the controller's and the router's counters",
        )
        .answers_with(
            200,
            "text/plain; version=0.0.4",
            json!({ "type": "string" }),
        ),
        Op::new(
            "get",
            "/v1/fleet/stream",
            "fleetStream",
            "A router's stream of route tables, probes and pings (router token)",
        )
        .describe(
            "Newline-delimited JSON that does not end while the router follows: the first \
             line is the table the router must apply.",
        )
        .required_query("router", schema_ref("RouterName"), "the router's name")
        .query(
            "listen",
            json!({ "type": "string", "maxLength": 256 }),
            "where it takes client connections",
        )
        .query(
            "version",
            json!({ "type": "integer", "minimum": 0, "maximum": u64::MAX, "default": 0 }),
            "the table version it serves now",
        )
        .answers_with(200, "application/x-ndjson", json!({ "type": "string" })),
        Op::new(
            "post",
            "/v1/fleet/acks",
            "fleetAck",
            "A router applied a version of the route table (router token)",
        )
        .json_body("Ack", Presence::Required)
        .answers_empty(204),
        Op::new(
            "post",
            "/v1/fleet/reports",
            "fleetReport",
            "A router's counters per environment (router token)",
        )
        .json_body("RouterReport", Presence::Required)
        .answers_empty(204),
        Op::new(
            "post",
            "/v1/fleet/probes/{id}",
            "fleetProbe",
            "The result of a health check a router ran for the control plane (router token)",
        )
        .json_body("ProbeReport", Presence::Required)
        .answers_empty(204),
        Op::new(
            "get",
            "/v1/fleet/status",
            "fleetStatus",
            "The fleet's routers and the version in force (router token)",
        )
        .answers(200, "FleetStatus"),
        Op::new(
            "get",
            "/openapi.json",
            "openapi",
            "This document; no token needed",
        )
        .answers_with(200, "application/json", json!({ "type": "object" }))
        .public(),
    ]
    .into_iter()
    .chain(super::access::operations())
    .collect()
}
