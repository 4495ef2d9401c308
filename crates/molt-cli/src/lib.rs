//! The `molt` command line: argument parsing (clap) and every client command, talking to
//! `molt serve` through its REST API. `molt serve` itself is wired by the binary.
//!
//! Exit codes scripts can trust: 0 success; 1 error; 2 bad usage; 3 a deployment failed, was
//! rolled back or superseded; 4 molt serve cannot be reached.

mod access_args;
pub mod client;
mod commands;
pub mod credentials;
mod output;
pub mod tls;

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

pub use access_args::{SecretsAction, TokensAction};
pub use client::Client;
pub use commands::run;

/// molt: immutable infrastructure on your own machines.
#[derive(Debug, Parser)]
#[command(name = "molt", version, about, long_about = None)]
pub struct Cli {
    /// Data directory of molt serve (state, images, logs, token).
    #[arg(long, global = true, env = "MOLT_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// API URL (default: from <data dir>/serve.json, else http://127.0.0.1:7070).
    #[arg(long, global = true, env = "MOLT_API")]
    pub api: Option<String>,
    /// Print machine-readable JSON.
    #[arg(long, global = true)]
    pub json: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the control plane, router and local provider.
    Serve(Box<ServeArgs>),
    /// Run one more router of the fleet (on this machine or any other): it follows the
    /// control plane's route table and keeps serving the last one while the control plane
    /// is away.
    Router(Box<RouterArgs>),
    /// Write a starter molt.toml in a folder.
    Init {
        /// The app folder.
        #[arg(default_value = ".")]
        dir: PathBuf,
        /// App name (default: the folder's name).
        #[arg(long)]
        name: Option<String>,
    },
    /// Deploy the app in a folder (image + molt.toml) blue/green, baking [build] first if any.
    Deploy {
        /// The app folder holding molt.toml.
        #[arg(default_value = ".")]
        dir: PathBuf,
        /// Use this stored image (digest or tag) instead of importing the folder.
        #[arg(long, conflicts_with = "from")]
        image: Option<String>,
        /// Promote across stages: deploy the exact image of another app's release (`APP` for
        /// its newest, `APP@vN`) with this folder's molt.toml; nothing is imported or rebuilt.
        #[arg(long, value_name = "APP[@vN]")]
        from: Option<String>,
        /// Return once the deployment is recorded instead of waiting for the cutover.
        #[arg(long)]
        no_wait: bool,
        /// Once healthy, mirror this percentage of GET/HEAD/OPTIONS requests to the new
        /// environment instead of swapping; then `molt promote` or `molt abandon`.
        #[arg(long, value_name = "PERCENT", value_parser = clap::value_parser!(u32).range(1..=100))]
        shadow: Option<u32>,
    },
    /// Promote a shadow deployment (`molt deploy --shadow`) or a canary deployment (skipping
    /// its remaining steps): swap to its environment, then drain and watch like any deployment.
    Promote {
        /// The app (default: the one in ./molt.toml).
        app: Option<String>,
    },
    /// Abandon a shadow deployment: retire its environment (the route never moved); prints
    /// live vs shadow of the shadow phase.
    Abandon {
        /// The app (default: the one in ./molt.toml).
        app: Option<String>,
    },
    /// Abort a canary deployment: its weight goes back to 0 at once and its environment is
    /// retired.
    Abort {
        /// The app (default: the one in ./molt.toml).
        app: Option<String>,
    },
    /// Bake the folder's [build] into an image on the server (unchanged steps come from the
    /// layer cache); prints the digest and each step.
    Bake {
        /// The app folder holding molt.toml.
        #[arg(default_value = ".")]
        dir: PathBuf,
        /// Name the image with an immutable tag, e.g. shop:42.
        #[arg(long)]
        tag: Option<String>,
    },
    /// What serves, for every app or one.
    Status {
        /// Only this app.
        app: Option<String>,
    },
    /// List apps.
    Apps,
    /// List an app's releases.
    Releases {
        /// The app.
        app: String,
        /// Pin (keep forever) this release number.
        #[arg(long, value_name = "N")]
        pin: Option<u64>,
        /// Unpin this release number.
        #[arg(long, value_name = "N")]
        unpin: Option<u64>,
    },
    /// List an app's environments.
    Envs {
        /// The app.
        app: String,
        /// Include retired environments.
        #[arg(long)]
        all: bool,
    },
    /// Point an app's route at one of its environments (one atomic route change).
    Swap {
        /// The app.
        app: String,
        /// The environment id (see `molt envs`).
        env: String,
    },
    /// Swap back to the previous (warm) environment, or to a release with --to.
    Rollback {
        /// The app (default: the one in ./molt.toml).
        app: Option<String>,
        /// The release to roll back to, e.g. v3 or 3.
        #[arg(long)]
        to: Option<String>,
    },
    /// Show or change an app's environment variables (each change is a new release).
    Config {
        /// show | set | unset
        #[command(subcommand)]
        action: ConfigAction,
    },
    /// Verify that live instances' image trees are exactly as unpacked (drift is repaired:
    /// the tree is unpacked again and the instances replaced).
    Verify {
        /// Only this app's environments.
        app: Option<String>,
    },
    /// Collect environments and images nothing reaches any more.
    Gc {
        /// Only print the plan.
        #[arg(long)]
        dry_run: bool,
    },
    /// Show instances' output.
    Logs {
        /// The app.
        app: String,
        /// Only this instance.
        #[arg(long)]
        instance: Option<String>,
        /// Lines per instance.
        #[arg(short = 'n', long, default_value_t = 50)]
        lines: usize,
        /// Keep printing new output.
        #[arg(short, long)]
        follow: bool,
    },
    /// Scale an app's live environment (no new release, no swap), or set its autoscaling
    /// bounds (kept across deployments; --min 0 scales to zero when idle).
    Scale {
        /// The app.
        app: String,
        /// The live environment's instance count now (0-1000).
        instances: Option<u32>,
        /// Fewest instances the autoscaler keeps (0: scale to zero when idle).
        #[arg(long)]
        min: Option<u32>,
        /// Most instances the autoscaler starts.
        #[arg(long)]
        max: Option<u32>,
        /// Forget bounds set with --min/--max: molt.toml's [scale] applies again.
        #[arg(long, conflicts_with_all = ["min", "max"])]
        reset: bool,
    },
    /// Put an app in maintenance mode (its hostnames answer 503 with Retry-After) or take it out.
    Maintenance {
        /// The app.
        app: String,
        /// on | off
        #[arg(value_parser = ["on", "off"])]
        state: String,
        /// Message shown to clients.
        #[arg(long)]
        message: Option<String>,
        /// Retry-After in seconds.
        #[arg(long, default_value_t = 120)]
        retry_after: u32,
    },
    /// Mirror a share of an app's GET/HEAD/OPTIONS requests to another of its environments
    /// (answers discarded, users unaffected); without ENV or --off, compare live and shadow.
    Shadow {
        /// The app.
        app: String,
        /// The ready environment to mirror to (e.g. the next release before its swap).
        env: Option<String>,
        /// Percent of idempotent requests mirrored (1-100).
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=100))]
        share: u32,
        /// Stop mirroring.
        #[arg(long, conflicts_with = "env")]
        off: bool,
    },
    /// An app's history (deploys, swaps, rollbacks, replaced instances, GC).
    History {
        /// The app.
        app: String,
        /// How many lines.
        #[arg(short = 'n', long, default_value_t = 30)]
        limit: usize,
    },
    /// Manage images.
    Images {
        /// ls | import
        #[command(subcommand)]
        action: ImageAction,
    },
    /// TLS certificates of the router's TLS listener.
    Tls {
        /// ls | reload
        #[command(subcommand)]
        action: TlsAction,
    },
    /// The routers of the fleet and where instances run.
    Cluster {
        /// status
        #[command(subcommand)]
        action: ClusterAction,
    },
    /// An app's secrets: encrypted at rest, given to instances as environment variables,
    /// never shown again.
    Secrets {
        /// set | list | rm
        #[command(subcommand)]
        action: SecretsAction,
    },
    /// Log in to a remote molt over HTTPS: pins its certificate on first use (like SSH) and
    /// keeps the token, 0600, in the credentials file; later commands with `--api URL` (or
    /// none, when no local server runs) use both.
    Login {
        /// The API's URL: `https://host:port` (molt serve --api-tls-listen).
        url: String,
        /// Read the token from this file (default: MOLT_TOKEN, else stdin).
        #[arg(long, value_name = "FILE")]
        token_file: Option<PathBuf>,
    },
    /// Forget a server's login and pinned certificate.
    Logout {
        /// The API's URL.
        url: String,
    },
    /// API tokens and their roles (admin only).
    Tokens {
        /// create | list | revoke
        #[command(subcommand)]
        action: TokensAction,
    },
    /// Who did what, when, from where, with what result: the mutating API calls (admin only).
    Audit {
        /// Only this app's calls.
        #[arg(long)]
        app: Option<String>,
        /// How many of the newest calls.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
}

