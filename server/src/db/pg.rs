//! The embedded PostgreSQL cluster that `ifp serve` runs when no `DATABASE_URL` is given.
//!
//! The cluster lives in one folder (`IFP_DATA_DIR/pg`): it is the data directory and also holds
//! the Unix socket, so nothing listens on TCP. PostgreSQL refuses to run as root, so when we are
//! root `initdb` and `pg_ctl` run as an unprivileged system user (`postgres` if it exists, else
//! an `ifp` user created on demand). A second start reuses the cluster; a `postmaster.pid` left
//! by a crash is either cleared (dead process) or its postmaster is stopped first, so the
//! cluster always ends up owned by this process, which stops it in [`PgCluster::stop`] or on drop.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgPool};

use crate::error::{Error, Result};

/// The cluster's superuser and the platform's database.
const SUPERUSER: &str = "ifp";
const DATABASE: &str = "ifp";
/// Unix socket names are limited to 108 bytes (`sun_path`), including `/.s.PGSQL.5432`.
const MAX_SOCKET_PATH: usize = 107;

/// A running PostgreSQL cluster owned by this process.
#[derive(Debug)]
pub struct PgCluster {
    dir: PathBuf,
    bin: PathBuf,
    run_as: Option<(u32, u32)>,
    /// Whether this handle started the cluster and so stops it.
    running: bool,
    /// An exclusive `flock` on `<dir>.lock`, held while this process owns the cluster.
    _lock: Option<fs::File>,
}

/// Takes the owner lock of the cluster in `dir` without waiting: `Ok(None)` when another
/// process (a running `ifp serve`) owns it. The kernel drops the lock when its process dies,
/// even by SIGKILL, which is how a later start tells an orphaned postmaster from a live owner.
fn try_lock(dir: &Path) -> Result<Option<fs::File>> {
    use std::os::fd::AsRawFd;
    let path = dir.with_extension("lock");
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(Error::io(format!("open {}", path.display())))?;
    // SAFETY: flock on a file descriptor we own, which stays open for the call.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        Ok(Some(file))
    } else {
        let err = std::io::Error::last_os_error();
        if err.kind() == std::io::ErrorKind::WouldBlock {
            Ok(None)
        } else {
            Err(Error::io(format!("lock {}", path.display()))(err))
        }
    }
}

/// Where `initdb` and `pg_ctl` are: on PATH, or the newest `/usr/lib/postgresql/*/bin`.
pub fn find_binaries() -> Result<PathBuf> {
    find_binaries_in(
        std::env::var_os("PATH").as_deref(),
        Path::new("/usr/lib/postgresql"),
    )
}

/// [`find_binaries`] with the search path and the versioned install root given.
pub fn find_binaries_in(path: Option<&std::ffi::OsStr>, versioned: &Path) -> Result<PathBuf> {
    let has_both = |d: &Path| d.join("initdb").is_file() && d.join("pg_ctl").is_file();
    if let Some(path) = path {
        if let Some(d) = std::env::split_paths(path).find(|d| has_both(d)) {
            return Ok(d);
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = fs::read_dir(versioned)
        .into_iter()
        .flatten()
        .filter_map(|e| {
            let e = e.ok()?;
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            Some((v, e.path().join("bin")))
        })
        .filter(|(_, d)| has_both(d))
        .collect();
    versions.sort();
    versions.pop().map(|(_, d)| d).ok_or_else(|| {
        Error::Postgres(
            "PostgreSQL server binaries (initdb, pg_ctl) were not found on PATH or under \
             /usr/lib/postgresql/*/bin: install PostgreSQL (e.g. `apt-get install postgresql`) \
             or set DATABASE_URL to an existing database"
                .into(),
        )
    })
}

/// uid and gid of a user from /etc/passwd.
fn lookup_user(name: &str) -> Option<(u32, u32)> {
    let passwd = fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() >= 4 && f[0] == name {
            Some((f[2].parse().ok()?, f[3].parse().ok()?))
        } else {
            None
        }
    })
}

/// The user the cluster runs as when we are root; `None` when we are not root.
fn unprivileged_user() -> Result<Option<(u32, u32)>> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    for name in ["postgres", "ifp"] {
        if let Some(ids) = lookup_user(name) {
            return Ok(Some(ids));
        }
    }
    let out = Command::new("useradd")
        .args([
            "--system",
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
            "ifp",
        ])
        .output()
        .map_err(|e| Error::Postgres(format!("running as root and cannot run useradd: {e}")))?;
    if !out.status.success() {
        return Err(Error::Postgres(format!(
            "running as root and cannot create the system user `ifp` for PostgreSQL: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    lookup_user("ifp")
        .map(Some)
        .ok_or_else(|| Error::Postgres("user `ifp` was created but is not in /etc/passwd".into()))
}

fn chown(path: &Path, (uid, gid): (u32, u32)) -> Result<()> {
    std::os::unix::fs::chown(path, Some(uid), Some(gid))
        .map_err(Error::io(format!("chown {}", path.display())))
}

fn is_alive_postgres(pid: i32) -> bool {
    // The comm name, not only kill(0), because a PID from before a reboot may now be reused.
    fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|c| matches!(c.trim(), "postgres" | "postmaster"))
        .unwrap_or(false)
}

/// Single-quoted for postgresql.conf.
fn conf_quote(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "''"))
}

