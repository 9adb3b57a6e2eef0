//! End to end in headless Chromium (Debian's `chromium` and `chromedriver`, driven over
//! WebDriver by fantoccini): start `ifp serve`, sign in with the admin token, submit a tiny job
//! through the form, watch the job page reach `succeeded` without reloading, download the
//! final checkpoint through the browser and check its SHA-256. Screenshots of the pages go to
//! `IFP_SCREENSHOT_DIR` (default: `ifp-e2e-screenshots` in the system temp folder), printed.

use crate::common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;
use sha2::{Digest, Sha256};

const TOKEN: &str = "e2e-admin-token-0123";

/// A child process killed when the test ends, however it ends.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `ifp serve` on a free port with an embedded PostgreSQL; returns it and its base URL.
fn start_server(data: &Path) -> (Killed, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ifp"))
        .args(["serve", "--bind", "127.0.0.1:0"])
        .env("IFP_DATA_DIR", data)
        .env("IFP_ADMIN_TOKEN", TOKEN)
        .env("IFP_DATASETS_DIR", common::datasets())
        .env("RUST_LOG", "warn")
        .env_remove("DATABASE_URL")
        .stdout(Stdio::piped())
        .spawn()
        .expect("start ifp serve");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let url = loop {
        let line = lines
            .next()
            .expect("ifp serve exited before listening")
            .expect("read stdout");
        if let Some(rest) = line.strip_prefix("ifp serve: listening on ") {
            break rest.split_whitespace().next().expect("url").to_string();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    (Killed(child), url)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

fn chromedriver(port: u16) -> Killed {
    let child = Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run chromedriver ({e}): install Debian's chromium and chromium-driver \
                 (`apt-get install chromium chromium-driver`; .ci/run does this)"
            )
        });
    let t0 = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "chromedriver did not start"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    Killed(child)
}

async fn browser(port: u16, profile: &Path, downloads: &Path) -> Client {
    let args = [
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1280,1000",
        &format!("--user-data-dir={}", profile.display()),
    ];
    let caps = json!({
        "browserName": "chrome",
        "goog:chromeOptions": {
            "binary": "/usr/bin/chromium",
            "args": args,
            "prefs": {
                "download.default_directory": downloads,
                "download.prompt_for_download": false,
            },
        },
    });
    let serde_json::Value::Object(caps) = caps else {
        unreachable!()
    };
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{port}"))
        .await
        .expect("connect to chromedriver")
}

