//! The reverse proxies molt's router is compared with — nginx, HAProxy and Caddy from
//! Debian's packages — each run in the foreground from a config generated into a temp dir,
//! configured like molt: HTTP/1.1 keep-alive to the client and to the upstream, two workers,
//! no access log, X-Forwarded-{For,Proto,Host} added.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::child::ChildProcess;

/// How long one `apt-get install` may take.
const INSTALL_LIMIT: Duration = Duration::from_secs(300);
/// Idle upstream connections a peer keeps. molt's and HAProxy's pools are unbounded; a
/// smaller cache would make nginx and Caddy reconnect to the backend at c=256.
const UPSTREAM_IDLE_CONNECTIONS: usize = 512;

/// A reverse proxy from Debian.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    Nginx,
    Haproxy,
    Caddy,
}

/// Whether a peer can run here.
pub enum Availability {
    /// Installed, at this path.
    Ready(PathBuf),
    /// Not installed and not installable; why.
    Skipped(String),
}

impl Peer {
    /// Every peer, in the order the tables list them.
    pub const ALL: [Peer; 3] = [Peer::Nginx, Peer::Haproxy, Peer::Caddy];

    /// The peer's name, as in the tables.
    pub fn name(self) -> &'static str {
        match self {
            Peer::Nginx => "nginx",
            Peer::Haproxy => "haproxy",
            Peer::Caddy => "caddy",
        }
    }

    /// The Debian package that ships it.
    fn package(self) -> &'static str {
        match self {
            Peer::Nginx => "nginx-light",
            Peer::Haproxy => "haproxy",
            Peer::Caddy => "caddy",
        }
    }

    /// Finds the peer's executable, installing its package first when it is missing and we
    /// are root.
    pub async fn ensure_installed(self) -> Availability {
        if let Some(path) = find_command(self.name()) {
            return Availability::Ready(path);
        }
        if !nix::unistd::geteuid().is_root() {
            return Availability::Skipped(format!(
                "{} not installed (apt-get install {} as root)",
                self.name(),
                self.package()
            ));
        }
        eprintln!(
            "bench router: installing {} (apt-get install -y {})",
            self.name(),
            self.package()
        );
        match apt_install(self.package()).await {
            Ok(()) => match find_command(self.name()) {
                Some(path) => Availability::Ready(path),
                None => Availability::Skipped(format!(
                    "{} not installable ({} installed no `{}`)",
                    self.name(),
                    self.package(),
                    self.name()
                )),
            },
            Err(e) => {
                eprintln!("bench router: {e:#}");
                Availability::Skipped(format!("{} not installable", self.name()))
            }
        }
    }

    /// The version the peer reports, e.g. "nginx/1.22.1".
    pub fn version(self, executable: &Path) -> String {
        let flag = match self {
            Peer::Nginx => "-v",
            Peer::Haproxy => "-v",
            Peer::Caddy => "version",
        };
        let Ok(output) = Command::new(executable).arg(flag).output() else {
            return "unknown version".into();
        };
        // nginx prints its version on stderr, the others on stdout.
        let text = [output.stdout, output.stderr].concat();
        let first = String::from_utf8_lossy(&text)
            .lines()
            .next()
            .unwrap_or_default()
            .to_string();
        match self {
            Peer::Nginx => first.trim_start_matches("nginx version: ").into(),
            Peer::Haproxy => first
                .split_whitespace()
                .nth(2)
                .map_or(first.clone(), |v| format!("HAProxy {v}")),
            Peer::Caddy => first
                .split_whitespace()
                .next()
                .map_or(first.clone(), |v| format!("Caddy {v}")),
        }
    }

    /// Writes the peer's config into `dir` and starts it in the foreground, listening on
    /// `listen` and proxying to `backend`.
    pub fn start(
        self,
        executable: &Path,
        dir: &Path,
        listen: SocketAddr,
        backend: SocketAddr,
    ) -> Result<ChildProcess> {
        let dir = dir.join(self.name());
        std::fs::create_dir_all(dir.join("tmp"))
            .with_context(|| format!("creating {}", dir.display()))?;
        let mut command = Command::new(executable);
        match self {
            Peer::Nginx => {
                let config = dir.join("nginx.conf");
                write(&config, &nginx_config(&dir, listen, backend))?;
                command
                    .arg("-e")
                    .arg(dir.join("error.log"))
                    .arg("-p")
                    .arg(&dir)
                    .arg("-c")
                    .arg(&config)
                    .args(["-g", "daemon off;"]);
            }
            Peer::Haproxy => {
                let config = dir.join("haproxy.cfg");
                write(&config, &haproxy_config(listen, backend))?;
                command.arg("-f").arg(&config).arg("-db");
            }
            Peer::Caddy => {
                let config = dir.join("Caddyfile");
                write(&config, &caddy_config(listen, backend))?;
                command
                    .args(["run", "--adapter", "caddyfile", "--config"])
                    .arg(&config)
                    // Caddy's storage and config autosave go to the temp dir, not to $HOME.
                    .env("HOME", &dir)
                    .env("XDG_CONFIG_HOME", dir.join("config"))
                    .env("XDG_DATA_HOME", dir.join("data"))
                    .env("GOMAXPROCS", "2");
            }
        }
        ChildProcess::spawn(self.name(), command, &dir)
    }
}

