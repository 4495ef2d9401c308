//! The dashboard on a real in-process `molt serve`: login, CSRF on every action, pages that
//! parse as HTML without errors, the live section over SSE, and a real Chromium (driven over
//! WebDriver) that logs in, sees the live release, clicks rollback and sees the route move.

mod support;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use html5ever::tendril::TendrilSink;
use support::webdriver::Browser;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// An answer of the API listener.
struct Answer {
    status: u16,
    head: String,
    body: String,
}

impl Answer {
    /// The value of a `Set-Cookie` for `name`.
    fn cookie(&self, name: &str) -> Option<String> {
        self.head
            .lines()
            .filter_map(|l| l.strip_prefix("set-cookie: "))
            .filter_map(|c| c.split(';').next())
            .filter_map(|c| c.split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_string())
    }

    fn location(&self) -> Option<&str> {
        self.head.lines().find_map(|l| l.strip_prefix("location: "))
    }
}

/// One HTTP/1.1 exchange (a form body when `form` is given).
async fn http(h: &Harness, method: &str, path: &str, cookie: &str, form: Option<&str>) -> Answer {
    let addr = h.running.as_ref().expect("running").api_addr;
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let body = form.unwrap_or("");
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nCookie: {cookie}\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Answer {
        status,
        head: head.to_ascii_lowercase(),
        body: body.to_string(),
    }
}

/// The value of the first hidden `csrf` field of a page.
fn csrf_of(page: &str) -> String {
    let start = page.find("name=\"csrf\" value=\"").expect("a csrf field") + 19;
    page[start..]
        .split('"')
        .next()
        .unwrap_or_default()
        .to_string()
}

/// Logs in with `token`; returns the session cookie (`name=value`) and its CSRF token.
async fn log_in(h: &Harness, token: &str) -> (String, String) {
    let form = http(h, "GET", "/login", "", None).await;
    let login_csrf = form.cookie("molt_login").expect("the login cookie");
    assert_eq!(csrf_of(&form.body), login_csrf);
    let answer = http(
        h,
        "POST",
        "/login",
        &format!("molt_login={login_csrf}"),
        Some(&format!("token={token}&csrf={login_csrf}")),
    )
    .await;
    assert_eq!(answer.status, 303, "{}", answer.body);
    assert!(
        answer.head.contains("httponly; samesite=strict"),
        "{}",
        answer.head
    );
    let session = format!("molt_session={}", answer.cookie("molt_session").unwrap());
    let page = http(h, "GET", "/", &session, None).await;
    assert_eq!(page.status, 200);
    (session, csrf_of(&page.body))
}

/// Parses a page as a browser would; every parse error fails.
fn assert_parses(what: &str, page: &str) {
    let opts = html5ever::ParseOpts {
        tree_builder: html5ever::tree_builder::TreeBuilderOpts {
            exact_errors: true,
            ..Default::default()
        },
        ..Default::default()
    };
    let dom = html5ever::parse_document(markup5ever_rcdom::RcDom::default(), opts).one(page);
    let errors = dom.errors.borrow();
    assert!(
        errors.is_empty(),
        "{what} has HTML errors: {errors:?}\n{page}"
    );
}

