//! `molt serve --provider swarm` against a real `dockerd` swarm and Debian's `docker-registry`
//! on 127.0.0.1: the router fleet runs as a global service built from molt's own executable
//! and follows the control plane over TLS; deployments push the image to the registry and run
//! one service per environment; requests through the fleet's router fail none across a
//! deploy, a rollback and a swap; a task that dies is replaced by Swarm and recorded; a
//! restarted molt adopts what runs; GC removes retired environments and orphaned services.
//!
//! Needs a running `dockerd` that is a swarm manager (`.ci/run` starts one), `docker-registry`
//! and busybox-static.

mod support;

use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use molt_provider::{Engine, EnvironmentSpec};
use molt_swarm::{query_escape, Docker, Swarm, SwarmConfig, DEFAULT_SOCKET};
use serde_json::{json, Value};
use support::*;

/// A `docker-registry` on a free loopback port, killed when dropped.
struct Registry {
    child: Child,
    addr: SocketAddr,
}

impl Registry {
    fn start(dir: &Path) -> Registry {
        let addr = free_port();
        let config = format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
             http:\n  addr: {addr}\n",
            dir.join("registry").display()
        );
        std::fs::create_dir_all(dir).expect("registry dir");
        std::fs::write(dir.join("registry.yml"), config).expect("registry config");
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(dir.join("registry.yml"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start docker-registry");
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(addr).is_err() {
            assert!(Instant::now() < deadline, "docker-registry did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Registry { child, addr }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
}

/// An app whose image carries its own root: busybox's httpd serving `text`.
fn busybox_app(root: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let dir = root.join(format!("app-{name}-{}", text.len()));
    std::fs::create_dir_all(dir.join("bin")).expect("mkdir");
    std::fs::create_dir_all(dir.join("www")).expect("mkdir");
    std::fs::copy("/bin/busybox", dir.join("bin/busybox")).expect("copy busybox");
    std::fs::write(dir.join("www/index.html"), format!("{text}\n")).expect("index");
    std::fs::write(
        dir.join("molt.toml"),
        format!(
            r#"name = "{name}"
command = ["/bin/busybox", "httpd", "-f", "-p", "$PORT", "-h", "/www"]
instances = 2
[health]
path = "/"
interval = "300ms"
timeout = "2s"
healthy_threshold = 1
unhealthy_threshold = 2
start_deadline = "60s"
[deploy]
drain_timeout = "5s"
watch = "1s"
rollback_window = "15m"
"#
        ),
    )
    .expect("molt.toml");
    dir
}

/// The gateway of Docker's `docker_gwbridge`: the host as swarm tasks on this node reach it.
async fn gateway(docker: &Docker) -> IpAddr {
    let network: Value = docker
        .get("/networks/docker_gwbridge", "describe docker_gwbridge")
        .await
        .expect("docker_gwbridge (created by `docker swarm init`)");
    network["IPAM"]["Config"][0]["Gateway"]
        .as_str()
        .expect("a gateway")
        .parse()
        .expect("an address")
}

async fn get_via(router: SocketAddr, host: &str) -> (u16, String) {
    let mut conn = KeepAlive::connect(router).await;
    conn.get(host, "/")
        .await
        .expect("request through the fleet")
}

async fn services(docker: &Docker, owner: &str) -> Vec<String> {
    let labels = [
        format!("molt.owner={owner}"),
        "molt.role=environment".into(),
    ];
    names_of(docker, "services", &labels).await
}

/// The names of the Docker secrets of `owner`.
async fn docker_secrets(docker: &Docker, owner: &str) -> Vec<String> {
    names_of(docker, "secrets", &[format!("molt.owner={owner}")]).await
}

/// The names of the engine's objects of `kind` (`services`, `secrets`) with every label of
/// `labels`, sorted.
async fn names_of(docker: &Docker, kind: &str, labels: &[String]) -> Vec<String> {
    let filters = json!({ "label": labels }).to_string();
    let listed: Vec<Value> = docker
        .get(
            &format!("/{kind}?filters={}", query_escape(&filters)),
            &format!("list {kind}"),
        )
        .await
        .expect("the engine lists them");
    let mut names: Vec<String> = listed
        .iter()
        .filter_map(|s| s["Spec"]["Name"].as_str().map(str::to_owned))
        .collect();
    names.sort();
    names
}

/// Everything the test made on the swarm goes, however it ends.
struct Cleanup {
    docker: Docker,
    owner: Option<String>,
    router_service: String,
    network: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let (docker, owner, router, network) = (
            self.docker.clone(),
            self.owner.clone(),
            self.router_service.clone(),
            self.network.clone(),
        );
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let mut names = vec![router];
                if let Some(owner) = &owner {
                    names.extend(services(&docker, owner).await);
                }
                for name in names {
                    let _ = docker.delete(&format!("/services/{name}"), "remove").await;
                }
                if let Some(owner) = &owner {
                    for name in docker_secrets(&docker, owner).await {
                        let _ = docker.delete(&format!("/secrets/{name}"), "remove").await;
                    }
                }
                for _ in 0..100 {
                    match docker
                        .delete(&format!("/networks/{network}"), "remove")
                        .await
                    {
                        Ok(_) => break,
                        Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                    }
                }
            });
        })
        .join();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deployments_on_a_swarm_through_a_fleet_of_routers() {
    if !molt_testkit::needs_file(DEFAULT_SOCKET, "docker.io (and a running dockerd)")
        || !molt_testkit::needs_command("docker-registry")
        || !molt_testkit::needs_file("/bin/busybox", "busybox-static")
    {
        return;
    }
    let docker = Docker::new(DEFAULT_SOCKET);
    let info: Value = docker
        .get("/info", "describe itself")
        .await
        .expect("dockerd answers");
    let manager =
        info["Swarm"]["LocalNodeState"] == "active" && info["Swarm"]["ControlAvailable"] == true;
    if !molt_testkit::needs(manager, "a swarm manager (`docker swarm init`)") {
        return;
    }
    let tmp = tempfile::tempdir().expect("temp dir");
    let registry = Registry::start(&tmp.path().join("reg"));
    let registry_addr = registry.addr;
    let gateway = gateway(&docker).await;
    // One API TLS address for both runs of molt serve: the routers' control URL stays put.
    let api_tls = std::net::TcpListener::bind(SocketAddr::new(gateway, 0))
        .expect("a port on the gateway")
        .local_addr()
        .expect("addr");
    let network = format!("molt-e2e-{}", std::process::id());
    let router_service = format!("molt-router-e2e-{}", std::process::id());
    let router_port = free_port();
    let mut cleanup = Cleanup {
        docker: docker.clone(),
        owner: None,
        router_service: router_service.clone(),
        network: network.clone(),
    };
    let clock = manual_clock();
    let configure = |cfg: &mut molt_server::ServeConfig| {
        cfg.api_tls = Some(molt_server::ApiTlsConfig {
            listen: api_tls,
            names: Vec::new(),
        });
        let mut swarm = molt_server::SwarmServeConfig::new(registry_addr.to_string());
        swarm.network = network.clone();
        swarm.router_service = router_service.clone();
        swarm.router_ports = vec![(router_port.port(), molt_server::ROUTER_PORT)];
        // The router image is built from molt's executable (this process is the test's).
        swarm.router_executable = Some(env!("CARGO_BIN_EXE_molt").into());
        cfg.swarm = Some(swarm);
        cfg.clock = clock.clone();
    };
    let h = Harness::start_at(tmp.path().join("data"), configure).await;
    let _keep = &tmp;
    let owner = owner_of(&h.data_dir());
    cleanup.owner = Some(owner.clone());
    let fleet_router = SocketAddr::from(([127, 0, 0, 1], router_port.port()));

    // The fleet's router (one task on this node) connects over TLS.
    eventually(
        Duration::from_secs(120),
        "the router fleet follows",
        || async {
            let v = h.client.get("/v1/cluster").await.expect("cluster");
            v["routers"]["routers"]
                .as_array()
                .is_some_and(|r| r.iter().any(|r| r["connected"] == true && r["lag"] == 0))
        },
    )
    .await;
    let cluster = h.client.get("/v1/cluster").await.expect("cluster");
    assert_eq!(cluster["provider"], "swarm", "{cluster}");
    assert!(!cluster["engine"]["nodes"]
        .as_array()
        .expect("nodes")
        .is_empty());

    // Secrets set before the first deployment: a variable, and a file (a Docker secret).
    let (pw, key) = (
        format!("pw-{}", std::process::id()),
        format!("key-{}", std::process::id()),
    );
    for body in [
        json!({ "name": "DB_PASSWORD", "value": pw }),
        json!({ "name": "TLS_KEY", "value": key, "delivery": "file" }),
    ] {
        h.client
            .post("/v1/apps/web/secrets", &body)
            .await
            .expect("set a secret");
    }

    // v1: image pushed, one service, healthy through the routers, served by the fleet.
    let v1 = busybox_app(tmp.path(), "web", "web one");
    let d1 = h.deploy(&v1).await;
    assert_eq!(d1["state"], "drained", "{d1}");
    assert_eq!(
        get_via(fleet_router, "web.localhost").await,
        (200, "web one\n".into())
    );
    let env1 = d1["env"].as_str().expect("env").to_owned();
    assert_eq!(
        services(&docker, &owner).await,
        [molt_swarm::service_name(&env1)]
    );
    let tasks: Vec<Value> = docker
        .get(
            &format!(
                "/tasks?filters={}",
                query_escape(&json!({ "service": [molt_swarm::service_name(&env1)] }).to_string())
            ),
            "list tasks",
        )
        .await
        .expect("tasks");
    let container = tasks
        .iter()
        .find_map(|t| t["Status"]["ContainerStatus"]["ContainerID"].as_str())
        .expect("a task's container");
    let exec = |args: &[&str]| {
        let out = std::process::Command::new("docker")
            .args(["exec", container, "/bin/busybox"])
            .args(args)
            .output()
            .expect("docker exec");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(exec(&["cat", "/run/secrets/TLS_KEY"]), key);
    assert!(exec(&["env"]).contains(&format!("DB_PASSWORD={pw}\n")));
    assert_eq!(docker_secrets(&docker, &owner).await.len(), 1);

    // v2 under load, then a rollback and a swap forward: no request fails.
    let load = ClientLoad::start("web.localhost", &[fleet_router; 4]);
    let v2 = busybox_app(tmp.path(), "web", "web two!");
    let d2 = h.deploy(&v2).await;
    assert_eq!(d2["state"], "drained", "{d2}");
    assert_eq!(get_via(fleet_router, "web.localhost").await.1, "web two!\n");
    let env2 = d2["env"].as_str().expect("env").to_owned();
    let rollback = h
        .client
        .post("/v1/apps/web/rollback", &json!({}))
        .await
        .expect("rollback");
    assert_eq!(rollback["kind"], "warm", "{rollback}");
    assert_eq!(get_via(fleet_router, "web.localhost").await.1, "web one\n");
    h.client
        .post("/v1/apps/web/swap", &json!({ "env": &env2 }))
        .await
        .expect("swap");
    assert_eq!(get_via(fleet_router, "web.localhost").await.1, "web two!\n");
    let (ok, failures) = load.finish().await;
    eprintln!("{ok} requests through the fleet's router across a deploy, a rollback and a swap");
    assert!(ok > 0);
    assert!(
        failures.is_empty(),
        "{} failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );

    // A task whose container dies: Swarm replaces it, molt records it, traffic goes on.
    let swarm = Swarm::connect(SwarmConfig {
        socket: DEFAULT_SOCKET.into(),
        network: network.clone(),
        owner: owner.clone(),
    })
    .await
    .expect("swarm");
    let tasks = swarm.instances(&env2).await.expect("tasks");
    let victim = tasks
        .iter()
        .find(|t| t.state == molt_provider::EngineInstanceState::Running)
        .expect("a running task");
    let task: Value = docker
        .get(&format!("/tasks/{}", victim.id), "describe a task")
        .await
        .expect("task");
    let container = task["Status"]["ContainerStatus"]["ContainerID"]
        .as_str()
        .expect("container")
        .to_owned();
    docker
        .post_unit(
            &format!("/containers/{container}/kill?signal=KILL"),
            &json!({}),
            "kill",
        )
        .await
        .expect("kill the container");
    let victim_instance = format!("{env2}-{}", &victim.id[..12]);
    eventually(
        Duration::from_secs(60),
        "the dead task replaced and recorded",
        || async {
            let v = h.client.get("/v1/status").await.expect("status");
            let envs = v["apps"][0]["envs"].as_array().cloned().unwrap_or_default();
            let live = envs
                .iter()
                .find(|e| e["env"]["id"] == env2.as_str())
                .and_then(|e| e["instances"].as_array().cloned())
                .unwrap_or_default();
            let healthy = live.iter().filter(|i| i["state"] == "healthy").count();
            healthy == 2 && !live.iter().any(|i| i["id"] == victim_instance.as_str())
        },
    )
    .await;
    assert_eq!(get_via(fleet_router, "web.localhost").await.1, "web two!\n");

    // molt scale sets the service's replicas: a third task, recorded and healthy, and back.
    let healthy_in = |env: String| {
        let client = h.client.clone();
        async move {
            let v = client.get("/v1/status").await.expect("status");
            let envs = v["apps"][0]["envs"].as_array().cloned().unwrap_or_default();
            let live = envs
                .iter()
                .find(|e| e["env"]["id"] == env.as_str())
                .and_then(|e| e["instances"].as_array().cloned())
                .unwrap_or_default();
            live.iter().filter(|i| i["state"] == "healthy").count()
        }
    };
    let scaled = h
        .client
        .post("/v1/apps/web/scale", &json!({ "instances": 3 }))
        .await
        .expect("scale up");
    assert_eq!(
        (scaled["from"].as_u64(), scaled["to"].as_u64()),
        (Some(2), Some(3))
    );
    eventually(Duration::from_secs(60), "three healthy tasks", || {
        let count = healthy_in(env2.clone());
        async move { count.await == 3 }
    })
    .await;
    assert_eq!(
        swarm
            .instances(&env2)
            .await
            .expect("tasks")
            .iter()
            .filter(|t| t.state == molt_provider::EngineInstanceState::Running)
            .count(),
        3
    );
    h.client
        .post("/v1/apps/web/scale", &json!({ "instances": 2 }))
        .await
        .expect("scale down");
    eventually(Duration::from_secs(60), "two tasks again", || {
        let count = healthy_in(env2.clone());
        async move { count.await == 2 }
    })
    .await;

    // A restart adopts what runs: same services, still live and healthy.
    let data = h.data_dir();
    h.stop_keeping_instances().await;
    let h = Harness::start_at(data.clone(), configure).await;
    assert_eq!(services(&docker, &owner).await, {
        let mut both = vec![
            molt_swarm::service_name(&env1),
            molt_swarm::service_name(&env2),
        ];
        both.sort();
        both
    });
    eventually(Duration::from_secs(60), "adopted and in step", || async {
        let v = h.client.get("/v1/cluster").await.expect("cluster");
        v["routers"]["routers"]
            .as_array()
            .is_some_and(|r| r.iter().any(|r| r["connected"] == true && r["lag"] == 0))
    })
    .await;
    assert_eq!(get_via(fleet_router, "web.localhost").await.1, "web two!\n");

    // An orphan (a service with this molt's labels that the store does not know) and the warm
    // v1 past its rollback window: GC removes both.
    let releases = h
        .client
        .get("/v1/apps/web/releases")
        .await
        .expect("releases");
    let image = releases[0]["image"].as_str().expect("an image").to_owned();
    swarm
        .start_environment(&EnvironmentSpec {
            env: "web-orphan".into(),
            app: "web".into(),
            release: 9,
            image: format!("{registry_addr}/molt/web@{image}"),
            command: vec!["/bin/busybox".into(), "sleep".into(), "600".into()],
            env_vars: Vec::new(),
            port: 8080,
            instances: 1,
            limits: Default::default(),
            secret_files: Vec::new(),
        })
        .await
        .expect("an orphan service");
    clock.advance(Duration::from_secs(16 * 60));
    let gc = h.client.post("/v1/gc", &json!({})).await.expect("gc");
    assert!(
        gc["orphans"]
            .as_array()
            .is_some_and(|o| o.iter().any(|o| o == "web-orphan")),
        "{gc}"
    );
    eventually(
        Duration::from_secs(30),
        "only the live service is left",
        || async { services(&docker, &owner).await == [molt_swarm::service_name(&env2)] },
    )
    .await;
    // The retired environment's Docker secret went with its service; the live one's stays.
    let secrets = docker_secrets(&docker, &owner).await;
    assert_eq!(secrets.len(), 1, "{secrets:?}");
    assert!(secrets[0].contains(&env2), "{secrets:?}");
    assert_eq!(get_via(fleet_router, "web.localhost").await.1, "web two!\n");

    // The registry goes away: a deployment fails before anything starts, with a clear error.
    drop(registry);
    let v3 = busybox_app(tmp.path(), "web", "web three, never");
    let d3 = h.deploy(&v3).await;
    assert_eq!(d3["state"], "failed", "{d3}");
    let error = d3["error"].as_str().unwrap_or_default();
    assert!(error.contains(&registry_addr.to_string()), "{error}");
    assert_eq!(
        services(&docker, &owner).await,
        [molt_swarm::service_name(&env2)]
    );
    assert_eq!(get_via(fleet_router, "web.localhost").await.1, "web two!\n");

    h.stop().await;
    drop(cleanup);
}

/// The services of environments the store counts as not retired.
async fn live_envs(client: &molt_cli::Client) -> Vec<String> {
    let status = client.get("/v1/status").await.expect("status");
    let mut names: Vec<String> = status["apps"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|app| app["envs"].as_array().cloned().unwrap_or_default())
        .filter(|env| env["env"]["state"] != "retired")
        .filter_map(|env| env["env"]["id"].as_str().map(molt_swarm::service_name))
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_swarm_deployment_resumes_after_sigkill_with_no_orphan_service() {
    use nix::sys::signal::Signal;
    if !molt_testkit::needs_file(DEFAULT_SOCKET, "docker.io (and a running dockerd)")
        || !molt_testkit::needs_command("docker-registry")
        || !molt_testkit::needs_file("/bin/busybox", "busybox-static")
    {
        return;
    }
    let docker = Docker::new(DEFAULT_SOCKET);
    let info: Value = docker
        .get("/info", "describe itself")
        .await
        .expect("dockerd answers");
    let manager =
        info["Swarm"]["LocalNodeState"] == "active" && info["Swarm"]["ControlAvailable"] == true;
    if !molt_testkit::needs(manager, "a swarm manager (`docker swarm init`)") {
        return;
    }
    let tmp = tempfile::tempdir().expect("temp dir");
    let registry = Registry::start(&tmp.path().join("reg"));
    let gateway = gateway(&docker).await;
    let api_tls = std::net::TcpListener::bind(SocketAddr::new(gateway, 0))
        .expect("a port on the gateway")
        .local_addr()
        .expect("addr");
    let (api, router_port) = (free_port(), free_port());
    let network = format!("molt-crash-{}", std::process::id());
    let router_service = format!("molt-router-crash-{}", std::process::id());
    let args: Vec<String> = [
        "--provider",
        "swarm",
        "--registry",
        &registry.addr.to_string(),
        "--api-tls-listen",
        &api_tls.to_string(),
        "--swarm-network",
        &network,
        "--swarm-router-port",
        &router_port.port().to_string(),
        "--swarm-router-service",
        &router_service,
    ]
    .map(String::from)
    .to_vec();
    let data = tmp.path().join("data");
    let mut cleanup = Cleanup {
        docker: docker.clone(),
        owner: None,
        router_service,
        network,
    };
    let mut serve = Serve::start_with_args(&data, None, false, Some(api), &args);
    cleanup.owner = Some(owner_of(&data));
    eventually(
        Duration::from_secs(120),
        "the router fleet follows",
        || async {
            let v = serve.client.get("/v1/cluster").await.expect("cluster");
            v["routers"]["routers"]
                .as_array()
                .is_some_and(|r| r.iter().any(|r| r["connected"] == true && r["lag"] == 0))
        },
    )
    .await;
    let app = busybox_app(tmp.path(), "crashy", "crashy one");
    let d1 = deploy_dir(&serve.client, &app).await;
    assert_eq!(d1["state"], "drained", "{d1}");
    let fleet_router = SocketAddr::from(([127, 0, 0, 1], router_port.port()));

    for (round, step) in ["env_created", "instances_started", "healthy", "swapped"]
        .into_iter()
        .enumerate()
    {
        // Held at `step`, then SIGKILLed.
        assert_eq!(serve.signal(Signal::SIGTERM).code(), Some(0));
        let mut held = Serve::start_with_args(&data, Some(step), false, Some(api), &args);
        let d = held
            .client
            .post(
                "/v1/apps/crashy/config",
                &json!({ "set": { "ROUND": round.to_string() } }),
            )
            .await
            .expect("config set");
        let id = d["id"].as_u64().expect("id");
        held_at(&held.client, "crashy", id, step).await;
        held.signal(Signal::SIGKILL);
        // The routers serve on while nothing controls them.
        assert_eq!(get_via(fleet_router, "crashy.localhost").await.0, 200);

        // Back: the deployment ends (resumed to its end), and every service is one the store
        // counts; none is missing.
        serve = Serve::start_with_args(&data, None, false, Some(api), &args);
        let done = wait_deployment(&serve.client, id).await;
        assert!(
            ["drained", "succeeded"].contains(&done["state"].as_str().unwrap_or("")),
            "{step}: {done}"
        );
        let owner = cleanup.owner.clone().expect("owner");
        eventually(Duration::from_secs(60), "no orphan service", || async {
            services(&docker, &owner).await == live_envs(&serve.client).await
        })
        .await;
        assert_eq!(
            get_via(fleet_router, "crashy.localhost").await,
            (200, "crashy one\n".into()),
            "{step}"
        );
    }
    assert_eq!(serve.signal(Signal::SIGTERM).code(), Some(0));
    drop(cleanup);
}
