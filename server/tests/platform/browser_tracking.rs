//! The experiment-tracking part of the browser test (issue 17), run on the browser test's
//! finished pre-training job: interactive charts (a legend entry hides its line, smoothing
//! sliders, axis labels that tell close ticks apart), *Clone* with an edited field, *Compare selected* on the jobs list and the runs
//! view, and a comparison started with *Compare from this*, then cancelled from its page.

use std::path::Path;
use std::time::{Duration, Instant};

use fantoccini::{Client, Locator};
use serde_json::json;

use crate::browser::{click, shoot_full, status_of, text_of};

/// Drives the tracking pages from the job page of `id`, a succeeded pre-training job.
pub(crate) async fn clone_compare_and_compare_from(c: &Client, base: &str, id: &str, shots: &Path) {
    // Issue 17, item 7: uPlot redraws the charts; a legend entry hides its line, and each
    // chart has a smoothing slider.
    c.goto(&format!("{base}/jobs/{id}"))
        .await
        .expect("job page");
    c.wait()
        .for_element(Locator::Css(".chart-box.interactive .uplot canvas"))
        .await
        .expect("an interactive chart");
    // A second click shows the line again, so the screenshot below has it.
    let toggled = c
        .execute(
            "const row = document.querySelector('.chart-box.interactive .u-legend .u-series:nth-child(2)');
             const off = () => row.classList.contains('u-off');
             row.querySelector('th').click(); const hidden = off();
             row.querySelector('th').click(); return [hidden, off()]",
            vec![],
        )
        .await
        .expect("legend toggle");
    assert_eq!(
        toggled,
        json!([true, false]),
        "a legend click hides its line, a second shows it again"
    );
    // Issue 17: the page's axis labels take their digits from the tick spacing, so close
    // neighbouring ticks never read the same (`toExponential(1)` gave 2.0e-4 three times).
    let labels = c
        .execute(
            "return [axisLabels([2e-4, 2.02e-4, 2.04e-4]), axisLabels([12000, 12020, 12040])]",
            vec![],
        )
        .await
        .expect("axis labels");
    assert_eq!(
        labels,
        json!([
            ["2.00e-4", "2.02e-4", "2.04e-4"],
            ["12k", "12.02k", "12.04k"]
        ])
    );
    assert!(
        c.find_all(Locator::Css(".chart-controls input[type=range]"))
            .await
            .expect("sliders")
            .len()
            >= 2
    );
    shoot_full(c, shots, "job-interactive.png", 1280).await;

    // Issue 17, item 3: Clone fills the form with the job's settings; the clone links back.
    click(c, Locator::LinkText("Clone"), "Clone").await;
    c.wait()
        .for_element(Locator::Id("submit-job"))
        .await
        .expect("the cloned form");
    let name = c
        .find(Locator::Id("f-name"))
        .await
        .expect("name field")
        .prop("value")
        .await
        .expect("name value");
    assert_eq!(name.as_deref(), Some("e2e tiny (clone)"));
    let form = c.form(Locator::Id("new-job")).await.expect("form");
    form.set_by_name("steps", "30").await.expect("steps");
    click(c, Locator::Id("submit-job"), "submit the clone").await;
    if c.wait()
        .for_element(Locator::Css(&format!("a[href='/jobs/{id}']")))
        .await
        .is_err()
    {
        shoot_full(c, shots, "clone-failed.png", 1280).await;
        panic!(
            "the clone does not link to its parent: {}",
            text_of(c, "main").await
        );
    }
    let clone_url = c.current_url().await.expect("url");
    let clone = clone_url.path().trim_start_matches("/jobs/").to_string();
    wait_status(c, "succeeded", 300, "the clone did not succeed").await;

    // Issue 17, item 2: tick both jobs in the list and compare them.
    c.goto(base).await.expect("jobs list");
    for job in [id, clone.as_str()] {
        c.find(Locator::Css(&format!("input[name=ids][value='{job}']")))
            .await
            .expect("row checkbox")
            .click()
            .await
            .expect("tick");
    }
    click(c, Locator::Css("#runs-form button"), "Compare selected").await;
    c.wait()
        .for_element(Locator::Css(".chart-box.interactive .uplot canvas"))
        .await
        .expect("the runs view's charts");
    let runs_url = c.current_url().await.expect("url");
    assert_eq!(runs_url.path(), "/runs");
    let legend = text_of(c, ".chart-box.interactive .u-legend")
        .await
        .to_lowercase();
    assert!(
        legend.contains("e2e tiny") && legend.contains("e2e tiny (clone)"),
        "{legend}"
    );
    assert!(
        text_of(c, "tr.differs").await.contains("STEPS"),
        "the differing setting is marked"
    );
    shoot_full(c, shots, "runs.png", 1280).await;

    // Issue 17, item 1: a comparison that starts from the finished pre-training job.
    c.goto(&format!("{base}/jobs/{id}"))
        .await
        .expect("job page");
    click(
        c,
        Locator::LinkText("Compare from this"),
        "Compare from this",
    )
    .await;
    c.wait()
        .for_element(Locator::Css(&format!(
            "#c-init option[value='{id}'][selected]"
        )))
        .await
        .expect("the form starts from this job");
    // The preset and steps do not apply to a comparison that starts from a job: the script
    // disables them while one is chosen, and enables them again for pre-training here.
    let disabled = || async {
        c.execute(
            "return ['#c-preset', '#c-steps'].map((id) => document.querySelector(id).disabled)",
            vec![],
        )
        .await
        .expect("fields")
    };
    assert_eq!(
        disabled().await,
        json!([true, true]),
        "moot fields disabled"
    );
    c.execute(
        "const s = document.querySelector('#c-init'); s.value = ''; \
         s.dispatchEvent(new Event('change'));",
        vec![],
    )
    .await
    .expect("pre-train here");
    assert_eq!(
        disabled().await,
        json!([false, false]),
        "enabled to pre-train"
    );
    c.execute(
        &format!(
            "const s = document.querySelector('#c-init'); s.value = '{id}'; \
             s.dispatchEvent(new Event('change'));"
        ),
        vec![],
    )
    .await
    .expect("start from the job again");
    assert_eq!(disabled().await, json!([true, true]), "disabled again");
    shoot_full(c, shots, "compare-from.png", 1280).await;
    click(
        c,
        Locator::Css("form.new-job button.primary"),
        "Run the comparison",
    )
    .await;
    c.wait()
        .for_element(Locator::Css(&format!("a[href='/jobs/{id}']")))
        .await
        .expect("the comparison links to the pre-training job");
    // The running job's page swaps its live fragment in on every event: find and click the
    // button in one script call, so the element cannot go stale in between.
    let t0 = Instant::now();
    while c
        .execute(
            "const b = document.querySelector('button.danger'); if (b) b.click(); return !!b",
            vec![],
        )
        .await
        .expect("Cancel job")
        != json!(true)
    {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "no Cancel job button"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    wait_status(c, "cancelled", 120, "the comparison was not cancelled").await;
}

/// Waits until the page's status badge reads `status`, for at most `secs` seconds.
async fn wait_status(c: &Client, status: &str, secs: u64, failure: &str) {
    let t0 = Instant::now();
    while status_of(c).await != status {
        assert!(t0.elapsed() < Duration::from_secs(secs), "{failure}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}