fn screenshot_dir() -> PathBuf {
    let dir = std::env::var_os("IFP_SCREENSHOT_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("ifp-e2e-screenshots"));
    std::fs::create_dir_all(&dir).expect("screenshot dir");
    dir
}

async fn shoot(c: &Client, dir: &Path, name: &str) {
    let png = c.screenshot().await.expect("screenshot");
    std::fs::write(dir.join(name), png).expect("write screenshot");
}

/// A whole-page screenshot: the window grows to the document's height first.
pub(crate) async fn shoot_full(c: &Client, dir: &Path, name: &str, width: u32) {
    let h = c
        .execute("return document.documentElement.scrollHeight", vec![])
        .await
        .expect("page height")
        .as_u64()
        .unwrap_or(1000) as u32;
    c.set_window_size(width, h.clamp(600, 4000) + 140)
        .await
        .expect("resize");
    tokio::time::sleep(Duration::from_millis(300)).await;
    shoot(c, dir, name).await;
    c.set_window_size(1280, 1000).await.expect("resize back");
}

/// The text of the first element matching `css`, read in one script call (see `status_of`).
pub(crate) async fn text_of(c: &Client, css: &str) -> String {
    c.execute(
        "const e = document.querySelector(arguments[0]); return e ? e.innerText : null",
        vec![json!(css)],
    )
    .await
    .expect("script")
    .as_str()
    .unwrap_or_else(|| panic!("no element {css}"))
    .to_string()
}

/// Clicks the element `loc` finds (`what` names it in a failure).
pub(crate) async fn click(c: &Client, loc: Locator<'_>, what: &str) {
    let e = c.find(loc).await.unwrap_or_else(|e| panic!("{what}: {e}"));
    e.click()
        .await
        .unwrap_or_else(|e| panic!("click {what}: {e}"));
}

/// The `src` of the preview image.
async fn preview_src(c: &Client) -> Option<String> {
    let img = c.find(Locator::Id("preview")).await.expect("preview");
    img.attr("src").await.expect("src")
}

#[tokio::test(flavor = "multi_thread")]
async fn sign_in_submit_watch_and_download_in_chromium() {
    let data = common::open_tempdir("ifp-e2e-");
    let (_server, base) = start_server(data.path());
    let port = free_port();
    let _driver = chromedriver(port);
    let profile = tempfile::tempdir().expect("profile");
    let downloads = tempfile::tempdir().expect("downloads");
    let shots = screenshot_dir();
    println!("screenshots: {}", shots.display());
    let c = browser(port, profile.path(), downloads.path()).await;

    // Signing in: the jobs list redirects to the sign-in page and back.
    c.goto(&base).await.expect("open");
    assert!(c
        .current_url()
        .await
        .expect("url")
        .path()
        .ends_with("/signin"));
    c.find(Locator::Id("token"))
        .await
        .expect("token field")
        .send_keys(TOKEN)
        .await
        .expect("type token");
    click(&c, Locator::Css("form button[type=submit]"), "sign in").await;
    // The sign-in page has an h1 too: wait for the redirect itself.
    let t0 = Instant::now();
    while c.current_url().await.expect("url").path() != "/" {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "sign-in did not lead to the jobs page: {}",
            text_of(&c, "main").await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    c.wait()
        .for_element(Locator::Css("h1"))
        .await
        .expect("jobs page");
    assert!(text_of(&c, "main").await.contains("No jobs yet"));

    // The form: the tiny preset, shortened; the preview follows the fields.
    click(&c, Locator::LinkText("New job"), "the New job link").await;
    c.wait()
        .for_element(Locator::Id("preview"))
        .await
        .expect("preview image");
    let form = c.form(Locator::Id("new-job")).await.expect("form");
    form.set_by_name("name", "e2e tiny")
        .await
        .expect("name")
        .set_by_name("steps", "60")
        .await
        .expect("steps")
        .set_by_name("save_freq", "30")
        .await
        .expect("save_freq");
    let old_preview = preview_src(&c).await;
    c.find(Locator::Id("f-noise_seed"))
        .await
        .expect("noise seed")
        .send_keys("1")
        .await
        .expect("noise seed 01");
    let t0 = Instant::now();
    loop {
        let src = preview_src(&c).await;
        if src != old_preview && src.as_deref().is_some_and(|s| s.starts_with("blob:")) {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "the preview did not update"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    shoot_full(&c, &shots, "new-job.png", 1280).await;
    click(&c, Locator::Id("submit-job"), "submit").await;

    // The job page updates itself until the job succeeds: the marker set on the window now
    // would vanish with a reload.
    c.wait()
        .for_element(Locator::Id("live"))
        .await
        .expect("job page");
    let job_url = c.current_url().await.expect("url");
    let id = job_url.path().trim_start_matches("/jobs/").to_string();
    assert!(uuid::Uuid::parse_str(&id).is_ok(), "{job_url}");
    c.execute("window.__noReload = true", vec![])
        .await
        .expect("mark");
    let t0 = Instant::now();
    let mut saw_running = false;
    loop {
        let status = status_of(&c).await;
        saw_running |= status == "running";
        if status == "succeeded" {
            break;
        }
        assert!(
            !["failed", "cancelled"].contains(&status.as_str()),
            "job ended {status}: {}",
            text_of(&c, "main").await
        );
        assert!(
            t0.elapsed() < Duration::from_secs(300),
            "the page did not reach succeeded (shows {status})"
        );
        if saw_running && t0.elapsed() > Duration::from_secs(4) {
            // One look at the page mid-run.
            if !shots.join("job-running.png").exists() {
                shoot(&c, &shots, "job-running.png").await;
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // Without this, a job that finished before the page loaded would pass as "updated live".
    assert!(
        saw_running,
        "the page never showed the job running before it succeeded"
    );
    let still = c
        .execute("return window.__noReload === true", vec![])
        .await
        .expect("marker");
    assert_eq!(
        still,
        json!(true),
        "the page reloaded instead of updating live"
    );
    // Every refresh is a fetch of the fragment; wait for the last one to show the files.
    let t0 = Instant::now();
    while c
        .find_all(Locator::Css("a[download][href*='model-000060']"))
        .await
        .expect("links")
        .is_empty()
    {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "no final checkpoint link"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(text_of(&c, "#job-step").await.starts_with("60 / 60"));
    // The stream has ended; let the last fragment refresh land before reading the page.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // The succeeded pre-training offers its encoder without a reload (issue 17: lineage).
    let finetune_link = format!("a[href='/jobs/new/finetune?init={id}']");
    c.find(Locator::Css(&finetune_link))
        .await
        .expect("Fine-tune this appears when the job succeeds");
    let points = c
        .execute(
            "return document.querySelector('svg.chart polyline').getAttribute('points')",
            vec![],
        )
        .await
        .expect("loss chart")
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        points.split_whitespace().count() >= 3,
        "loss chart: {points}"
    );
    assert!(!c
        .find_all(Locator::Css("figure.sample img"))
        .await
        .expect("samples")
        .is_empty());
    shoot_full(&c, &shots, "job.png", 1280).await;

    // Download the final model file by clicking its link.
    let link = c
        .find(Locator::Css("a[download][href*='model-000060']"))
        .await
        .expect("download link");
    let expected = link
        .attr("data-sha256")
        .await
        .expect("sha attr")
        .expect("listed sha");
    link.click().await.expect("download");
    let file = downloads.path().join("model-000060.safetensors");
    let t0 = Instant::now();
    while !file.exists() {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "no download in {}: {:?}",
            downloads.path().display(),
            std::fs::read_dir(downloads.path()).map(|d| d.count())
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let bytes = std::fs::read(&file).expect("downloaded file");
    assert_eq!(hex::encode(Sha256::digest(&bytes)), expected);
    // And the file is the worker's: its SHA-256 matches the one on disk beside it.
    let sidecars: Vec<PathBuf> = walk(&data.path().join("artifacts"))
        .into_iter()
        .filter(|p| p.ends_with("model-000060.safetensors.sha256"))
        .collect();
    assert_eq!(sidecars.len(), 1);
    let on_disk = std::fs::read_to_string(&sidecars[0]).expect("sidecar");
    assert!(on_disk.starts_with(&expected), "{on_disk}");

    // Issue 17: interactive charts, clone, compare runs, compare from this job.
    crate::browser_tracking::clone_compare_and_compare_from(&c, &base, &id, &shots).await;

    // The jobs list shows it finished, on a laptop and on a phone.
    c.goto(&base).await.expect("jobs list");
    c.find(Locator::Css("#job-rows tr[data-status='succeeded']"))
        .await
        .expect("the job is listed as succeeded");
    shoot_full(&c, &shots, "jobs.png", 1280).await;
    c.set_window_size(390, 844).await.expect("phone size");
    shoot(&c, &shots, "jobs-phone.png").await;
    c.goto(&format!("{base}/jobs/{id}"))
        .await
        .expect("job page");
    shoot(&c, &shots, "job-phone.png").await;
    c.close().await.expect("close browser");
    println!("screenshots written to {}", shots.display());
}

/// The job's status as the page's badge holds it (its text, not its upper-cased rendering),
/// read in one script call: the live updates replace elements between WebDriver calls.
pub(crate) async fn status_of(c: &Client) -> String {
    c.execute(
        "const e = document.getElementById('job-status'); return e ? e.textContent.trim() : ''",
        vec![],
    )
    .await
    .expect("status badge")
    .as_str()
    .unwrap_or_default()
    .to_string()
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![];
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}