/// The self-signed certificate of the h2-over-TLS cells, as each peer wants it.
pub struct TlsFiles {
    /// PEM certificate.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
    /// Certificate and key in one PEM file (HAProxy's `crt`).
    pub combined: PathBuf,
}

impl Peer {
    /// Starts the peer with two HTTP/2 listeners proxying to `backend` over HTTP/1.1 like
    /// [`Peer::start`]: h2 and HTTP/1.1 over TLS on `tls` (by ALPN) and h2c with prior knowledge on
    /// `h2c`.
    pub fn start_h2(
        self,
        executable: &Path,
        dir: &Path,
        tls: SocketAddr,
        h2c: SocketAddr,
        backend: SocketAddr,
        files: &TlsFiles,
    ) -> Result<ChildProcess> {
        let dir = dir.join(format!("{}-h2", self.name()));
        std::fs::create_dir_all(dir.join("tmp"))
            .with_context(|| format!("creating {}", dir.display()))?;
        let mut command = Command::new(executable);
        match self {
            Peer::Nginx => {
                let config = dir.join("nginx.conf");
                let servers = format!(
                    "http2_max_requests 1000000;\n    server {{\n        listen {tls} ssl http2;\n        ssl_certificate {};\n        \
                     ssl_certificate_key {};\n{NGINX_LOCATION}    }}\n    server {{\n        \
                     listen {h2c} http2;\n{NGINX_LOCATION}    }}",
                    files.cert.display(),
                    files.key.display()
                );
                write(&config, &nginx_http(&dir, backend, &servers))?;
                command
                    .arg("-e")
                    .arg(dir.join("error.log"))
                    .arg("-p")
                    .arg(&dir)
                    .arg("-c")
                    .arg(&config)
                    .args(["-g", "daemon off;"]);
            }
            Peer::Haproxy => {
                let config = dir.join("haproxy.cfg");
                let binds = [
                    (
                        "tls",
                        format!(
                            "{tls} ssl crt {} alpn h2,http/1.1",
                            files.combined.display()
                        ),
                    ),
                    ("h2c", format!("{h2c} proto h2")),
                ];
                write(&config, &haproxy_text(&binds, backend))?;
                command.arg("-f").arg(&config).arg("-db");
            }
            Peer::Caddy => {
                let config = dir.join("Caddyfile");
                write(&config, &caddy_h2_config(tls, h2c, backend, files))?;
                command
                    .args(["run", "--adapter", "caddyfile", "--config"])
                    .arg(&config)
                    .env("HOME", &dir)
                    .env("XDG_CONFIG_HOME", dir.join("config"))
                    .env("XDG_DATA_HOME", dir.join("data"))
                    .env("GOMAXPROCS", "2");
            }
        }
        ChildProcess::spawn(&format!("{}-h2", self.name()), command, &dir)
    }
}

/// nginx's proxying, the same in every server block.
const NGINX_LOCATION: &str = r#"        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Forwarded-Host $host;
            # Room for a 64 KiB answer in memory: never spill to a temp file.
            proxy_buffers 16 16k;
        }
"#;

/// nginx's whole configuration around `servers`.
fn nginx_http(dir: &Path, backend: SocketAddr, servers: &str) -> String {
    let dir = dir.display();
    format!(
        r#"worker_processes 2;
worker_rlimit_nofile 16384;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{
    worker_connections 8192;
}}
http {{
    access_log off;
    client_body_temp_path {dir}/tmp/client_body;
    proxy_temp_path {dir}/tmp/proxy;
    keepalive_requests 1000000;
    keepalive_timeout 60s;
    upstream backend {{
        server {backend};
        keepalive {UPSTREAM_IDLE_CONNECTIONS};
        keepalive_requests 1000000;
        keepalive_timeout 60s;
    }}
    {servers}
}}
"#
    )
}

