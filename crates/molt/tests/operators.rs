//! What operators read: instance logs rotated by size and count, read back across their
//! rotations and removed with their environment by GC; `molt serve`'s own log as JSON lines;
//! the router's access log; HSTS only over TLS.

mod support;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use molt_server::{LogRotation, TlsConfig};
use molt_testkit::needs_command;
use nix::sys::signal::Signal;
use serde_json::{json, Value};
use support::*;

/// An app that writes 40 lines of about 80 bytes (3.2 KB) for each `GET /say/<word>`.
const CHATTY_APP: &str = r#"
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        if self.path.startswith("/say/"):
            word = self.path[len("/say/"):]
            for i in range(40):
                print(f"{word} line {i:02} " + "x" * 60, flush=True)
        self.send_response(200)
        self.send_header("Content-Length", "3")
        self.end_headers()
        self.wfile.write(b"ok\n")

    def log_message(self, *args):
        pass

ThreadingHTTPServer((os.environ.get("HOST", "127.0.0.1"), int(os.environ["PORT"])), Handler).serve_forever()
"#;

/// `FAST` with one instance, so every request lands in the same log.
fn one_instance() -> String {
    FAST.replace("instances = 2", "instances = 1")
}

/// The log files of `instance`: the current one and its rotations `.1` … `.3`.
fn log_files(data: &Path, instance: &str) -> Vec<PathBuf> {
    let current = data.join("logs").join(format!("{instance}.log"));
    let mut files = vec![current.clone()];
    files.extend((1..=3).map(|n| PathBuf::from(format!("{}.{n}", current.display()))));
    files
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn instance_logs_rotate_are_read_across_rotations_and_go_with_their_environment() {
    let clock = manual_clock();
    let h = Harness::start_with(|cfg| {
        cfg.clock = clock.clone();
        cfg.instance_log = LogRotation {
            max_bytes: 4096,
            files: 2,
        };
    })
    .await;
    let dir = h.app("chatty", &[], &one_instance());
    std::fs::write(dir.join("app.py"), CHATTY_APP).expect("write the app");
    let first = h.deploy(&dir).await;
    assert_eq!(first["state"], "drained", "{first}");
    let env = first["env"].as_str().expect("env").to_owned();
    let instance = format!("{env}-1");
    let [current, one, two, three] =
        <[PathBuf; 4]>::try_from(log_files(&h.data_dir(), &instance)).expect("four paths");
    assert!(current.exists(), "{} is written", current.display());
    let say = |word: &'static str| {
        let h = &h;
        async move {
            let (status, _) = h.get("chatty.localhost", &format!("/say/{word}")).await;
            assert_eq!(status, 200);
        }
    };

    // 3.2 KB stays; 6.4 KB is over 4 KiB and is rotated into `.1`.
    say("alpha").await;
    say("bravo").await;
    eventually(Duration::from_secs(30), "the first rotation", || async {
        read(&one).contains("bravo line 39")
    })
    .await;
    assert!(
        !read(&current).contains("bravo"),
        "the current log was emptied"
    );
    say("charlie").await;
    // The last lines across the rotation, in order: `molt logs` reads `.1` then the log.
    let logs = h
        .client
        .get(&format!(
            "/v1/apps/chatty/logs?instance={instance}&lines=60"
        ))
        .await
        .expect("logs");
    let text = logs[0]["log"].as_str().expect("log text");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 60, "{text}");
    assert!(lines[0].starts_with("bravo line 20 "), "{}", lines[0]);
    assert!(lines[19].starts_with("bravo line 39 "), "{}", lines[19]);
    assert!(lines[20].starts_with("charlie line 00 "), "{}", lines[20]);
    assert!(lines[59].starts_with("charlie line 39 "), "{}", lines[59]);
    // The CLI prints the same lines.
    let cli = molt_command(&h.data_dir(), &["logs", "chatty", "--lines", "60"])
        .output()
        .expect("molt logs");
    let printed = text_of(&cli);
    assert!(
        printed.contains("bravo line 20 ") && printed.contains("charlie line 39 "),
        "{printed}"
    );

    // Two more rotations: two rotated files are kept, the oldest lines dropped.
    say("delta").await;
    eventually(Duration::from_secs(30), "the second rotation", || async {
        read(&two).contains("alpha") && read(&one).contains("delta line 39")
    })
    .await;
    say("echo").await;
    say("foxtrot").await;
    eventually(Duration::from_secs(30), "the third rotation", || async {
        read(&one).contains("foxtrot line 39")
    })
    .await;
    assert!(read(&two).contains("charlie") && !read(&two).contains("alpha"));
    assert!(!three.exists(), "only two rotated files are kept");
    let all = h
        .client
        .get(&format!(
            "/v1/apps/chatty/logs?instance={instance}&lines=10000"
        ))
        .await
        .expect("logs");
    let all = all[0]["log"].as_str().expect("log text");
    assert!(
        !all.contains("alpha") && all.contains("charlie line 00"),
        "{all}"
    );

    // A new release; once the old environment's rollback window has passed, GC collects it,
    // and its instance's logs go with it. The live instance's log stays.
    let next = h
        .client
        .post(
            "/v1/apps/chatty/config",
            &json!({ "set": { "ROUND": "2" } }),
        )
        .await
        .expect("config set");
    let next = wait_deployment(&h.client, next["id"].as_u64().expect("id")).await;
    assert_eq!(next["state"], "drained", "{next}");
    let live = format!("{}-1", next["env"].as_str().expect("env"));
    clock.advance(Duration::from_secs(16 * 60));
    let gc = h.client.post("/v1/gc", &json!({})).await.expect("gc");
    assert_eq!(gc["envs"], json!([env]), "{gc}");
    for path in [&current, &one, &two] {
        assert!(!path.exists(), "{} was removed", path.display());
    }
    assert!(
        log_files(&h.data_dir(), &live)[0].exists(),
        "the live log stays"
    );
    h.stop().await;
}

