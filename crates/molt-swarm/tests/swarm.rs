//! The Swarm engine against a real `dockerd` in swarm mode and Debian's `docker-registry` on
//! 127.0.0.1: an image molt stored and pushed runs as a service pinned by digest, scales,
//! loses a task that Swarm replaces, is found again by its labels, and is removed; engine
//! errors come back in the engine's words and change nothing.
//!
//! Needs a running `dockerd` whose node is a swarm manager (`.ci/run` starts one and runs
//! `docker swarm init`), `docker-registry` and busybox-static: skipped without them, a failure
//! in CI (molt-testkit).

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use molt_image::ImageStore;
use molt_provider::{
    Engine, EngineError, EngineInstance, EngineInstanceState, EnvironmentSpec, SecretFile,
};
use molt_swarm::{Docker, Swarm, SwarmConfig, DEFAULT_SOCKET};
use molt_testkit::{needs, needs_command, needs_file};

/// A `docker-registry` on a free loopback port, killed when dropped.
struct Registry {
    child: Child,
    addr: SocketAddr,
}

impl Registry {
    fn start(dir: &Path) -> Registry {
        let addr = TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr");
        let config = format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
             http:\n  addr: {addr}\n",
            dir.join("storage").display()
        );
        std::fs::write(dir.join("config.yml"), config).expect("registry config");
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(dir.join("config.yml"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start docker-registry");
        let registry = Registry { child, addr };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(addr).is_err() {
            assert!(Instant::now() < deadline, "docker-registry did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        registry
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Stores an image of busybox httpd serving `hello` and pushes it; returns its pinned
/// reference.
async fn pushed_image(dir: &Path, registry: SocketAddr) -> String {
    let tree = dir.join("tree");
    std::fs::create_dir_all(tree.join("bin")).expect("mkdir");
    std::fs::create_dir_all(tree.join("www")).expect("mkdir");
    std::fs::copy("/bin/busybox", tree.join("bin/busybox")).expect("copy busybox");
    std::fs::write(tree.join("www/index.html"), "hello\n").expect("index");
    let store = ImageStore::open(&dir.join("images")).expect("image store");
    let image = store.import_dir(&tree).expect("import");
    let target = format!("{registry}/molt-test/web:1");
    molt_registry::push(&store, &image.digest, &target, None, None, &[])
        .await
        .expect("push");
    format!("{registry}/molt-test/web@{}", image.digest)
}

fn spec(env: &str, image: &str, instances: u32) -> EnvironmentSpec {
    EnvironmentSpec {
        env: env.to_owned(),
        app: "web".to_owned(),
        release: 1,
        image: image.to_owned(),
        command: ["/bin/busybox", "httpd", "-f", "-p", "8080", "-h", "/www"]
            .map(String::from)
            .to_vec(),
        env_vars: vec![("PORT".to_owned(), "8080".to_owned())],
        port: 8080,
        instances,
        limits: Default::default(),
        secret_files: Vec::new(),
    }
}

/// Polls the engine until `done` holds for the environment's instances (60 s at most).
async fn wait_for(
    swarm: &Swarm,
    env: &str,
    what: &str,
    done: impl Fn(&[EngineInstance]) -> bool,
) -> Vec<EngineInstance> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let instances = swarm.instances(env).await.expect("list instances");
        if done(&instances) {
            return instances;
        }
        assert!(
            Instant::now() < deadline,
            "{env}: not {what} after 60 s: {instances:#?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn running(instances: &[EngineInstance]) -> Vec<&EngineInstance> {
    instances
        .iter()
        .filter(|i| i.state == EngineInstanceState::Running)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_per_environment_runs_scales_heals_and_goes() {
    let dockerd = Path::new(DEFAULT_SOCKET).exists();
    if !(needs(dockerd, "a running dockerd (apt-get install docker.io)")
        && needs_command("docker-registry")
        && needs_file("/bin/busybox", "busybox-static"))
    {
        return;
    }
    let owner = format!("molt-test-{}", std::process::id());
    let config = SwarmConfig {
        socket: DEFAULT_SOCKET.into(),
        network: format!("{owner}-net"),
        owner: owner.clone(),
    };
    let swarm = match Swarm::connect(config).await {
        Ok(swarm) => swarm,
        Err(error @ EngineError::NotReady(_)) => {
            needs(false, &format!("a swarm manager ({error})"));
            return;
        }
        Err(error) => panic!("{error}"),
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let registry = Registry::start(dir.path());
    let image = pushed_image(dir.path(), registry.addr).await;
    let env = format!("{owner}-e1");
    let cleanup = Cleanup {
        docker: swarm.docker().clone(),
        owner: owner.clone(),
        services: vec![molt_swarm::service_name(&env)],
        network: swarm.network().to_owned(),
    };

    // Two instances, each with its own overlay address and the port of the spec, and a
    // secret file (any bytes) as a Docker secret of the environment.
    let secret = format!("\0\u{7f} swarm secret {}", std::process::id()).into_bytes();
    let with_secret = EnvironmentSpec {
        secret_files: vec![SecretFile {
            name: "TOKEN".into(),
            value: secret.clone(),
        }],
        ..spec(&env, &image, 2)
    };
    swarm.start_environment(&with_secret).await.expect("start");
    let instances = wait_for(&swarm, &env, "2 running", |i| running(i).len() == 2).await;
    for instance in running(&instances) {
        let addr = instance.addr.expect("an overlay address");
        assert_eq!(addr.port(), 8080);
        assert!(instance.node.is_some());
        let container = task_container(swarm.docker(), &instance.id).await;
        let exec = |args: &[&str]| {
            let out = std::process::Command::new("docker")
                .args(["exec", &container, "/bin/busybox"])
                .args(args)
                .output()
                .expect("docker exec");
            assert!(out.status.success(), "{args:?}: {out:?}");
            out.stdout
        };
        assert!(
            exec(&["cat", "/run/secrets/TOKEN"]) == secret,
            "the file's bytes"
        );
        assert_eq!(
            exec(&["stat", "-c", "%a %u", "/run/secrets/TOKEN"]),
            b"400 65534\n"
        );
        let env = String::from_utf8(exec(&["env"])).unwrap();
        assert!(env.contains("MOLT_SECRETS_DIR=/run/secrets\n"), "{env}");
    }
    assert_eq!(own_secrets(swarm.docker(), &owner).await.len(), 1);
    // Starting again (a resumed deployment) changes nothing.
    swarm
        .start_environment(&spec(&env, &image, 2))
        .await
        .expect("start again");
    let listed = swarm.environments().await.expect("environments");
    let mine: Vec<_> = listed.iter().filter(|e| e.env == env).collect();
    assert_eq!(mine.len(), 1, "{listed:#?}");
    assert_eq!((mine[0].app.as_str(), mine[0].release), ("web", 1));
    assert_eq!(mine[0].instances, 2);
    assert_eq!(mine[0].image, image);

    // Scale up and down.
    swarm.scale(&env, 3).await.expect("scale to 3");
    wait_for(&swarm, &env, "3 running", |i| running(i).len() == 3).await;
    swarm.scale(&env, 1).await.expect("scale to 1");
    let instances = wait_for(&swarm, &env, "1 running", |i| running(i).len() == 1).await;

    // A task whose container dies is replaced by Swarm; molt sees the old one ended.
    let victim = running(&instances)[0].id.clone();
    let container = task_container(swarm.docker(), &victim).await;
    swarm
        .docker()
        .post_unit(
            &format!("/containers/{container}/kill?signal=KILL"),
            &serde_json::json!({}),
            "kill a container",
        )
        .await
        .expect("kill the task's container");
    let instances = wait_for(&swarm, &env, "healed", |i| {
        running(i).len() == 1 && running(i)[0].id != victim
    })
    .await;
    let ended = instances
        .iter()
        .find(|i| i.id == victim)
        .expect("the killed task is still listed");
    assert!(
        matches!(ended.state, EngineInstanceState::Ended { .. }),
        "{ended:?}"
    );

    // Engine errors come back in the engine's words and change nothing.
    let bad = EnvironmentSpec {
        limits: molt_provider::Limits {
            memory: Some(1),
            ..Default::default()
        },
        ..spec(&format!("{owner}-bad"), &image, 1)
    };
    let error = swarm
        .start_environment(&bad)
        .await
        .expect_err("1 byte of memory");
    assert!(matches!(error, EngineError::Refused { .. }), "{error:?}");
    assert!(error.to_string().contains("emory"), "{error}");
    assert!(swarm
        .instances(&format!("{owner}-bad"))
        .await
        .expect("list")
        .is_empty());

    // Stopping removes the service; stopping again is no error.
    swarm.stop_environment(&env).await.expect("stop");
    swarm.stop_environment(&env).await.expect("stop again");
    assert!(swarm.instances(&env).await.expect("list").is_empty());
    assert_eq!(
        own_secrets(swarm.docker(), &owner).await,
        Vec::<String>::new()
    );
    assert!(!swarm
        .environments()
        .await
        .expect("environments")
        .iter()
        .any(|e| e.env == env));
    drop(cleanup);
}

/// The names of the Docker secrets `owner` made.
async fn own_secrets(docker: &Docker, owner: &str) -> Vec<String> {
    let filters = serde_json::json!({ "label": [format!("molt.owner={owner}")] }).to_string();
    let secrets: Vec<serde_json::Value> = docker
        .get(
            &format!("/secrets?filters={}", molt_swarm::query_escape(&filters)),
            "list secrets",
        )
        .await
        .expect("secrets");
    secrets
        .iter()
        .filter_map(|s| s["Spec"]["Name"].as_str().map(str::to_owned))
        .collect()
}

async fn task_container(docker: &Docker, task: &str) -> String {
    let task: serde_json::Value = docker
        .get(&format!("/tasks/{task}"), "describe a task")
        .await
        .expect("task");
    task["Status"]["ContainerStatus"]["ContainerID"]
        .as_str()
        .expect("a container id")
        .to_owned()
}

/// Removes the test's services and network however the test ends.
struct Cleanup {
    docker: Docker,
    owner: String,
    services: Vec<String>,
    network: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let docker = self.docker.clone();
        let services = std::mem::take(&mut self.services);
        let network = self.network.clone();
        let owner = self.owner.clone();
        // A runtime of its own: this may run while the test's runtime unwinds.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async {
                for service in services {
                    let _ = docker
                        .delete(&format!("/services/{service}"), "remove a test service")
                        .await;
                }
                for secret in own_secrets(&docker, &owner).await {
                    let _ = docker
                        .delete(&format!("/secrets/{secret}"), "remove a test secret")
                        .await;
                }
                // The network goes once its tasks are gone.
                for _ in 0..50 {
                    match docker
                        .delete(&format!("/networks/{network}"), "remove a test network")
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