/// `molt cluster …`
#[derive(Debug, Subcommand)]
pub enum ClusterAction {
    /// Routers (address, version of the route table applied, lag, fenced) and the provider.
    Status,
}

/// `molt tls …`
#[derive(Debug, Subcommand)]
pub enum TlsAction {
    /// List the hostnames that have a certificate.
    Ls,
    /// Reload the certificate directory now (it is also polled every few seconds).
    Reload,
}

/// `molt config …`
#[derive(Debug, Subcommand)]
pub enum ConfigAction {
    /// Print the variables of the newest release.
    Show {
        /// The app.
        app: String,
    },
    /// Set variables: KEY=VALUE …
    Set {
        /// The app.
        app: String,
        /// KEY=VALUE pairs.
        #[arg(required = true)]
        pairs: Vec<String>,
        /// Return without waiting for the deployment.
        #[arg(long)]
        no_wait: bool,
    },
    /// Remove variables.
    Unset {
        /// The app.
        app: String,
        /// Variable names.
        #[arg(required = true)]
        keys: Vec<String>,
        /// Return without waiting for the deployment.
        #[arg(long)]
        no_wait: bool,
    },
}

/// `molt images …`
#[derive(Debug, Subcommand)]
pub enum ImageAction {
    /// List stored images.
    Ls,
    /// Import a directory, a plain tar, an OCI archive or a Docker archive; prints its digest.
    Import {
        /// A directory or a .tar file.
        path: PathBuf,
        /// Name it with an immutable tag, e.g. shop:42.
        #[arg(long)]
        tag: Option<String>,
        /// Move the tag if it names another image (recorded in `molt images history`).
        #[arg(long, requires = "tag")]
        force: bool,
        /// What the tar is (auto tells by its members).
        #[arg(long, default_value = "auto", value_parser = ["auto", "tree", "oci", "docker"])]
        format: String,
        /// Which image of a multi-image archive (OCI ref name or Docker repo tag).
        #[arg(long)]
        reference: Option<String>,
    },
    /// Show an image: config, layers, sizes, annotations, tags, releases using it.
    Inspect {
        /// Digest or tag.
        image: String,
    },
    /// Tag history: of an image (digest), of a tag, or of every tag.
    History {
        /// Digest or tag (default: every tag).
        image: Option<String>,
    },
    /// Name an image with a tag; a tag never moves unless --force.
    Tag {
        /// Digest or tag of the image.
        image: String,
        /// The new tag, e.g. shop:42.
        tag: String,
        /// Move the tag if it names another image (recorded in the tag history).
        #[arg(long)]
        force: bool,
    },
    /// Remove an image with its tags and blobs (refused while a kept release uses it).
    Rm {
        /// Digest or tag.
        image: String,
    },
    /// Write an image as an OCI or Docker archive.
    Export {
        /// Digest or tag.
        image: String,
        /// The archive to write.
        #[arg(short, long)]
        output: PathBuf,
        /// oci (skopeo oci-archive:) or docker (docker load, skopeo docker-archive:).
        #[arg(long, default_value = "oci", value_parser = ["oci", "docker"])]
        format: String,
        /// Name inside the archive (default: the image's first tag).
        #[arg(long)]
        name: Option<String>,
    },
    /// Push an image to an OCI registry (credentials from MOLT_REGISTRY_USERNAME and
    /// MOLT_REGISTRY_PASSWORD).
    Push {
        /// Digest or tag.
        image: String,
        /// host[:port]/repository:tag
        target: String,
        /// A repository on the same registry to mount shared blobs from.
        #[arg(long)]
        mount_from: Option<String>,
    },
    /// Pull an image from an OCI registry (credentials as for push).
    Pull {
        /// host[:port]/repository:tag or host[:port]/repository@sha256:…
        source: String,
        /// Name it with a tag, e.g. shop:42.
        #[arg(long)]
        tag: Option<String>,
        /// Move the tag if it names another image (recorded in the tag history).
        #[arg(long, requires = "tag")]
        force: bool,
    },
    /// Collect images nothing keeps and sweep unreferenced blobs and unpacked trees.
    Gc {
        /// Only print what would go.
        #[arg(long)]
        dry_run: bool,
    },
    /// Files added (+), removed (-) and changed (~) from image A to image B.
    Diff {
        /// An image digest or tag.
        a: String,
        /// An image digest or tag.
        b: String,
    },
    /// Make an Ed25519 signing key: NAME.key (secret, 0600) and NAME.pub (what `molt serve
    /// --require-signature` takes). Needs no server.
    Keygen {
        /// Path of the pair, without extension (e.g. keys/release).
        name: PathBuf,
    },
    /// Sign an image with a key of `molt images keygen` (the key never leaves this machine);
    /// the signature is kept with the image.
    Sign {
        /// An image digest or tag.
        image: String,
        /// The .key file.
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
    },
    /// The image's signatures.
    Signatures {
        /// An image digest or tag.
        image: String,
    },
}

