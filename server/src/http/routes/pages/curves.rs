//! The job page's training curves and timing, which depend on the job's phases: the ETA over
//! every phase still to run, the throughput (the latest while it runs, the run's average once
//! it has ended), for a comparison the pre-training loss on its own chart and the arms'
//! fine-tuning losses overlaid on one fine-tuning step axis (the Fourier loss and L1 do not
//! share a scale), and the training process's CPU and memory over time.

use crate::db::rows::Job;
use crate::db::values::JobStatus;
use crate::http::views::{chart, fmt};
use crate::jobs::spec::{JobSpec, StepPhase};

/// Metrics rows as the page reads them: (step, loss, lr, images/s).
pub type MetricRow = (i64, f64, f64, f64);

/// Images/s the ETA extrapolates from: the mean of the latest steps (one step is noisy).
const RATE_WINDOW: usize = 20;

/// The job's phases, or one phase of its whole axis when its config no longer reads.
pub fn phases(job: &Job) -> Vec<StepPhase> {
    JobSpec::from_stored(job.kind, &job.config)
        .map(|s| s.step_phases())
        .unwrap_or_else(|_| {
            vec![StepPhase {
                start: 0,
                steps: job.total_steps.max(0) as usize,
                batch: 1,
                arm: None,
            }]
        })
}

/// Time left: the images every remaining step of every phase still has to train, at the
/// recent images/s. Phases train different crops and batches, so across phases this is an
/// estimate; within one it is the usual steps times seconds per step.
pub fn eta(job: &Job, phases: &[StepPhase], metrics: &[MetricRow]) -> String {
    let recent: Vec<f64> = metrics
        .iter()
        .rev()
        .take(RATE_WINDOW)
        .map(|m| m.3)
        .filter(|r| *r > 0.0)
        .collect();
    if job.status != JobStatus::Running || recent.is_empty() {
        return "—".into();
    }
    let rate = recent.iter().sum::<f64>() / recent.len() as f64;
    let images = remaining_images(phases, job.step.max(0) as usize);
    fmt::duration(images as f64 / rate)
}

/// The images the steps after `done` train, over every phase.
fn remaining_images(phases: &[StepPhase], done: usize) -> usize {
    phases
        .iter()
        .map(|p| (p.start + p.steps).saturating_sub(done.max(p.start)) * p.batch)
        .sum()
}

/// Images/s: the latest while the job runs, the mean over the run once it has ended.
pub fn throughput(job: &Job, metrics: &[MetricRow]) -> String {
    let rates: Vec<f64> = metrics.iter().map(|m| m.3).filter(|r| *r > 0.0).collect();
    match rates.last() {
        None => "—".into(),
        Some(r) if job.status.is_active() => format!("{r:.1}"),
        Some(_) => format!(
            "{:.1} (run average)",
            rates.iter().sum::<f64>() / rates.len() as f64
        ),
    }
}

/// A comparison's loss charts: the pre-training loss by pre-training step (`None` when it
/// starts from a finished job) and every arm's L1 by fine-tuning step, one line style per arm
/// (each seed's run of an arm is one more line in that style).
pub fn compare_losses(
    phases: &[StepPhase],
    metrics: &[MetricRow],
    log_y: bool,
) -> (Option<String>, String) {
    let mut pre = Vec::new();
    let mut arms: Vec<(usize, Vec<(f64, f64)>)> = Vec::new();
    let mut ft_max = 1.0f64;
    for p in phases {
        let lo = p.start as i64;
        let hi = (p.start + p.steps) as i64;
        let pts: Vec<(f64, f64)> = metrics
            .iter()
            .filter(|m| m.0 > lo && m.0 <= hi)
            .map(|m| ((m.0 - lo) as f64, m.1))
            .collect();
        match p.arm {
            None => pre.extend(pts),
            Some(a) => {
                ft_max = ft_max.max(p.steps as f64);
                arms.push((a, pts));
            }
        }
    }
    let pre_steps = phases
        .iter()
        .filter(|p| p.arm.is_none())
        .map(|p| p.steps as f64)
        .sum::<f64>();
    let pre_chart = (pre_steps > 0.0).then(|| {
        chart::line_chart(
            &pre,
            pre_steps,
            log_y,
            "pre-training loss (Fourier) by pre-training step",
        )
    });
    let arms_chart = chart::styled_line_chart(
        &arms,
        ft_max,
        chart::YAxis::log_if(log_y),
        "fine-tuning L1 loss by fine-tuning step, one line style per arm",
        "step",
    );
    (pre_chart, arms_chart)
}

/// Usage samples as the page reads them: (attempt, seconds since the epoch, CPU %, bytes,
/// GPU %, GPU bytes; the GPU's are null for attempts on the CPU).
pub type UsageRow = (i32, f64, f64, i64, Option<f64>, Option<i64>);

/// The training process's charts over the job's time, one line style per attempt.
pub struct UsageCharts {
    /// CPU use, percent of one core.
    pub cpu: String,
    /// Resident memory, MiB.
    pub mem: String,
    /// Its GPU's utilisation (percent) and memory in use (MiB), when any sample has them.
    pub gpu: Option<(String, String)>,
}

