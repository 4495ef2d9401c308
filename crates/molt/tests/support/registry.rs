//! A real registry for push and pull tests: Debian's `docker-registry` (distribution 2.8) on
//! 127.0.0.1 with htpasswd auth (user molt, password s3cret) and storage in a temp dir. A
//! test checks `needs_command("docker-registry") && needs_command("htpasswd")` first.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The registry process, killed (by its own pid) when dropped.
pub struct Registry {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts a registry keeping its files under `dir`; returns once it accepts connections.
pub fn start_registry(dir: &Path) -> Registry {
    let htpasswd = Command::new("htpasswd")
        .args(["-Bbn", "molt", "s3cret"])
        .output()
        .unwrap();
    assert!(htpasswd.status.success(), "htpasswd failed");
    std::fs::write(dir.join("htpasswd"), &htpasswd.stdout).unwrap();
    // A free port: bind, note it, release it for the registry.
    let addr = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    std::fs::write(
        dir.join("config.yml"),
        format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
             http:\n  addr: {addr}\nauth:\n  htpasswd:\n    realm: t\n    path: {}\n",
            dir.join("storage").display(),
            dir.join("htpasswd").display()
        ),
    )
    .unwrap();
    let child = Command::new("docker-registry")
        .arg("serve")
        .arg(dir.join("config.yml"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let registry = Registry { child, addr };
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "registry did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    registry
}
