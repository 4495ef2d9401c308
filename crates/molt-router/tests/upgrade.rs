//! HTTP/1.1 upgrades through the router: a real WebSocket client against a WebSocket echo
//! upstream, with the router relaying both ways.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use molt_router::{EnvStats, RouterConfig};
use support::{dead_addr, eventually, table, upstream, within, Harness, Reply};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

type WebSocket = WebSocketStream<TcpStream>;

/// A WebSocket upstream: greets each client with `"{name}: welcome host=… xff=…"` (what the
/// handshake request carried), then echoes every text message as `"{name}: {text}"` and
/// every binary message as is.
async fn websocket_upstream(name: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind upstream");
    let addr = listener.local_addr().expect("upstream addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(echo(name, stream));
        }
    });
    addr
}

// The handshake callback's error type is tungstenite's HTTP response.
#[allow(clippy::result_large_err)]
async fn echo(name: &'static str, stream: TcpStream) {
    let mut seen = String::new();
    let remember = |request: &Request, response: Response| {
        let header = |key: &str| {
            request
                .headers()
                .get(key)
                .and_then(|value| value.to_str().ok())
                .unwrap_or("-")
                .to_owned()
        };
        seen = format!("host={} xff={}", header("host"), header("x-forwarded-for"));
        Ok(response)
    };
    let Ok(mut socket) = tokio_tungstenite::accept_hdr_async(stream, remember).await else {
        return;
    };
    let greeting = format!("{name}: welcome {seen}");
    if socket.send(Message::text(greeting)).await.is_err() {
        return;
    }
    while let Some(Ok(message)) = socket.next().await {
        let reply = match message {
            Message::Text(text) => Message::text(format!("{name}: {}", text.as_str())),
            Message::Binary(data) => Message::binary(data),
            Message::Close(_) => break,
            _ => continue,
        };
        if socket.send(reply).await.is_err() {
            break;
        }
    }
}

/// Opens a WebSocket to `ws://{host}/chat` through the router; returns it after the greeting.
async fn connect(router: SocketAddr, host: &str) -> (WebSocket, String) {
    let stream = within(TcpStream::connect(router)).await.expect("connect");
    let request = format!("ws://{host}/chat")
        .into_client_request()
        .expect("ws request");
    let (mut socket, response) = within(tokio_tungstenite::client_async(request, stream))
        .await
        .expect("websocket handshake through the router");
    assert_eq!(response.status(), 101);
    let greeting = next_text(&mut socket).await;
    (socket, greeting)
}

async fn next_text(socket: &mut WebSocket) -> String {
    match within(socket.next()).await {
        Some(Ok(Message::Text(text))) => text.as_str().to_owned(),
        other => panic!("expected a text message, got {other:?}"),
    }
}

async fn round_trip(socket: &mut WebSocket, text: &str) -> String {
    within(socket.send(Message::text(text)))
        .await
        .expect("send");
    next_text(socket).await
}

/// True once the router closed the socket: the stream ends, errors or gets a close frame.
async fn closed_by_peer(socket: &mut WebSocket) -> bool {
    for _ in 0..100 {
        match within(socket.next()).await {
            None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return true,
            Some(Ok(_)) => continue,
        }
    }
    false
}

#[tokio::test]
async fn websocket_messages_echo_both_ways_and_count_in_flight() {
    let blue = websocket_upstream("blue").await;
    let harness = Harness::start(RouterConfig::default()).await;
    let router = &harness.router;
    router
        .publish(table(&[("app.test", "blue", &[blue])]))
        .await;

    let (mut socket, greeting) = connect(harness.addr, "app.test").await;
    // Upstream to client unprompted, with the handshake's headers forwarded.
    assert_eq!(greeting, "blue: welcome host=app.test xff=127.0.0.1");
    for text in ["hello", "second", "third"] {
        assert_eq!(round_trip(&mut socket, text).await, format!("blue: {text}"));
    }
    let payload = vec![0u8, 1, 2, 255];
    within(socket.send(Message::binary(payload.clone())))
        .await
        .expect("send binary");
    match within(socket.next()).await {
        Some(Ok(Message::Binary(data))) => assert_eq!(&data[..], &payload[..]),
        other => panic!("expected binary, got {other:?}"),
    }
    assert_eq!(
        router.env_stats("blue"),
        EnvStats {
            accepted: 1,
            in_flight: 1,
            answered: 1,
            failed: 0
        }
    );

    // The close handshake: the upstream answers the close frame and closes, then the client
    // closes its side; the tunnel ends when both directions have.
    within(socket.close(None)).await.expect("close");
    assert!(closed_by_peer(&mut socket).await);
    drop(socket);
    assert!(eventually(|| router.env_stats("blue").in_flight == 0).await);
    assert_eq!(router.env_stats("blue").accepted, 1);
}

#[tokio::test]
async fn upgraded_connection_keeps_its_env_undrained_until_closed() {
    let blue = websocket_upstream("blue").await;
    let green = websocket_upstream("green").await;
    let harness = Harness::start(RouterConfig::default()).await;
    let router = &harness.router;
    router
        .publish(table(&[("app.test", "blue", &[blue])]))
        .await;

    let (mut socket, _) = connect(harness.addr, "app.test").await;
    router
        .publish(table(&[("app.test", "green", &[green])]))
        .await;
    // Within the (30 s) grace: still open, still on blue, blue not drained.
    assert_eq!(round_trip(&mut socket, "still").await, "blue: still");
    assert!(!router.is_drained("blue"));
    let (_fresh, greeting) = connect(harness.addr, "app.test").await;
    assert!(greeting.starts_with("green: welcome"), "{greeting}");

    drop(socket);
    assert!(eventually(|| router.is_drained("blue")).await);
}

