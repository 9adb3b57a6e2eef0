//! The end-of-job webhook (`ifp serve --webhook-url`): when a job ends (succeeded, failed or
//! cancelled), the server POSTs a JSON summary of it to one URL, so a researcher hears of a
//! finished run in Slack, Mattermost or their own script instead of watching the page.
//!
//! Delivery is at least once, from the database: a job counts as reported only once its
//! `webhook_delivery` row has `sent_at`, which is written after the receiver answered 2xx. So a
//! server that crashes or restarts mid-delivery sends again, and so may two servers sharing one
//! database; receivers deduplicate on `job.id`. A failed POST (no answer in time, or a non-2xx
//! status) is retried with doubling waits, [`MAX_TRIES`] times in all; the last error stays in
//! the row. Jobs that ended more than a day before the server looks are not reported, so turning
//! the webhook on does not replay the history.

use std::time::Duration;

use serde::Serialize;
use sqlx::PgPool;
use tokio::sync::{broadcast, watch};
use uuid::Uuid;

use crate::db::values::{JobKind, JobStatus};

/// Tries per job before the server gives up on reporting it.
pub const MAX_TRIES: i32 = 6;
/// The wait after the first failed try; each later failure doubles it (10 s, 20 s, ... 160 s).
const FIRST_RETRY: Duration = Duration::from_secs(10);
/// How long one POST may take, connection included.
const TIMEOUT: Duration = Duration::from_secs(10);
/// How often the server looks for due retries when no job changes.
const SWEEP: Duration = Duration::from_secs(5);
/// Jobs reported per pass; the next pass takes the rest.
const BATCH: i64 = 20;

/// Where and how to report ended jobs.
#[derive(Clone, Debug)]
pub struct Webhook {
    url: reqwest::Url,
    /// The server's address as users reach it, for the job page link in the message.
    public_url: String,
    client: reqwest::Client,
}

/// A webhook setting that cannot be used, naming the bad value.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("IFP_WEBHOOK_URL {url:?} is not an absolute URL: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("IFP_WEBHOOK_URL {0:?} must use http or https")]
    Scheme(String),
    #[error(
        "IFP_PUBLIC_URL {0:?} is not an absolute http or https URL (e.g. https://ifp.example.org)"
    )]
    PublicUrl(String),
    #[error("cannot build the webhook's HTTP client: {0}")]
    Client(String),
}

impl Webhook {
    /// Checks `url` (absolute, http or https) and builds the client. Job links in messages
    /// start with `http://localhost:8080` until [`Webhook::linking_to`] says otherwise.
    pub fn new(url: &str) -> Result<Webhook, WebhookError> {
        let parsed = reqwest::Url::parse(url).map_err(|e| WebhookError::BadUrl {
            url: url.into(),
            reason: e.to_string(),
        })?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(WebhookError::Scheme(url.into()));
        }
        let client = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .user_agent(concat!("ifp/", env!("CARGO_PKG_VERSION")))
            // A webhook that redirects is misconfigured; following it would hide that.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| WebhookError::Client(e.to_string()))?;
        Ok(Webhook {
            url: parsed,
            public_url: "http://localhost:8080".into(),
            client,
        })
    }

    /// Checks `IFP_PUBLIC_URL`, the server's address as users reach it.
    pub fn check_public_url(url: &str) -> Result<(), WebhookError> {
        match reqwest::Url::parse(url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.has_host() => Ok(()),
            _ => Err(WebhookError::PublicUrl(url.into())),
        }
    }

    /// The same webhook, with job links under `public_url` (the server as users reach it).
    pub fn linking_to(mut self, public_url: &str) -> Webhook {
        self.public_url = public_url.trim_end_matches('/').to_string();
        self
    }
}

/// The JSON body of a delivery. `text` makes it a valid Slack or Mattermost incoming-webhook
/// message as it is; `job` carries the fields a script needs.
#[derive(Debug, Serialize)]
pub struct Payload {
    pub event: &'static str,
    pub text: String,
    pub job: EndedJob,
}

/// An ended job as the webhook reports it.
#[derive(Debug, Serialize, sqlx::FromRow)]
pub struct EndedJob {
    pub id: Uuid,
    pub name: String,
    pub kind: JobKind,
    pub status: JobStatus,
    pub error: Option<String>,
    /// The final training loss.
    pub loss: Option<f64>,
    /// A fine-tuning job's best validation PSNR, a comparison's IFP - scratch test PSNR (dB).
    pub key_metric: Option<f64>,
    pub step: i64,
    pub total_steps: i64,
    pub finished_at: Option<chrono::DateTime<chrono::Utc>>,
    /// The job's page.
    #[sqlx(skip)]
    pub url: String,
    #[serde(skip)]
    pub tries: i32,
}

impl Payload {
    fn new(mut job: EndedJob, public_url: &str) -> Payload {
        job.url = format!("{public_url}/jobs/{}", job.id);
        let result = match (job.status, job.kind, job.key_metric, job.loss) {
            (JobStatus::Failed, ..) => format!(": {}", job.error.as_deref().unwrap_or("no reason")),
            (JobStatus::Succeeded, JobKind::Compare, Some(d), _) => {
                format!(", IFP - scratch {d:+.2} dB")
            }
            (JobStatus::Succeeded, JobKind::Finetune, Some(p), _) => {
                format!(", best validation PSNR {p:.2} dB")
            }
            (JobStatus::Succeeded, _, _, Some(l)) => format!(", final loss {l:.4}"),
            _ => String::new(),
        };
        Payload {
            event: "job.ended",
            text: format!(
                "IFP {} job \"{}\" {}{result} ({}/{} steps): {}",
                job.kind, job.name, job.status, job.step, job.total_steps, job.url
            ),
            job,
        }
    }
}

