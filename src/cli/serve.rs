//! `pgform serve` and `pgform token`: the service and its tokens.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::{Args, Subcommand};

use super::Outcome;
use crate::serve::{self, auth};

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The address to listen on; beyond loopback only once a token exists.
    #[arg(long, default_value = "127.0.0.1:8080", value_name = "ADDR")]
    pub listen: SocketAddr,
    /// The service's folder: DIR/pgform.db (runs, events, tokens, audit),
    /// DIR/states/<cluster>.pgstate.json (the CLI can drive the same cluster with --state;
    /// with --store postgres://..., the states are in the store), the hosts' known keys
    /// and the TLS folders.
    #[arg(long, default_value = "./pgform-data", value_name = "DIR")]
    pub data: PathBuf,
    /// At most this many runs execute at once (one per cluster).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub max_running: u16,
    #[command(flatten)]
    pub store: StoreArg,
}

/// Where runs, events and tokens are kept.
#[derive(Debug, Args)]
pub struct StoreArg {
    /// A PostgreSQL database shared by several services:
    /// postgres://USER@HOST:PORT/DB (no password here: it comes from PGPASSWORD or
    /// ~/.pgpass; or give the whole URL in PGFORM_STORE). Default: DIR/pgform.db.
    #[arg(long, value_name = "URL")]
    pub store: Option<String>,
}

impl StoreArg {
    /// The store's URL: `--store`, else the `PGFORM_STORE` environment variable (which
    /// may hold a password: the environment is not on the command line); `None`: SQLite.
    pub fn url(&self) -> Result<Option<String>> {
        if let Some(url) = &self.store {
            if store_url_has_password(url) {
                bail!(
                    "--store: the URL holds a password, and a process's arguments are visible \
                     to every user of the machine\n    fix: remove the password from the URL \
                     and set PGPASSWORD, or put it in ~/.pgpass, or pass the whole URL in the \
                     PGFORM_STORE environment variable instead of --store"
                );
            }
            return Ok(Some(url.clone()));
        }
        Ok(std::env::var("PGFORM_STORE").ok().filter(|u| !u.is_empty()))
    }
}

/// Whether a libpq URL or key=value string carries a password.
pub(super) fn store_url_has_password(url: &str) -> bool {
    match url.parse::<postgres::Config>() {
        Ok(c) => c.get_password().is_some(),
        // Unparsable: opening the store says why (its message does not repeat the
        // string).
        Err(_) => false,
    }
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Make a token; it is printed once, and only its hash is kept.
    Create {
        #[arg(long, value_parser = ["read", "plan", "apply", "admin"])]
        role: String,
        /// Limit the token to one cluster.
        #[arg(long, value_name = "NAME")]
        cluster: Option<String>,
        #[arg(long, default_value = "./pgform-data", value_name = "DIR")]
        data: PathBuf,
        #[command(flatten)]
        store: StoreArg,
    },
    /// List the tokens (ids, roles, clusters; never the tokens themselves).
    List {
        #[arg(long, default_value = "./pgform-data", value_name = "DIR")]
        data: PathBuf,
        #[command(flatten)]
        store: StoreArg,
    },
    /// Revoke a token by its id.
    Revoke {
        id: String,
        #[arg(long, default_value = "./pgform-data", value_name = "DIR")]
        data: PathBuf,
        #[command(flatten)]
        store: StoreArg,
    },
}

pub async fn serve(args: ServeArgs) -> Result<Outcome> {
    serve::serve(serve::Config {
        store: args.store.url()?,
        data: args.data,
        listen: args.listen,
        max_running: args.max_running.into(),
    })
    .await?;
    Ok(Outcome::Ok)
}

pub fn token(cmd: TokenCommand) -> Result<Outcome> {
    match cmd {
        TokenCommand::Create {
            role,
            cluster,
            data,
            store,
        } => {
            let svc = serve::Service::open(&data, store.url()?.as_deref(), 1)?;
            let role = auth::Role::parse(&role).expect("clap checked the role");
            let (row, secret) = auth::create_token(&*svc.store, role, cluster.as_deref())?;
            eprintln!(
                "Token {} ({} role{}). It is shown once: keep it now.",
                row.id,
                row.role,
                row.cluster
                    .as_deref()
                    .map(|c| format!(", cluster {c}"))
                    .unwrap_or_default()
            );
            println!("{secret}");
        }
        TokenCommand::List { data, store } => {
            let svc = serve::Service::open(&data, store.url()?.as_deref(), 1)?;
            for t in svc.store.tokens()? {
                println!(
                    "{}\t{}\t{}\t{}\t{}",
                    t.id,
                    t.role,
                    t.cluster.as_deref().unwrap_or("*"),
                    t.created_at,
                    if t.revoked { "revoked" } else { "live" }
                );
            }
        }
        TokenCommand::Revoke { id, data, store } => {
            let svc = serve::Service::open(&data, store.url()?.as_deref(), 1)?;
            if !svc.store.revoke_token(&id)? {
                bail!("no live token `{id}`; `pgform token list` shows them");
            }
            println!("Revoked {id}.");
        }
    }
    Ok(Outcome::Ok)
}
