//! The admin API: HTTP with JSON bodies on `--admin`. `GET /key` is public; every other route
//! needs `Authorization: Bearer <api key>` (checked by `Registry::verify_api_key`).
//!
//! Routes: `GET|POST /api/users` (`{"name", "email"}`), `GET /api/nodes`, `POST
//! /api/nodes/ID/expire`, `DELETE /api/nodes/ID`, `POST /api/nodes/ID/rename/NAME`, `GET|POST
//! /api/preauthkeys` (`{"user": NAME, "reusable", "ephemeral", "tags"}`), `GET /api/routes`,
//! `POST /api/nodes/ID/routes` (`["10.0.0.0/24", ..]`), `GET|PUT /api/policy` (the text),
//! `POST /api/policy/check` (the text). A refused policy is a 400 whose body names the line,
//! the field and why.

#![allow(
    clippy::disallowed_types,
    reason = "production binary: the admin listener is a real socket"
)]

use std::net::SocketAddr;

use anyhow::Context;
use coordinator::registry::{PreAuthKeyOptions, RegistryError};
use coordinator::server::{Coordinator, CoordinatorError};
use serde::Deserialize;
use serde_json::{Value, json};
use service::axum::body::Body;
use service::axum::extract::{Request, State};
use service::axum::http::{HeaderMap, Method, StatusCode, header};
use service::axum::response::{IntoResponse, Response};
use service::{Concerning, Shutdown, axum};
use sim::Env;
use sim::tokio_env::TokioEnv;

/// The largest request body read.
const BODY_BYTES_MAX: usize = 2 << 20;

type Node = Coordinator<TokioEnv>;

#[derive(Clone)]
struct Admin {
    coordinator: Node,
    public_key: String,
}

/// An answer: a status and a JSON or text body.
struct Answer(StatusCode, Value);

impl IntoResponse for Answer {
    fn into_response(self) -> Response {
        let body = match self.1 {
            Value::String(text) => text,
            value => format!("{value}\n"),
        };
        (self.0, [(header::CONTENT_TYPE, "application/json")], body).into_response()
    }
}

fn refused(status: StatusCode, why: impl std::fmt::Display) -> Answer {
    Answer(status, json!({ "error": why.to_string() }))
}

/// Binds `addr` and serves the admin API until `shutdown`; returns the bound address.
pub(crate) async fn serve(
    env: &TokioEnv,
    coordinator: Node,
    public_key: String,
    addr: SocketAddr,
    shutdown: Shutdown,
) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .concerning("listening for the admin API on", addr)?;
    let bound = listener.local_addr().context("the admin listener's address")?;
    let router = axum::Router::new().fallback(handle).with_state(Admin { coordinator, public_key });
    env.spawn(async move {
        let served = axum::serve(listener, router)
            .with_graceful_shutdown(async move { shutdown.requested().await })
            .await;
        if let Err(error) = served {
            service::tracing::error!(%error, "the admin API stopped");
        }
    });
    Ok(bound)
}

async fn handle(State(admin): State<Admin>, request: Request) -> Answer {
    let (parts, body) = request.into_parts();
    let path = parts.uri.path().to_string();
    if parts.method == Method::GET && path == "/key" {
        return Answer(StatusCode::OK, json!({ "public_key": admin.public_key }));
    }
    if let Err(answer) = authorize(&admin, &parts.headers).await {
        return answer;
    }
    let body = match axum::body::to_bytes(Body::new(body), BODY_BYTES_MAX).await {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(error) => return refused(StatusCode::BAD_REQUEST, error),
    };
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    route(&admin, &parts.method, &segments, &body).await.unwrap_or_else(|refusal| refusal)
}

async fn authorize(admin: &Admin, headers: &HeaderMap) -> Result<(), Answer> {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "));
    let Some(key) = presented else {
        return Err(refused(StatusCode::UNAUTHORIZED, "missing Authorization: Bearer <api key>"));
    };
    let registry = admin.coordinator.registry();
    match registry.verify_api_key(key.trim(), registry.now_secs()).await {
        Ok(_) => Ok(()),
        Err(error) => Err(refused(StatusCode::UNAUTHORIZED, error)),
    }
}

type Routed = Result<Answer, Answer>;

fn ok(value: impl serde::Serialize) -> Routed {
    let value =
        serde_json::to_value(value).map_err(|e| refused(StatusCode::INTERNAL_SERVER_ERROR, e))?;
    Ok(Answer(StatusCode::OK, value))
}

/// A registry refusal: 404 for what does not exist, 400 for what the caller got wrong.
fn registry_error(error: RegistryError) -> Answer {
    let status = match &error {
        RegistryError::UserNotFound { .. }
        | RegistryError::NodeNotFound { .. }
        | RegistryError::PreAuthKeyNotFound { .. } => StatusCode::NOT_FOUND,
        RegistryError::Storage(_) | RegistryError::Corrupt { .. } => {
            StatusCode::INTERNAL_SERVER_ERROR
        }
        _ => StatusCode::BAD_REQUEST,
    };
    refused(status, error)
}

fn coordinator_error(error: CoordinatorError) -> Answer {
    match error {
        CoordinatorError::Registry(error) => registry_error(error),
        CoordinatorError::Policy(error) => Answer(
            StatusCode::BAD_REQUEST,
            json!({
                "error": error.to_string(),
                "line": error.line,
                "field": error.field,
                "message": error.message,
            }),
        ),
        other => refused(StatusCode::INTERNAL_SERVER_ERROR, other),
    }
}

