//! `ifp token create`: a new API token, printed once (only its hash is stored).

use std::path::PathBuf;

use clap::{Args, Subcommand};
use ifp_server::platform;

use super::Failure;

#[derive(Args)]
pub struct TokenArgs {
    #[command(subcommand)]
    command: TokenCommand,
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
        #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
        database_url: Option<String>,
        #[arg(long, env = "IFP_DATA_DIR", default_value = "./ifp-data")]
        data_dir: PathBuf,
    },
}

pub fn run(a: TokenArgs) -> Result<(), Failure> {
    let TokenCommand::Create {
        name,
        admin,
        database_url,
        data_dir,
    } = a.command;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(Failure::runtime)?;
    rt.block_on(async move {
        let db = platform::open_database(database_url.as_deref(), &data_dir, 2)
            .await
            .map_err(Failure::runtime)?;
        let created = ifp_server::tokens::create(&db.pool, &name, admin).await;
        db.pool.close().await;
        if let Some(cluster) = db.cluster {
            let _ = tokio::task::spawn_blocking(move || drop(cluster)).await;
        }
        let token = created.map_err(|e| match e {
            ifp_server::Error::Invalid { .. } => Failure::usage(anyhow::anyhow!("--name: {e}")),
            e => Failure::runtime(e),
        })?;
        println!("{token}");
        Ok(())
    })
}
