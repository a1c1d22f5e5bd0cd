//! The wire server on the simulator.
//!
//! Goal: the server code that production runs serves simulated clients too: OP_MSG commands
//! (with a kind-1 document sequence, as drivers send inserts), cursors across batches, session
//! transactions, malformed and oversized input that leaves the server serving, the connection
//! limit, and authentication gating. Method: a server node and a client node in one `World`;
//! the client writes raw OP_MSG bytes over an Env stream and decodes the replies.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use bson::{Binary, Bson, Document, doc, spec::BinarySubtype};
use docdb::DocDb;
use docdb::wire::frame::{self, HEADER_BYTES, Header};
use docdb::wire::scram::{SALT_BYTES, Users};
use docdb::wire::{WireOptions, WireServer, serve};
use sim::Env;
use sim::world::{NodeId, SimConfig, SimEnv, World};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SERVER_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
const ADDR: SocketAddr = SocketAddr::new(SERVER_IP, 27017);

type Stream = <SimEnv as Env>::TcpStream;

fn world_with_server(seed: u64, options: WireOptions) -> (World, NodeId) {
    let world = World::new(SimConfig::new(seed));
    let server = world.add_node("server", SERVER_IP);
    let client = world.add_node("client", IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)));
    let env = world.env(server);
    drop(world.spawn(server, async move {
        let db = DocDb::open(env.clone(), "db", common::options()).await.expect("open");
        let listener = env.listen_tcp(ADDR).await.expect("listen");
        let _ = serve(WireServer::new(env, db, options), listener).await;
    }));
    world.run_for(Duration::from_millis(50)).expect("server starts");
    (world, client)
}

async fn read_reply(stream: &mut Stream) -> Option<Document> {
    let mut header = [0u8; HEADER_BYTES];
    stream.read_exact(&mut header).await.ok()?;
    let header = Header::decode(&header).expect("reply header");
    let mut body = vec![0u8; header.message_length - HEADER_BYTES];
    stream.read_exact(&mut body).await.expect("reply body");
    Some(frame::decode_reply_body(&body).expect("reply document"))
}

async fn command(stream: &mut Stream, command: Document) -> Document {
    stream.write_all(&frame::encode_msg(1, &command, false)).await.expect("write");
    read_reply(stream).await.expect("a reply")
}

/// An OP_MSG with `documents` in a kind-1 section named `identifier`.
fn with_sequence(body: &Document, identifier: &str, documents: &[Document]) -> Vec<u8> {
    let mut sequence = Vec::new();
    sequence.extend_from_slice(identifier.as_bytes());
    sequence.push(0);
    for document in documents {
        document.to_writer(&mut sequence).expect("encode");
    }
    let mut message = frame::encode_msg(2, body, false);
    message.push(1);
    message.extend_from_slice(&((sequence.len() + 4) as i32).to_le_bytes());
    message.extend_from_slice(&sequence);
    let length = message.len() as i32;
    message[..4].copy_from_slice(&length.to_le_bytes());
    message
}

fn ok(reply: &Document) -> bool {
    reply.get("ok") == Some(&Bson::Double(1.0))
}

#[test]
fn commands_cursors_and_transactions_over_sim_streams() {
    let (world, client) = world_with_server(0x11, WireOptions::default());
    common::run(&world, client, |env| async move {
        let mut stream = env.connect_tcp(ADDR).await.expect("connect");
        let hello = command(&mut stream, doc! {"hello": 1, "$db": "admin"}).await;
        assert!(hello.get_i32("maxWireVersion").expect("wire version") >= 8);
        let documents: Vec<Document> = (0..7).map(|i| doc! {"_id": i, "k": i % 2}).collect();
        let insert = with_sequence(&doc! {"insert": "c", "$db": "d"}, "documents", &documents);
        stream.write_all(&insert).await.expect("write");
        let reply = read_reply(&mut stream).await.expect("insert reply");
        assert_eq!(reply.get_i32("n").ok(), Some(7), "{reply}");

        let find = command(&mut stream, doc! {"find": "c", "batchSize": 3, "$db": "d"}).await;
        let cursor = find.get_document("cursor").expect("cursor");
        let mut id = cursor.get_i64("id").expect("id");
        let mut count = cursor.get_array("firstBatch").expect("batch").len();
        while id != 0 {
            let more = doc! {"getMore": id, "collection": "c", "batchSize": 3, "$db": "d"};
            let reply = command(&mut stream, more).await;
            let cursor = reply.get_document("cursor").expect("cursor");
            count += cursor.get_array("nextBatch").expect("batch").len();
            id = cursor.get_i64("id").expect("id");
        }
        assert_eq!(count, 7);
        let gone = command(&mut stream, doc! {"getMore": 99_i64, "collection": "c", "$db": "d"});
        assert_eq!(gone.await.get_i32("code").ok(), Some(43));

        let lsid = doc! {"id": Binary { subtype: BinarySubtype::Uuid, bytes: vec![7; 16] }};
        let txn = |extra: Document| {
            let mut c = extra;
            c.extend(doc! {"lsid": lsid.clone(), "txnNumber": 1_i64, "autocommit": false});
            c
        };
        let start = txn(doc! {"insert": "c", "documents": [{"_id": 100}], "$db": "d"});
        let mut start = start;
        start.insert("startTransaction", true);
        assert!(ok(&command(&mut stream, start).await));
        let count_outside = command(&mut stream, doc! {"count": "c", "$db": "d"}).await;
        assert_eq!(count_outside.get_i32("n").ok(), Some(7), "uncommitted writes are hidden");
        let commit = command(&mut stream, txn(doc! {"commitTransaction": 1, "$db": "admin"}));
        assert!(ok(&commit.await));
        let count_after = command(&mut stream, doc! {"count": "c", "$db": "d"}).await;
        assert_eq!(count_after.get_i32("n").ok(), Some(8));
        let unknown = command(&mut stream, doc! {"shutdown": 1, "$db": "admin"}).await;
        assert_eq!(unknown.get_i32("code").ok(), Some(59));
        assert_eq!(unknown.get_str("codeName").ok(), Some("CommandNotFound"));
    });
}

