//! The schema and its migrations, applied in order and recorded in `user_version`.

use rusqlite::Connection;

const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE apps (
    name TEXT PRIMARY KEY,
    created_ms INTEGER NOT NULL
);
CREATE TABLE images (
    digest TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    created_ms INTEGER NOT NULL
);
CREATE TABLE tags (
    name TEXT PRIMARY KEY,
    digest TEXT NOT NULL REFERENCES images(digest),
    created_ms INTEGER NOT NULL
);
CREATE TABLE releases (
    app TEXT NOT NULL REFERENCES apps(name),
    number INTEGER NOT NULL,
    image TEXT NOT NULL,
    config TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    pinned INTEGER NOT NULL DEFAULT 0,
    note TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (app, number)
);
CREATE TABLE environments (
    id TEXT PRIMARY KEY,
    app TEXT NOT NULL REFERENCES apps(name),
    release INTEGER NOT NULL,
    state TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    warm_until_ms INTEGER,
    retired_ms INTEGER,
    FOREIGN KEY (app, release) REFERENCES releases(app, number)
);
CREATE TABLE instances (
    id TEXT PRIMARY KEY,
    env TEXT NOT NULL REFERENCES environments(id),
    app TEXT NOT NULL,
    state TEXT NOT NULL,
    pid INTEGER,
    start_time INTEGER,
    port INTEGER NOT NULL,
    started_ms INTEGER NOT NULL,
    exit TEXT
);
CREATE INDEX instances_env ON instances(env);
CREATE TABLE routes (
    app TEXT PRIMARY KEY REFERENCES apps(name),
    env TEXT NOT NULL REFERENCES environments(id),
    updated_ms INTEGER NOT NULL
);
CREATE TABLE deployments (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    app TEXT NOT NULL REFERENCES apps(name),
    release INTEGER NOT NULL,
    env TEXT,
    prev_env TEXT,
    state TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL,
    error TEXT,
    figures TEXT
);
CREATE TABLE journal (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    deployment INTEGER NOT NULL REFERENCES deployments(id),
    at_ms INTEGER NOT NULL,
    state TEXT NOT NULL,
    detail TEXT NOT NULL
);
CREATE TABLE events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    app TEXT NOT NULL,
    at_ms INTEGER NOT NULL,
    kind TEXT NOT NULL,
    message TEXT NOT NULL
);
"#,
    // Each instance has its own address: a fixed app port is served on a loopback IP per instance.
    "ALTER TABLE instances ADD COLUMN host TEXT NOT NULL DEFAULT '127.0.0.1'",
    // Maintenance mode of an app: its message and Retry-After, or NULL.
    "ALTER TABLE apps ADD COLUMN maintenance TEXT",
    // Shadow traffic of an app: the environment mirrored requests go to and their share, or NULL.
    "ALTER TABLE apps ADD COLUMN shadow TEXT",
    // Every change of a tag: created, moved with --force, removed with its image.
    r#"
CREATE TABLE tag_history (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    change TEXT NOT NULL,
    old_digest TEXT,
    new_digest TEXT,
    actor TEXT NOT NULL,
    at_ms INTEGER NOT NULL
);
CREATE INDEX tag_history_name ON tag_history(name);
INSERT INTO tag_history(name, change, old_digest, new_digest, actor, at_ms)
    SELECT name, 'created', NULL, digest, 'unknown (before tag history)', created_ms FROM tags;
"#,
    // Shadow deployments: the share mirrored before promotion, and the live/shadow comparison
    // recorded when the shadow phase ends.
    r#"
ALTER TABLE deployments ADD COLUMN shadow_share INTEGER;
ALTER TABLE deployments ADD COLUMN shadow TEXT;
"#,
    // Scaling: the count an environment should have (NULL: its release's), and an app's
    // autoscaling bounds set with `molt scale --min/--max`.
    r#"
ALTER TABLE environments ADD COLUMN instances INTEGER;
ALTER TABLE apps ADD COLUMN scale TEXT;
"#,
    // Canary deployments: the environment a route splits its clients with and its weight
    // (percent), and a canary's progress and verdicts.
    r#"
ALTER TABLE routes ADD COLUMN canary_env TEXT;
ALTER TABLE routes ADD COLUMN canary_weight INTEGER;
ALTER TABLE deployments ADD COLUMN canary TEXT;
"#,
    // Access: API tokens with roles (only the SHA-256 of a secret is kept), and the audit
    // trail of mutating calls.
    r#"
CREATE TABLE tokens (
    name TEXT PRIMARY KEY,
    role TEXT NOT NULL,
    hash TEXT NOT NULL UNIQUE,
    apps TEXT,
    expires_ms INTEGER,
    created_ms INTEGER NOT NULL,
    created_by TEXT NOT NULL,
    revoked_ms INTEGER
);
CREATE TABLE audit (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    at_ms INTEGER NOT NULL,
    actor TEXT NOT NULL,
    role TEXT NOT NULL,
    source TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    app TEXT,
    status INTEGER NOT NULL
);
CREATE INDEX audit_app ON audit(app);
"#,
    // Secrets: every version of each, encrypted by the controller (ChaCha20-Poly1305, the
    // key outside the database); a removal marks every version of the name, which releases
    // that name them still reach.
    r#"
CREATE TABLE secrets (
    app TEXT NOT NULL,
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    nonce BLOB NOT NULL,
    ciphertext BLOB NOT NULL,
    created_ms INTEGER NOT NULL,
    created_by TEXT NOT NULL,
    removed_ms INTEGER,
    PRIMARY KEY (app, name, version)
);
"#,
    // Image signatures (Ed25519 over the manifest digest), checked by the controller.
    r#"
CREATE TABLE image_signatures (
    digest TEXT NOT NULL,
    public_key TEXT NOT NULL,
    signature TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    created_by TEXT NOT NULL,
    PRIMARY KEY (digest, public_key)
);
"#,
    // How instances get each secret version: `env` (a variable) or `file` (on a tmpfs).
    r#"
ALTER TABLE secrets ADD COLUMN delivery TEXT NOT NULL DEFAULT 'env';
"#,
];

/// Applies the migrations the database has not seen yet, each in its own transaction.
pub fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        conn.execute_batch(&format!(
            "BEGIN; {sql}; PRAGMA user_version = {}; COMMIT;",
            i + 1
        ))?;
    }
    Ok(())
}
