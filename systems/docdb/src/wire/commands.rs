//! Command dispatch: the handshake (`hello`/`isMaster`), admin commands, authentication
//! gating, cursors, and the transaction each data command runs in (a session's open one, or a
//! fresh auto-commit one retried after a write conflict).

use std::sync::atomic::Ordering;

use base64::Engine as _;
use bson::{Binary, Bson, DateTime, Document, doc, spec::BinarySubtype};
use sim::Env;

use crate::txn::Transaction;
use crate::wire::WireServer;
use crate::wire::frame::{DOCUMENT_BYTES_MAX, MESSAGE_BYTES_MAX};
use crate::wire::reply::{self, CommandError, CommandResult, code};
use crate::wire::scram;
use crate::wire::session::{self, TxnState};

/// The wire version reported: 9 (MongoDB 4.4) is the lowest the Rust driver 3.x accepts.
pub const WIRE_VERSION_MAX: i32 = 9;
/// The MongoDB version reported by `buildInfo`, matching `WIRE_VERSION_MAX`.
pub const VERSION: &str = "4.4.0";
/// Reported session timeout; with it, drivers use sessions and allow transactions.
pub const SESSION_TIMEOUT_MINUTES: i32 = 30;
/// Commands served before authentication.
const UNAUTHENTICATED_COMMANDS: [&str; 5] =
    ["hello", "isMaster", "ismaster", "saslStart", "saslContinue"];

/// The state of one client connection.
#[derive(Debug)]
pub struct Connection {
    /// Server-unique id, reported by `hello`.
    pub id: i64,
    /// The authenticated user, if any.
    pub user: Option<String>,
    scram: Option<scram::Conversation>,
}

impl<E: Env> WireServer<E> {
    /// State for a new connection.
    pub fn connection(&self) -> Connection {
        let id = self.inner.connection_ids.fetch_add(1, Ordering::Relaxed);
        Connection { id, user: None, scram: None }
    }

    /// Runs one command and returns its reply (errors included, in MongoDB's shape).
    pub async fn handle(&self, connection: &mut Connection, command: Document) -> Document {
        let name = command.keys().next().cloned().unwrap_or_default();
        let needs_auth = self.inner.options.users.is_some() && connection.user.is_none();
        let result = if name.is_empty() {
            Err(CommandError::new(code::FAILED_TO_PARSE, "empty command"))
        } else if needs_auth && !UNAUTHENTICATED_COMMANDS.contains(&name.as_str()) {
            let message = format!("command {name} requires authentication");
            Err(CommandError::new(code::UNAUTHORIZED, message))
        } else {
            self.dispatch(connection, &name, &command).await
        };
        result.unwrap_or_else(|error| error.to_reply())
    }

    async fn dispatch(
        &self,
        connection: &mut Connection,
        name: &str,
        command: &Document,
    ) -> CommandResult {
        let database = reply::string(command, "$db")?.to_string();
        match name {
            "hello" | "isMaster" | "ismaster" => Ok(self.hello(connection, name, command)),
            "ping" => Ok(doc! {"ok": 1.0}),
            "buildInfo" | "buildinfo" => Ok(build_info()),
            "saslStart" => self.sasl_start(connection, command),
            "saslContinue" => self.sasl_continue(connection, command),
            "logout" => {
                connection.user = None;
                Ok(doc! {"ok": 1.0})
            }
            "getMore" => self.get_more(command),
            "killCursors" => self.kill_cursors(command),
            "endSessions" => self.end_sessions(command),
            "commitTransaction" => self.commit_transaction(command).await,
            "abortTransaction" => self.abort_transaction(command).await,
            "listDatabases" => Ok(self.list_databases(command)),
            "listCollections" => self.list_collections(&database, command),
            _ if crate::wire::crud::is_data_command(name) => {
                self.data_command(&database, name, command).await
            }
            _ => Err(CommandError::new(
                code::COMMAND_NOT_FOUND,
                format!("no such command: '{name}'"),
            )),
        }
    }

    fn hello(&self, connection: &Connection, name: &str, command: &Document) -> Document {
        let wall = DateTime::from_system_time(self.inner.env.wall());
        let mut reply = doc! {
            "helloOk": true,
            "isWritablePrimary": true,
            "maxBsonObjectSize": DOCUMENT_BYTES_MAX as i32,
            "maxMessageSizeBytes": MESSAGE_BYTES_MAX as i32,
            "maxWriteBatchSize": 100_000,
            "localTime": wall,
            "logicalSessionTimeoutMinutes": SESSION_TIMEOUT_MINUTES,
            "connectionId": connection.id,
            "minWireVersion": 0,
            "maxWireVersion": WIRE_VERSION_MAX,
            "readOnly": false,
        };
        if name != "hello" {
            reply.insert("ismaster", true);
        }
        // A client asking which mechanisms its user may use gets the only one there is.
        if command.contains_key("saslSupportedMechs") && self.inner.options.users.is_some() {
            reply.insert("saslSupportedMechs", vec!["SCRAM-SHA-256"]);
        }
        reply.insert("ok", 1.0);
        reply
    }

