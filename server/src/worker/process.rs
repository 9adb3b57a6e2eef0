//! Each training attempt in its own process: the worker starts the same `ifp` binary as
//! `ifp attempt` and supervises it, so an attempt that runs out of memory or crashes ends that
//! attempt, with a reason the job page shows, and never the server or the worker around it.
//!
//! The protocol is JSON lines on the child's standard streams. The worker writes one
//! [`Request`] line to its stdin, then `stop` when the attempt must stop (cancel, lost lease,
//! shutdown); stdin closing (the worker died) stops it too. The child writes one [`Line`] per
//! step and checkpoint, then `Done` or `Failed`. A child that ends without either crashed: the
//! exit code or signal and the last lines of its stderr become the attempt's error. Such a
//! failure is recorded as final, not retried: a run that ran out of memory at a config runs
//! out again at the same config. While it runs, the worker samples the process's CPU and
//! memory (`usage`), and its GPU's (`gpu_usage`), into `usage_sample`.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::attempt::{describe, message, Msg};
use crate::db::values::JobKind;
use crate::jobs::spec::JobSpec;
use crate::queue::record;
use ifp_trainer::{TrainOptions, TrainerError};

/// What the child runs: the job as stored, resolved in the child against the same folders.
#[derive(Debug, Serialize, Deserialize)]
pub struct Request {
    pub kind: JobKind,
    pub config: Value,
    pub artifacts: PathBuf,
    pub datasets: Option<PathBuf>,
    pub out_dir: PathBuf,
    /// `cpu` or `cuda:N`.
    pub device: String,
    pub attempt: i32,
    /// The process's data limit in bytes (`TrainProcess::memory_limit`).
    #[serde(default)]
    pub memory_limit: Option<u64>,
}

/// One line the child writes.
#[derive(Debug, Serialize, Deserialize)]
pub enum Line {
    Step(crate::db::rows::Metric),
    Checkpoint(ifp_trainer::checkpoint::Checkpoint),
    /// The run ended; `stopped`: on request, before its last step.
    Done {
        stopped: bool,
    },
    /// The run failed with this reason (as its owner should read it).
    Failed(String),
}

/// How much of the child's stderr is kept for a crash report.
const STDERR_TAIL: usize = 4096;

/// The `device` string of a candle device.
pub fn device_name(d: &candle_core::Device) -> String {
    match d.location() {
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        _ => "cpu".into(),
    }
}

/// The GPU index of a `device` string (the inverse of [`device_name`]): `None` for the CPU,
/// an error for a `cuda:` without a number.
pub fn cuda_index(device: &str) -> Option<Result<u32, std::num::ParseIntError>> {
    device.strip_prefix("cuda:").map(str::parse)
}

