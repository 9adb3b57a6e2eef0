//! `ifp serve` as a process: a job survives a SIGKILL of the server (the next start rescues it
//! and resumes it from its checkpoint), and SIGTERM shuts everything down, PostgreSQL included.

use crate::common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const TOKEN: &str = "test-admin-token";

/// A running `ifp serve`; killed (and its PostgreSQL stopped) if a test fails half-way.
struct Server {
    child: Option<Child>,
    addr: String,
    /// The embedded database's URL for `ifp worker`.
    database_url: String,
    data: PathBuf,
}

impl Server {
    fn start(data: &Path) -> Server {
        Self::start_with(data, 1)
    }

    fn start_with(data: &Path, workers: usize) -> Server {
        Self::start_env(data, workers, &[])
    }

    /// `ifp serve` with `workers` slots and the extra environment `env`.
    fn start_env(data: &Path, workers: usize, env: &[(&str, &str)]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ifp"))
            .args(["serve", "--bind", "127.0.0.1:0"])
            .envs(env.iter().copied())
            .env("IFP_DATA_DIR", data)
            .env("IFP_WORKERS", workers.to_string())
            .env("IFP_ADMIN_TOKEN", TOKEN)
            .env("IFP_LEASE_SECS", "3")
            .env("IFP_RESCUE_SECS", "1")
            .env("RUST_LOG", "warn")
            .env_remove("DATABASE_URL")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut addr = None;
        let database_url = loop {
            let line = lines
                .next()
                .expect("serve exited before listening")
                .unwrap();
            if let Some(rest) = line.strip_prefix("ifp serve: listening on http://") {
                addr = Some(rest.split_whitespace().next().unwrap().to_string());
            }
            if let Some((_, url)) = line.split_once("DATABASE_URL=") {
                break url.trim_end_matches(')').to_string();
            }
        };
        let addr = addr.expect("the listening line comes first");
        // Keep draining stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Server {
            child: Some(child),
            addr,
            database_url,
            data: data.to_path_buf(),
        }
    }

    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Vec<u8>) {
        let mut s = TcpStream::connect(&self.addr).unwrap();
        let body = body.map(Value::to_string).unwrap_or_default();
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut raw = vec![];
        s.read_to_end(&mut raw).unwrap();
        let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
        let head = String::from_utf8_lossy(&raw[..split]).to_string();
        let status: u16 = head.split_whitespace().nth(1).unwrap().parse().unwrap();
        assert!(!head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked"));
        (status, raw[split + 4..].to_vec())
    }

    fn json(&self, method: &str, path: &str, body: Option<&Value>) -> Value {
        let (status, bytes) = self.call(method, path, body);
        assert!(
            status < 300,
            "{method} {path}: {status} {}",
            String::from_utf8_lossy(&bytes)
        );
        serde_json::from_slice(&bytes).unwrap()
    }

    /// Waits for job `id` to end, and checks that it succeeded, all `LONG` steps, in attempt 2.
    fn wait_second_attempt_success(&self, id: &str) {
        let done = self.wait_job(id, "the end", |j| {
            !matches!(j["status"].as_str(), Some("queued" | "running"))
        });
        assert_eq!(done["status"], "succeeded", "{done}");
        assert_eq!(
            (done["attempt"].as_i64(), done["step"].as_i64()),
            (Some(2), Some(LONG as i64))
        );
    }

    fn wait_job(&self, id: &str, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
        let t0 = Instant::now();
        loop {
            let j = self.json("GET", &format!("/api/v1/jobs/{id}"), None);
            if ok(&j) {
                return j;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(240),
                "timed out waiting for {what}: {j}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn sigkill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    fn sigterm(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().unwrap();
        // SAFETY: signalling our own child process.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        c.wait().unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.sigkill();
            // Its PostgreSQL outlives it: take the cluster over and stop it.
            drop(ifp_server::db::pg::PgCluster::start(&self.data.join("pg")));
        }
    }
}

/// An `ifp worker` process; SIGKILLed on drop. Its log (stderr, at `info`) is collected.
struct Worker(Child, std::sync::Arc<std::sync::Mutex<String>>);

impl Worker {
    fn start(server: &Server) -> Worker {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ifp"))
            .arg("worker")
            .env("DATABASE_URL", &server.database_url)
            .env("IFP_DATA_DIR", &server.data)
            .env("IFP_LEASE_SECS", "3")
            .env("RUST_LOG", "warn,ifp_server=info")
            .env_remove("NO_COLOR")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let (stderr, sink) = (child.stderr.take().unwrap(), log.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("worker: {line}");
                sink.lock().unwrap().push_str(&(line + "\n"));
            }
        });
        Worker(child, log)
    }

    /// What it has logged so far.
    fn log(&self) -> String {
        self.1.lock().unwrap().clone()
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Steps of the jobs that a test interrupts after step 7: enough that the interruption lands
/// while the job still runs (a 40-step job at 16x16 now finished before the kill did).
const LONG: u64 = 200;

fn tiny_job(steps: u64, save_freq: u64) -> Value {
    let mut cfg = serde_json::to_value(ifp_trainer::Config::load("tiny").unwrap()).unwrap();
    cfg["DATA"]["IMG_SIZE"] = json!(16);
    cfg["TRAIN"]["STEPS"] = json!(steps);
    cfg["SAVE_FREQ"] = json!(save_freq);
    json!({"name": "tiny", "config": cfg})
}

/// Issue 17, item 9: `IFP_WEBHOOK_URL` reaches the notifier, which POSTs the job's end with a
/// link to its page on this server.
#[test]
fn serve_posts_each_ended_job_to_its_webhook() {
    let hook = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", hook.local_addr().unwrap());
    let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
    std::thread::spawn(move || {
        for conn in hook.incoming().flatten() {
            let mut r = BufReader::new(conn.try_clone().unwrap());
            let (mut line, mut len) = (String::new(), 0usize);
            while r.read_line(&mut line).unwrap_or(0) > 0 && line != "\r\n" {
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
                line.clear();
            }
            let mut body = vec![0; len];
            r.read_exact(&mut body).unwrap();
            let mut w = conn;
            let _ = w.write_all(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n");
            let _ = tx.send(body);
        }
    });
    let tmp = common::open_tempdir("ifp-webhook-");
    let server = Server::start_env(&tmp.path().join("data"), 1, &[("IFP_WEBHOOK_URL", &url)]);
    let job = server.json("POST", "/api/v1/jobs", Some(&tiny_job(4, 4)));
    let id = job["id"].as_str().unwrap().to_string();
    let body = rx
        .recv_timeout(Duration::from_secs(120))
        .expect("a webhook POST when the job ends");
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["job"]["id"], id.as_str(), "{v}");
    assert_eq!(v["job"]["status"], "succeeded", "{v}");
    assert_eq!(
        v["job"]["url"],
        format!("http://{}/jobs/{id}", server.addr).as_str()
    );
    // Delivered once: nothing more arrives while the server keeps running.
    assert!(rx.recv_timeout(Duration::from_secs(7)).is_err());
}

#[test]
fn a_sigkilled_worker_process_s_job_is_resumed_by_another() {
    let tmp = common::open_tempdir("ifp-workers-");
    let server = Server::start_with(&tmp.path().join("data"), 0);
    let job = server.json("POST", "/api/v1/jobs", Some(&tiny_job(LONG, 5)));
    let id = job["id"].as_str().unwrap().to_string();
    let first = Worker::start(&server);
    server.wait_job(&id, "a checkpoint", |j| j["step"].as_i64() >= Some(7));
    // Its log went to a pipe, not a terminal: plain text without colour codes.
    let log = first.log();
    assert!(
        log.contains("worker started") && log.contains("running job"),
        "{log}"
    );
    assert!(
        !log.contains('\u{1b}'),
        "colour codes in a piped log: {log:?}"
    );
    drop(first);
    let _second = Worker::start(&server);
    server.wait_second_attempt_success(&id);
    let metrics = server.json("GET", &format!("/api/v1/jobs/{id}/metrics"), None);
    let attempt2: Vec<i64> = metrics
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["attempt"] == 2)
        .map(|m| m["step"].as_i64().unwrap())
        .collect();
    assert!(
        attempt2[0] > 5 && *attempt2.last().unwrap() == LONG as i64,
        "{attempt2:?}"
    );
}

fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn a_1_gib_checkpoint_downloads_in_ranges_in_constant_memory() {
    const GIB: u64 = 1 << 30;
    const PIECE: u64 = 64 << 20;
    let tmp = common::open_tempdir("ifp-big-");
    let data = tmp.path().join("data");
    let server = Server::start_with(&data, 0);
    let job = server.json("POST", "/api/v1/jobs", Some(&tiny_job(4, 2)));
    let id: uuid::Uuid = job["id"].as_str().unwrap().parse().unwrap();
    // A sparse 1 GiB file listed as the job's checkpoint, through the server's own database.
    let rel = format!("{id}/attempt-1/model-000002.safetensors");
    let path = data.join("artifacts").join(&rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::File::create(&path).unwrap().set_len(GIB).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let cluster = ifp_server::db::pg::PgCluster::open(&data.join("pg")).unwrap();
        assert!(!cluster.owned());
        let pool = cluster.pool(1).await.unwrap();
        sqlx::query(
            "insert into checkpoint (job_id, name, kind, attempt, step, bytes, sha256, path)
             values ($1, 'model-000002.safetensors', 'model', 1, 2, $2, 'abc', $3)",
        )
        .bind(id)
        .bind(GIB as i64)
        .bind(&rel)
        .execute(&pool)
        .await
        .unwrap();
        pool.close().await;
    });
    let pid = server.child.as_ref().unwrap().id();
    let url = format!("/api/v1/jobs/{id}/checkpoints/model-000002.safetensors");
    let before = peak_rss_kib(pid);
    let mut total = 0u64;
    let mut start = 0u64;
    while start < GIB {
        let end = (start + PIECE).min(GIB) - 1;
        let mut s = TcpStream::connect(&server.addr).unwrap();
        write!(
            s,
            "GET {url} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\
             Range: bytes={start}-{end}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut raw = Vec::with_capacity(PIECE as usize + 4096);
        s.read_to_end(&mut raw).unwrap();
        let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
        let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
        assert!(head.starts_with("http/1.1 206"), "{head}");
        assert!(
            head.contains(&format!("content-range: bytes {start}-{end}/{GIB}")),
            "{head}"
        );
        let body = &raw[split + 4..];
        assert_eq!(body.len() as u64, end - start + 1);
        assert!(body.iter().all(|&b| b == 0));
        total += body.len() as u64;
        start = end + 1;
    }
    assert_eq!(total, GIB);
    let growth_mib = (peak_rss_kib(pid).saturating_sub(before)) / 1024;
    assert!(growth_mib < 64, "server memory grew by {growth_mib} MiB");

    // An open event stream (the job stays queued: no workers) does not hold up shutdown.
    let mut s = TcpStream::connect(&server.addr).unwrap();
    write!(
        s,
        "GET /api/v1/jobs/{id}/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\r\n"
    )
    .unwrap();
    let mut first = [0u8; 512];
    let n = s.read(&mut first).unwrap();
    assert!(String::from_utf8_lossy(&first[..n]).contains("text/event-stream"));
    let mut server = server;
    let t0 = Instant::now();
    assert!(server.sigterm().success());
    assert!(
        t0.elapsed() < Duration::from_secs(15),
        "shutdown took {:?}",
        t0.elapsed()
    );
}