#[test]
fn malformed_input_gets_errors_and_the_server_keeps_serving() {
    let (world, client) = world_with_server(0x12, WireOptions::default());
    common::run(&world, client, |env| async move {
        let mut stream = env.connect_tcp(ADDR).await.expect("connect");
        // A checksum that does not match: an error reply; the connection stays usable.
        let mut message = frame::encode_msg(3, &doc! {"ping": 1, "$db": "admin"}, true);
        let last = message.len() - 1;
        message[last] ^= 0xFF;
        stream.write_all(&message).await.expect("write");
        assert_eq!(read_reply(&mut stream).await.expect("reply").get_i32("code").ok(), Some(9));
        // An unknown section kind, then an unknown opCode.
        let mut message = frame::encode_msg(4, &doc! {"ping": 1, "$db": "admin"}, false);
        message[HEADER_BYTES + 4] = 9;
        stream.write_all(&message).await.expect("write");
        assert_eq!(read_reply(&mut stream).await.expect("reply").get_i32("code").ok(), Some(9));
        let mut message = frame::encode_msg(5, &doc! {"ping": 1, "$db": "admin"}, false);
        message[12..16].copy_from_slice(&2012i32.to_le_bytes());
        stream.write_all(&message).await.expect("write");
        assert_eq!(read_reply(&mut stream).await.expect("reply").get_i32("code").ok(), Some(2));
        assert!(ok(&command(&mut stream, doc! {"ping": 1, "$db": "admin"}).await));
        // A length below the header: an error reply and a closed connection.
        stream
            .write_all(&[4, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0xdd, 7, 0, 0])
            .await
            .expect("write");
        assert_eq!(read_reply(&mut stream).await.expect("reply").get_i32("code").ok(), Some(10334));
        assert!(read_reply(&mut stream).await.is_none());
        // A truncated message, then the peer goes away: nothing breaks for the next client.
        let mut truncated = env.connect_tcp(ADDR).await.expect("connect");
        let message = frame::encode_msg(6, &doc! {"ping": 1, "$db": "admin"}, false);
        truncated.write_all(&message[..message.len() - 3]).await.expect("write");
        drop(truncated);
        let mut next = env.connect_tcp(ADDR).await.expect("connect");
        assert!(ok(&command(&mut next, doc! {"ping": 1, "$db": "admin"}).await));
    });
}

#[test]
fn the_connection_limit_answers_busy() {
    let options = WireOptions { connection_count_max: 1, ..WireOptions::default() };
    let (world, client) = world_with_server(0x13, options);
    common::run(&world, client, |env| async move {
        let mut first = env.connect_tcp(ADDR).await.expect("connect");
        assert!(ok(&command(&mut first, doc! {"ping": 1, "$db": "admin"}).await));
        let mut second = env.connect_tcp(ADDR).await.expect("connect");
        let busy = command(&mut second, doc! {"ping": 1, "$db": "admin"}).await;
        assert_eq!(busy.get_i32("code").ok(), Some(74), "{busy}");
        assert!(read_reply(&mut second).await.is_none(), "refused connections are closed");
        assert!(ok(&command(&mut first, doc! {"ping": 1, "$db": "admin"}).await));
    });
}

#[test]
fn without_credentials_only_the_handshake_is_served() {
    let users = Users::parse("alice:secret", || [1; SALT_BYTES]).expect("users");
    let options = WireOptions { users: Some(users), ..WireOptions::default() };
    let (world, client) = world_with_server(0x14, options);
    common::run(&world, client, |env| async move {
        let mut stream = env.connect_tcp(ADDR).await.expect("connect");
        assert!(ok(&command(&mut stream, doc! {"isMaster": 1, "$db": "admin"}).await));
        for refused in [doc! {"ping": 1, "$db": "admin"}, doc! {"find": "c", "$db": "d"}] {
            let reply = command(&mut stream, refused).await;
            assert_eq!(reply.get_i32("code").ok(), Some(13), "{reply}");
        }
        let payload = Binary { subtype: BinarySubtype::Generic, bytes: b"n,,n=alice,r=abc".into() };
        let start = doc! {"saslStart": 1, "mechanism": "SCRAM-SHA-256", "payload": payload};
        let mut start = start;
        start.insert("$db", "admin");
        let reply = command(&mut stream, start).await;
        assert!(ok(&reply), "{reply}");
        let bad = Binary { subtype: BinarySubtype::Generic, bytes: b"c=biws,r=abc,p=AAAA".into() };
        let finish = doc! {"saslContinue": 1, "conversationId": 1, "payload": bad, "$db": "admin"};
        assert_eq!(command(&mut stream, finish).await.get_i32("code").ok(), Some(18));
    });
}