#[tokio::test]
async fn upgraded_connection_is_closed_after_grace_once_its_env_is_unrouted() {
    let blue = websocket_upstream("blue").await;
    let green = websocket_upstream("green").await;
    let steady = websocket_upstream("steady").await;
    let harness = Harness::start(RouterConfig {
        upgrade_grace: Duration::from_millis(200),
        ..RouterConfig::default()
    })
    .await;
    let router = &harness.router;
    router
        .publish(table(&[
            ("app.test", "blue", &[blue]),
            ("other.test", "steady", &[steady]),
        ]))
        .await;

    let (mut moved, _) = connect(harness.addr, "app.test").await;
    let (mut kept, _) = connect(harness.addr, "other.test").await;
    router
        .publish(table(&[
            ("app.test", "green", &[green]),
            ("other.test", "steady", &[steady]),
        ]))
        .await;

    assert!(closed_by_peer(&mut moved).await, "blue's socket was closed");
    assert!(eventually(|| router.is_drained("blue")).await);
    // The grace period is over, and the connection to a still routed env is untouched.
    assert_eq!(round_trip(&mut kept, "ping").await, "steady: ping");
    assert_eq!(router.env_stats("steady").in_flight, 1);
}

#[tokio::test]
async fn shutdown_closes_upgraded_connections_after_the_grace_period() {
    let blue = websocket_upstream("blue").await;
    let harness = Harness::start(RouterConfig {
        shutdown_grace: Duration::from_millis(200),
        ..RouterConfig::default()
    })
    .await;
    let router = &harness.router;
    router
        .publish(table(&[("app.test", "blue", &[blue])]))
        .await;

    let (mut socket, _) = connect(harness.addr, "app.test").await;
    harness.shutdown.cancel();
    within(harness.serving)
        .await
        .expect("serve task")
        .expect("serve result");
    assert!(closed_by_peer(&mut socket).await);
    assert!(eventually(|| router.env_stats("blue").in_flight == 0).await);
}

/// Sends a raw HTTP/1.1 upgrade request; returns the response head and whatever body came
/// before the connection went quiet or closed.
async fn raw_upgrade(router: SocketAddr, upgrade: &str, want: &str) -> String {
    let mut stream = within(TcpStream::connect(router)).await.expect("connect");
    let request = format!(
        "GET / HTTP/1.1\r\nHost: app.test\r\nConnection: Upgrade\r\nUpgrade: {upgrade}\r\n\r\n"
    );
    within(stream.write_all(request.as_bytes()))
        .await
        .expect("write");
    let mut response = Vec::new();
    let mut buf = [0u8; 4096];
    for _ in 0..100 {
        let n = within(stream.read(&mut buf)).await.expect("read");
        response.extend_from_slice(&buf[..n]);
        if n == 0 || String::from_utf8_lossy(&response).ends_with(want) {
            break;
        }
    }
    String::from_utf8_lossy(&response).to_ascii_lowercase()
}

#[tokio::test]
async fn declined_upgrades_are_ordinary_responses() {
    let plain = upstream(Reply::Name("plain")).await;
    let harness = Harness::start(RouterConfig::default()).await;
    let router = &harness.router;
    router
        .publish(table(&[("app.test", "plain", &[plain])]))
        .await;

    // The upstream ignores the upgrade and answers 200.
    let response = raw_upgrade(harness.addr, "websocket", "plain").await;
    assert!(response.starts_with("http/1.1 200 ok\r\n"), "{response}");
    assert!(response.ends_with("\r\n\r\nplain"), "{response}");
    // h2c upgrades are not relayed: a plain request.
    let response = raw_upgrade(harness.addr, "h2c", "plain").await;
    assert!(response.starts_with("http/1.1 200 ok\r\n"), "{response}");
    assert!(eventually(|| router.env_stats("plain").in_flight == 0).await);
    assert_eq!(router.env_stats("plain").answered, 2);
}

#[tokio::test]
async fn upgrade_to_an_unreachable_upstream_is_a_counted_502() {
    let dead = dead_addr().await;
    let harness = Harness::start(RouterConfig::default()).await;
    let router = &harness.router;
    router
        .publish(table(&[("app.test", "gone", &[dead])]))
        .await;
    let response = raw_upgrade(harness.addr, "websocket", "reached\n").await;
    assert!(
        response.starts_with("http/1.1 502 bad gateway\r\n"),
        "{response}"
    );
    assert_eq!(
        router.env_stats("gone"),
        EnvStats {
            accepted: 1,
            in_flight: 0,
            answered: 0,
            failed: 1
        }
    );
}

#[tokio::test]
async fn upgrade_skips_an_unreachable_instance() {
    let dead = dead_addr().await;
    let blue = websocket_upstream("blue").await;
    let harness = Harness::start(RouterConfig::default()).await;
    let router = &harness.router;
    router
        .publish(table(&[("app.test", "blue", &[dead, blue])]))
        .await;
    for _ in 0..2 {
        let (mut socket, greeting) = connect(harness.addr, "app.test").await;
        assert!(greeting.starts_with("blue: welcome"), "{greeting}");
        assert_eq!(round_trip(&mut socket, "hi").await, "blue: hi");
    }
    assert_eq!(router.env_stats("blue").failed, 0);
}