/// The environment the app's route points at, as the API says.
async fn routed(h: &Harness, app: &str) -> String {
    let status = h.client.get(&format!("/v1/apps/{app}")).await.unwrap();
    status["app"]["routed_env"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

/// Two releases of `shop`, the first one warm.
async fn two_releases(h: &Harness) -> (String, String) {
    let app = h.app("shop", &[], FAST);
    let first = h.deploy(&app).await["env"].as_str().unwrap().to_string();
    let second = h.deploy(&app).await["env"].as_str().unwrap().to_string();
    (first, second)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logging_in_pages_and_every_action_needs_the_csrf_token() {
    let h = Harness::start().await;
    let (first, second) = two_releases(&h).await;
    let token = h.running.as_ref().unwrap().token.clone();

    // Without a session: to the login page. A wrong token, or a login form from elsewhere, is
    // refused.
    let answer = http(&h, "GET", "/", "", None).await;
    assert_eq!((answer.status, answer.location()), (303, Some("/login")));
    let login = http(&h, "GET", "/login", "", None).await;
    assert_parses("the login page", &login.body);
    let login_csrf = login.cookie("molt_login").unwrap();
    let cookie = format!("molt_login={login_csrf}");
    let wrong = http(
        &h,
        "POST",
        "/login",
        &cookie,
        Some(&format!("token=nope&csrf={login_csrf}")),
    )
    .await;
    assert_eq!(wrong.status, 401);
    assert_parses("the refused login", &wrong.body);
    let forged = http(
        &h,
        "POST",
        "/login",
        "",
        Some(&format!("token={token}&csrf={login_csrf}")),
    )
    .await;
    assert_eq!(forged.status, 403);
    assert!(forged.cookie("molt_session").is_none());

    let (session, csrf) = log_in(&h, &token).await;
    let started = Instant::now();
    let apps = http(&h, "GET", "/", &session, None).await;
    let apps_ms = started.elapsed().as_millis();
    assert!(
        apps.body.contains("<a href=\"/apps/shop\">shop</a>"),
        "{}",
        apps.body
    );
    assert!(
        apps.body.contains("<td class=\"release\">v2</td>"),
        "{}",
        apps.body
    );
    assert_parses("the apps page", &apps.body);
    let started = Instant::now();
    let app = http(&h, "GET", "/apps/shop", &session, None).await;
    let app_ms = started.elapsed().as_millis();
    assert!(app.body.contains("Roll back to v1"), "{}", app.body);
    assert_parses("the app page", &app.body);
    let started = Instant::now();
    let images = http(&h, "GET", "/images", &session, None).await;
    let images_ms = started.elapsed().as_millis();
    assert!(images.body.contains("shop@v1"), "{}", images.body);
    assert_parses("the images page", &images.body);
    eprintln!(
        "page weight and server time: apps {} B in {apps_ms} ms, app {} B in {app_ms} ms, \
         images {} B in {images_ms} ms (one request each, through the loopback socket)",
        apps.body.len(),
        app.body.len(),
        images.body.len()
    );
    let missing = http(&h, "GET", "/apps/nosuch", &session, None).await;
    assert_eq!(missing.status, 404);
    assert_parses("the problem page", &missing.body);

    // Every action refuses a form without the session's CSRF token, or with another one, and
    // nothing moves.
    let env_field = format!("env={first}");
    for action in ["rollback", "swap", "promote", "abort", "abandon"] {
        let path = format!("/apps/shop/{action}");
        for form in [
            env_field.clone(),
            format!("{env_field}&csrf=0000"),
            format!("{env_field}&csrf="),
        ] {
            let answer = http(&h, "POST", &path, &session, Some(&form)).await;
            assert_eq!(answer.status, 403, "{action} with {form}: {}", answer.body);
        }
    }
    let answer = http(&h, "POST", "/logout", &session, Some("csrf=wrong")).await;
    assert_eq!(answer.status, 403);
    assert_eq!(routed(&h, "shop").await, second);

    // With it: the swap back to the warm environment is one route move.
    let answer = http(
        &h,
        "POST",
        "/apps/shop/swap",
        &session,
        Some(&format!("{env_field}&csrf={csrf}")),
    )
    .await;
    assert_eq!(
        (answer.status, answer.location()),
        (303, Some("/apps/shop"))
    );
    assert_eq!(routed(&h, "shop").await, first);
    let (_, body) = h.get("shop.localhost", "/").await;
    assert!(body.starts_with("hello from shop v1"), "{body}");

    // The live section comes over SSE, rendered by the same code.
    let (event, _) = first_event(&h, "/events?view=app&app=shop", &session).await;
    assert!(event.contains("event: live"), "{event}");
    assert!(event.contains(&first), "{event}");
    let (_, mut open) = first_event(&h, "/events?view=apps", &session).await;

    // Logout ends the session, and its live streams.
    let answer = http(
        &h,
        "POST",
        "/logout",
        &session,
        Some(&format!("csrf={csrf}")),
    )
    .await;
    assert_eq!(answer.status, 303);
    let answer = http(&h, "GET", "/", &session, None).await;
    assert_eq!((answer.status, answer.location()), (303, Some("/login")));
    // The stream's answer ends (its last chunk), instead of another event every second.
    let mut rest = Vec::new();
    let mut buf = [0u8; 4096];
    while !rest.ends_with(b"0\r\n\r\n") {
        let n = open.read(&mut buf).await.unwrap();
        assert!(
            n > 0 && rest.len() < 1 << 20,
            "the stream went on after logout"
        );
        rest.extend_from_slice(&buf[..n]);
    }
    // A live stream still open when `molt serve` stops does not hold its shutdown.
    let (session, _) = log_in(&h, &token).await;
    let (_, _still_open) = first_event(&h, "/events?view=images", &session).await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_sees_only_the_buttons_its_role_allows() {
    let h = Harness::start().await;
    let (first, second) = two_releases(&h).await;
    let made = |name: &'static str, role: &'static str| {
        let client = h.client.clone();
        async move {
            let made = client
                .post(
                    "/v1/tokens",
                    &serde_json::json!({ "name": name, "role": role }),
                )
                .await
                .expect("token made");
            made["secret"].as_str().expect("secret").to_owned()
        }
    };
    // A router token opens nothing here.
    let router = made("edge", "router").await;
    let form = http(&h, "GET", "/login", "", None).await;
    let login_csrf = form.cookie("molt_login").expect("the login cookie");
    let answer = http(
        &h,
        "POST",
        "/login",
        &format!("molt_login={login_csrf}"),
        Some(&format!("token={router}&csrf={login_csrf}")),
    )
    .await;
    assert_eq!(answer.status, 401, "{}", answer.body);

    // A read token looks, without buttons, and its forms are refused.
    let read = made("viewer", "read").await;
    let (session, csrf) = log_in(&h, &read).await;
    let page = http(&h, "GET", "/apps/shop", &session, None).await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains(&first), "{}", page.body);
    assert!(!page.body.contains("/apps/shop/rollback"), "{}", page.body);
    assert!(!page.body.contains("/apps/shop/swap"), "{}", page.body);
    let answer = http(
        &h,
        "POST",
        "/apps/shop/swap",
        &session,
        Some(&format!("env={first}&csrf={csrf}")),
    )
    .await;
    assert_eq!(answer.status, 403, "{}", answer.body);
    assert!(
        answer.body.contains("cannot change shop"),
        "{}",
        answer.body
    );
    assert_eq!(routed(&h, "shop").await, second);

    // A deploy token has the buttons, and they work.
    let deploy = made("shipper", "deploy").await;
    let (session, csrf) = log_in(&h, &deploy).await;
    let page = http(&h, "GET", "/apps/shop", &session, None).await;
    assert!(page.body.contains("/apps/shop/swap") || page.body.contains("/apps/shop/rollback"));
    let answer = http(
        &h,
        "POST",
        "/apps/shop/swap",
        &session,
        Some(&format!("env={first}&csrf={csrf}")),
    )
    .await;
    assert_eq!(answer.status, 303, "{}", answer.body);
    assert_eq!(routed(&h, "shop").await, first);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_is_drawn_against_the_stable_environment() {
    let h = Harness::start().await;
    let stable = h.deploy(&h.app("shop", &[], FAST)).await;
    assert_eq!(stable["state"], "drained", "the stable release: {stable}");
    let canary = FAST.replace(
        "[deploy]\n",
        "[deploy]\nstrategy = \"canary\"\nsteps = [{ weight = 50, pause = \"1m\" }]\n",
    )
        + "[deploy.analysis]\ninterval = \"300ms\"\nmin_requests = 1\nprogress_deadline = \"5m\"\n";
    let dir = h.app("shop", &[("GREETING", "bonjour")], &canary);
    let d = start_deploy(&h.client, &dir).await.expect("deploy");
    let id = d["id"].as_u64().expect("id");
    // Requests of many users until two intervals are judged.
    let mut conn = KeepAlive::connect(h.router).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut bucket = 0u32;
    loop {
        bucket = (bucket + 7_919) % 10_000;
        let cookie = format!("molt-bucket={bucket}");
        conn.get_with("shop.localhost", "/", &[("cookie", &cookie)])
            .await
            .expect("request");
        let d = h
            .client
            .get(&format!("/v1/deployments/{id}"))
            .await
            .unwrap();
        let judged = d["deployment"]["canary"]["verdicts"]
            .as_array()
            .map_or(0, Vec::len);
        if judged >= 2 {
            break;
        }
        assert!(Instant::now() < deadline, "no verdicts: {d}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (session, _) = log_in(&h, &h.running.as_ref().unwrap().token.clone()).await;
    let page = http(&h, "GET", "/apps/shop", &session, None).await;
    assert_eq!(page.status, 200);
    assert!(
        page.body.contains("Canary against the stable environment"),
        "{}",
        page.body
    );
    assert!(
        page.body.contains("<svg class=\"compare\""),
        "{}",
        page.body
    );
    assert!(
        page.body.contains("success rate per interval"),
        "{}",
        page.body
    );
    assert_parses("the app page during a canary", &page.body);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_logins_are_limited_per_address_like_the_apis() {
    let h = Harness::start().await;
    let form = http(&h, "GET", "/login", "", None).await;
    let login_csrf = form.cookie("molt_login").expect("the login cookie");
    let attempt = |token: String| {
        let (h, csrf) = (&h, login_csrf.clone());
        async move {
            http(
                h,
                "POST",
                "/login",
                &format!("molt_login={csrf}"),
                Some(&format!("token={token}&csrf={csrf}")),
            )
            .await
            .status
        }
    };
    // The API's default: 30 failures at once from one address, then one every 2 s.
    for i in 0..35 {
        assert_eq!(attempt(format!("wrong{i}")).await, 401);
    }
    // Now even the right token is refused from this address: the attempts were counted.
    let token = h.running.as_ref().unwrap().token.clone();
    assert_eq!(attempt(token).await, 401);
    h.stop().await;
}

/// The first event of an SSE stream (read until its blank line, at most 64 KiB), and the
/// stream, still open.
async fn first_event(h: &Harness, path: &str, cookie: &str) -> (String, tokio::net::TcpStream) {
    let addr = h.running.as_ref().unwrap().api_addr;
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nCookie: {cookie}\r\n\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while seen.len() < 64 * 1024 {
        let n = stream.read(&mut buf).await.unwrap();
        if n == 0 {
            break;
        }
        seen.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&seen);
        if let Some((_, body)) = text.split_once("\r\n\r\n") {
            if body.contains("\n\n") {
                return (text.to_string(), stream);
            }
        }
    }
    (String::from_utf8_lossy(&seen).to_string(), stream)
}

/// Where the screenshots go: `$MOLT_SCREENSHOTS` (the README's copies, refreshed by
/// `scripts/dashboard-screenshots`), else the test target's temp dir.
fn screenshots() -> PathBuf {
    match std::env::var_os("MOLT_SCREENSHOTS") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard-screenshots"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_logs_in_sees_the_live_release_and_rolls_back() {
    if !molt_testkit::needs_command("chromium") || !molt_testkit::needs_command("chromedriver") {
        return;
    }
    let h = Harness::start().await;
    let (first, second) = two_releases(&h).await;
    let token = h.running.as_ref().unwrap().token.clone();
    let base = format!("http://{}", h.running.as_ref().unwrap().api_addr);
    let shots = screenshots();
    let browser = Browser::start().await.expect("chromium under chromedriver");

    browser.goto(&format!("{base}/")).await.unwrap();
    assert!(browser.url().await.unwrap().ends_with("/login"));
    browser.screenshot(&shots.join("login.png")).await.unwrap();
    let field = browser.find("#token").await.unwrap();
    browser.type_into(&field, &token).await.unwrap();
    browser.click_css("form button[type=submit]").await.unwrap();

    // The apps view: the app, its live release.
    let row = browser
        .wait_for_text("tr[data-app=shop]", &second)
        .await
        .unwrap();
    assert!(row.contains("v2") && row.contains(&second), "{row}");
    browser.screenshot(&shots.join("apps.png")).await.unwrap();

    // The app: click the rollback button of the warm environment; the route moves.
    browser.click_css("a[href='/apps/shop']").await.unwrap();
    browser.wait_for_text(".routed", &second).await.unwrap();
    browser.screenshot(&shots.join("app.png")).await.unwrap();
    browser
        .click_css(&format!("tr[data-env='{first}'] button"))
        .await
        .unwrap();
    browser.wait_for_text(".routed", &first).await.unwrap();
    assert_eq!(routed(&h, "shop").await, first);
    let (_, body) = h.get("shop.localhost", "/").await;
    assert!(body.starts_with("hello from shop v1"), "{body}");

    // A change made elsewhere (the API) shows up without a reload, over SSE.
    h.client
        .post("/v1/apps/shop/swap", &serde_json::json!({ "env": second }))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = browser
            .execute("return document.querySelector('.routed').textContent")
            .await
            .unwrap();
        if text.as_str() == Some(second.as_str()) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the page never showed {second}: {text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    browser
        .screenshot(&shots.join("app-live.png"))
        .await
        .unwrap();

    // A deployment started elsewhere appears on the open page, step by step, without a reload.
    let app_dir = h.app("shop", &[], FAST);
    let started = start_deploy(&h.client, &app_dir).await.unwrap();
    let id = started["id"].as_u64().unwrap();
    let heading = format!("Deployment {id} of v3");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = browser.text("#live").await.unwrap_or_default();
        if text.contains(&heading) && text.contains("swapped") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the page never showed {heading} reaching its swap: {text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    browser
        .screenshot(&shots.join("app-deployment.png"))
        .await
        .unwrap();

    browser.goto(&format!("{base}/images")).await.unwrap();
    assert!(browser
        .text("table.images")
        .await
        .unwrap()
        .contains("shop@v2"));
    browser.screenshot(&shots.join("images.png")).await.unwrap();
    browser.close().await;
    eprintln!("screenshots in {}", shots.display());
    h.stop().await;
}