/// Starts `exe attempt` on `req` and follows it: its lines go to `tx`, `stop` turning true is
/// passed on. Resolves to what the run returned (`Ok(true)`: stopped on request), or to an
/// error saying how the process ended.
pub(super) fn spawn(
    exe: &Path,
    req: Request,
    usage_every: Duration,
    stop: Arc<AtomicBool>,
    tx: mpsc::UnboundedSender<Msg>,
) -> JoinHandle<ifp_trainer::Result<bool>> {
    let exe = exe.to_path_buf();
    let limit = req.memory_limit;
    let gpu = cuda_index(&req.device).and_then(Result::ok);
    tokio::spawn(async move {
        let fail = |m: String| Err(TrainerError::Unsupported(m));
        let mut child = match tokio::process::Command::new(&exe)
            .arg("attempt")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
        {
            Ok(c) => c,
            Err(e) => return fail(format!("cannot start the training process: {e}")),
        };
        let (Some(mut stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return fail("the training process has no standard streams".into());
        };
        let mut line = match serde_json::to_string(&req) {
            Ok(l) => l,
            Err(e) => return fail(format!("cannot encode the attempt: {e}")),
        };
        line.push('\n');
        if let Err(e) = stdin.write_all(line.as_bytes()).await {
            return fail(format!("cannot start the training process: {e}"));
        }
        let tail = tokio::spawn(async move {
            let mut tail = String::new();
            // The first panic's two lines (where, then what): a backtrace after them can push
            // them out of the tail.
            let mut panic: Option<String> = None;
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(l)) = lines.next_line().await {
                tracing::debug!(target: "ifp::attempt", "{l}");
                match &mut panic {
                    None if l.contains("panicked at") => panic = Some(l.clone()),
                    Some(p) if !p.contains('\n') => {
                        p.push('\n');
                        p.push_str(&l);
                    }
                    _ => {}
                }
                tail.push_str(&l);
                tail.push('\n');
                if tail.len() > 2 * STDERR_TAIL {
                    let cut = tail.len() - STDERR_TAIL;
                    let cut = (cut..tail.len()).find(|&i| tail.is_char_boundary(i));
                    tail.drain(..cut.unwrap_or(0));
                }
            }
            match panic {
                Some(p) => format!("{tail}{p}\n"),
                None => tail,
            }
        });
        let mut out = BufReader::new(stdout).lines();
        let pid = child.id();
        let mut last = pid.and_then(super::usage::read);
        let mut sample = usage_clock(usage_every);
        let mut poll = tokio::time::interval(Duration::from_millis(200));
        let mut stop_sent = false;
        let mut result: Option<ifp_trainer::Result<bool>> = None;
        loop {
            tokio::select! {
                l = out.next_line() => match l {
                    Ok(Some(l)) => match serde_json::from_str::<Line>(&l) {
                        Ok(Line::Step(m)) => { let _ = tx.send(Msg::Step(m)); }
                        Ok(Line::Checkpoint(c)) => { let _ = tx.send(Msg::Checkpoint(Box::new(c))); }
                        Ok(Line::Done { stopped }) => result = Some(Ok(stopped)),
                        Ok(Line::Failed(m)) => result = Some(fail(m)),
                        Err(_) => tracing::warn!(line = %l, "unreadable line from the training process"),
                    },
                    _ => break,
                },
                _ = poll.tick() => {
                    if !stop_sent && stop.load(Ordering::SeqCst) {
                        stop_sent = stdin.write_all(b"stop\n").await.is_ok();
                    }
                }
                _ = sample.tick() => {
                    let now = pid.and_then(super::usage::read);
                    if let (Some(a), Some(b)) = (last, now) {
                        // NVML blocks (its first call loads the library): off the runtime threads.
                        let gpu = match gpu {
                            Some(i) => tokio::task::spawn_blocking(move || super::gpu_usage::read(i))
                                .await
                                .ok()
                                .flatten(),
                            None => None,
                        };
                        let _ = tx.send(Msg::Usage(record::Usage {
                            cpu_percent: super::usage::cpu_percent(&a, &b),
                            rss_bytes: b.rss_bytes,
                            gpu,
                        }));
                    }
                    last = now.or(last);
                }
            }
        }
        drop(stdin);
        let status = child.wait().await;
        let tail = tail.await.unwrap_or_default();
        if let Some(r) = result {
            return r;
        }
        fail(crashed(status, &tail, limit))
    })
}

/// When the worker reads its process's usage: every `every`, the first a whole period after
/// the start. A reading measures the interval since the one before, so one at the start
/// measured the freshly spawned process over microseconds and charted a spurious point (about
/// 0% CPU and a few MiB) at second 0.
fn usage_clock(every: Duration) -> tokio::time::Interval {
    let mut clock = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    clock.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    clock
}

