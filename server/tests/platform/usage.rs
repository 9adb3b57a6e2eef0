//! Issue 17, item 9: what a training process uses, as the worker records it and the job page
//! and `/metrics` show it. A sample from an attempt on a GPU carries the device's utilisation
//! and memory; one from the CPU does not, and then no GPU chart or value appears.

use axum::body::Body;
use axum::http::Request;
use ifp_server::queue;
use ifp_server::queue::record::{self, GpuUse, Usage};
use std::time::Duration;

use super::api_support::setup;
use super::compare_support::html_of;

#[tokio::test]
async fn gpu_use_is_recorded_charted_and_exported_only_when_sampled() {
    let api = setup().await;
    api.submit(&api.alice, "on a gpu").await;
    let c = queue::claim(&api.pool, "w", Duration::from_secs(30))
        .await
        .unwrap()
        .unwrap();
    let uri = format!("/jobs/{}", c.fence.job_id);
    let page = || html_of(&api.app, &api.pool, &uri);
    let metrics = || async {
        let (_, _, body) = api
            .raw(Request::get("/metrics").body(Body::empty()).unwrap())
            .await;
        String::from_utf8(body).unwrap()
    };

    // CPU samples only: CPU and memory charts, no GPU chart, GPU gauges at zero.
    for cpu_percent in [150.0, 190.0] {
        let u = Usage {
            cpu_percent,
            rss_bytes: 300 << 20,
            gpu: None,
        };
        record::usage(&api.pool, &c.fence, u).await.unwrap();
    }
    let html = page().await;
    assert!(
        html.contains("Training process memory (MiB, resident)"),
        "{html}"
    );
    assert!(!html.contains("GPU utilisation"), "{html}");
    let text = metrics().await;
    assert!(text.contains("\nifp_training_gpu_percent 0\n"), "{text}");

    // A sample with its GPU's readings: both GPU charts, and the gauges carry the latest sample.
    let u = Usage {
        cpu_percent: 100.0,
        rss_bytes: 310 << 20,
        gpu: Some(GpuUse {
            percent: 87.0,
            memory_bytes: 3 << 30,
        }),
    };
    record::usage(&api.pool, &c.fence, u).await.unwrap();
    let html = page().await;
    assert!(html.contains("GPU utilisation (%, whole device)"), "{html}");
    assert!(
        html.contains("GPU memory in use (MiB, whole device)"),
        "{html}"
    );
    assert!(html.contains(": 3072</title>"), "{html}");
    let text = metrics().await;
    for line in [
        "\nifp_training_gpu_percent 87\n",
        "\nifp_training_gpu_memory_bytes 3221225472\n",
        "\nifp_training_cpu_percent 100\n",
    ] {
        assert!(text.contains(line), "{line:?} missing from\n{text}");
    }
}
