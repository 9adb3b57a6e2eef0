//! `ifp token create | list | revoke`: API tokens. A new token is printed once (only its hash is
//! stored); `list` shows ids, owners and states, never tokens; `revoke` ends a token and the
//! browser sessions opened with it.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use ifp_server::platform;
use ifp_server::tokens;

use super::Failure;

#[derive(Args)]
pub struct TokenArgs {
    #[command(subcommand)]
    command: TokenCommand,
    #[arg(long, env = "DATABASE_URL", hide_env_values = true, global = true)]
    database_url: Option<String>,
    #[arg(
        long,
        env = "IFP_DATA_DIR",
        default_value = "./ifp-data",
        global = true
    )]
    data_dir: PathBuf,
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Create a token for user NAME and print it.
    Create {
        /// The user the token belongs to (jobs are owned by this name).
        #[arg(long)]
        name: String,
        /// May see and cancel every user's jobs.
        #[arg(long)]
        admin: bool,
        /// The token stops working this long from now, e.g. `90d`, `12h`, `1w` (default: it
        /// works until revoked).
        #[arg(long, value_parser = humantime::parse_duration)]
        expires_in: Option<std::time::Duration>,
    },
    /// List every stored token: id, user, admin or not, created, expires, state.
    List,
    /// Revoke a token by its id as `list` shows it (or at least its first 8 characters).
    Revoke {
        /// The token's id (or a unique prefix of at least 8 characters).
        id: String,
    },
}

pub fn run(a: TokenArgs) -> Result<(), Failure> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(Failure::runtime)?;
    rt.block_on(async move {
        let db = platform::open_database(a.database_url.as_deref(), &a.data_dir, 2)
            .await
            .map_err(Failure::runtime)?;
        let done = command(&db.pool, a.command).await;
        db.pool.close().await;
        if let Some(cluster) = db.cluster {
            let _ = tokio::task::spawn_blocking(move || drop(cluster)).await;
        }
        done
    })
}

async fn command(pool: &sqlx::PgPool, c: TokenCommand) -> Result<(), Failure> {
    // A refused value is the caller's mistake (exit 2, naming the argument); anything else is
    // the database's.
    let usage = |arg: &'static str| {
        move |e: ifp_server::Error| match e {
            ifp_server::Error::Invalid { .. } => Failure::usage(anyhow::anyhow!("{arg}: {e}")),
            e => Failure::runtime(e),
        }
    };
    match c {
        TokenCommand::Create {
            name,
            admin,
            expires_in,
        } => {
            let token = tokens::create(pool, &name, admin, expires_in)
                .await
                .map_err(usage(if expires_in.is_some() {
                    "--name/--expires-in"
                } else {
                    "--name"
                }))?;
            println!("{token}");
        }
        TokenCommand::List => {
            let all = tokens::list(pool).await.map_err(Failure::runtime)?;
            println!(
                "{:<36}  {:<20}  {:<5}  {:<16}  {:<16}  state",
                "id", "user", "admin", "created (UTC)", "expires (UTC)"
            );
            let when = |t: Option<chrono::DateTime<chrono::Utc>>| {
                t.map_or("never".to_string(), |t| {
                    t.format("%Y-%m-%d %H:%M").to_string()
                })
            };
            for t in &all {
                println!(
                    "{:<36}  {:<20}  {:<5}  {:<16}  {:<16}  {}",
                    t.id,
                    t.name,
                    if t.is_admin { "yes" } else { "no" },
                    when(Some(t.created_at)),
                    when(t.expires_at),
                    t.state()
                );
            }
            if all.is_empty() {
                println!("(no tokens: create one with `ifp token create --name NAME`)");
            }
        }
        TokenCommand::Revoke { id } => {
            let t = tokens::revoke(pool, &id).await.map_err(usage("ID"))?;
            println!("revoked {} (user {})", t.id, t.name);
        }
    }
    Ok(())
}