fn node_id(text: &str) -> Result<u64, Answer> {
    text.parse().map_err(|_| refused(StatusCode::BAD_REQUEST, format!("bad node id {text:?}")))
}

fn parse_json<T: for<'de> Deserialize<'de>>(body: &str) -> Result<T, Answer> {
    serde_json::from_str(body).map_err(|error| refused(StatusCode::BAD_REQUEST, error))
}

async fn route(admin: &Admin, method: &Method, segments: &[&str], body: &str) -> Routed {
    match segments {
        ["api", "users"] => users(admin, method, body).await,
        ["api", "nodes"] if method == Method::GET => {
            ok(admin.coordinator.registry().list_nodes().await.map_err(registry_error)?)
        }
        ["api", "nodes", id, rest @ ..] => nodes(admin, method, node_id(id)?, rest, body).await,
        ["api", "preauthkeys"] => preauth_keys(admin, method, body).await,
        ["api", "routes"] if method == Method::GET => routes(admin).await,
        ["api", "policy", rest @ ..] => policy(admin, method, rest, body).await,
        _ => Err(refused(
            StatusCode::NOT_FOUND,
            format!("no route {method} /{}", segments.join("/")),
        )),
    }
}

#[derive(Deserialize)]
struct NewUser {
    name: String,
    #[serde(default)]
    email: Option<String>,
}

async fn users(admin: &Admin, method: &Method, body: &str) -> Routed {
    let registry = admin.coordinator.registry();
    if method == Method::POST {
        let new: NewUser = parse_json(body)?;
        return ok(registry
            .create_user(&new.name, new.email.as_deref())
            .await
            .map_err(registry_error)?);
    }
    ok(registry.list_users().await.map_err(registry_error)?)
}

async fn nodes(admin: &Admin, method: &Method, id: u64, rest: &[&str], body: &str) -> Routed {
    let registry = admin.coordinator.registry();
    let done = match (method.as_str(), rest) {
        ("DELETE", []) => registry.delete_node(id).await,
        ("POST", ["expire"]) => registry.expire_node(id, registry.now_secs()).await,
        ("POST", ["rename", name]) => registry.rename_node(id, name).await,
        ("POST", ["routes"]) => {
            let texts: Vec<String> = parse_json(body)?;
            let mut nets = Vec::with_capacity(texts.len());
            for text in &texts {
                let net: wireguard::IpNet = text.parse().map_err(|e| {
                    refused(StatusCode::BAD_REQUEST, format!("route {text:?}: {e}"))
                })?;
                nets.push(net);
            }
            registry.approve_routes(id, nets).await
        }
        _ => {
            return Err(refused(StatusCode::NOT_FOUND, format!("no route {method} for node {id}")));
        }
    };
    ok(done.map_err(registry_error)?)
}

#[derive(Deserialize)]
struct NewPreAuthKey {
    user: String,
    #[serde(default)]
    reusable: bool,
    #[serde(default)]
    ephemeral: bool,
    #[serde(default)]
    tags: Vec<String>,
}

async fn preauth_keys(admin: &Admin, method: &Method, body: &str) -> Routed {
    let registry = admin.coordinator.registry();
    if method != Method::POST {
        return ok(registry.list_preauth_keys(None).await.map_err(registry_error)?);
    }
    let new: NewPreAuthKey = parse_json(body)?;
    let user = registry.user_by_name(&new.user).await.map_err(registry_error)?;
    let user =
        user.ok_or_else(|| refused(StatusCode::NOT_FOUND, format!("no user {:?}", new.user)))?;
    let options = PreAuthKeyOptions {
        reusable: new.reusable,
        ephemeral: new.ephemeral,
        expiration: None,
        tags: new.tags,
    };
    let created = registry.create_preauth_key(user.id, options).await.map_err(registry_error)?;
    ok(json!({ "key": created.key, "info": created.info }))
}

async fn routes(admin: &Admin) -> Routed {
    let nodes = admin.coordinator.registry().list_nodes().await.map_err(registry_error)?;
    let listed: Vec<Value> = nodes
        .iter()
        .filter(|node| !node.advertised_routes.is_empty() || !node.approved_routes.is_empty())
        .map(|node| {
            let advertised: Vec<String> =
                node.advertised_routes.iter().map(|n| n.to_string()).collect();
            let approved: Vec<String> =
                node.approved_routes.iter().map(|n| n.to_string()).collect();
            json!({ "node": node.id, "name": node.given_name, "advertised": advertised,
                    "approved": approved })
        })
        .collect();
    ok(listed)
}

async fn policy(admin: &Admin, method: &Method, rest: &[&str], body: &str) -> Routed {
    let coordinator = &admin.coordinator;
    match (method.as_str(), rest) {
        ("GET", []) => {
            let record = coordinator.registry().policy().await.map_err(registry_error)?;
            let (version, text) = record.map_or((0, String::new()), |r| (r.version, r.text));
            ok(json!({ "version": version, "text": text }))
        }
        ("PUT", []) => {
            let version = coordinator.set_policy(body).await.map_err(coordinator_error)?;
            ok(json!({ "version": version }))
        }
        ("POST", ["check"]) => {
            coordinator.check_policy(body).map_err(coordinator_error)?;
            ok(json!({ "ok": true }))
        }
        _ => Err(refused(StatusCode::NOT_FOUND, format!("no route {method} /api/policy"))),
    }
}