/// HAProxy's configuration with one frontend per `(name, bind line)`.
fn haproxy_text(binds: &[(&str, String)], backend: SocketAddr) -> String {
    let mut text = String::from(
        "global\n    nbthread 2\n    # HAProxy raises its fd limit to about 2 x maxconn: stay \
         below common hard limits.\n    maxconn 4096\n\ndefaults\n    mode http\n    option \
         http-keep-alive\n    http-reuse always\n    timeout connect 5s\n    timeout client \
         60s\n    timeout server 60s\n    timeout http-keep-alive 60s\n",
    );
    for (name, bind) in binds {
        text.push_str(&format!(
            "\nfrontend {name}\n    bind {bind}\n    option forwardfor\n    http-request \
             set-header X-Forwarded-Proto %[ssl_fc,iif(https,http)]\n    http-request \
             set-header X-Forwarded-Host %[req.hdr(host)]\n    default_backend app\n"
        ));
    }
    text.push_str(&format!("\nbackend app\n    server b1 {backend}\n"));
    text
}

fn caddy_h2_config(
    tls: SocketAddr,
    h2c: SocketAddr,
    backend: SocketAddr,
    files: &TlsFiles,
) -> String {
    let proxy = format!(
        "\treverse_proxy {backend} {{\n\t\ttransport http {{\n\t\t\tkeepalive 60s\n\t\t\t\
         keepalive_idle_conns {UPSTREAM_IDLE_CONNECTIONS}\n\t\t\tkeepalive_idle_conns_per_host \
         {UPSTREAM_IDLE_CONNECTIONS}\n\t\t}}\n\t}}\n"
    );
    format!(
        "{{\n\tadmin off\n\tauto_https off\n\tlog {{\n\t\toutput discard\n\t}}\n\tservers {{\n\t\t\
         protocols h1 h2 h2c\n\t}}\n}}\n\nhttps://:{} {{\n\tbind {}\n\ttls {} {}\n{proxy}}}\n\n\
         http://:{} {{\n\tbind {}\n{proxy}}}\n",
        tls.port(),
        tls.ip(),
        files.cert.display(),
        files.key.display(),
        h2c.port(),
        h2c.ip(),
    )
}

fn nginx_config(dir: &Path, listen: SocketAddr, backend: SocketAddr) -> String {
    let server = format!("server {{\n        listen {listen};\n{NGINX_LOCATION}    }}");
    nginx_http(dir, backend, &server)
}

fn haproxy_config(listen: SocketAddr, backend: SocketAddr) -> String {
    haproxy_text(&[("bench", listen.to_string())], backend)
}

fn caddy_config(listen: SocketAddr, backend: SocketAddr) -> String {
    let (ip, port) = (listen.ip(), listen.port());
    format!(
        r#"{{
	admin off
	auto_https off
	log {{
		output discard
	}}
}}

http://:{port} {{
	bind {ip}
	reverse_proxy {backend} {{
		transport http {{
			keepalive 60s
			keepalive_idle_conns {UPSTREAM_IDLE_CONNECTIONS}
			keepalive_idle_conns_per_host {UPSTREAM_IDLE_CONNECTIONS}
		}}
	}}
}}
"#
    )
}

fn write(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// `command -v name`, through the shell as an operator would type it.
pub(crate) fn find_command(name: &str) -> Option<PathBuf> {
    let output = Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let path = String::from_utf8_lossy(&output.stdout).trim().to_string();
    (output.status.success() && !path.is_empty()).then(|| PathBuf::from(path))
}

/// `apt-get install -y package`, bounded in time.
pub(crate) async fn apt_install(package: &str) -> Result<()> {
    let install = tokio::process::Command::new("apt-get")
        .args(["install", "-y", package])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(INSTALL_LIMIT, install)
        .await
        .with_context(|| format!("apt-get install {package} took more than {INSTALL_LIMIT:?}"))?
        .context("running apt-get")?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(5).collect();
        bail!(
            "apt-get install -y {package} failed ({}): {}",
            output.status,
            tail.into_iter().rev().collect::<Vec<_>>().join(" / ")
        );
    }
    Ok(())
}
