//! The node's control API, served on the `--metrics` listener beside `/metrics` (bind it to
//! loopback: it takes writes): read members with their states, read and update keys.
//!
//! - `GET /members`: `[{"id":1,"addr":"127.0.0.1:7946","state":"alive","incarnation":0}]`
//! - `GET /keys`: every live entry, as in the status line; `GET /keys/KEY`: one (404 if none)
//! - `PUT /keys/KEY` (body: the register's value), `DELETE /keys/KEY` (the register),
//!   `POST /keys/KEY/add` (body: an integer), `POST /keys/KEY/insert` and
//!   `POST /keys/KEY/remove` (body: the set element). Updates are in the synced WAL when the
//!   answer (204) comes; a refused one (wrong kind, too large, a bad number) is 400 with why.

use std::sync::Arc;

use gossip::driver::Handle;
use gossip::store::Update;
use service::axum::Router;
use service::axum::extract::{Path, State};
use service::axum::http::StatusCode;
use service::axum::response::{IntoResponse, Response};
use service::axum::routing::{get, post};
use sim::tokio_env::TokioEnv;

use crate::{STATES, value_json};

type Node = Arc<Handle<TokioEnv>>;

/// The control routes over `handle`.
pub fn routes(handle: Node) -> Router {
    Router::new()
        .route("/members", get(members))
        .route("/keys", get(keys))
        .route("/keys/{key}", get(key).put(put).delete(delete))
        .route("/keys/{key}/{operation}", post(operate))
        .with_state(handle)
}

fn json(value: serde_json::Value) -> Response {
    let header = [(service::axum::http::header::CONTENT_TYPE, "application/json")];
    (header, format!("{value}\n")).into_response()
}

async fn members(State(handle): State<Node>) -> Response {
    let members = handle.with_node(|node| {
        let members = node.swim().members().map(|member| {
            let state = STATES.iter().find(|(state, _)| *state == member.state);
            serde_json::json!({
                "id": member.id.0,
                "addr": member.addr.to_string(),
                "state": state.map_or("unknown", |(_, name)| name),
                "incarnation": member.incarnation,
            })
        });
        members.collect::<Vec<_>>()
    });
    json(members.into())
}

async fn keys(State(handle): State<Node>) -> Response {
    let entries = handle.with_node(|node| {
        let mut entries = serde_json::Map::new();
        for (key, value) in node.store().entries() {
            if let Some(value) = value_json(value) {
                entries.insert(String::from_utf8_lossy(key).into_owned(), value);
            }
        }
        entries
    });
    json(entries.into())
}

async fn key(State(handle): State<Node>, Path(key): Path<String>) -> Response {
    let value = handle.with_node(|node| node.store().value(key.as_bytes()).and_then(value_json));
    match value {
        Some(value) => json(value),
        None => (StatusCode::NOT_FOUND, format!("no key {key:?}\n")).into_response(),
    }
}

async fn put(State(handle): State<Node>, Path(key): Path<String>, body: String) -> Response {
    apply(&handle, &key, Update::Register(Some(body.into_bytes()))).await
}

async fn delete(State(handle): State<Node>, Path(key): Path<String>) -> Response {
    apply(&handle, &key, Update::Register(None)).await
}

async fn operate(
    State(handle): State<Node>,
    Path((key, operation)): Path<(String, String)>,
    body: String,
) -> Response {
    let update = match operation.as_str() {
        "add" => match body.trim().parse() {
            Ok(amount) => Update::Add(amount),
            Err(_) => return bad(format!("add wants an integer body, got {body:?}")),
        },
        "insert" => Update::Insert(body.into_bytes()),
        "remove" => Update::Remove(body.into_bytes()),
        _ => return (StatusCode::NOT_FOUND, "operations: add, insert, remove\n").into_response(),
    };
    apply(&handle, &key, update).await
}

fn bad(reason: String) -> Response {
    (StatusCode::BAD_REQUEST, format!("{reason}\n")).into_response()
}

async fn apply(handle: &Node, key: &str, update: Update) -> Response {
    match handle.update(key.as_bytes(), update).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(error) if error.kind() == std::io::ErrorKind::InvalidInput => bad(error.to_string()),
        Err(error) => {
            service::tracing::error!(key, %error, "update failed");
            let reason = format!("updating {key:?}: {error}\n");
            (StatusCode::INTERNAL_SERVER_ERROR, reason).into_response()
        }
    }
}