/// Reports ended jobs until shutdown: a pass whenever a job changes, and every few seconds for
/// the retries that fall due.
pub fn spawn(
    pool: PgPool,
    hook: Webhook,
    mut changed: broadcast::Receiver<Uuid>,
    mut shutdown: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut sweep = tokio::time::interval(SWEEP);
        while !*shutdown.borrow() {
            if let Err(e) = deliver_due(&pool, &hook).await {
                tracing::warn!(error = %e, "webhook: cannot read the ended jobs");
            }
            tokio::select! {
                _ = sweep.tick() => {}
                // A lagged receiver only means many changes: one pass covers them all.
                _ = changed.recv() => {}
                _ = shutdown.changed() => {}
            }
        }
    })
}

/// One pass: POSTs every ended job that is due (never reported, or its retry wait is over) and
/// records each outcome. Returns how many were delivered.
pub async fn deliver_due(pool: &PgPool, hook: &Webhook) -> crate::Result<usize> {
    let due: Vec<EndedJob> = sqlx::query_as(
        "select j.id, j.name, j.kind, j.status, j.error, j.loss, j.key_metric, j.step,
                j.total_steps, j.finished_at, coalesce(d.tries, 0) as tries
         from job j left join webhook_delivery d on d.job_id = j.id
         where j.status in ('succeeded', 'failed', 'cancelled')
           and j.finished_at > now() - interval '1 day'
           and d.sent_at is null
           and coalesce(d.tries, 0) < $1
           and (d.updated_at is null
                or d.updated_at <= now() - make_interval(secs => $2 * power(2, d.tries - 1)))
         order by j.finished_at
         limit $3",
    )
    .bind(MAX_TRIES)
    .bind(FIRST_RETRY.as_secs_f64())
    .bind(BATCH)
    .fetch_all(pool)
    .await?;
    let mut delivered = 0;
    for job in due {
        let (id, tries) = (job.id, job.tries + 1);
        let payload = Payload::new(job, &hook.public_url);
        let error = match hook
            .client
            .post(hook.url.clone())
            .json(&payload)
            .send()
            .await
        {
            Ok(r) if r.status().is_success() => None,
            Ok(r) => Some(format!("the receiver answered {}", r.status())),
            // Without the URL: it may hold a secret (Slack's do).
            Err(e) => Some(format!("no answer: {}", e.without_url())),
        };
        if let Some(e) = &error {
            tracing::warn!(job = %id, tries, error = %e, "webhook: delivery failed");
        } else {
            delivered += 1;
        }
        sqlx::query(
            "insert into webhook_delivery (job_id, tries, last_error, sent_at)
             values ($1, $2, $3, case when $3 is null then now() end)
             on conflict (job_id) do update
             set tries = excluded.tries, last_error = excluded.last_error,
                 sent_at = excluded.sent_at, updated_at = now()",
        )
        .bind(id)
        .bind(tries)
        .bind(error)
        .execute(pool)
        .await?;
    }
    Ok(delivered)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_urls_are_named() {
        let e = Webhook::new("hooks.example/x").unwrap_err();
        assert!(e.to_string().contains("\"hooks.example/x\""), "{e}");
        let e = Webhook::new("ftp://hooks.example/x").unwrap_err();
        assert!(e.to_string().contains("http or https"), "{e}");
        assert!(Webhook::new("https://hooks.example/x").is_ok());
        assert!(Webhook::check_public_url("https://ifp.example.org/").is_ok());
        for bad in ["ifp.example.org", "ftp://ifp.example.org", "http://"] {
            let e = Webhook::check_public_url(bad).unwrap_err();
            assert!(
                e.to_string().contains(&format!("IFP_PUBLIC_URL {bad:?}")),
                "{e}"
            );
        }
    }

    fn ended(status: JobStatus, kind: JobKind) -> EndedJob {
        EndedJob {
            id: Uuid::nil(),
            name: "demo".into(),
            kind,
            status,
            error: Some("out of memory".into()),
            loss: Some(0.01234),
            key_metric: Some(0.315),
            step: 40,
            total_steps: 40,
            finished_at: None,
            url: String::new(),
            tries: 0,
        }
    }

    #[test]
    fn the_text_says_how_the_job_ended() {
        let p = Payload::new(ended(JobStatus::Succeeded, JobKind::Pretrain), "http://h");
        assert_eq!(
            p.text,
            "IFP pretrain job \"demo\" succeeded, final loss 0.0123 (40/40 steps): \
             http://h/jobs/00000000-0000-0000-0000-000000000000"
        );
        let p = Payload::new(ended(JobStatus::Succeeded, JobKind::Compare), "http://h");
        assert!(p.text.contains("IFP - scratch +0.32 dB"), "{}", p.text);
        let p = Payload::new(ended(JobStatus::Failed, JobKind::Finetune), "http://h");
        assert!(p.text.contains("failed: out of memory"), "{}", p.text);
    }
}