fn text_of(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Sends `raw` on a fresh connection to `addr` and returns what comes back until the server
/// closes the connection.
fn raw_exchange(addr: std::net::SocketAddr, raw: &[u8]) -> String {
    let mut stream = std::net::TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    stream.write_all(raw).expect("send");
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn json_logs_and_the_access_log_of_proxied_unknown_and_refused_requests() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let data = tmp.path().join("data");
    let access = tmp.path().join("access.log");
    let extra = [
        "--log-format".to_owned(),
        "json".to_owned(),
        "--access-log".to_owned(),
        access.display().to_string(),
    ];
    let mut serve = Serve::start_with_args(&data, None, true, None, &extra);
    let app = make_app(tmp.path(), "shop", &[], FAST);
    let d = deploy_dir(&serve.client, &app).await;
    assert_eq!(d["state"], "drained", "{d}");
    let env = d["env"].as_str().expect("env").to_owned();

    let (status, body) = serve.get("shop.localhost").await;
    assert_eq!((status, body.starts_with("hello from shop")), (200, true));
    let mut conn = KeepAlive::connect(serve.router).await;
    let (status, _) = conn
        .get("nowhere.localhost", "/missing")
        .await
        .expect("get");
    assert_eq!(status, 404);
    // Ambiguous framing (a length and chunked): refused before it is parsed.
    let refused = raw_exchange(
        serve.router,
        b"POST / HTTP/1.1\r\nHost: shop.localhost\r\nContent-Length: 5\r\n\
          Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    );
    assert!(refused.starts_with("HTTP/1.1 400"), "{refused}");

    let lines: Vec<Value> = std::fs::read_to_string(&access)
        .expect("the access log")
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect();
    let find = |status: u64| {
        lines
            .iter()
            .find(|line| line["status"] == status)
            .unwrap_or_else(|| panic!("no {status} in {lines:#?}"))
    };
    let proxied = find(200);
    assert_eq!(proxied["app"], "shop", "{proxied}");
    assert_eq!(proxied["env"], env.as_str(), "{proxied}");
    assert!(
        proxied["instance"].as_str().unwrap().starts_with(&env),
        "{proxied}"
    );
    assert_eq!(proxied["host"], "shop.localhost");
    assert_eq!(proxied["method"], "GET");
    assert_eq!(proxied["bytes"], body.len());
    let request_id = proxied["request_id"].as_str().expect("request id");
    assert!(!request_id.is_empty() && request_id != "-", "{proxied}");
    let (total, upstream) = (
        proxied["duration_us"].as_u64().expect("duration"),
        proxied["upstream_us"].as_u64().expect("upstream time"),
    );
    assert!(upstream <= total, "{proxied}");
    let unknown = find(404);
    assert_eq!(
        (&unknown["host"], &unknown["path"], &unknown["app"]),
        (&json!("nowhere.localhost"), &json!("/missing"), &json!("-"))
    );
    assert!(unknown["request_id"].as_str().is_some_and(|id| id != "-"));
    assert!(unknown["duration_us"].is_u64() && unknown["bytes"].is_u64());
    let malformed = find(400);
    assert_eq!(malformed["message"], "refused", "{malformed}");
    assert_eq!(malformed["client"], "127.0.0.1");
    assert!(malformed["bytes"].as_u64().unwrap() > 0, "{malformed}");
    for line in &lines {
        for field in [
            "request_id",
            "app",
            "env",
            "instance",
            "status",
            "bytes",
            "duration_us",
        ] {
            assert!(!line[field].is_null(), "{field} missing: {line}");
        }
    }

    // molt serve's own log: every line a JSON object with a level and a message; the access
    // events are not in it.
    let status = serve.signal(Signal::SIGTERM);
    assert!(status.success(), "{status}");
    let own = serve_log(&data);
    let mut parsed = 0;
    for line in own.lines().filter(|line| !line.trim().is_empty()) {
        let value: Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(
            value["level"].is_string() && value["timestamp"].is_string(),
            "{line}"
        );
        assert!(value["message"].is_string(), "{line}");
        assert_ne!(value["target"], "molt_router::access", "{line}");
        parsed += 1;
    }
    assert!(parsed >= 3, "{own}");
    assert!(own.contains("router listening"), "{own}");
}

/// curl's response headers (lower-cased) for `url`, with `extra` arguments.
fn headers_of(url: &str, extra: &[&str]) -> String {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "-o", "/dev/null", "-D", "-"])
        .args(extra)
        .arg(url)
        .output()
        .expect("run curl");
    assert!(out.status.success(), "curl {url}: {}", text_of(&out));
    String::from_utf8_lossy(&out.stdout).to_lowercase()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hsts_is_sent_over_tls_only() {
    if !needs_command("curl") {
        return;
    }
    let work = tempfile::tempdir().expect("temp dir");
    let certs = work.path().join("certs");
    std::fs::create_dir(&certs).expect("mkdir");
    let (cert, key) = self_signed("shop.localhost");
    std::fs::write(certs.join("shop.localhost.pem"), format!("{cert}{key}")).expect("write");
    let cert_dir = certs.clone();
    let h = Harness::start_with(move |cfg| {
        let mut tls = TlsConfig::new("127.0.0.1:0".parse().expect("addr"));
        tls.cert_dir = Some(cert_dir);
        tls.https_redirect = true;
        tls.hsts_max_age = Some(31_536_000);
        cfg.tls = Some(tls);
    })
    .await;
    let tls = h
        .running
        .as_ref()
        .and_then(|r| r.router_tls_addr)
        .expect("TLS listener");
    let d = h.deploy(&h.app("shop", &[], FAST)).await;
    assert_eq!(d["state"], "drained", "{d}");

    let https = format!("https://shop.localhost:{}/", tls.port());
    let resolve = format!("shop.localhost:{}:127.0.0.1", tls.port());
    for protocol in ["--http1.1", "--http2"] {
        let headers = headers_of(&https, &[protocol, "-k", "--resolve", &resolve]);
        assert!(headers.starts_with("http/"), "{headers}");
        assert!(
            headers.contains("strict-transport-security: max-age=31536000"),
            "{protocol}: {headers}"
        );
    }
    // Over TLS, for a host without a certificate (the connection's name has one): none.
    let other = headers_of(
        &https,
        &[
            "--http1.1",
            "-k",
            "--resolve",
            &resolve,
            "-H",
            "Host: other.localhost",
        ],
    );
    assert!(other.starts_with("http/1.1 404"), "{other}");
    assert!(!other.contains("strict-transport-security"), "{other}");
    let plain = format!("http://127.0.0.1:{}/", h.router.port());
    // Plain HTTP: the redirect for a host with a certificate, and a host without one.
    let redirect = headers_of(&plain, &["-H", "Host: shop.localhost"]);
    assert!(redirect.starts_with("http/1.1 308"), "{redirect}");
    assert!(
        !redirect.contains("strict-transport-security"),
        "{redirect}"
    );
    let other = headers_of(&plain, &["-H", "Host: other.localhost"]);
    assert!(other.starts_with("http/1.1 404"), "{other}");
    assert!(!other.contains("strict-transport-security"), "{other}");
    h.stop().await;
}

/// A self-signed certificate and its key (PEM) for `host`.
fn self_signed(host: &str) -> (String, String) {
    let key = rcgen::KeyPair::generate().expect("key");
    let params = rcgen::CertificateParams::new(vec![host.to_owned()]).expect("params");
    let cert = params.self_signed(&key).expect("certificate");
    (cert.pem(), key.serialize_pem())
}
