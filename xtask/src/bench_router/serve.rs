//! `molt serve` in `bench router`, since that is what users run: a release build started the
//! way an operator would (router on as many threads as the peers have workers, a TLS listener
//! whose certificate directory holds the bench's certificate), with the bench backend deployed
//! as an app of one instance. That instance is the backend of every target in the run, so
//! `molt serve`, the router-server and each peer proxy to the same process.

use std::net::SocketAddr;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::json;

use super::{progress, small_body, APP};
use crate::bench_core::{
    build_molt, id_of, import_image, routed_instances, wait_cutover, write_backend_app,
};
use crate::peers::TlsFiles;
use crate::router_server::{HOST, WORKER_THREADS};
use crate::serve::Serve;

/// A running `molt serve` and the instance it deployed.
pub(super) struct Served {
    pub(super) serve: Serve,
    /// Its TLS listener (h2 and HTTP/1.1 over TLS).
    pub(super) tls: SocketAddr,
    /// The app's one instance: the backend of every target.
    pub(super) instance: SocketAddr,
}

/// The app: the bench backend (this executable), one instance, answering for `HOST`. Its
/// first release is `v1`, so it answers exactly [`small_body`].
fn manifest() -> String {
    format!(
        r#"name = "{APP}"
hostnames = ["{HOST}"]
command = ["./backend", "backend"]
instances = 1
[health]
path = "/healthz"
interval = "1s"
healthy_threshold = 1
start_deadline = "10s"
"#
    )
}

/// Builds molt, starts `molt serve` with its router on `WORKER_THREADS` threads and a TLS
/// listener serving `files`' certificate, and deploys the backend.
pub(super) async fn start(dir: &Path, files: &TlsFiles) -> Result<Served> {
    let binary = build_molt()?;
    let certs = dir.join("molt-certs");
    std::fs::create_dir_all(&certs).with_context(|| format!("creating {}", certs.display()))?;
    let pem = certs.join(format!("{HOST}.pem"));
    std::fs::copy(&files.combined, &pem)
        .with_context(|| format!("copying the certificate to {}", pem.display()))?;
    let certs = certs
        .to_str()
        .ok_or_else(|| anyhow!("{} is not UTF-8", certs.display()))?;
    let threads = WORKER_THREADS.to_string();
    let serve = Serve::start_with(
        &binary,
        &[
            "--isolation",
            "none",
            "--router-threads",
            &threads,
            "--tls-listen",
            "127.0.0.1:0",
            "--tls-cert-dir",
            certs,
        ],
    )
    .await?;
    let tls = serve
        .router_tls
        .ok_or_else(|| anyhow!("molt serve started without its TLS listener"))?;
    let app = write_backend_app(serve.scratch_dir(), "app", &manifest())?;
    let image = import_image(&serve.client, &app).await?;
    let deployment = serve
        .client
        .post(
            &format!("/v1/apps/{APP}/deployments"),
            &json!({ "image": image, "manifest": manifest() }),
        )
        .await
        .context("deploying the backend on molt serve")?;
    let deployment = wait_cutover(&serve.client, id_of(&deployment)?).await?;
    if deployment["release"] != 1 {
        bail!(
            "the backend's deployment is not release 1, so it would not answer {:?}: {deployment}",
            small_body()
        );
    }
    let instance = match routed_instances(&serve.client, APP).await?.as_slice() {
        [one] => *one,
        many => bail!("the backend app has {} instances, not 1", many.len()),
    };
    progress(&format!(
        "molt serve pid {} up: router {}, TLS {tls}, instance {instance}",
        serve.pid(),
        serve.router
    ));
    Ok(Served {
        serve,
        tls,
        instance,
    })
}
