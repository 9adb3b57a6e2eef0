//! `ifp serve`: the HTTP API, in-process workers and the rescuer over one database (the
//! embedded PostgreSQL unless `DATABASE_URL` is set), until SIGINT or SIGTERM.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use ifp_server::http::listen::{self, Limits};
use ifp_server::platform::{self, RESCUE_INTERVAL};
use ifp_server::webhook::Webhook;
use ifp_server::{app, AppState};
use tokio::sync::watch;

use super::slots::SlotArgs;
use super::{parse_device, Failure};

#[derive(Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "IFP_BIND", default_value = "127.0.0.1:8080")]
    bind: SocketAddr,
    /// PostgreSQL to use; without it, a private cluster runs in DATA_DIR/pg.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    #[command(flatten)]
    slots: SlotArgs,
    /// Seconds between runs of the rescuer (requeues jobs whose worker died).
    #[arg(long, env = "IFP_RESCUE_SECS", default_value_t = RESCUE_INTERVAL.as_secs(), value_parser = clap::value_parser!(u64).range(1..=3600))]
    rescue_secs: u64,
    /// Connections served at once; more wait in the kernel's queue until one ends.
    #[arg(long, env = "IFP_MAX_CONNECTIONS", default_value_t = Limits::default().max_connections, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=100_000))]
    max_connections: usize,
    /// Seconds a client may take to send a request's headers before its connection is closed.
    #[arg(long, env = "IFP_HEADER_TIMEOUT_SECS", default_value_t = Limits::default().header_read_timeout.as_secs(), value_parser = clap::value_parser!(u64).range(1..=600))]
    header_timeout_secs: u64,
    /// URL to POST a JSON summary of each job to when it ends (succeeded, failed or cancelled);
    /// its `text` field makes it a Slack or Mattermost message as it is.
    #[arg(long, env = "IFP_WEBHOOK_URL", hide_env_values = true)]
    webhook_url: Option<String>,
    /// The server's address as users reach it, for the job links in webhook messages
    /// [default: http:// and the listening address].
    #[arg(long, env = "IFP_PUBLIC_URL")]
    public_url: Option<String>,
}

pub fn run(a: ServeArgs) -> Result<(), Failure> {
    let device = parse_device(&a.slots.device)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(Failure::runtime)?;
    rt.block_on(serve(a, device))
}

