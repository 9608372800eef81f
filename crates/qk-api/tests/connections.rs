//! The HTTPS listener under connection abuse, over real TLS: idle
//! connections from one address (no client certificate is needed to
//! connect) cannot take the listener from others, and an HTTP/1 connection
//! that sends no request is closed after the header timeout.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use common::Harness;
use qk_api::{HEADER_READ_TIMEOUT, MAX_CONNECTIONS, MAX_CONNECTIONS_PER_IP, MAX_HANDSHAKES_PER_IP};
use tokio::io::AsyncReadExt;
use tokio::net::TcpSocket;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// A TLS connection from `from` that never sends a request.
async fn idle_tls(h: &Harness, from: IpAddr) -> std::io::Result<TlsStream<tokio::net::TcpStream>> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(from, 0))?;
    let tcp = socket.connect(h.server.local_addr()).await?;
    let connector = TlsConnector::from(Arc::new(h.tls(None)));
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    tokio::time::timeout(Duration::from_secs(10), connector.connect(name, tcp))
        .await
        .map_err(|_| std::io::Error::other("handshake timed out"))?
}

/// An HTTPS client whose connections come from `from`.
fn client_from(h: &Harness, from: IpAddr, timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .use_preconfigured_tls(h.tls(None))
        .local_address(from)
        .timeout(timeout)
        .build()
        .unwrap()
}

async fn live_from(h: &Harness, from: IpAddr) -> reqwest::StatusCode {
    client_from(h, from, Duration::from_secs(10))
        .get(h.url("/api/v1/health/live"))
        .send()
        .await
        .unwrap()
        .status()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_from_one_address_do_not_starve_the_others() {
    let h = Harness::start().await;
    let flooder: IpAddr = "127.0.0.1".parse().unwrap();
    let honest: IpAddr = "127.0.0.2".parse().unwrap();
    let mut idle = Vec::new();
    let mut refused = 0;
    for _ in 0..MAX_CONNECTIONS_PER_IP + 44 {
        match idle_tls(&h, flooder).await {
            Ok(stream) => idle.push(stream),
            Err(_) => refused += 1,
        }
    }
    assert_eq!(idle.len(), MAX_CONNECTIONS_PER_IP, "{refused} refused");
    assert_eq!(live_from(&h, honest).await, reqwest::StatusCode::OK);

    // Each idle HTTP/1 connection is closed once the header timeout passes.
    let deadline = HEADER_READ_TIMEOUT + Duration::from_secs(10);
    for mut stream in idle {
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(deadline, stream.read(&mut byte)).await;
        assert!(
            matches!(read, Ok(Ok(0)) | Ok(Err(_))),
            "an idle connection was still open after {deadline:?}: {read:?}"
        );
    }
    assert_eq!(live_from(&h, flooder).await, reqwest::StatusCode::OK);
}

/// Sends `head` on a fresh TLS connection and reads the status line
/// (bounded: the test fails rather than waits if the server does not answer).
async fn status_after(h: &Harness, head: &str) -> String {
    use tokio::io::AsyncWriteExt;
    let mut tls = idle_tls(h, "127.0.0.1".parse().unwrap()).await.unwrap();
    tls.write_all(head.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 512];
    let n = tokio::time::timeout(Duration::from_secs(5), tls.read(&mut buf))
        .await
        .expect("the server answered before the body arrived")
        .unwrap();
    String::from_utf8_lossy(&buf[..n])
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_announced_over_the_limit_is_refused_before_it_is_sent() {
    let h = Harness::start().await;
    for (path, what) in [
        ("/api/v1/keys/k/encrypt", "native"),
        ("/v1/transit/encrypt/k", "vault"),
    ] {
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{{",
            common::ALICE_TOKEN,
            2 * 1024 * 1024
        );
        let status = status_after(&h, &head).await;
        assert!(status.contains(" 413 "), "{what}: {status}");
    }
    h.server.shutdown().await;
}

/// Clients that open TCP connections and never start their TLS handshake
/// hold [`MAX_HANDSHAKES_PER_IP`] slots of their address, not its 256: the
/// next connection from that address is closed at once, another address is
/// served, and once the stalled ones are gone the address is served again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_handshakes_hold_at_most_their_share_of_an_address() {
    let h = Harness::start().await;
    let staller: IpAddr = "127.0.0.1".parse().unwrap();
    let connect = || async {
        let socket = TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::new(staller, 0)).unwrap();
        socket.connect(h.server.local_addr()).await.unwrap()
    };
    let mut stalled = Vec::new();
    for _ in 0..MAX_HANDSHAKES_PER_IP {
        stalled.push(connect().await);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut next = connect().await;
    let read = tokio::time::timeout(Duration::from_secs(3), next.read(&mut [0u8; 1])).await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "a connection past the stalled handshakes' share was kept: {read:?}"
    );
    assert_eq!(
        live_from(&h, "127.0.0.2".parse().unwrap()).await,
        reqwest::StatusCode::OK
    );
    drop(stalled);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while idle_tls(&h, staller).await.is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "the stalled handshakes' slots were not given back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Idle TLS connections from many addresses (each within its per-address
/// share) fill every slot of the listener: a new client is still served,
/// because the connection idle the longest is closed to make room for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_from_many_addresses_make_room_for_a_new_client() {
    let h = Harness::start().await;
    let mut idle = Vec::new();
    for address in 1..=MAX_CONNECTIONS / MAX_CONNECTIONS_PER_IP {
        let from = IpAddr::from([127, 0, 1, u8::try_from(address).unwrap()]);
        for _ in 0..MAX_CONNECTIONS_PER_IP {
            idle.push(idle_tls(&h, from).await.unwrap());
        }
    }
    let client = client_from(&h, "127.0.0.9".parse().unwrap(), Duration::from_secs(5));
    for round in 0..3 {
        let answer = client.get(h.url("/api/v1/health/live")).send().await;
        assert!(
            matches!(&answer, Ok(r) if r.status() == reqwest::StatusCode::OK),
            "round {round}: a new client was not served while idle connections held every slot: {answer:?}"
        );
    }
    // The oldest idle connection made room; the newest ones are still open.
    let mut oldest = idle.remove(0);
    let read = tokio::time::timeout(Duration::from_secs(3), oldest.read(&mut [0u8; 1])).await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "the oldest idle connection was kept: {read:?}"
    );
    let mut newest = idle.pop().unwrap();
    let read = tokio::time::timeout(Duration::from_millis(300), newest.read(&mut [0u8; 1])).await;
    assert!(
        read.is_err(),
        "the newest idle connection was closed: {read:?}"
    );
}
