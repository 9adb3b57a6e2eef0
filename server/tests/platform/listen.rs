//! The listener's limits (issue 16): a client that opens connections and sends nothing, or
//! never finishes its headers, cannot hold them open, and no more than the cap are served at
//! once, so file descriptors cannot run out and `/healthz` keeps answering.

use std::time::{Duration, Instant};

use axum::routing::get;
use axum::Router;
use ifp_server::http::listen::{serve, Limits};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn start(limits: Limits) -> (std::net::SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = Router::new().route("/healthz", get(|| async { "ok" }));
    let (stop, stopped) = tokio::sync::oneshot::channel();
    tokio::spawn(serve(listener, app, limits, async move {
        let _ = stopped.await;
    }));
    (addr, stop)
}

/// GET /healthz on a new connection; the response text.
async fn healthz(addr: std::net::SocketAddr) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

/// Reads until the server closes the connection; how long after `t0` that was (None: not
/// within `max`).
async fn closed_after(s: &mut TcpStream, t0: Instant, max: Duration) -> Option<Duration> {
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(max.saturating_sub(t0.elapsed()), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Some(t0.elapsed()),
            Ok(Ok(_)) => continue, // a 408 response, if the server sends one
            Err(_) => return None,
        }
    }
}

#[tokio::test]
async fn unfinished_headers_are_cut_off_at_the_deadline() {
    let (addr, _stop) = start(Limits {
        max_connections: 16,
        header_read_timeout: Duration::from_secs(1),
    })
    .await;
    // Silent, then slow-loris: a header line that never ends with the blank line.
    let t0 = Instant::now();
    let mut silent = TcpStream::connect(addr).await.unwrap();
    let mut slow = TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    for s in [&mut silent, &mut slow] {
        let took = closed_after(s, t0, Duration::from_secs(5)).await;
        assert!(
            took.is_some_and(|t| t >= Duration::from_millis(900)),
            "closed after {took:?}, expected about 1 s"
        );
    }
    assert!(healthz(addr).await.ends_with("ok"));
}

#[tokio::test]
async fn connections_past_the_cap_wait_until_one_ends() {
    let (addr, _stop) = start(Limits {
        max_connections: 3,
        header_read_timeout: Duration::from_secs(2),
    })
    .await;
    let mut idle = Vec::new();
    for _ in 0..3 {
        idle.push(TcpStream::connect(addr).await.unwrap());
    }
    // Give the server time to take all three before the fourth arrives.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let t0 = Instant::now();
    let answer = tokio::time::timeout(Duration::from_secs(10), healthz(addr))
        .await
        .expect("/healthz answered once the idle connections timed out");
    let waited = t0.elapsed();
    assert!(answer.ends_with("ok"), "{answer}");
    // Served only when the idle ones were cut off (2 s after they connected), not before.
    assert!(
        waited >= Duration::from_millis(1500),
        "served after {waited:?}: the cap of 3 did not hold"
    );
    // Once slots are free, requests are served at once.
    let t0 = Instant::now();
    assert!(healthz(addr).await.ends_with("ok"));
    assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
}