/// `molt router` options.
#[derive(Debug, Clone, clap::Args)]
pub struct RouterArgs {
    /// The control plane's API: http://127.0.0.1:7070 on the same machine, else
    /// https://HOST:PORT (with --control-ca).
    #[arg(long, value_name = "URL", env = "MOLT_CONTROL")]
    pub control: String,
    /// The router token (the control plane's <data dir>/router.token). Prefer the
    /// environment variable or --token-file: a command line is visible to other users.
    #[arg(
        long,
        env = "MOLT_ROUTER_TOKEN",
        hide_env_values = true,
        conflicts_with = "token_file"
    )]
    pub token: Option<String>,
    /// A file holding the router token.
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// PEM certificate of the control plane (or of its CA) to trust over https: a file (the
    /// control plane's <data dir>/api-tls/cert.pem), or the PEM text itself.
    #[arg(long, value_name = "FILE", env = "MOLT_CONTROL_CA")]
    pub control_ca: Option<String>,
    /// This router's name in the fleet (default: the machine's hostname).
    #[arg(long, env = "MOLT_ROUTER_NAME")]
    pub name: Option<String>,
    /// Where clients connect (HTTP/1.1 and h2c).
    #[arg(long, default_value = "127.0.0.1:8080", env = "MOLT_ROUTER_LISTEN")]
    pub listen: SocketAddr,
    /// Threads serving --listen (default: one per CPU).
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    /// Terminate TLS on this address too, with certificates from --tls-cert-dir.
    #[arg(long, value_name = "ADDR")]
    pub tls_listen: Option<SocketAddr>,
    /// Directory of PEM certificates by hostname (as for molt serve).
    #[arg(long, value_name = "DIR")]
    pub tls_cert_dir: Option<PathBuf>,
    /// Where the router keeps the last table it applied (default: <data dir>/router-<name>).
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
}

