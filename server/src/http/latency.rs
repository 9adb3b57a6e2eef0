//! The HTTP latency histograms `/metrics` reports: one per (method, route template, status),
//! filled by the `prometheus::track` middleware and held in the application state.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

const BUCKETS: [f64; 12] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

#[derive(Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

/// Request latencies by (method, route template, status).
#[derive(Default)]
pub struct HttpMetrics {
    series: Mutex<BTreeMap<(String, String, u16), Histogram>>,
}

impl HttpMetrics {
    pub fn observe(&self, key: (String, String, u16), secs: f64) {
        // A poisoned lock only means another request panicked mid-update; counts stay usable.
        let mut m = self.series.lock().unwrap_or_else(|p| p.into_inner());
        let h = m.entry(key).or_default();
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                h.counts[i] += 1;
            }
        }
        h.count += 1;
        h.sum += secs;
    }

    pub fn render(&self, out: &mut String) {
        let m = self.series.lock().unwrap_or_else(|p| p.into_inner());
        out.push_str("# HELP ifp_http_request_duration_seconds HTTP request latency.\n");
        out.push_str("# TYPE ifp_http_request_duration_seconds histogram\n");
        for ((method, route, status), h) in m.iter() {
            let labels = format!("method=\"{method}\",route=\"{route}\",status=\"{status}\"");
            for (i, b) in BUCKETS.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "ifp_http_request_duration_seconds_bucket{{{labels},le=\"{b}\"}} {}",
                    h.counts[i]
                );
            }
            let _ = writeln!(
                out,
                "ifp_http_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(
                out,
                "ifp_http_request_duration_seconds_sum{{{labels}}} {}",
                h.sum
            );
            let _ = writeln!(
                out,
                "ifp_http_request_duration_seconds_count{{{labels}}} {}",
                h.count
            );
        }
    }
}