/// The usage charts; `None` before the second sample (a line needs two points, and a job
/// shorter than the sampling period has one at most) and for attempts that trained in the
/// worker's own process, which are not sampled.
pub fn usage_charts(rows: &[UsageRow]) -> Option<UsageCharts> {
    if rows.len() < 2 {
        return None;
    }
    let t0 = rows.first()?.1;
    let x_max = rows.last().map_or(1.0, |r| r.1 - t0).max(1.0);
    // One value of each row (rows without it are skipped), per attempt's line style.
    let chart = |value: &dyn Fn(&UsageRow) -> Option<f64>, title: &str| {
        let mut lines: Vec<(usize, Vec<(f64, f64)>)> = Vec::new();
        for r in rows {
            let Some(y) = value(r) else { continue };
            let style = (r.0.max(1) - 1) as usize % super::runs::MAX_RUNS;
            if lines.last().is_none_or(|(s, _)| *s != style) {
                lines.push((style, Vec::new()));
            }
            if let Some((_, l)) = lines.last_mut() {
                l.push((r.1 - t0, y));
            }
        }
        (!lines.is_empty()).then(|| {
            chart::styled_line_chart(&lines, x_max, chart::YAxis::FromZero, title, "second")
        })
    };
    let mib = |b: i64| b as f64 / (1 << 20) as f64;
    let cpu = chart(
        &|r| Some(r.2),
        // The figure's caption names the training process; the axis title keeps to what fits
        // beside a chart's height.
        "CPU, % of one core by second",
    )?;
    let mem = chart(&|r| Some(mib(r.3)), "resident memory (MiB) by second")?;
    let gpu = chart(&|r| r.4, "GPU utilisation (%) by second").zip(chart(
        &|r| r.5.map(mib),
        "GPU memory in use (MiB) by second",
    ));
    Some(UsageCharts { cpu, mem, gpu })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn phase(start: usize, steps: usize, batch: usize, arm: Option<usize>) -> StepPhase {
        StepPhase {
            start,
            steps,
            batch,
            arm,
        }
    }

    #[test]
    fn usage_is_drawn_per_attempt_over_the_job_s_time() {
        assert!(usage_charts(&[]).is_none());
        assert!(usage_charts(&[(1, 100.0, 180.0, 300 << 20, None, None)]).is_none());
        let rows = [
            (1, 100.0, 180.0, 300 << 20, None, None),
            (1, 105.0, 190.0, 310 << 20, None, None),
            (2, 200.0, 150.0, 200 << 20, None, None),
        ];
        let c = usage_charts(&rows).expect("charts");
        let (cpu, mem) = (&c.cpu, &c.mem);
        assert!(cpu.contains("<title>second 5: 190.0</title>"), "{cpu}");
        assert!(mem.contains("<title>second 100: 200.0</title>"), "{mem}");
        assert!(mem.contains(r#"class="line s0""#) && mem.contains(r#"class="line s1""#));
        // CPU attempts have no GPU readings, so no GPU charts.
        assert!(c.gpu.is_none());
    }

    /// Issue 17, item 9: an attempt on a GPU also charts the device's utilisation and memory;
    /// samples without them (an earlier attempt on the CPU) leave gaps, not zeros.
    #[test]
    fn gpu_use_is_charted_when_samples_have_it() {
        let rows = [
            (1, 100.0, 100.0, 300 << 20, None, None),
            (2, 110.0, 100.0, 300 << 20, Some(87.0), Some(2048 << 20)),
            (2, 112.0, 100.0, 300 << 20, Some(93.0), Some(3072 << 20)),
        ];
        let (gpu, gpu_mem) = usage_charts(&rows)
            .expect("charts")
            .gpu
            .expect("GPU charts");
        assert!(gpu.contains("<title>second 12: 93.00</title>"), "{gpu}");
        assert!(
            gpu_mem.contains("<title>second 10: 2048</title>"),
            "{gpu_mem}"
        );
        assert!(!gpu.contains("second 0:"), "{gpu}");
    }

    #[test]
    fn the_eta_counts_every_phase_left() {
        // 400 pre-training steps of 4 images, then two arms of 500 steps of 8.
        let phases = [
            phase(0, 400, 4, None),
            phase(400, 500, 8, Some(0)),
            phase(900, 500, 8, Some(1)),
        ];
        assert_eq!(remaining_images(&phases, 100), 300 * 4 + 2 * 500 * 8);
        assert_eq!(remaining_images(&phases, 650), 250 * 8 + 500 * 8);
        assert_eq!(remaining_images(&phases, 1400), 0);
    }

    #[test]
    fn arms_share_one_fine_tuning_axis() {
        // 2 pre-training steps, then two arms of 3 steps each.
        let phases = [
            phase(0, 2, 4, None),
            phase(2, 3, 8, Some(0)),
            phase(5, 3, 8, Some(1)),
        ];
        let metrics: Vec<MetricRow> = (1..=8).map(|s| (s, s as f64, 1e-3, 10.0)).collect();
        let (pre, arms) = compare_losses(&phases, &metrics, false);
        let pre = pre.expect("pre-training ran");
        assert_eq!(pre.matches("<polyline").count(), 1);
        // Both arms start at fine-tuning step 1: the scratch arm's first point is step 6's loss.
        assert!(arms.contains("<title>step 1: 3.000</title>"), "{arms}");
        assert!(arms.contains("<title>step 1: 6.000</title>"), "{arms}");
        assert!(arms.contains(r#"class="line s0""#) && arms.contains(r#"class="line s1""#));
        // No pre-training (started from a finished job): no chart for it.
        let (pre, _) = compare_losses(&phases[1..], &metrics, false);
        assert!(pre.is_none());
    }
}