/// `molt serve` options.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Deploy only images signed by this Ed25519 public key (a `.pub` file of `molt images
    /// keygen`); others are refused before anything starts.
    #[arg(long, value_name = "FILE", env = "MOLT_REQUIRE_SIGNATURE")]
    pub require_signature: Option<PathBuf>,
    /// API listen address.
    #[arg(
        long = "api-listen",
        default_value = "127.0.0.1:7070",
        env = "MOLT_API_LISTEN"
    )]
    pub api_listen: SocketAddr,
    /// Router listen address.
    #[arg(
        long = "router",
        default_value = "127.0.0.1:8080",
        env = "MOLT_ROUTER_LISTEN"
    )]
    pub router_listen: SocketAddr,
    /// How often garbage collection runs (e.g. 60s, 5m).
    #[arg(long, default_value = "60s")]
    pub gc_interval: String,
    /// Stop every instance when molt serve exits (default: leave them for the next start).
    #[arg(long)]
    pub stop_instances_on_exit: bool,
    /// Terminate TLS on this address too (off by default), e.g. 127.0.0.1:8443.
    #[arg(long, value_name = "ADDR", env = "MOLT_TLS_LISTEN")]
    pub tls_listen: Option<SocketAddr>,
    /// Directory of PEM certificates: <host>.pem (chain + key) or <host>.crt + <host>.key;
    /// _wildcard.<domain> for *.<domain>. Reloaded when files change.
    #[arg(long, value_name = "DIR", env = "MOLT_TLS_CERT_DIR")]
    pub tls_cert_dir: Option<PathBuf>,
    /// Answer plain-HTTP requests for hosts that have a certificate with a 308 to https.
    #[arg(long)]
    pub https_redirect: bool,
    /// With --https-redirect: answers over TLS for hosts that have a certificate carry
    /// Strict-Transport-Security with this max-age (seconds, or e.g. 8760h for a year);
    /// never over plain HTTP.
    #[arg(long, value_name = "MAX_AGE")]
    pub hsts: Option<String>,
    /// Rotate an instance's log (logs/<instance>.log) once it is larger than this (e.g.
    /// 10MiB).
    #[arg(long, default_value = "10MiB", value_name = "SIZE")]
    pub instance_log_size: String,
    /// Rotated files kept per instance log (<instance>.log.1 … .N); 0 only truncates.
    #[arg(long, default_value_t = 3, value_name = "N")]
    pub instance_log_files: u32,
    /// molt serve's own log on stderr: text, or json (one JSON object per line).
    #[arg(long, default_value = "text", value_parser = ["text", "json"], env = "MOLT_LOG_FORMAT")]
    pub log_format: String,
    /// Log every request the router answers as a JSON line (request id, client, host,
    /// method, path, status, app, environment, instance, bytes, duration, upstream time) to
    /// this file, appended, or to stdout with '-'. Off by default.
    #[arg(long, value_name = "PATH|-")]
    pub access_log: Option<String>,
    /// Get certificates automatically from this ACME directory URL (http-01 challenges are
    /// answered on the router's plain listener, which must be the hostnames' port 80).
    #[arg(long, value_name = "URL", env = "MOLT_ACME_DIRECTORY")]
    pub acme_directory: Option<String>,
    /// A hostname to get an ACME certificate for (repeat the flag for more).
    #[arg(long = "acme-domain", value_name = "HOST")]
    pub acme_domains: Vec<String>,
    /// Contact e-mail for the ACME account.
    #[arg(long, value_name = "EMAIL")]
    pub acme_email: Option<String>,
    /// PEM root certificate to trust for the ACME server's HTTPS (for test CAs like pebble).
    #[arg(long, value_name = "FILE")]
    pub acme_ca_cert: Option<PathBuf>,
    /// Also answer each ready environment on `<env>.<app>.<DOMAIN>` (point a wildcard DNS
    /// record for `*.DOMAIN` at the router).
    #[arg(long, env = "MOLT_PREVIEW_DOMAIN")]
    pub preview_domain: Option<String>,
    /// How often live image trees are re-verified against their manifests (e.g. 5m; 0 = only
    /// before first start and on `molt verify`).
    #[arg(long, default_value = "5m")]
    pub verify_interval: String,
    /// Longest time requests for an environment wait (instead of failing) while its drifted
    /// instances are replaced, e.g. 10s; also bounded by the app's start_deadline and request
    /// timeout (0 = answer 503 at once).
    #[arg(long, default_value = "10s")]
    pub drift_hold: String,
    /// Threads serving the router's listeners (plain and TLS), each with its own event loop and socket
    /// (SO_REUSEPORT); default: one per CPU. 0 serves it on the shared runtime instead.
    #[arg(long, value_name = "N")]
    pub router_threads: Option<usize>,
    /// How instances are isolated: auto (runc containers when root and runc are available,
    /// else none), runc, or none (plain processes).
    #[arg(long, default_value = "auto", value_parser = ["auto", "runc", "none"], env = "MOLT_ISOLATION")]
    pub isolation: String,
    /// The instances' network: host (each listens on a loopback address of its own) or bridge
    /// (a network namespace per instance on molt's bridge; needs runc and root).
    #[arg(long, default_value = "host", value_parser = ["host", "bridge"], env = "MOLT_NETWORK")]
    pub network: String,
    /// The bridge of --network bridge (created if missing).
    #[arg(long, default_value = "molt0", env = "MOLT_BRIDGE")]
    pub bridge: String,
    /// The subnet of --network bridge (CIDR); the bridge holds its first address. Pick another
    /// private range if it collides with a network of this host.
    #[arg(long, default_value = "10.213.0.0/16", env = "MOLT_BRIDGE_SUBNET")]
    pub bridge_subnet: String,
    /// Where environments run: local (this machine: plain processes or runc containers, see
    /// --isolation) or swarm (one Docker Swarm service per environment; needs --registry and
    /// --api-tls-listen, and a swarm manager's Docker socket).
    #[arg(long, default_value = "local", value_parser = ["local", "swarm"], env = "MOLT_PROVIDER")]
    pub provider: String,
    /// The registry every swarm node pulls release images from, host[:port] (credentials
    /// from MOLT_REGISTRY_USERNAME and MOLT_REGISTRY_PASSWORD).
    #[arg(long, value_name = "HOST[:PORT]", env = "MOLT_REGISTRY")]
    pub registry: Option<String>,
    /// The Docker engine's socket (a swarm manager's).
    #[arg(long, default_value = "/var/run/docker.sock", env = "DOCKER_SOCKET")]
    pub docker_socket: PathBuf,
    /// molt's attachable overlay network on the swarm (created if missing).
    #[arg(long, default_value = "molt")]
    pub swarm_network: String,
    /// The URL the swarm's routers dial to follow the control plane (default:
    /// https://<--api-tls-listen>).
    #[arg(long, value_name = "URL")]
    pub swarm_control_url: Option<String>,
    /// A port the fleet's routers publish on every swarm node, NODE_PORT (to the router's
    /// 8080); repeat for more, 0 for no router fleet. Default: 80.
    #[arg(long = "swarm-router-port", value_name = "PORT")]
    pub swarm_router_ports: Vec<u16>,
    /// The name of the router fleet's service (when several molts share a swarm).
    #[arg(long, default_value = "molt-router")]
    pub swarm_router_service: String,
    /// Serve the API over TLS on this address too (molt's own certificate in
    /// <data dir>/api-tls/cert.pem): for routers and clients on other machines.
    #[arg(long, value_name = "ADDR", env = "MOLT_API_TLS_LISTEN")]
    pub api_tls_listen: Option<SocketAddr>,
    /// A name or address the API's certificate covers besides the listen address, localhost
    /// and the hostname (repeat for more).
    #[arg(long = "api-tls-name", value_name = "NAME")]
    pub api_tls_names: Vec<String>,
}