impl PgCluster {
    /// Creates (first time) or reuses the cluster in `dir` and starts it. Fails when another
    /// process owns the cluster.
    pub fn start(dir: &Path) -> Result<PgCluster> {
        match Self::open(dir)? {
            c if c.running => Ok(c),
            _ => Err(Error::Postgres(format!(
                "the database in {} is in use by another ifp process (ifp serve); stop it first \
                 or use its database",
                dir.display()
            ))),
        }
    }

    /// Like [`PgCluster::start`], but when another process (a running `ifp serve`) owns the
    /// cluster, connects to it instead and leaves it running on drop.
    pub fn open(dir: &Path) -> Result<PgCluster> {
        let bin = find_binaries()?;
        let run_as = unprivileged_user()?;
        fs::create_dir_all(dir).map_err(Error::io(format!("create {}", dir.display())))?;
        let dir = dir
            .canonicalize()
            .map_err(Error::io(format!("resolve {}", dir.display())))?;
        let Some(lock) = try_lock(&dir)? else {
            return Ok(PgCluster {
                dir,
                bin,
                run_as,
                running: false,
                _lock: None,
            });
        };
        let socket_len = dir.as_os_str().len() + "/.s.PGSQL.5432".len();
        if socket_len > MAX_SOCKET_PATH {
            return Err(Error::Postgres(format!(
                "{}: path too long for a Unix socket ({socket_len} > {MAX_SOCKET_PATH} bytes); \
                 use a shorter IFP_DATA_DIR",
                dir.display()
            )));
        }
        if let Some(ids) = run_as {
            chown(&dir, ids)?;
        }
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))
            .map_err(Error::io(format!("chmod {}", dir.display())))?;
        let mut cluster = PgCluster {
            dir,
            bin,
            run_as,
            running: false,
            _lock: Some(lock),
        };
        if !cluster.dir.join("PG_VERSION").exists() {
            cluster.initdb()?;
        }
        cluster.write_settings()?;
        cluster.clear_stale_pid()?;
        cluster.pg_ctl_start()?;
        cluster.running = true;
        Ok(cluster)
    }

    /// Whether this handle started the cluster (and stops it), rather than attaching to one
    /// owned by another process.
    pub fn owned(&self) -> bool {
        self.running
    }

    /// The data and socket directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Options connecting to database `db` over the cluster's socket.
    pub fn connect_options(&self, db: &str) -> PgConnectOptions {
        PgConnectOptions::new()
            .socket(&self.dir)
            .username(SUPERUSER)
            .database(db)
            .disable_statement_logging()
    }

    /// A `DATABASE_URL` for other processes (`ifp worker`) on this machine.
    pub fn url(&self, db: &str) -> String {
        format!(
            "postgres://{SUPERUSER}@localhost/{db}?host={}",
            self.dir.display()
        )
    }

    /// Creates the platform database if needed and opens a pool on it.
    pub async fn pool(&self, max_connections: u32) -> Result<PgPool> {
        self.ensure_database(DATABASE).await?;
        Ok(PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(std::time::Duration::from_secs(10))
            .connect_with(self.connect_options(DATABASE))
            .await?)
    }

    /// Creates database `db` if it does not exist.
    pub async fn ensure_database(&self, db: &str) -> Result<()> {
        let mut conn = sqlx::PgConnection::connect_with(&self.connect_options("postgres")).await?;
        let exists: bool =
            sqlx::query_scalar("select exists(select 1 from pg_database where datname = $1)")
                .bind(db)
                .fetch_one(&mut conn)
                .await?;
        if !exists {
            // Identifiers cannot be bound; quote it as one.
            let q = format!("create database \"{}\"", db.replace('"', "\"\""));
            sqlx::query(&q).execute(&mut conn).await?;
        }
        conn.close().await?;
        Ok(())
    }

    fn command(&self, program: &str) -> Command {
        let mut c = Command::new(self.bin.join(program));
        c.current_dir(&self.dir).env("LC_ALL", "C");
        if let Some((uid, gid)) = self.run_as {
            c.uid(uid).gid(gid);
        }
        c
    }

    fn run(&self, mut cmd: Command, what: &str) -> Result<Output> {
        let out = cmd
            .output()
            .map_err(|e| Error::Postgres(format!("cannot run {what}: {e}")))?;
        if !out.status.success() {
            let log = fs::read_to_string(self.log_path()).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(15).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            return Err(Error::Postgres(format!(
                "{what} failed ({}): {}{}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim(),
                String::from_utf8_lossy(&out.stdout).trim(),
                tail.join("\n")
            )));
        }
        Ok(out)
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("postgres.log")
    }

    fn initdb(&self) -> Result<()> {
        tracing::info!(dir = %self.dir.display(), "creating PostgreSQL cluster");
        let mut c = self.command("initdb");
        c.arg("-D")
            .arg(&self.dir)
            .args(["-U", SUPERUSER, "--auth=trust", "--encoding=UTF8"])
            .args(["--no-locale", "--no-instructions"]);
        self.run(c, "initdb").map_err(|e| match (e, self.run_as) {
            (Error::Postgres(m), Some(_)) if m.contains("Permission denied") => {
                Error::Postgres(format!(
                    "{m}\nPostgreSQL runs as an unprivileged user, which must be able to enter \
                     every parent folder of {}: choose an IFP_DATA_DIR outside /root, or make \
                     its parents world-searchable (chmod o+x)",
                    self.dir.display()
                ))
            }
            (e, _) => e,
        })?;
        let conf = self.dir.join("postgresql.conf");
        let mut text = fs::read_to_string(&conf).map_err(Error::io("read postgresql.conf"))?;
        text.push_str("\n# Written by ifp: the socket path is rewritten at every start.\n");
        text.push_str("include_if_exists = 'ifp.conf'\n");
        fs::write(&conf, text).map_err(Error::io("write postgresql.conf"))
    }

    /// Settings that depend on where the cluster is, rewritten at every start so a moved data
    /// directory keeps working.
    fn write_settings(&self) -> Result<()> {
        let dir = self.dir.to_string_lossy();
        let text = format!(
            "listen_addresses = ''\nunix_socket_directories = {}\nmax_connections = 200\n",
            conf_quote(&dir)
        );
        let path = self.dir.join("ifp.conf");
        fs::write(&path, text).map_err(Error::io("write ifp.conf"))?;
        if let Some(ids) = self.run_as {
            chown(&path, ids)?;
        }
        Ok(())
    }

    fn clear_stale_pid(&self) -> Result<()> {
        let pid_file = self.dir.join("postmaster.pid");
        let Ok(text) = fs::read_to_string(&pid_file) else {
            return Ok(());
        };
        let pid: Option<i32> = text.lines().next().and_then(|l| l.trim().parse().ok());
        match pid {
            Some(pid) if is_alive_postgres(pid) => {
                // A postmaster left by a killed server: stop it so this process owns the one
                // that runs (and its shutdown).
                tracing::warn!(
                    pid,
                    "stopping a PostgreSQL left running by an earlier start"
                );
                self.pg_ctl_stop("fast")
            }
            _ => {
                tracing::warn!("removing stale postmaster.pid left by a crash");
                fs::remove_file(&pid_file).map_err(Error::io("remove stale postmaster.pid"))?;
                for e in fs::read_dir(&self.dir).into_iter().flatten().flatten() {
                    let name = e.file_name();
                    let name = name.to_string_lossy();
                    if name.starts_with(".s.PGSQL.") {
                        let _ = fs::remove_file(e.path());
                    }
                }
                Ok(())
            }
        }
    }

    fn pg_ctl_start(&self) -> Result<()> {
        let mut c = self.command("pg_ctl");
        c.arg("start")
            .arg("-D")
            .arg(&self.dir)
            .arg("-l")
            .arg(self.log_path())
            .args(["-w", "-t", "120", "-s"])
            // Its own process group: a Ctrl-C in the terminal goes to us, and we stop the
            // cluster after the workers have recorded their state.
            .process_group(0);
        self.run(c, "pg_ctl start")?;
        Ok(())
    }

    fn pg_ctl_stop(&self, mode: &str) -> Result<()> {
        let mut c = self.command("pg_ctl");
        c.arg("stop")
            .arg("-D")
            .arg(&self.dir)
            .args(["-m", mode, "-w", "-t", "60", "-s"]);
        self.run(c, "pg_ctl stop").map(|_| ())
    }

    /// Stops the cluster (fast shutdown: open sessions are ended, data is flushed).
    pub fn stop(&mut self) -> Result<()> {
        if !self.running {
            return Ok(());
        }
        self.running = false;
        let stopped = self.pg_ctl_stop("fast");
        self._lock = None;
        stopped
    }
}

impl PgCluster {
    /// Lets go of the cluster as a SIGKILLed owner would: the lock is released, PostgreSQL
    /// keeps running. For tests of the recovery path.
    #[doc(hidden)]
    pub fn abandon(mut self) {
        self.running = false;
        self._lock = None;
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            tracing::error!(error = %e, "stopping PostgreSQL");
        }
    }
}

/// Runs the platform's migrations (`migrations/` at the repository root, embedded at build time).
pub async fn migrate(pool: &PgPool) -> Result<()> {
    sqlx::migrate!("../migrations").run(pool).await?;
    Ok(())
}
