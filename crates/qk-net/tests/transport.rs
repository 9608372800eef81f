//! Real sockets on 127.0.0.1: round trips, refused peers, hostile frames,
//! reconnects, and the openraft network.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, ensure, Context, Result};
use openraft::error::{Fatal, RPCError, RaftError};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, VoteRequest, VoteResponse};
use openraft::Vote;
use qk_net::frame::read_frame;
use qk_net::{
    BoxFuture, CaCert, ClusterCa, Credentials, Dialer, NetConfig, NetError, NetworkFactory, Peer,
    RpcHandler, Server, MAX_FRAME_LEN,
};
use qk_raft::{decode, encode, PeerRequest, PeerResponse, QkNode};
use qk_wire::{ClientRequest, ClientResponse};

/// Answers `GetKey { name }` with `[peer, name]`; `name == "sleep"` sleeps
/// first; `ListKeys` panics; Raft RPCs only from nodes.
#[derive(Default)]
struct TestHandler {
    calls: AtomicUsize,
}

impl RpcHandler for TestHandler {
    fn handle(&self, peer: Peer, req: PeerRequest) -> BoxFuture<'_, PeerResponse> {
        Box::pin(async move {
            self.calls.fetch_add(1, Ordering::SeqCst);
            match req {
                PeerRequest::Client(ClientRequest::GetKey { name }) => {
                    if name == "sleep" {
                        tokio::time::sleep(Duration::from_secs(3)).await;
                    }
                    PeerResponse::Client(ClientResponse::Keys(vec![peer.to_string(), name]))
                }
                PeerRequest::Client(ClientRequest::ListKeys) => {
                    panic!("handler panic (deliberate, test)")
                }
                PeerRequest::Vote(_)
                | PeerRequest::AppendEntries(_)
                | PeerRequest::InstallSnapshot(_)
                    if !matches!(peer, Peer::Node(_)) =>
                {
                    PeerResponse::Refused(format!("Raft RPCs are for nodes, not {peer}"))
                }
                PeerRequest::Vote(v) if v.vote.leader_id().voted_for() == Some(99) => {
                    PeerResponse::Vote(Err(RaftError::Fatal(Fatal::Stopped)))
                }
                PeerRequest::Vote(v) => {
                    PeerResponse::Vote(Ok(VoteResponse::new(v.vote, None, true)))
                }
                PeerRequest::AppendEntries(_) => {
                    PeerResponse::AppendEntries(Ok(AppendEntriesResponse::Success))
                }
                _ => PeerResponse::Refused("unsupported in this test".to_owned()),
            }
        })
    }
}

fn fast_config() -> NetConfig {
    let mut cfg = NetConfig::default();
    cfg.request_timeout = Duration::from_secs(5);
    cfg.connect_timeout = Duration::from_secs(2);
    cfg.backoff_initial = Duration::from_millis(20);
    cfg.backoff_max = Duration::from_millis(200);
    cfg.shutdown_grace = Duration::from_secs(1);
    cfg
}

/// Node 1 serving `cfg` on a free port with a [`TestHandler`].
async fn node_1(ca: &ClusterCa, cfg: NetConfig) -> Result<Server> {
    let creds = ca.issue_node(1, &["127.0.0.1"])?;
    let handler = Arc::new(TestHandler::default());
    Ok(Server::bind(localhost(), ca.cert(), &creds, cfg, handler).await?)
}

fn localhost() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

async fn start_node(
    ca: &ClusterCa,
    id: u64,
    addr: SocketAddr,
) -> Result<(Server, Arc<TestHandler>)> {
    let creds = ca.issue_node(id, &["127.0.0.1"])?;
    let handler = Arc::new(TestHandler::default());
    let server = Server::bind(addr, ca.cert(), &creds, fast_config(), handler.clone()).await?;
    Ok((server, handler))
}

fn get_key(name: &str) -> PeerRequest {
    PeerRequest::Client(ClientRequest::GetKey {
        name: name.to_owned(),
    })
}

fn keys(resp: PeerResponse) -> Result<Vec<String>> {
    match resp {
        PeerResponse::Client(ClientResponse::Keys(k)) => Ok(k),
        other => bail!("unexpected response {other:?}"),
    }
}

