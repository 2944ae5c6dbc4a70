//! The operator's commands for the HTTP API's users and tokens, which live in the store:
//! `caas users add`, `caas token create|list|revoke`. The work is `caas_api::auth`'s; this
//! file parses, prints and picks exit codes. A token is printed once and never again.

use clap::{Args, Subcommand};
use serde_json::json;

use caas_api::ApiError;
use caas_api::auth;
use caas_store::Store;

use crate::errors::user;

/// The store the users and tokens live in.
#[derive(Debug, Args)]
pub struct StoreArg {
    /// The store: a local folder or s3://bucket/prefix.
    #[arg(long, default_value = "./caas-store", env = "CAAS_STORE")]
    store: String,
}

/// `caas users ...`.
#[derive(Debug, Subcommand)]
pub enum UsersCmd {
    /// Add a user (or set the groups of an existing one).
    #[command(
        after_help = "Example:\n  caas users add ann --group lab --group shared --store s3://bucket/caas"
    )]
    Add {
        #[command(flatten)]
        at: StoreArg,
        /// The user's name (letters, digits, '-', '_', '.').
        name: String,
        /// A group the user may use; repeat for several.
        #[arg(long, required = true)]
        group: Vec<String>,
    },
}

/// `caas token ...`.
#[derive(Debug, Subcommand)]
pub enum TokenCmd {
    /// Make a token for a user and print it (once: only its hash is stored).
    #[command(
        after_help = "Examples:\n  caas token create ann --expires 30d\n  caas token create ann --read-only --json"
    )]
    Create {
        #[command(flatten)]
        at: StoreArg,
        /// The user.
        name: String,
        /// Lifetime, e.g. 12h, 30d (default: no expiry).
        #[arg(long)]
        expires: Option<humantime::Duration>,
        /// The token may only read (no upload, submit or cancel).
        #[arg(long)]
        read_only: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// List tokens (ids, users, expiry; never secrets).
    List {
        #[command(flatten)]
        at: StoreArg,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token by its id: it stops working at once.
    Revoke {
        #[command(flatten)]
        at: StoreArg,
        /// The token id (12 hex characters, as `caas token list` shows).
        id: String,
    },
}

fn api_error(e: ApiError) -> anyhow::Error {
    match e.status().as_u16() {
        400..=499 => user(e.to_string()),
        _ => anyhow::anyhow!("{e}"),
    }
}

pub async fn users(cmd: UsersCmd) -> anyhow::Result<i32> {
    match cmd {
        UsersCmd::Add { at, name, group } => {
            let store = Store::open(&at.store)?;
            let rec = auth::add_user(&store, &name, &group)
                .await
                .map_err(api_error)?;
            println!("user {} (groups: {})", rec.name, rec.groups.join(", "));
            Ok(0)
        }
    }
}

pub async fn token(cmd: TokenCmd) -> anyhow::Result<i32> {
    match cmd {
        TokenCmd::Create {
            at,
            name,
            expires,
            read_only,
            json,
        } => {
            let store = Store::open(&at.store)?;
            let (rec, token) =
                auth::create_token(&store, &name, expires.map(Into::into), read_only)
                    .await
                    .map_err(api_error)?;
            if json {
                let mut v = rec.public();
                v["token"] = json!(token);
                println!("{v}");
            } else {
                println!("{token}");
                eprintln!(
                    "caas: token {} for {}{}{} (shown once; keep it secret)",
                    rec.id,
                    rec.user,
                    if rec.read_only { ", read-only" } else { "" },
                    rec.expires
                        .map(|e| format!(", expires {}", e.to_rfc3339()))
                        .unwrap_or_default()
                );
            }
            Ok(0)
        }
        TokenCmd::List { at, json } => {
            let store = Store::open(&at.store)?;
            let tokens = auth::list_tokens(&store).await.map_err(api_error)?;
            if json {
                let v: Vec<_> = tokens.iter().map(auth::TokenRecord::public).collect();
                println!("{}", serde_json::Value::Array(v));
            } else {
                println!(
                    "{:<12}  {:<16}  {:<9}  {:<25}  STATUS",
                    "ID", "USER", "ACCESS", "EXPIRES"
                );
                for t in tokens {
                    let status = if t.revoked.is_some() {
                        "revoked"
                    } else if t.expires.is_some_and(|e| e <= chrono::Utc::now()) {
                        "expired"
                    } else {
                        "active"
                    };
                    println!(
                        "{:<12}  {:<16}  {:<9}  {:<25}  {status}",
                        t.id,
                        t.user,
                        if t.read_only {
                            "read-only"
                        } else {
                            "read-write"
                        },
                        t.expires
                            .map(|e| e.to_rfc3339())
                            .unwrap_or_else(|| "never".into()),
                    );
                }
            }
            Ok(0)
        }
        TokenCmd::Revoke { at, id } => {
            let store = Store::open(&at.store)?;
            let rec = auth::revoke_token(&store, &id).await.map_err(api_error)?;
            println!("token {} of {} revoked", rec.id, rec.user);
            Ok(0)
        }
    }
}
