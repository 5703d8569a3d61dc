//! The Toxiproxy client against a real server (`TOXIPROXY_URL`, from scripts/toxiproxy.sh start)
//! proxying a TCP echo server: each toxic changes real traffic, and removing it restores it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use captain_testkit::toxiproxy::{Toxic, Toxiproxy, ToxiproxyError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Far above any round trip on 127.0.0.1, far below a test timeout.
const ANSWER: Duration = Duration::from_secs(10);
const LATENCY: Duration = Duration::from_millis(400);

fn server() -> Toxiproxy {
    Toxiproxy::from_env().unwrap_or_else(|e| panic!("{e}"))
}

/// A proxy name no other test (or concurrent run) uses.
fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{prefix}-{}-{nanos}", std::process::id())
}

/// An echo server on a free port; runs until the test ends.
async fn echo() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                while let Ok(n) = conn.read(&mut buf).await {
                    if n == 0 || conn.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

/// Sends `payload` and reads the same number of bytes back; the time that took.
async fn round_trip(conn: &mut TcpStream, payload: &[u8]) -> std::io::Result<Duration> {
    let t0 = Instant::now();
    conn.write_all(payload).await?;
    let mut back = vec![0u8; payload.len()];
    conn.read_exact(&mut back).await?;
    assert_eq!(back, payload, "the echo came back altered");
    Ok(t0.elapsed())
}

async fn answered(conn: &mut TcpStream, payload: &[u8]) -> Duration {
    tokio::time::timeout(ANSWER, round_trip(conn, payload))
        .await
        .expect("an answer through the proxy")
        .expect("a working connection through the proxy")
}

#[tokio::test]
async fn a_latency_toxic_delays_every_round_trip_until_it_is_removed() {
    let server = server();
    assert_eq!(server.version().await.unwrap(), "v2.12.0");
    let proxy = server
        .create_proxy(&unique("latency"), "127.0.0.1:0", &echo().await)
        .await
        .unwrap();
    assert!(!proxy.listen().ends_with(":0"), "the server picked a port");
    let mut conn = TcpStream::connect(proxy.listen()).await.unwrap();
    let plain = answered(&mut conn, b"ping").await;

    let toxic = Toxic::latency(LATENCY);
    let info = proxy.add_toxic(&toxic).await.unwrap();
    assert_eq!(
        (info.name.as_str(), info.kind.as_str()),
        ("latency_downstream", "latency")
    );
    let slow = answered(&mut conn, b"ping").await;
    assert!(
        slow >= LATENCY,
        "{slow:?} with a {LATENCY:?} latency toxic (was {plain:?})"
    );

    proxy.remove_toxic(toxic.name()).await.unwrap();
    assert!(proxy.toxics().await.unwrap().is_empty());
    let restored = answered(&mut conn, b"ping").await;
    assert!(restored < LATENCY, "{restored:?} after removing the toxic");
    proxy.delete().await.unwrap();
}

#[tokio::test]
async fn a_cut_stops_traffic_without_closing_and_its_removal_lets_new_connections_through() {
    let server = server();
    let proxy = server
        .create_proxy(&unique("cut"), "127.0.0.1:0", &echo().await)
        .await
        .unwrap();
    let mut conn = TcpStream::connect(proxy.listen()).await.unwrap();
    answered(&mut conn, b"before").await;

    let cut = Toxic::cut();
    proxy.add_toxic(&cut).await.unwrap();
    conn.write_all(b"lost").await.unwrap();
    let mut buf = [0u8; 16];
    // Nothing to await here but silence: a bounded wait is the only way to observe it.
    let during = tokio::time::timeout(Duration::from_secs(1), conn.read(&mut buf)).await;
    assert!(during.is_err(), "data crossed a cut proxy: {during:?}");

    proxy.remove_toxic(cut.name()).await.unwrap();
    // Removing the toxic closes the connections it held (toxiproxy's cleanup), as a peer's
    // timeout would have; a new connection gets through.
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(ANSWER, conn.read_to_end(&mut rest)).await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "the held connection stays open after the cut: {closed:?}"
    );
    let mut again = TcpStream::connect(proxy.listen()).await.unwrap();
    answered(&mut again, b"after").await;
    proxy.delete().await.unwrap();
}

#[tokio::test]
async fn a_bandwidth_toxic_caps_the_rate() {
    let server = server();
    let proxy = server
        .create_proxy(&unique("bandwidth"), "127.0.0.1:0", &echo().await)
        .await
        .unwrap();
    let mut conn = TcpStream::connect(proxy.listen()).await.unwrap();
    proxy.add_toxic(&Toxic::bandwidth(20)).await.unwrap();
    // 30 KB at 20 KB/s cannot come back in less than a second.
    let payload = vec![7u8; 30 * 1024];
    let took = answered(&mut conn, &payload).await;
    assert!(
        took >= Duration::from_secs(1),
        "30 KB in {took:?} at 20 KB/s"
    );
    proxy.delete().await.unwrap();
}

#[tokio::test]
async fn a_reset_peer_toxic_resets_the_connection_and_a_disabled_proxy_refuses_new_ones() {
    let server = server();
    let mut proxy = server
        .create_proxy(&unique("reset"), "127.0.0.1:0", &echo().await)
        .await
        .unwrap();
    let mut conn = TcpStream::connect(proxy.listen()).await.unwrap();
    answered(&mut conn, b"ping").await;

    let reset = Toxic::reset_peer(Duration::ZERO);
    proxy.add_toxic(&reset).await.unwrap();
    let err = tokio::time::timeout(ANSWER, round_trip(&mut conn, b"ping"))
        .await
        .expect("the reset to be noticed")
        .expect_err("a round trip through a reset connection");
    assert!(
        matches!(
            err.kind(),
            std::io::ErrorKind::ConnectionReset
                | std::io::ErrorKind::UnexpectedEof
                | std::io::ErrorKind::BrokenPipe
        ),
        "{err:?}"
    );
    proxy.remove_toxic(reset.name()).await.unwrap();
    let mut again = TcpStream::connect(proxy.listen()).await.unwrap();
    answered(&mut again, b"ping").await;

    proxy.set_enabled(false).await.unwrap();
    assert!(TcpStream::connect(proxy.listen()).await.is_err());
    proxy.set_enabled(true).await.unwrap();
    let mut back = TcpStream::connect(proxy.listen()).await.unwrap();
    answered(&mut back, b"ping").await;
    proxy.delete().await.unwrap();
}

#[tokio::test]
async fn api_refusals_name_the_call_and_the_servers_reason() {
    let server = server();
    let name = unique("dup");
    let proxy = server
        .create_proxy(&name, "127.0.0.1:0", &echo().await)
        .await
        .unwrap();
    let err = server
        .create_proxy(&name, "127.0.0.1:0", "127.0.0.1:1")
        .await
        .unwrap_err();
    assert!(
        matches!(err, ToxiproxyError::Refused { status: 409, .. }),
        "{err}"
    );
    assert!(
        err.to_string().contains(&format!("create proxy {name}")),
        "{err}"
    );
    let err = proxy.remove_toxic("absent").await.unwrap_err();
    assert!(
        matches!(err, ToxiproxyError::Refused { status: 404, .. }),
        "{err}"
    );
    assert!(!err.is_retriable());
    proxy.delete().await.unwrap();
}