#[tokio::test]
async fn request_response_round_trip_between_nodes_and_from_clients() -> Result<()> {
    let ca = ClusterCa::generate("qk test")?;
    let (server, handler) = start_node(&ca, 1, localhost()).await?;
    let addr = server.local_addr().to_string();

    // Node 2 dials node 1.
    let node2 = Dialer::new(ca.cert(), &ca.issue_node(2, &["127.0.0.1"])?, fast_config())?;
    let to1 = node2.node(1, &addr);
    let got = keys(to1.call(&get_key("alpha")).await?)?;
    assert_eq!(got, vec!["node 2".to_owned(), "alpha".to_owned()]);
    assert_eq!(to1.connected_peer().await, Some(Peer::Node(1)));

    // Concurrent calls share the pooled client and its connection.
    let again = node2.node(1, &addr);
    let (req_a, req_b) = (get_key("a"), get_key("b"));
    let (a, b) = tokio::join!(again.call(&req_a), to1.call(&req_b));
    assert_eq!(keys(a?)?[1], "a");
    assert_eq!(keys(b?)?[1], "b");

    // A plain client dials whichever node is there.
    let ops = Dialer::new(ca.cert(), &ca.issue_client("ops")?, fast_config())?;
    let any = ops.any_node(&addr);
    let got = keys(any.call(&get_key("beta")).await?)?;
    assert_eq!(got, vec!["client \"ops\"".to_owned(), "beta".to_owned()]);
    assert_eq!(any.connected_peer().await, Some(Peer::Node(1)));

    // A panicking handler becomes a refusal, and the server keeps serving.
    let resp = any
        .call(&PeerRequest::Client(ClientRequest::ListKeys))
        .await?;
    ensure!(matches!(resp, PeerResponse::Refused(_)), "got {resp:?}");
    keys(any.call(&get_key("after panic")).await?)?;

    assert_eq!(handler.calls.load(Ordering::SeqCst), 6);
    server.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn certificates_from_another_ca_are_refused() -> Result<()> {
    let ca = ClusterCa::generate("qk test")?;
    let other = ClusterCa::generate("someone else")?;
    let (server, handler) = start_node(&ca, 1, localhost()).await?;
    let addr = server.local_addr().to_string();

    // A client whose certificate comes from another CA (even one trusting
    // our CA, so it would accept the server) is refused by the server.
    let intruder = Dialer::new(ca.cert(), &other.issue_client("mallory")?, fast_config())?;
    let result = intruder.any_node(&addr).call(&get_key("x")).await;
    ensure!(result.is_err(), "foreign client got {result:?}");

    // A foreign node certificate is refused too.
    let foreign_node = Dialer::new(
        ca.cert(),
        &other.issue_node(2, &["127.0.0.1"])?,
        fast_config(),
    )?;
    let result = foreign_node.node(1, &addr).call(&get_key("x")).await;
    ensure!(result.is_err(), "foreign node got {result:?}");

    // A client of the other cluster refuses our server.
    let stranger = Dialer::new(other.cert(), &other.issue_client("ops")?, fast_config())?;
    let result = stranger.any_node(&addr).call(&get_key("x")).await;
    ensure!(
        matches!(result, Err(NetError::Connection { .. })),
        "server of another CA accepted: {result:?}"
    );

    assert_eq!(
        handler.calls.load(Ordering::SeqCst),
        0,
        "a refused peer reached the handler"
    );

    // Legitimate peers are still served.
    let ops = Dialer::new(ca.cert(), &ca.issue_client("ops")?, fast_config())?;
    keys(ops.any_node(&addr).call(&get_key("ok")).await?)?;
    server.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn a_node_presenting_another_id_is_refused() -> Result<()> {
    let ca = ClusterCa::generate("qk test")?;
    let (server, handler) = start_node(&ca, 2, localhost()).await?;
    let addr = server.local_addr().to_string();
    let node1 = Dialer::new(ca.cert(), &ca.issue_node(1, &["127.0.0.1"])?, fast_config())?;

    let result = node1.node(3, &addr).call(&get_key("x")).await;
    match result {
        Err(NetError::Connection { .. } | NetError::WrongPeer { .. }) => {}
        other => bail!("node 2 accepted as node 3: {other:?}"),
    }
    // Backing off after the failure, without dialing again.
    let result = node1.node(3, &addr).call(&get_key("x")).await;
    ensure!(result.is_err(), "second attempt: {result:?}");
    assert_eq!(handler.calls.load(Ordering::SeqCst), 0);

    // Dialed as itself, it answers.
    keys(node1.node(2, &addr).call(&get_key("x")).await?)?;
    server.shutdown().await;
    Ok(())
}

/// A raw QUIC connection with valid credentials, to send hostile bytes.
async fn raw_connection(
    ca: &ClusterCa,
    addr: SocketAddr,
) -> Result<(quinn::Endpoint, quinn::Connection)> {
    raw_connection_from(ca, addr, localhost()).await
}

/// [`raw_connection`] from the local address `from`.
async fn raw_connection_from(
    ca: &ClusterCa,
    addr: SocketAddr,
    from: SocketAddr,
) -> Result<(quinn::Endpoint, quinn::Connection)> {
    let creds: Credentials = ca.issue_client("raw")?;
    let mut endpoint = quinn::Endpoint::client(from)?;
    endpoint.set_default_client_config(qk_net::tls::quic_client_config(
        ca.cert(),
        &creds,
        &fast_config(),
    )?);
    let conn = endpoint
        .connect(addr, qk_net::identity::ANY_NODE_SERVER_NAME)?
        .await?;
    Ok((endpoint, conn))
}

/// Sends raw bytes on a fresh stream and returns the decoded answer.
async fn send_raw(conn: &quinn::Connection, bytes: &[u8]) -> Result<PeerResponse> {
    let (mut send, mut recv) = conn.open_bi().await?;
    send.write_all(bytes).await?;
    send.finish()?;
    let body = tokio::time::timeout(Duration::from_secs(5), read_frame(&mut recv))
        .await
        .context("no answer")??;
    Ok(decode(&body)?)
}

fn refusal(resp: &PeerResponse) -> Option<&str> {
    match resp {
        PeerResponse::Refused(reason) => Some(reason),
        _ => None,
    }
}

#[tokio::test]
async fn oversized_frames_are_refused_without_reading_them() -> Result<()> {
    let ca = ClusterCa::generate("qk test")?;
    let (server, handler) = start_node(&ca, 1, localhost()).await?;
    let (_endpoint, conn) = raw_connection(&ca, server.local_addr()).await?;

    for len in [MAX_FRAME_LEN + 1, u32::MAX] {
        // Only the header is sent: a server that trusted the length would
        // allocate it or wait for the body; it must answer at once instead.
        let (mut send, mut recv) = conn.open_bi().await?;
        send.write_all(&len.to_be_bytes()).await?;
        let body = tokio::time::timeout(Duration::from_secs(2), read_frame(&mut recv))
            .await
            .context("oversized frame not refused promptly")??;
        let resp: PeerResponse = decode(&body)?;
        let reason = refusal(&resp).ok_or_else(|| anyhow!("not refused: {resp:?}"))?;
        ensure!(reason.contains("exceeds the limit"), "reason: {reason}");
        // The server stopped reading this stream.
        let stopped = tokio::time::timeout(Duration::from_secs(2), send.stopped()).await?;
        ensure!(stopped.is_ok(), "stream not stopped: {stopped:?}");
    }

    // The client side refuses to send one too.
    let ops = Dialer::new(ca.cert(), &ca.issue_client("ops")?, fast_config())?;
    let big = get_key(&"x".repeat(MAX_FRAME_LEN as usize + 1));
    let result = ops
        .any_node(&server.local_addr().to_string())
        .call(&big)
        .await;
    ensure!(
        matches!(&result, Err(e) if e.is_too_large()),
        "oversized request sent: {result:?}"
    );

    // Same connection, well-formed request: still served.
    let ok = send_raw(&conn, &frame(&encode(&get_key("fine"))?)).await?;
    assert_eq!(keys(ok)?[1], "fine");
    assert_eq!(handler.calls.load(Ordering::SeqCst), 1);
    server.shutdown().await;
    Ok(())
}

fn frame(body: &[u8]) -> Vec<u8> {
    let mut out = (body.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(body);
    out
}

#[tokio::test]
async fn garbage_gets_an_error_and_the_server_keeps_serving() -> Result<()> {
    let ca = ClusterCa::generate("qk test")?;
    let (server, handler) = start_node(&ca, 1, localhost()).await?;
    let (_endpoint, conn) = raw_connection(&ca, server.local_addr()).await?;

    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("garbage body", frame(&[0xff; 64])),
        ("unknown variant", frame(&[0x7f, 1, 2, 3])),
        ("empty body", frame(&[])),
        ("truncated header", vec![0, 0]),
        ("truncated body", {
            let mut f = 100u32.to_be_bytes().to_vec();
            f.extend_from_slice(&[1; 10]);
            f
        }),
        ("valid request plus trailing junk", {
            let mut f = frame(&encode(&get_key("k"))?);
            f.extend_from_slice(&[0xde, 0xad]);
            f
        }),
    ];
    for (what, bytes) in cases {
        let resp = send_raw(&conn, &bytes)
            .await
            .with_context(|| what.to_owned())?;
        if what.starts_with("valid") {
            // Bytes after the frame are not read; the request is answered.
            assert_eq!(keys(resp)?[1], "k", "{what}");
        } else {
            ensure!(refusal(&resp).is_some(), "{what}: not refused: {resp:?}");
        }
    }
    // A stream that carries nothing at all.
    let (mut send, mut recv) = conn.open_bi().await?;
    send.finish()?;
    let body = read_frame(&mut recv).await?;
    ensure!(
        refusal(&decode(&body)?).is_some(),
        "empty stream not refused"
    );

    // The connection and the server still work.
    assert_eq!(
        keys(send_raw(&conn, &frame(&encode(&get_key("ok"))?)).await?)?[1],
        "ok"
    );
    let ops = Dialer::new(ca.cert(), &ca.issue_client("ops")?, fast_config())?;
    keys(
        ops.any_node(&server.local_addr().to_string())
            .call(&get_key("ok"))
            .await?,
    )?;
    assert_eq!(handler.calls.load(Ordering::SeqCst), 3);
    server.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn requests_time_out_and_the_connection_survives() -> Result<()> {
    let ca = ClusterCa::generate("qk test")?;
    let (server, _handler) = start_node(&ca, 1, localhost()).await?;
    let ops = Dialer::new(ca.cert(), &ca.issue_client("ops")?, fast_config())?;
    let client = ops.any_node(&server.local_addr().to_string());
    let result = client
        .call_with_timeout(&get_key("sleep"), Duration::from_millis(200))
        .await;
    ensure!(
        matches!(result, Err(NetError::Timeout { .. })),
        "got {result:?}"
    );
    keys(client.call(&get_key("quick")).await?)?;
    server.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn client_reconnects_after_the_server_restarts_on_the_same_port() -> Result<()> {
    let ca = ClusterCa::generate("qk test")?;
    let (server, _) = start_node(&ca, 1, localhost()).await?;
    let addr = server.local_addr();
    let node2 = Dialer::new(ca.cert(), &ca.issue_node(2, &["127.0.0.1"])?, fast_config())?;
    let client = node2.node(1, &addr.to_string());
    keys(client.call(&get_key("before")).await?)?;

    server.shutdown().await;
    let down = client.call(&get_key("while down")).await;
    ensure!(down.is_err(), "answered while down: {down:?}");

    // Same port; the socket may take a moment to be released.
    let mut restarted = None;
    for _ in 0..50 {
        match start_node(&ca, 1, addr).await {
            Ok(s) => {
                restarted = Some(s);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let (server, handler) = restarted.context("could not rebind the same port")?;

    // The client redials on its own, after at most the capped backoff.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match client.call(&get_key("after")).await {
            Ok(resp) => {
                assert_eq!(keys(resp)?[1], "after");
                break;
            }
            Err(e) if tokio::time::Instant::now() < deadline => {
                ensure!(e.is_unreachable(), "unexpected error kind: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => bail!("no reconnect within 10 s: {e}"),
        }
    }
    assert_eq!(handler.calls.load(Ordering::SeqCst), 1);
    server.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn openraft_network_round_trips_and_maps_errors() -> Result<()> {
    let ca = ClusterCa::generate("qk test")?;
    let (server, _) = start_node(&ca, 1, localhost()).await?;
    let node1 = QkNode {
        rpc_addr: server.local_addr().to_string(),
        api_url: String::new(),
    };
    let option = RPCOption::new(Duration::from_secs(2));

    let mut factory = NetworkFactory::new(Dialer::new(
        ca.cert(),
        &ca.issue_node(2, &["127.0.0.1"])?,
        fast_config(),
    )?);
    let mut net = factory.new_client(1, &node1).await;

    let vote = Vote::new(3, 2);
    let resp = net
        .vote(VoteRequest::new(vote, None), option.clone())
        .await
        .map_err(|e| anyhow!("{e}"))?;
    ensure!(resp.vote_granted && resp.vote == vote, "vote: {resp:?}");

    let heartbeat = AppendEntriesRequest {
        vote: Vote::new_committed(3, 2),
        prev_log_id: None,
        entries: vec![],
        leader_commit: None,
    };
    let resp = net
        .append_entries(heartbeat, option.clone())
        .await
        .map_err(|e| anyhow!("{e}"))?;
    ensure!(
        matches!(resp, AppendEntriesResponse::Success),
        "append: {resp:?}"
    );

    // A Raft error on the remote comes back as RemoteError.
    let result = net
        .vote(VoteRequest::new(Vote::new(3, 99), None), option.clone())
        .await;
    ensure!(
        matches!(result, Err(RPCError::RemoteError(_))),
        "got {result:?}"
    );

    // A client certificate is refused Raft RPCs: unreachable, so openraft backs off.
    let mut as_client = NetworkFactory::new(Dialer::new(
        ca.cert(),
        &ca.issue_client("ops")?,
        fast_config(),
    )?);
    let result = as_client
        .new_client(1, &node1)
        .await
        .vote(VoteRequest::new(vote, None), option.clone())
        .await;
    ensure!(
        matches!(result, Err(RPCError::Unreachable(_))),
        "got {result:?}"
    );

    // Nobody listening: Unreachable.
    let dead = {
        let socket = std::net::UdpSocket::bind(localhost())?;
        socket.local_addr()?
    };
    let mut to_dead = factory
        .new_client(
            7,
            &QkNode {
                rpc_addr: dead.to_string(),
                api_url: String::new(),
            },
        )
        .await;
    let result = to_dead
        .vote(
            VoteRequest::new(vote, None),
            RPCOption::new(Duration::from_millis(400)),
        )
        .await;
    ensure!(
        matches!(result, Err(RPCError::Unreachable(_))),
        "got {result:?}"
    );

    server.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn ca_reloaded_from_pem_issues_certificates_peers_accept() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let ca = ClusterCa::generate("qk test")?;
    ca.save(&dir.path().join("ca.pem"), &dir.path().join("ca.key"))?;
    let reloaded = ClusterCa::load(&dir.path().join("ca.pem"), &dir.path().join("ca.key"))?;
    let trust = CaCert::load(&dir.path().join("ca.pem"))?;

    let (server, _) = start_node(&ca, 1, localhost()).await?;
    let creds = reloaded.issue_client("later")?;
    let ops = Dialer::new(&trust, &creds, fast_config())?;
    let got = keys(
        ops.any_node(&server.local_addr().to_string())
            .call(&get_key("k"))
            .await?,
    )?;
    assert_eq!(got[0], "client \"later\"");
    server.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn client_redials_promptly_after_the_server_crashes_and_restarts() -> Result<()> {
    let ca = ClusterCa::generate("qk test")?;
    let creds = ca.issue_node(1, &["127.0.0.1"])?;
    // The "crashing" server runs on its own runtime; shutting that runtime
    // down kills its tasks without any CONNECTION_CLOSE being sent, as a
    // killed process would.
    let doomed_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let (ca_cert, server_creds) = (ca.cert().clone(), creds.clone());
    let server = doomed_rt
        .spawn(async move {
            let handler: Arc<dyn RpcHandler> = Arc::new(TestHandler::default());
            Server::bind(localhost(), &ca_cert, &server_creds, fast_config(), handler).await
        })
        .await??;
    let addr = server.local_addr();

    let mut cfg = fast_config();
    // Long enough that only a stateless reset (not a timeout) explains a
    // prompt recovery.
    cfg.request_timeout = Duration::from_secs(8);
    cfg.idle_timeout = Duration::from_secs(30);
    let node2 = Dialer::new(ca.cert(), &ca.issue_node(2, &["127.0.0.1"])?, cfg)?;
    let client = node2.node(1, &addr.to_string());
    keys(client.call(&get_key("before")).await?)?;

    doomed_rt.shutdown_background();
    drop(server);

    let mut restarted = None;
    for _ in 0..50 {
        let handler = Arc::new(TestHandler::default());
        match Server::bind(addr, ca.cert(), &creds, fast_config(), handler.clone()).await {
            Ok(s) => {
                restarted = Some((s, handler));
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let (server, handler) = restarted.context("could not rebind the same port")?;

    // The old connection is dead but the client does not know yet. The
    // restarted node derives the same stateless-reset key from its private
    // key, so it resets that connection at the first packet, and the client
    // redials well before the request or idle timeout.
    let started = tokio::time::Instant::now();
    loop {
        match client.call(&get_key("after")).await {
            Ok(resp) => {
                assert_eq!(keys(resp)?[1], "after");
                break;
            }
            Err(e) => {
                ensure!(e.is_unreachable(), "unexpected error kind: {e}");
                ensure!(
                    started.elapsed() < Duration::from_secs(4),
                    "no prompt recovery: {e}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    ensure!(
        started.elapsed() < Duration::from_secs(4),
        "recovery took {:?}",
        started.elapsed()
    );
    assert_eq!(handler.calls.load(Ordering::SeqCst), 1);
    server.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn a_stalled_request_stream_is_reset_by_the_server() -> Result<()> {
    let ca = ClusterCa::generate("qk test")?;
    let creds = ca.issue_node(1, &["127.0.0.1"])?;
    let mut cfg = fast_config();
    cfg.request_timeout = Duration::from_millis(300);
    let handler = Arc::new(TestHandler::default());
    let server = Server::bind(localhost(), ca.cert(), &creds, cfg, handler.clone()).await?;
    let (_endpoint, conn) = raw_connection(&ca, server.local_addr()).await?;

    // Announce 1000 bytes, send 10, then stall.
    let (mut send, mut recv) = conn.open_bi().await?;
    send.write_all(&1000u32.to_be_bytes()).await?;
    send.write_all(&[0; 10]).await?;
    let result = tokio::time::timeout(Duration::from_secs(3), read_frame(&mut recv))
        .await
        .context("stalled stream not reset by the server")?;
    ensure!(result.is_err(), "stalled stream answered: {result:?}");

    assert_eq!(
        keys(send_raw(&conn, &frame(&encode(&get_key("ok"))?)).await?)?[1],
        "ok"
    );
    assert_eq!(handler.calls.load(Ordering::SeqCst), 1);
    server.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn one_address_holds_at_most_its_connections_while_others_connect() -> Result<()> {
    let ca = ClusterCa::generate("qk test")?;
    let mut cfg = fast_config();
    cfg.max_connections_per_address = 2;
    let server = node_1(&ca, cfg).await?;
    let addr = server.local_addr();
    let other = SocketAddr::from(([127, 0, 0, 2], 0));

    let (_e1, first) = raw_connection(&ca, addr).await?;
    let (_e2, _second) = raw_connection(&ca, addr).await?;
    let third = raw_connection(&ca, addr).await;
    ensure!(
        third.is_err(),
        "a third connection from 127.0.0.1 was accepted"
    );

    let (_e3, from_other) = raw_connection_from(&ca, addr, other).await?;
    let resp = send_raw(&from_other, &frame(&encode(&get_key("k"))?)).await?;
    ensure!(keys(resp)?[1] == "k", "127.0.0.2 is served");

    // A closed connection gives its slot back.
    first.close(0u32.into(), b"done");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        match raw_connection(&ca, addr).await {
            Ok(_) => break,
            Err(e) if std::time::Instant::now() > deadline => {
                bail!("the slot of a closed connection was not given back: {e}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    server.shutdown().await;
    Ok(())
}

/// Opens a stream on `conn` announcing a frame of `announced` bytes and
/// sends the first `sent` of them (as far as the server lets it) from a task
/// that keeps the stream open until aborted.
async fn stalled_stream(
    conn: &quinn::Connection,
    announced: u32,
    sent: usize,
) -> Result<tokio::task::JoinHandle<()>> {
    let (mut send, recv) = conn.open_bi().await?;
    send.write_all(&announced.to_be_bytes()).await?;
    Ok(tokio::spawn(async move {
        let _recv = recv;
        let _ = send.write_all(&vec![0u8; sent]).await;
        std::future::pending::<()>().await;
    }))
}

#[tokio::test]
async fn announced_bytes_reserve_nothing_and_clients_cannot_hold_back_nodes() -> Result<()> {
    let ca = ClusterCa::generate("qk test")?;
    let mut cfg = fast_config();
    cfg.max_inflight_request_bytes = 8 * 1024 * 1024; // 4 MiB for nodes, 4 for clients
    cfg.request_timeout = Duration::from_secs(60); // longer than any honest call may wait
    let server = node_1(&ca, cfg).await?;
    let addr = server.local_addr();
    let node2 = Dialer::new(ca.cert(), &ca.issue_node(2, &["127.0.0.1"])?, fast_config())?;
    let honest = Dialer::new(ca.cert(), &ca.issue_client("ops")?, fast_config())?;
    let (_endpoint, conn) = raw_connection(&ca, addr).await?;

    // Eight streams announce 4 MiB each and send nothing: no budget taken.
    let mut stalled = Vec::new();
    for _ in 0..8 {
        stalled.push(stalled_stream(&conn, 4 * 1024 * 1024, 0).await?);
    }
    keys(
        honest
            .any_node(&addr.to_string())
            .call(&get_key("c"))
            .await?,
    )?;
    keys(node2.node(1, &addr.to_string()).call(&get_key("n")).await?)?;

    // Two streams really send 3 MiB each: the clients' budget is full (the
    // second is refused as busy), and a node is still served.
    for _ in 0..2 {
        stalled.push(stalled_stream(&conn, 4 * 1024 * 1024, 3 * 1024 * 1024).await?);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    keys(
        node2
            .node(1, &addr.to_string())
            .call(&get_key("n2"))
            .await?,
    )?;

    // Two node requests of 3 MiB at once into the nodes' 4 MiB: neither
    // waits on the other holding part of the budget (no deadlock); one is
    // served, the other at worst refused as busy, and a retry is served.
    let node3 = Dialer::new(ca.cert(), &ca.issue_node(3, &["127.0.0.1"])?, fast_config())?;
    let big = get_key(&"x".repeat(3 * 1024 * 1024));
    let (to1_from2, to1_from3) = (
        node2.node(1, &addr.to_string()),
        node3.node(1, &addr.to_string()),
    );
    let (a, b) = tokio::join!(to1_from2.call(&big), to1_from3.call(&big));
    let served = [a, b]
        .into_iter()
        .filter_map(Result::ok)
        .map(keys)
        .filter(Result::is_ok)
        .count();
    ensure!(served >= 1, "neither large node request was served");
    keys(to1_from3.call(&big).await?)?;
    for task in stalled {
        task.abort();
    }
    server.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn clients_cannot_take_the_connections_kept_for_nodes() -> Result<()> {
    let ca = ClusterCa::generate("qk test")?;
    let mut cfg = fast_config();
    cfg.max_connections = 3;
    cfg.node_reserved_connections = 1;
    let server = node_1(&ca, cfg).await?;
    let addr = server.local_addr();
    let (_e1, c1) = raw_connection(&ca, addr).await?;
    let (_e2, _c2) = raw_connection(&ca, addr).await?;
    // A third client completes its handshake and is closed at once.
    let (_e3, c3) = raw_connection(&ca, addr).await?;
    let refused = send_raw(&c3, &frame(&encode(&get_key("k"))?)).await;
    ensure!(refused.is_err(), "a third client was served: {refused:?}");
    // The node still gets the slot kept for it.
    let node2 = Dialer::new(ca.cert(), &ca.issue_node(2, &["127.0.0.1"])?, fast_config())?;
    keys(node2.node(1, &addr.to_string()).call(&get_key("n")).await?)?;
    // The first clients are served as before.
    keys(send_raw(&c1, &frame(&encode(&get_key("c"))?)).await?)?;
    server.shutdown().await;
    Ok(())
}

/// Accepts any server certificate after `stall`, blocking its thread: a
/// client whose handshake hangs half-way (the server has sent its flight
/// and waits for the client's).
#[derive(Debug)]
struct StallingVerifier {
    stall: Duration,
}

impl rustls::client::danger::ServerCertVerifier for StallingVerifier {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        std::thread::sleep(self.stall);
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A handshake with `addr` that stalls for `stall` once the server has
/// answered, on a thread (and runtime) of its own.
fn stalled_handshake(addr: SocketAddr, stall: Duration) -> std::thread::JoinHandle<Result<()>> {
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let mut tls = rustls::ClientConfig::builder_with_provider(provider)
                .with_protocol_versions(&[&rustls::version::TLS13])?
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(StallingVerifier { stall }))
                .with_no_client_auth();
            tls.alpn_protocols = vec![qk_net::tls::ALPN.to_vec()];
            let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls)?;
            let mut endpoint = quinn::Endpoint::client(localhost())?;
            endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(quic)));
            // It fails in the end (no client certificate): only the stall counts.
            let _ = endpoint
                .connect(addr, qk_net::identity::ANY_NODE_SERVER_NAME)?
                .await;
            Ok(())
        })
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_handshakes_hold_at_most_their_share_of_an_address_and_others_are_served(
) -> Result<()> {
    let ca = ClusterCa::generate("qk test")?;
    let mut cfg = fast_config();
    cfg.max_handshakes_per_address = 2;
    cfg.connect_timeout = Duration::from_secs(10);
    let server = node_1(&ca, cfg).await?;
    let addr = server.local_addr();
    let stall = Duration::from_secs(4);
    let stallers = [
        stalled_handshake(addr, stall),
        stalled_handshake(addr, stall),
    ];
    tokio::time::sleep(Duration::from_millis(500)).await;

    let third = raw_connection(&ca, addr).await;
    ensure!(
        third.is_err(),
        "a third handshake from 127.0.0.1 was admitted while two stalled"
    );
    let other = SocketAddr::from(([127, 0, 0, 2], 0));
    let (_e, from_other) = raw_connection_from(&ca, addr, other).await?;
    let resp = send_raw(&from_other, &frame(&encode(&get_key("k"))?)).await?;
    ensure!(keys(resp)?[1] == "k", "127.0.0.2 is served");

    for s in stallers {
        tokio::task::spawn_blocking(move || s.join())
            .await?
            .map_err(|_| anyhow!("a stalling client panicked"))??;
    }
    // The stalled handshakes ended (failed): their slots are back.
    let (_e, again) = raw_connection(&ca, addr).await?;
    let resp = send_raw(&again, &frame(&encode(&get_key("k"))?)).await?;
    ensure!(keys(resp)?[1] == "k", "127.0.0.1 is served again");
    server.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn one_client_has_only_so_many_requests_in_flight_and_nodes_are_still_served() -> Result<()> {
    let ca = ClusterCa::generate("qk test")?;
    let mut cfg = fast_config();
    cfg.max_requests_per_client = 2;
    let server = node_1(&ca, cfg).await?;
    let addr = server.local_addr();
    let sleep = frame(&encode(&get_key("sleep"))?);
    // Two connections of the same client (certificate "raw"): the limit is
    // the client's, not a connection's.
    let (_e1, first) = raw_connection(&ca, addr).await?;
    let (_e2, second) = raw_connection(&ca, addr).await?;
    let held: Vec<_> = [first.clone(), first.clone()]
        .into_iter()
        .map(|conn| {
            let sleep = sleep.clone();
            tokio::spawn(async move { send_raw(&conn, &sleep).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;

    let started = std::time::Instant::now();
    let third = send_raw(&second, &frame(&encode(&get_key("k"))?)).await?;
    let why = refusal(&third).context("a third request of the client was served")?;
    ensure!(why.contains("in flight"), "{why}");
    ensure!(
        started.elapsed() < Duration::from_secs(1),
        "the refusal waited"
    );
    let node2 = ca.issue_node(2, &["127.0.0.1"])?;
    let dialer = Dialer::new(ca.cert(), &node2, fast_config())?;
    keys(
        dialer
            .node(1, &addr.to_string())
            .call(&get_key("k"))
            .await?,
    )?;

    for h in held {
        keys(h.await??)?;
    }
    let again = send_raw(&second, &frame(&encode(&get_key("k"))?)).await?;
    ensure!(
        keys(again)?[1] == "k",
        "served again once its requests ended"
    );
    server.shutdown().await;
    Ok(())
}