#[test]
fn a_job_survives_a_sigkilled_server_and_sigterm_stops_everything() {
    let tmp = common::open_tempdir("ifp-serve-");
    let data = tmp.path().join("data");
    let mut server = Server::start(&data);
    assert_eq!(server.json("GET", "/healthz", None)["status"], "ok");

    let job = server.json("POST", "/api/v1/jobs", Some(&tiny_job(LONG, 5)));
    let id = job["id"].as_str().unwrap().to_string();
    server.wait_job(&id, "a checkpoint", |j| j["step"].as_i64() >= Some(7));
    // Queued behind it when the server dies: they must not be lost either.
    let queued: Vec<String> = (0..2)
        .map(|_| {
            let j = server.json("POST", "/api/v1/jobs", Some(&tiny_job(3, 3)));
            j["id"].as_str().unwrap().to_string()
        })
        .collect();

    server.sigkill();
    let mut server = Server::start(&data);
    server.wait_second_attempt_success(&id);
    let metrics = server.json("GET", &format!("/api/v1/jobs/{id}/metrics"), None);
    let first_of_2 = metrics
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["attempt"] == 2)
        .map(|m| m["step"].as_i64().unwrap())
        .min()
        .unwrap();
    assert!(
        first_of_2 > 5,
        "attempt 2 resumed (first step {first_of_2}), not restarted"
    );

    let cks = server.json("GET", &format!("/api/v1/jobs/{id}/checkpoints"), None);
    let last = cks
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == format!("model-{LONG:06}.safetensors"))
        .expect("final checkpoint listed")
        .clone();
    let (status, bytes) = server.call("GET", last["url"].as_str().unwrap(), None);
    assert_eq!(status, 200);
    use sha2::Digest;
    assert_eq!(
        hex::encode(sha2::Sha256::digest(&bytes)),
        last["sha256"].as_str().unwrap()
    );

    for q in &queued {
        let j = server.wait_job(q, "a queued job", |j| {
            !matches!(j["status"].as_str(), Some("queued" | "running"))
        });
        assert_eq!(
            (j["status"].as_str(), j["attempt"].as_i64()),
            (Some("succeeded"), Some(1))
        );
    }

    assert!(server.sigterm().success());
    assert!(
        !data.join("pg/postmaster.pid").exists(),
        "PostgreSQL was stopped"
    );
}
