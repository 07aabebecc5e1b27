//! `metaforge report`: the HTML page of a real (scripted-model) run, checked as a browser
//! sees it: headless Chromium loads the file, and the rendered DOM must hold the front, the
//! lineage and every candidate; a screenshot is taken.

use std::path::{Path, PathBuf};
use std::process::Command;

mod common;

use common::*;

fn chromium() -> PathBuf {
    let found = ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .find_map(|name| {
            std::env::var_os("PATH")
                .and_then(|paths| std::env::split_paths(&paths).map(|d| d.join(name)).find(|p| p.exists()))
        });
    found.expect(
        "no headless Chromium; fix: run scripts/setup.sh --with-browser (Debian packages chromium, chromium-driver)",
    )
}

fn headless(page: &Path, extra: &[&str]) -> std::process::Output {
    Command::new(chromium())
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--window-size=1200,1800"])
        .args(extra)
        .arg(format!("file://{}", page.display()))
        .output()
        .unwrap()
}

#[test]
fn the_report_renders_the_front_and_the_lineage_in_a_browser() {
    let dir = tempfile::tempdir().unwrap();
    let db = finished_run(dir.path(), "exp.toml", 3, ARITH);
    let page = dir.path().join("report.html");
    ok(&metaforge(
        dir.path(),
        &["report", db.to_str().unwrap(), "-o", page.to_str().unwrap()],
    ));
    let html = std::fs::read_to_string(&page).unwrap();
    // Self-contained: nothing is fetched (SVG's xmlns is a name, not a request).
    for fetch in ["src=\"http", "href=\"http", "url(http", "@import", "<script", "<link"] {
        assert!(!html.contains(fetch), "the report fetches something: {fetch}");
    }

    let dom = headless(&page, &["--dump-dom"]);
    assert!(dom.status.success(), "{}", String::from_utf8_lossy(&dom.stderr));
    let dom = String::from_utf8_lossy(&dom.stdout);
    let archive = metaforge::archive::Archive::open_existing(&db).unwrap();
    let scored = archive.scored(metaforge::types::Split::Val).unwrap();
    let front = metaforge::archive::pareto_front(&scored, metaforge::archive::DEFAULT_OBJECTIVES);
    assert!(
        dom.contains("id=\"front\"") && dom.contains("id=\"pareto-chart\"><svg"),
        "front section"
    );
    assert_eq!(dom.matches("<tr class=\"front\">").count(), front.len(), "front rows");
    assert!(dom.contains("id=\"lineage-chart\"><svg"), "lineage chart");
    let candidates = count(&db, "SELECT count(*) FROM candidates") as usize;
    assert_eq!(
        dom.matches("<details id=\"c-").count(),
        candidates,
        "one section per candidate"
    );
    let children = count(&db, "SELECT count(DISTINCT child) FROM lineage") as usize;
    assert_eq!(
        dom.matches("<pre class=\"diff\">").count(),
        children,
        "a diff for every child"
    );
    // Code is text, not markup: the seeds' `task['question']` is escaped, never raw.
    assert!(dom.contains("task['question']") || dom.contains("task[&#x27;question&#x27;]"));

    let shot = dir.path().join("report.png");
    let out = headless(&page, &[&format!("--screenshot={}", shot.display())]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let png = std::fs::read(&shot).unwrap();
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 20_000,
        "a real screenshot ({} bytes)",
        png.len()
    );
}