    fn sasl_start(&self, connection: &mut Connection, command: &Document) -> CommandResult {
        let Some(users) = &self.inner.options.users else {
            return Err(CommandError::new(code::AUTHENTICATION_FAILED, "authentication is off"));
        };
        let mechanism = reply::string(command, "mechanism")?;
        if mechanism != "SCRAM-SHA-256" {
            let message = format!("mechanism {mechanism} is not supported: use SCRAM-SHA-256");
            return Err(CommandError::new(code::BAD_VALUE, message));
        }
        let payload = payload(command)?;
        let mut nonce_bytes = [0u8; 24];
        rand_core::RngCore::fill_bytes(&mut self.inner.env.rng(), &mut nonce_bytes);
        let nonce = base64::engine::general_purpose::STANDARD.encode(nonce_bytes);
        let (conversation, server_first) =
            scram::start(users, &payload, &nonce).map_err(|_| auth_failed())?;
        connection.scram = Some(conversation);
        Ok(doc! {"conversationId": 1, "done": false, "payload": binary(server_first), "ok": 1.0})
    }

    fn sasl_continue(&self, connection: &mut Connection, command: &Document) -> CommandResult {
        let (Some(users), Some(conversation)) =
            (&self.inner.options.users, connection.scram.take())
        else {
            return Err(CommandError::new(code::AUTHENTICATION_FAILED, "no SASL conversation"));
        };
        let payload = payload(command)?;
        let (user, server_final) =
            scram::finish(users, &conversation, &payload).map_err(|_| auth_failed())?;
        connection.user = Some(user);
        Ok(doc! {"conversationId": 1, "done": true, "payload": binary(server_final), "ok": 1.0})
    }

    fn get_more(&self, command: &Document) -> CommandResult {
        let id = reply::integer(command, "getMore", 0)?;
        let batch_size = reply::count(command, "batchSize")?;
        let batch_size = usize::try_from(batch_size).unwrap_or(usize::MAX);
        let mut cursors = crate::db::lock(&self.inner.cursors);
        let Some((namespace, batch, open)) = cursors.next_batch(id, batch_size) else {
            let message = format!("cursor id {id} not found");
            return Err(CommandError::new(code::CURSOR_NOT_FOUND, message));
        };
        let id = if open { id } else { 0 };
        Ok(doc! {"cursor": {"nextBatch": batch, "id": id, "ns": namespace}, "ok": 1.0})
    }

    fn kill_cursors(&self, command: &Document) -> CommandResult {
        let mut killed = Vec::new();
        let mut not_found = Vec::new();
        let mut cursors = crate::db::lock(&self.inner.cursors);
        for id in reply::integers(command, "cursors")? {
            if cursors.kill(id) { killed.push(id) } else { not_found.push(id) }
        }
        Ok(doc! {
            "cursorsKilled": killed, "cursorsNotFound": not_found, "cursorsAlive": [],
            "cursorsUnknown": [], "ok": 1.0,
        })
    }

    fn end_sessions(&self, command: &Document) -> CommandResult {
        for lsid in reply::documents(command, "endSessions")? {
            self.inner.sessions.end(&session::lsid_key(&lsid)?);
        }
        Ok(doc! {"ok": 1.0})
    }

    async fn commit_transaction(&self, command: &Document) -> CommandResult {
        let request = session::txn_request(command)?
            .ok_or_else(|| CommandError::new(code::BAD_VALUE, "commit needs autocommit: false"))?;
        let now = self.inner.env.now();
        let Some(shared) = self.inner.sessions.get(&request.session, false, now)? else {
            return Err(session::no_such_transaction("no transaction in this session".into()));
        };
        let mut session = shared.lock().await;
        if session.txn_number != request.txn_number {
            return Err(session::no_such_transaction("no such transaction to commit".into()));
        }
        match std::mem::replace(&mut session.state, TxnState::Idle) {
            TxnState::Open(txn) => {
                txn.commit().await.map_err(CommandError::from)?;
            }
            TxnState::Committed => {}
            TxnState::Idle => {
                return Err(session::no_such_transaction("the transaction was aborted".into()));
            }
        };
        session.state = TxnState::Committed;
        Ok(doc! {"ok": 1.0})
    }

