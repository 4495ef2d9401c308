//! A real Chromium, headless, driven over the W3C WebDriver protocol by Debian's
//! `chromedriver`. The client is the few commands the dashboard's tests use, written here over
//! a plain socket: a WebDriver crate (fantoccini pulls in the `webdriver` crate with its
//! ICU segmenter, cookie and time crates, and an HTTP client stack) would cost more to build on
//! a 2-core CI machine than these lines, and nothing here needs more.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use base64::Engine as _;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A browser session, and the driver process behind it (stopped on drop).
pub struct Browser {
    driver: Child,
    port: u16,
    session: String,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts `chromedriver` on a free loopback port and a headless Chromium session with a
    /// fresh profile.
    pub async fn start() -> Result<Browser> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting chromedriver")?;
        let profile = tempfile::tempdir()?;
        let mut browser = Browser {
            driver,
            port,
            session: String::new(),
            _profile: profile,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while browser.call("GET", "/status", None).await.is_err() {
            if Instant::now() > deadline {
                bail!("chromedriver did not answer on port {port}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let profile_dir = browser._profile.path().display().to_string();
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    "--window-size=1280,900",
                    format!("--user-data-dir={profile_dir}"),
                ]
            }
        }}});
        let answer = browser.call("POST", "/session", Some(caps)).await?;
        browser.session = answer["sessionId"]
            .as_str()
            .ok_or_else(|| anyhow!("no session id in {answer}"))?
            .to_string();
        Ok(browser)
    }

    /// Opens `url` and waits for it to load.
    pub async fn goto(&self, url: &str) -> Result<()> {
        self.session_call("POST", "/url", Some(json!({ "url": url })))
            .await
            .map(drop)
    }

    /// The current URL.
    pub async fn url(&self) -> Result<String> {
        let v = self.session_call("GET", "/url", None).await?;
        Ok(v.as_str().unwrap_or_default().to_string())
    }

    /// The element a CSS selector finds first.
    pub async fn find(&self, css: &str) -> Result<String> {
        let v = self
            .session_call(
                "POST",
                "/element",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await
            .with_context(|| format!("finding {css}"))?;
        v.as_object()
            .and_then(|o| o.values().next())
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| anyhow!("no element id in {v}"))
    }

    /// Clicks an element.
    pub async fn click(&self, element: &str) -> Result<()> {
        self.session_call(
            "POST",
            &format!("/element/{element}/click"),
            Some(json!({})),
        )
        .await
        .map(drop)
    }

    /// Types into an element.
    pub async fn type_into(&self, element: &str, text: &str) -> Result<()> {
        self.session_call(
            "POST",
            &format!("/element/{element}/value"),
            Some(json!({ "text": text })),
        )
        .await
        .map(drop)
    }

    /// The text of the element a CSS selector finds, read in one step in the page (the
    /// dashboard replaces its live section every second: an element found in one command may be
    /// gone by the next).
    pub async fn text(&self, css: &str) -> Result<String> {
        let v = self
            .session_call(
                "POST",
                "/execute/sync",
                Some(json!({
                    "script": "var e = document.querySelector(arguments[0]); return e ? e.textContent : null;",
                    "args": [css]
                })),
            )
            .await?;
        v.as_str()
            .map(str::to_string)
            .ok_or_else(|| anyhow!("nothing matches {css}"))
    }

    /// Waits (at most 20 s) until the element a CSS selector finds has text containing
    /// `wanted` (a click that submits a form returns before the next page is there), and
    /// returns that text.
    pub async fn wait_for_text(&self, css: &str, wanted: &str) -> Result<String> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let text = self.text(css).await;
            match text {
                Ok(t) if t.contains(wanted) => return Ok(t),
                _ if Instant::now() > deadline => {
                    bail!("{css} never showed {wanted:?} (last: {text:?})")
                }
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// Finds and clicks the element a CSS selector finds, again (at most 10 times) when the
    /// live section was replaced in between.
    pub async fn click_css(&self, css: &str) -> Result<()> {
        let mut last = None;
        for _ in 0..10 {
            let element = self.find(css).await?;
            match self.click(&element).await {
                Ok(()) => return Ok(()),
                Err(e) if e.to_string().contains("stale element") => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow!("clicking {css}")))
    }

    /// Runs a script in the page and returns its value.
    pub async fn execute(&self, script: &str) -> Result<Value> {
        self.session_call(
            "POST",
            "/execute/sync",
            Some(json!({"script": script, "args": []})),
        )
        .await
    }

    /// Saves a PNG of the window to `path`.
    pub async fn screenshot(&self, path: &Path) -> Result<()> {
        let v = self.session_call("GET", "/screenshot", None).await?;
        let png = base64::engine::general_purpose::STANDARD
            .decode(v.as_str().unwrap_or_default())
            .context("decoding the screenshot")?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, png).with_context(|| format!("writing {}", path.display()))
    }

    /// Ends the session (the driver stops on drop).
    pub async fn close(self) {
        let _ = self.session_call("DELETE", "", None).await;
    }

    async fn session_call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value> {
        let path = format!("/session/{}{path}", self.session);
        self.call(method, &path, body).await
    }

    /// One WebDriver command: its `value`, or the error it answered with.
    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value> {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await?;
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n",
            self.port,
            body.len()
        );
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(body.as_bytes()).await?;
        // chromedriver may keep the connection open: read the head, then exactly its body.
        let read = async {
            let mut answer = Vec::new();
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                if let Some(split) = answer.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&answer[..split]).to_ascii_lowercase();
                    let length = head.lines().find_map(|l| {
                        l.strip_prefix("content-length:")
                            .and_then(|v| v.trim().parse::<usize>().ok())
                    });
                    let chunked = head.contains("transfer-encoding: chunked");
                    let body = &answer[split + 4..];
                    let complete = match length {
                        Some(n) => body.len() >= n,
                        None if chunked => body.ends_with(b"0\r\n\r\n"),
                        None => false,
                    };
                    if complete {
                        let body = match length {
                            Some(n) => body[..n].to_vec(),
                            None => dechunk(body),
                        };
                        return Ok::<_, anyhow::Error>((head, body));
                    }
                }
                let n = stream.read(&mut buf).await?;
                if n == 0 {
                    bail!("chromedriver closed the connection mid-answer");
                }
                answer.extend_from_slice(&buf[..n]);
            }
        };
        let (head, body) = tokio::time::timeout(Duration::from_secs(90), Box::pin(read))
            .await
            .map_err(|_| anyhow!("{method} {path}: no answer from chromedriver in 90 s"))??;
        let body = String::from_utf8_lossy(&body);
        let v: Value = serde_json::from_str(&body).with_context(|| format!("{method} {path}"))?;
        let value = v.get("value").cloned().unwrap_or(Value::Null);
        if !head.starts_with("http/1.1 200") {
            bail!("{method} {path}: {value}");
        }
        Ok(value)
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// The body of a chunked answer.
fn dechunk(mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for _ in 0..100_000 {
        let Some(end) = body.windows(2).position(|w| w == b"\r\n") else {
            break;
        };
        let size = std::str::from_utf8(&body[..end])
            .ok()
            .and_then(|s| usize::from_str_radix(s.trim(), 16).ok());
        let rest = &body[end + 2..];
        match size {
            Some(size) if size > 0 && rest.len() >= size => {
                out.extend_from_slice(&rest[..size]);
                body = rest[size..].strip_prefix(b"\r\n").unwrap_or(&rest[size..]);
            }
            _ => break,
        }
    }
    out
}