/// The error of a child that ended without saying how its run ended; `limit`: its memory
/// limit in bytes.
fn crashed(
    status: std::io::Result<std::process::ExitStatus>,
    tail: &str,
    limit: Option<u64>,
) -> String {
    use std::os::unix::process::ExitStatusExt;
    // Past the limit an allocation fails (Rust aborts), a new thread cannot map its signal
    // stack (ENOMEM, Rust aborts) or its stack (EAGAIN, and the library that spawns it panics).
    let allocation_failed =
        tail.contains("memory allocation of") || tail.contains("Cannot allocate memory");
    let no_thread = tail.contains("Resource temporarily unavailable");
    let how = match status {
        Ok(s) => match (s.signal(), s.code(), limit) {
            (Some(6), _, Some(l)) | (None, Some(101), Some(l))
                if allocation_failed || no_thread =>
            {
                over_limit_reason(l)
            }
            (Some(9), ..) => "was killed (SIGKILL; the kernel's out-of-memory killer does this \
                             when the machine runs out of memory)"
                .to_string(),
            (Some(6), ..) if allocation_failed => {
                "ran out of memory (an allocation failed)".to_string()
            }

            (Some(sig), ..) => format!("was killed by signal {sig}"),
            (None, Some(code), _) => format!("exited with code {code}"),
            (None, None, _) => "ended".to_string(),
        },
        Err(e) => format!("could not be waited for ({e})"),
    };
    // A panic's own two lines (where, then what) say more than the backtrace after them.
    let lines: Vec<&str> = tail.lines().collect();
    let last: Vec<&str> = match lines.iter().position(|l| l.contains("panicked at")) {
        Some(i) => lines[i..].iter().take(2).copied().collect(),
        None => lines.iter().rev().take(3).rev().copied().collect(),
    };
    if last.is_empty() {
        format!("the training process {how}")
    } else {
        format!(
            "the training process {how}; its last output: {}",
            last.join(" | ")
        )
    }
}