async fn serve(a: ServeArgs, device: candle_core::Device) -> Result<(), Failure> {
    // Checked before anything starts, so a typo costs no database start-up.
    let datasets = datasets_dir(a.slots.datasets_dir.as_deref())?;
    let webhook = a
        .webhook_url
        .as_deref()
        .map(Webhook::new)
        .transpose()
        .map_err(Failure::usage)?;
    if let Some(u) = &a.public_url {
        Webhook::check_public_url(u).map_err(Failure::usage)?;
    }
    let env_token = std::env::var("IFP_ADMIN_TOKEN").ok();
    platform::check_admin_token(env_token.as_deref())
        .map_err(|e| Failure::usage(anyhow::anyhow!("{e}")))?;
    std::fs::create_dir_all(&a.slots.data_dir)
        .with_context(|| format!("cannot create IFP_DATA_DIR {}", a.slots.data_dir.display()))
        .map_err(Failure::usage)?;
    let data_dir = a
        .slots
        .data_dir
        .canonicalize()
        .context("IFP_DATA_DIR")
        .map_err(Failure::usage)?;
    let artifacts = data_dir.join("artifacts");
    std::fs::create_dir_all(&artifacts)
        .with_context(|| format!("cannot create {}", artifacts.display()))
        .map_err(Failure::usage)?;
    let connections = 10 + 4 * a.slots.workers as u32;
    let db = platform::open_database(a.database_url.as_deref(), &data_dir, connections)
        .await
        .map_err(Failure::runtime)?;
    if let Some(c) = &db.cluster {
        if !c.owned() {
            return Err(Failure::usage(anyhow::anyhow!(
                "{} is in use by another `ifp serve`; stop it or choose another IFP_DATA_DIR",
                data_dir.display()
            )));
        }
    }
    let (token, generated) =
        platform::admin_token(env_token.as_deref(), &data_dir).map_err(Failure::runtime)?;
    let listener = tokio::net::TcpListener::bind(a.bind)
        .await
        .with_context(|| format!("cannot listen on {}", a.bind))
        .map_err(Failure::usage)?;
    let addr = listener.local_addr().map_err(Failure::runtime)?;
    let public_url = a.public_url.unwrap_or_else(|| format!("http://{addr}"));

    let (stop_tx, stop_rx) = watch::channel(false);
    let rescuer = platform::spawn_rescuer(
        db.pool.clone(),
        Duration::from_secs(a.rescue_secs),
        stop_rx.clone(),
    );
    let workers =
        a.slots
            .spawn_workers(&db.pool, &artifacts, &device, datasets.as_deref(), &stop_rx);

    println!("ifp serve: listening on http://{addr} (API under /api/v1)");
    println!("open http://{addr}/ in a browser and sign in with the admin token below");
    match &db.cluster {
        Some(c) => println!(
            "database: embedded PostgreSQL in {} (for `ifp worker` on this machine: DATABASE_URL={})",
            c.dir().display(),
            c.url("ifp")
        ),
        None => println!("database: DATABASE_URL"),
    }
    let token_path = platform::admin_token_path(&data_dir);
    if env_token.is_some() {
        println!("admin token: IFP_ADMIN_TOKEN");
    } else if generated {
        println!("admin token (saved to {}): {token}", token_path.display());
    } else {
        println!("admin token: in {}", token_path.display());
    }
    if let Some(d) = &datasets {
        println!("datasets for compare jobs: {}", d.display());
    }
    println!(
        "workers: {} in this process; artifacts in {}",
        a.slots.workers,
        artifacts.display()
    );

    let mut state = AppState::new(db.pool.clone(), &artifacts, Some(&token));
    state.datasets = datasets;
    let hub = ifp_server::http::hub::spawn_hub(
        db.pool.clone(),
        state.job_changed.clone(),
        stop_rx.clone(),
    );
    let notifier = webhook.map(|hook| {
        println!("webhook: each job's end is POSTed to IFP_WEBHOOK_URL");
        ifp_server::webhook::spawn(
            db.pool.clone(),
            hook.linking_to(&public_url),
            state.job_changed.subscribe(),
            stop_rx.clone(),
        )
    });
    let closing = state.closing.clone();
    let limits = Limits {
        max_connections: a.max_connections,
        header_read_timeout: Duration::from_secs(a.header_timeout_secs),
    };
    listen::serve(listener, app(state), limits, async move {
        platform::shutdown_signal().await;
        closing.send_replace(true);
    })
    .await;
    println!("ifp serve: shutting down (running jobs are checkpointed and requeued)");
    let _ = stop_tx.send(true);
    for w in workers {
        let _ = w.await;
    }
    let _ = rescuer.await;
    let _ = hub.await;
    if let Some(n) = notifier {
        let _ = n.await;
    }
    db.pool.close().await;
    if let Some(cluster) = db.cluster {
        // pg_ctl waits for PostgreSQL to stop: off the async threads.
        let _ = tokio::task::spawn_blocking(move || drop(cluster)).await;
    }
    Ok(())
}

/// The datasets folder, made absolute (workers and the API resolve data folders against it).
pub fn datasets_dir(dir: Option<&std::path::Path>) -> Result<Option<std::path::PathBuf>, Failure> {
    dir.map(|d| {
        d.canonicalize()
            .with_context(|| format!("IFP_DATASETS_DIR {} is not a readable folder", d.display()))
            .map_err(Failure::usage)
    })
    .transpose()
}
