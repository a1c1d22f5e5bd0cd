//! The key-value server and client on the simulator.
//!
//! Goal: every request type round-trips through the server to the store; malformed and
//! oversized frames get a clear error and the connection is closed; connections past the limit
//! are refused with `Busy`. Method: a server node and a client node in one `World`; the server
//! task runs `serve`, the client drives `Client` or writes raw frames.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use lsm::batch::BatchOp;
use lsm::client::{Client, ClientError};
use lsm::protocol::{ErrorCode, Response, read_frame, write_frame};
use lsm::server::{ServerOptions, serve};
use lsm::{Db, Durability};
use sim::Env;
use sim::world::{NodeId, SimConfig, SimEnv, World};
use tokio::io::AsyncWriteExt;

const SERVER_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
const ADDR: SocketAddr = SocketAddr::new(SERVER_IP, 7878);

/// A world with a running server (connection limit `connection_count_max`) and a client node.
fn world_with_server(seed: u64, connection_count_max: usize) -> (World, NodeId) {
    let world = World::new(SimConfig::new(seed));
    let server = world.add_node("server", SERVER_IP);
    let client = world.add_node("client", IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)));
    let env = world.env(server);
    let options = ServerOptions { connection_count_max, ..ServerOptions::default() };
    drop(world.spawn(server, async move {
        let db = Db::open(env.clone(), "db", common::small_options()).await.expect("open");
        let listener = env.listen_tcp(ADDR).await.expect("listen");
        let _ = serve(env, db, listener, options).await;
    }));
    world.run_for(Duration::from_millis(50)).expect("server starts");
    (world, client)
}

async fn connect(env: &SimEnv) -> Client<<SimEnv as Env>::TcpStream> {
    Client::new(env.connect_tcp(ADDR).await.expect("connect"))
}

#[test]
fn every_request_round_trips_through_the_server() {
    let (world, client) = world_with_server(1, 16);
    common::run(&world, client, |env| async move {
        let mut client = connect(&env).await;
        client.put(b"a", b"1", Durability::Sync).await.expect("put");
        client.put(b"b", b"2", Durability::Buffered).await.expect("put");
        assert_eq!(client.get(b"a").await.expect("get"), Some(b"1".to_vec()));
        client.delete(b"a", Durability::Sync).await.expect("delete");
        assert_eq!(client.get(b"a").await.expect("get"), None);
        let ops = vec![
            BatchOp::Put { key: b"c".to_vec(), value: b"3".to_vec() },
            BatchOp::Put { key: b"d".to_vec(), value: b"4".to_vec() },
            BatchOp::Delete { key: b"b".to_vec() },
        ];
        client.batch(ops, Durability::Sync).await.expect("batch");
        let items = client.scan(None, None, 10, false).await.expect("scan");
        let keys: Vec<_> = items.iter().map(|(key, _)| key.clone()).collect();
        assert_eq!(keys, vec![b"c".to_vec(), b"d".to_vec()]);
        let items = client.scan(Some(b"c"), Some(b"d"), 10, true).await.expect("scan");
        assert_eq!(items, vec![(b"c".to_vec(), b"3".to_vec())]);
        let huge_key = vec![0u8; lsm::batch::KEY_BYTES_MAX + 1];
        match client.put(&huge_key, b"v", Durability::Sync).await {
            Err(ClientError::Server { code: ErrorCode::InvalidArgument, .. }) => {}
            other => panic!("expected InvalidArgument, got {other:?}"),
        }
    });
}

#[test]
fn malformed_and_oversized_frames_get_an_error_and_a_closed_connection() {
    let (world, client) = world_with_server(2, 16);
    common::run(&world, client, |env| async move {
        let mut stream = env.connect_tcp(ADDR).await.expect("connect");
        write_frame(&mut stream, &[1, 99, 0]).await.expect("write");
        let body = read_frame(&mut stream, 1 << 20).await.expect("read").expect("a response");
        match Response::decode(&body) {
            Ok(Response::Error { code: ErrorCode::Malformed, .. }) => {}
            other => panic!("expected Malformed, got {other:?}"),
        }
        assert!(read_frame(&mut stream, 1 << 20).await.expect("clean close").is_none());

        let mut stream = env.connect_tcp(ADDR).await.expect("connect");
        stream.write_all(&u32::MAX.to_le_bytes()).await.expect("write");
        let body = read_frame(&mut stream, 1 << 20).await.expect("read").expect("a response");
        match Response::decode(&body) {
            Ok(Response::Error { code: ErrorCode::TooLarge, .. }) => {}
            other => panic!("expected TooLarge, got {other:?}"),
        }
    });
}

#[test]
fn connections_past_the_limit_are_refused_with_busy() {
    let (world, client) = world_with_server(3, 2);
    common::run(&world, client, |env| async move {
        let mut first = connect(&env).await;
        let mut second = connect(&env).await;
        first.put(b"k", b"v", Durability::Sync).await.expect("first works");
        second.get(b"k").await.expect("second works");
        let mut third = connect(&env).await;
        match third.get(b"k").await {
            Err(ClientError::Server { code: ErrorCode::Busy, .. }) => {}
            other => panic!("expected Busy, got {other:?}"),
        }
        drop(first);
        env.sleep(Duration::from_millis(100)).await;
        let mut fourth = connect(&env).await;
        assert_eq!(fourth.get(b"k").await.expect("a slot freed up"), Some(b"v".to_vec()));
    });
}
