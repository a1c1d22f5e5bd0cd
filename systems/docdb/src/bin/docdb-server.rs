//! `docdb-server`: the document database served over MongoDB's wire protocol on real files and
//! sockets (feature `tokio`), so MongoDB drivers and `mongosh` can connect.
//!
//! Usage: `docdb-server --dir DATA_DIR --listen 127.0.0.1:27017 [--users FILE]
//! [--connections-max 256]`. The user file holds `name:password` lines; with it, clients must
//! authenticate with SCRAM-SHA-256.

use std::net::SocketAddr;

use anyhow::Context;
use clap::Parser;
use docdb::wire::scram::{SALT_BYTES, Users};
use docdb::wire::{WireOptions, WireServer, serve};
use docdb::{DocDb, Options};
use sim::Env;
use sim::tokio_env::TokioEnv;

/// Serve a docdb database over the MongoDB wire protocol.
#[derive(Parser, Debug)]
struct Args {
    /// Directory holding the database's files (created if missing).
    #[arg(long)]
    dir: std::path::PathBuf,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:27017")]
    listen: SocketAddr,
    /// File of `name:password` lines; when given, clients must authenticate (SCRAM-SHA-256).
    #[arg(long)]
    users: Option<std::path::PathBuf>,
    /// Connections served at once; more are answered with an error and closed.
    #[arg(long, default_value_t = 256)]
    connections_max: usize,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let users = match &args.users {
        None => None,
        Some(path) => {
            // The user file is configuration read once at start-up, outside any Env.
            #[allow(clippy::disallowed_methods)]
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading the user file {}", path.display()))?;
            Some(text)
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let env = TokioEnv::new(&args.dir);
        let users = users.map(|text| parse_users(&env, &text)).transpose()?;
        let db = DocDb::open(env.clone(), "", Options::default())
            .await
            .with_context(|| format!("opening the database in {}", args.dir.display()))?;
        let listener = env.listen_tcp(args.listen).await.context("listening")?;
        let authentication = if users.is_some() { "SCRAM-SHA-256" } else { "off" };
        eprintln!(
            "docdb-server: serving {} on {} (authentication {authentication})",
            args.dir.display(),
            args.listen
        );
        let options =
            WireOptions { connection_count_max: args.connections_max, users, ..Default::default() };
        serve(WireServer::new(env, db, options), listener).await.context("accepting")?;
        Ok(())
    })
}

fn parse_users(env: &TokioEnv, text: &str) -> anyhow::Result<Users> {
    let mut rng = env.rng();
    let users = Users::parse(text, || {
        let mut salt = [0u8; SALT_BYTES];
        rand_core::RngCore::fill_bytes(&mut rng, &mut salt);
        salt
    })?;
    Ok(users)
}