    async fn abort_transaction(&self, command: &Document) -> CommandResult {
        let request = session::txn_request(command)?
            .ok_or_else(|| CommandError::new(code::BAD_VALUE, "abort needs autocommit: false"))?;
        let now = self.inner.env.now();
        let Some(shared) = self.inner.sessions.get(&request.session, false, now)? else {
            return Err(session::no_such_transaction("no transaction in this session".into()));
        };
        let mut session = shared.lock().await;
        match std::mem::replace(&mut session.state, TxnState::Idle) {
            TxnState::Open(txn) if session.txn_number == request.txn_number => {
                txn.abort();
                Ok(doc! {"ok": 1.0})
            }
            TxnState::Committed => {
                session.state = TxnState::Committed;
                Err(CommandError::new(256, "the transaction was already committed"))
            }
            _ => Err(session::no_such_transaction("no such transaction to abort".into())),
        }
    }

    fn list_databases(&self, command: &Document) -> Document {
        let names = self.inner.db.list_databases();
        let databases: Vec<Document> = if reply::boolean(command, "nameOnly", false) {
            names.iter().map(|name| doc! {"name": name}).collect()
        } else {
            let entry = |name: &String| doc! {"name": name, "sizeOnDisk": 0_i64, "empty": false};
            names.iter().map(entry).collect()
        };
        doc! {"databases": databases, "totalSize": 0_i64, "ok": 1.0}
    }

    fn list_collections(&self, database: &str, command: &Document) -> CommandResult {
        let filter = reply::document(command, "filter")?;
        let name_wanted = match filter.get("name") {
            Some(Bson::String(name)) => Some(name.clone()),
            None => None,
            Some(_) => {
                let message = "listCollections filters only on an equal name";
                return Err(CommandError::new(code::BAD_VALUE, message));
            }
        };
        let mut batch = Vec::new();
        for info in self.inner.db.list_collections(database) {
            if name_wanted.as_ref().is_some_and(|name| *name != info.name) {
                continue;
            }
            let mut options = Document::new();
            if let Some(validator) = &info.validator {
                options.insert("validator", validator.clone());
            }
            batch.push(doc! {
                "name": &info.name, "type": "collection", "options": options,
                "info": {"readOnly": false}, "idIndex": {"v": 2, "key": {"_id": 1}, "name": "_id_"},
            });
        }
        let namespace = format!("{database}.$cmd.listCollections");
        Ok(doc! {"cursor": {"firstBatch": batch, "id": 0_i64, "ns": namespace}, "ok": 1.0})
    }

    /// Runs a data command in the session's open transaction, or in its own auto-commit
    /// transaction, retried after a write conflict.
    async fn data_command(&self, database: &str, name: &str, command: &Document) -> CommandResult {
        if let Some(request) = session::txn_request(command)? {
            let now = self.inner.env.now();
            let shared = self.inner.sessions.get(&request.session, true, now)?;
            let shared = shared.expect("get with create returns a session");
            let mut session = shared.lock().await;
            let db = &self.inner.db;
            let txn = session.transaction(&request, || db.begin(), now)?;
            let result = self.execute(txn, database, name, command).await;
            if let Err(error) = &result {
                // As MongoDB does, a failed command aborts the transaction it ran in.
                session.state = TxnState::Idle;
                let mut error = error.clone();
                if !error.labels.contains(&"TransientTransactionError") {
                    error.labels.push("TransientTransactionError");
                }
                return Err(error);
            }
            return result;
        }
        self.auto_commit(database, name, command).await
    }

    async fn auto_commit(&self, database: &str, name: &str, command: &Document) -> CommandResult {
        let retries_max = self.inner.db.inner.options.conflict_retries_max;
        let mut attempt = 0;
        loop {
            let mut txn = self.inner.db.begin();
            let result = match self.execute(&mut txn, database, name, command).await {
                Ok(reply) => txn.commit().await.map(|_| reply).map_err(CommandError::from),
                Err(error) => {
                    txn.abort();
                    Err(error)
                }
            };
            match result {
                Err(error) if error.code == code::WRITE_CONFLICT && attempt < retries_max => {
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    async fn execute(
        &self,
        txn: &mut Transaction<E>,
        database: &str,
        name: &str,
        command: &Document,
    ) -> CommandResult {
        crate::wire::crud::execute(self, txn, database, name, command).await
    }
}

fn build_info() -> Document {
    doc! {
        "version": VERSION, "gitVersion": "docdb", "versionArray": [4, 4, 0, 0],
        "bits": 64, "maxBsonObjectSize": DOCUMENT_BYTES_MAX as i32, "ok": 1.0,
    }
}

fn payload(command: &Document) -> Result<Vec<u8>, CommandError> {
    match command.get("payload") {
        Some(Bson::Binary(binary)) => Ok(binary.bytes.clone()),
        Some(Bson::String(text)) => Ok(text.as_bytes().to_vec()),
        _ => Err(CommandError::new(code::BAD_VALUE, "payload must be binary")),
    }
}

fn binary(bytes: Vec<u8>) -> Binary {
    Binary { subtype: BinarySubtype::Generic, bytes }
}

fn auth_failed() -> CommandError {
    CommandError::new(code::AUTHENTICATION_FAILED, "Authentication failed.")
}