/// Caps this process's data segment (heap and private mappings, which is where tensors live) at
/// `bytes`: past it an allocation fails, and Rust aborts with "memory allocation of N bytes
/// failed", which `crashed` reports as running out of memory.
fn limit_memory(bytes: u64) -> std::io::Result<()> {
    let limit = libc::rlimit {
        rlim_cur: bytes,
        rlim_max: bytes,
    };
    // SAFETY: setrlimit reads the struct we pass and touches no memory of ours.
    if unsafe { libc::setrlimit(libc::RLIMIT_DATA, &limit) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// `ifp attempt`: the child side. Reads the request, runs it, writes its lines; stops at the
/// next step on `stop` or when stdin closes. Returns an error only when it cannot even report.
pub fn child_main() -> std::io::Result<()> {
    let stdin = std::io::stdin();
    let mut first = String::new();
    stdin.lock().read_line(&mut first)?;
    let out = std::sync::Mutex::new(std::io::stdout());
    let emit = |l: &Line| {
        if let (Ok(s), Ok(mut o)) = (serde_json::to_string(l), out.lock()) {
            let _ = writeln!(o, "{s}");
            let _ = o.flush();
        }
    };
    let req: Request = match serde_json::from_str(&first) {
        Ok(r) => r,
        Err(e) => {
            emit(&Line::Failed(format!("unreadable attempt request: {e}")));
            return Ok(());
        }
    };
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    std::thread::spawn(move || {
        // `stop`, or the worker gone (EOF): stop at the next step.
        for l in std::io::stdin().lock().lines() {
            match l {
                Ok(l) if l.trim() == "stop" => break,
                Ok(_) => continue,
                Err(_) => break,
            }
        }
        flag.store(true, Ordering::SeqCst);
    });
    if let Some(limit) = req.memory_limit {
        if let Err(e) = limit_memory(limit) {
            emit(&Line::Failed(format!(
                "cannot limit the training process's memory to {limit} bytes: {e}"
            )));
            return Ok(());
        }
    }
    let spec = JobSpec::from_stored(req.kind, &req.config).and_then(|mut s| {
        s.resolve(&req.artifacts, req.datasets.as_deref())
            .map(|()| s)
    });
    let spec = match spec {
        Ok(s) => s,
        Err(e) => {
            emit(&Line::Failed(format!("invalid config: {e}")));
            return Ok(());
        }
    };
    let device = match cuda_index(&req.device) {
        None => Ok(candle_core::Device::Cpu),
        Some(Ok(n)) => candle_core::Device::new_cuda(n as usize),
        Some(Err(e)) => Err(candle_core::Error::Msg(format!(
            "device {}: {e}",
            req.device
        ))),
    };
    let device = match device {
        Ok(d) => d,
        Err(e) => {
            emit(&Line::Failed(format!("cannot open {}: {e}", req.device)));
            return Ok(());
        }
    };
    let opts = TrainOptions {
        out_dir: req.out_dir.clone(),
        device,
        resume: true,
    };
    let attempt = req.attempt;
    let result = spec.run(
        &opts,
        |r| match message(r, attempt) {
            Msg::Step(m) => emit(&Line::Step(m)),
            Msg::Checkpoint(c) => emit(&Line::Checkpoint(*c)),
            Msg::Usage(_) => {}
        },
        || stop.load(Ordering::SeqCst),
    );
    emit(&match result {
        Ok(stopped) => Line::Done { stopped },
        Err(e) => Line::Failed(over_limit(&describe(&e), req.memory_limit)),
    });
    Ok(())
}

/// A run's error as its owner should read it: an allocation refused under the process's
/// memory limit says so.
fn over_limit(error: &str, limit: Option<u64>) -> String {
    match limit {
        Some(l) if error.contains("Cannot allocate memory") || error.contains("out of memory") => {
            format!("{}: {error}", over_limit_reason(l))
        }
        _ => error.to_string(),
    }
}

/// Why an attempt ended that needed more memory than its limit of `bytes`.
fn over_limit_reason(bytes: u64) -> String {
    format!(
        "ran out of memory: it needed more than its limit of {} MiB (IFP_ATTEMPT_MEMORY_MIB)",
        bytes >> 20
    )
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt;
    use std::process::ExitStatus;

    use super::{crashed, cuda_index, usage_clock};

    #[tokio::test]
    async fn the_first_usage_reading_waits_a_whole_period() {
        let every = std::time::Duration::from_millis(200);
        let t0 = std::time::Instant::now();
        let mut clock = usage_clock(every);
        clock.tick().await;
        assert!(
            t0.elapsed() >= every,
            "first reading after {:?}",
            t0.elapsed()
        );
        clock.tick().await;
        assert!(t0.elapsed() >= 2 * every, "second after {:?}", t0.elapsed());
    }

    #[test]
    fn only_a_cuda_device_has_a_gpu_index() {
        assert_eq!(cuda_index("cuda:0"), Some(Ok(0)));
        assert_eq!(cuda_index("cuda:3"), Some(Ok(3)));
        assert_eq!(cuda_index("cpu"), None);
        assert!(matches!(cuda_index("cuda:x"), Some(Err(_))));
    }

    #[test]
    fn crash_reports_say_what_happened() {
        let abort = || Ok(ExitStatus::from_raw(6));
        let panic = || Ok(ExitStatus::from_raw(101 << 8));
        let oom = "memory allocation of 294912 bytes failed\n";
        assert_eq!(
            crashed(abort(), oom, Some(64 << 20)),
            "the training process ran out of memory: it needed more than its limit of 64 MiB \
             (IFP_ATTEMPT_MEMORY_MIB); its last output: memory allocation of 294912 bytes failed"
        );
        assert!(crashed(abort(), oom, None).contains("ran out of memory (an allocation failed)"));
        let no_signal_stack = "thread '<unnamed>' panicked at library/std/src/sys/pal/unix/stack_overflow.rs:236:13:\n\
                               failed to allocate an alternative stack: Cannot allocate memory (os error 12)\n";
        assert!(crashed(abort(), no_signal_stack, Some(32 << 20)).contains("limit of 32 MiB"));
        // A thread that cannot get its stack under the limit panics in the library that
        // started it; the panic's own lines are kept however long the backtrace after them.
        let spawn = "thread 'main' panicked at src/utils.rs:206:22:\n\
                     failed to spawn worker: Os { code: 11, message: \"Resource temporarily unavailable\" }\n\
                     stack backtrace:\n   0: frame\n   1: frame\n   2: frame\n";
        let why = crashed(panic(), spawn, Some(32 << 20));
        assert!(why.contains("limit of 32 MiB"), "{why}");
        assert!(why.ends_with("panicked at src/utils.rs:206:22: | failed to spawn worker: Os { code: 11, message: \"Resource temporarily unavailable\" }"), "{why}");
        let why = crashed(panic(), spawn, None);
        assert!(
            why.starts_with("the training process exited with code 101"),
            "{why}"
        );
        assert!(crashed(Ok(ExitStatus::from_raw(9)), "", None).contains("SIGKILL"));
        // An allocation refused inside a run that reports it as an error says so too.
        let e = "alloc: Cannot allocate memory (os error 12)";
        assert!(super::over_limit(e, Some(32 << 20)).starts_with("ran out of memory: it needed"));
        assert_eq!(super::over_limit(e, None), e);
    }
}
