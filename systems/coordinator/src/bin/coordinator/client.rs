//! The admin API's command-line client: one HTTP/1.0 request over a tokio `TcpStream` per
//! command (no client crate: the workspace has none and the API needs nothing more), the
//! answer's body printed on stdout, a non-2xx status an error carrying the body.

#![allow(clippy::disallowed_types, reason = "production binary: the client's socket is real")]

use std::path::PathBuf;

use anyhow::{Context, bail};
use serde_json::json;
use service::Concerning;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The largest answer read.
const ANSWER_BYTES_MAX: u64 = 64 << 20;

/// Where the admin API is and how to authenticate.
#[derive(clap::Args, Debug)]
pub(crate) struct ClientOptions {
    /// The admin API's URL (`http://HOST:PORT`).
    #[arg(long, global = true, default_value = "http://127.0.0.1:9090")]
    server: String,
    /// The API key (from `coordinator apikeys create`); default: env `GHOSTMESH_API_KEY`.
    #[arg(long, global = true)]
    api_key: Option<String>,
}

#[derive(clap::Subcommand, Debug)]
pub(crate) enum ClientCommand {
    /// Users.
    Users {
        #[command(subcommand)]
        command: UsersCommand,
    },
    /// Nodes.
    Nodes {
        #[command(subcommand)]
        command: NodesCommand,
    },
    /// Pre-auth keys.
    Preauthkeys {
        #[command(subcommand)]
        command: PreAuthKeysCommand,
    },
    /// Subnet and exit routes.
    Routes {
        #[command(subcommand)]
        command: RoutesCommand,
    },
    /// The access policy.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
}

#[derive(clap::Subcommand, Debug)]
pub(crate) enum UsersCommand {
    /// List users.
    List,
    /// Create a user.
    Create {
        /// The user's name.
        name: String,
        /// The user's e-mail address.
        #[arg(long)]
        email: Option<String>,
    },
}

#[derive(clap::Subcommand, Debug)]
pub(crate) enum NodesCommand {
    /// List nodes.
    List,
    /// Expire a node's key now.
    Expire {
        /// The node's id.
        id: u64,
    },
    /// Delete a node.
    Delete {
        /// The node's id.
        id: u64,
    },
    /// Give a node a new name.
    Rename {
        /// The node's id.
        id: u64,
        /// The new name (a DNS label).
        name: String,
    },
}

#[derive(clap::Subcommand, Debug)]
pub(crate) enum PreAuthKeysCommand {
    /// List pre-auth keys.
    List,
    /// Create a pre-auth key (printed once).
    Create {
        /// The user whose nodes it registers.
        #[arg(long)]
        user: String,
        /// Any number of registrations.
        #[arg(long)]
        reusable: bool,
        /// Nodes it registers are removed when they go offline.
        #[arg(long)]
        ephemeral: bool,
        /// ACL tags (`tag:server,tag:db`).
        #[arg(long, value_delimiter = ',')]
        tags: Vec<String>,
    },
}

#[derive(clap::Subcommand, Debug)]
pub(crate) enum RoutesCommand {
    /// List advertised and approved routes.
    List,
    /// Approve routes of a node (replaces its approved set).
    Approve {
        /// The node's id.
        node: u64,
        /// The routes (`10.0.0.0/24`).
        routes: Vec<String>,
    },
}

#[derive(clap::Subcommand, Debug)]
pub(crate) enum PolicyCommand {
    /// Print the policy in force.
    Get,
    /// Check and store a policy file (HuJSON).
    Set {
        /// The policy file.
        file: PathBuf,
    },
    /// Check a policy file without storing it.
    Check {
        /// The policy file.
        file: PathBuf,
    },
}

/// Runs one client command.
pub(crate) async fn run(options: ClientOptions, command: ClientCommand) -> anyhow::Result<()> {
    let (method, path, body) = request(command)?;
    let key = options.api_key.or_else(|| std::env::var("GHOSTMESH_API_KEY").ok());
    let key = key.context("no API key: --api-key or GHOSTMESH_API_KEY")?;
    let answer = send(&options.server, &key, method, &path, &body).await?;
    service::println(answer.trim_end())?;
    Ok(())
}

/// The request a command makes: method, path and body.
fn request(command: ClientCommand) -> anyhow::Result<(&'static str, String, String)> {
    let get = |path: &str| ("GET", path.to_string(), String::new());
    let post = |path: String, body: String| ("POST", path, body);
    Ok(match command {
        ClientCommand::Users { command: UsersCommand::List } => get("/api/users"),
        ClientCommand::Users { command: UsersCommand::Create { name, email } } => {
            post("/api/users".into(), json!({ "name": name, "email": email }).to_string())
        }
        ClientCommand::Nodes { command } => match command {
            NodesCommand::List => get("/api/nodes"),
            NodesCommand::Expire { id } => post(format!("/api/nodes/{id}/expire"), String::new()),
            NodesCommand::Delete { id } => ("DELETE", format!("/api/nodes/{id}"), String::new()),
            NodesCommand::Rename { id, name } => {
                post(format!("/api/nodes/{id}/rename/{name}"), String::new())
            }
        },
        ClientCommand::Preauthkeys { command: PreAuthKeysCommand::List } => get("/api/preauthkeys"),
        ClientCommand::Preauthkeys {
            command: PreAuthKeysCommand::Create { user, reusable, ephemeral, tags },
        } => {
            let body = json!({ "user": user, "reusable": reusable, "ephemeral": ephemeral,
                               "tags": tags });
            post("/api/preauthkeys".into(), body.to_string())
        }
        ClientCommand::Routes { command: RoutesCommand::List } => get("/api/routes"),
        ClientCommand::Routes { command: RoutesCommand::Approve { node, routes } } => {
            post(format!("/api/nodes/{node}/routes"), json!(routes).to_string())
        }
        ClientCommand::Policy { command: PolicyCommand::Get } => get("/api/policy"),
        ClientCommand::Policy { command: PolicyCommand::Set { file } } => {
            ("PUT", "/api/policy".to_string(), read(&file)?)
        }
        ClientCommand::Policy { command: PolicyCommand::Check { file } } => {
            post("/api/policy/check".into(), read(&file)?)
        }
    })
}

#[allow(clippy::disallowed_methods, reason = "a policy file named on the command line")]
fn read(path: &std::path::Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).concerning("reading the policy file", path.display())
}

/// Sends one request and returns the body of a 2xx answer.
async fn send(
    server: &str,
    key: &str,
    method: &str,
    path: &str,
    body: &str,
) -> anyhow::Result<String> {
    let authority = server.strip_prefix("http://").context("--server must be http://HOST:PORT")?;
    let authority = authority.trim_end_matches('/');
    let mut stream =
        tokio::net::TcpStream::connect(authority).await.concerning("connecting to", server)?;
    let head = format!(
        "{method} {path} HTTP/1.0\r\nHost: {authority}\r\nAuthorization: Bearer {key}\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.concerning("sending to", server)?;
    stream.write_all(body.as_bytes()).await.concerning("sending to", server)?;
    let mut answer = Vec::new();
    stream
        .take(ANSWER_BYTES_MAX)
        .read_to_end(&mut answer)
        .await
        .concerning("reading from", server)?;
    let answer = String::from_utf8_lossy(&answer);
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    let status: u16 =
        head.split_whitespace().nth(1).and_then(|code| code.parse().ok()).unwrap_or(0);
    if !(200..300).contains(&status) {
        bail!("{method} {path}: status {status}: {}", body.trim_end());
    }
    Ok(body.to_string())
}
