//! The live dashboard on a large archive: `cargo bench --bench dashboard`.
//!
//! Builds a synthetic archive of 10k candidates (`benches/synthetic`), serves it with
//! `metaforge ui`'s server on 127.0.0.1, and times what the browser fetches before its
//! first paint: the page, the run's progress, and the run's view (the report's body: front,
//! charts, the best candidates with code, diffs and per-task results). Target: under 1 s.

use std::time::Instant;

use metaforge::archive::{Archive, NewRun};
use metaforge::config::Experiment;
use rand::SeedableRng;

#[path = "synthetic/mod.rs"]
mod synthetic;

fn main() {
    let n: u64 = std::env::var("METAFORGE_BENCH_SIZES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000);
    let exp = Experiment::parse(synthetic::CONFIG, "bench config", std::path::Path::new(".")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.db");
    let run = NewRun {
        name: exp.name.clone(),
        seed: exp.seed,
        domain: exp.domain.name.clone(),
        config_toml: synthetic::CONFIG.into(),
    };
    let mut archive = Archive::create(&path, &run, &[]).unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(n);
    for i in 0..n {
        archive.commit_step(&synthetic::step(i, &mut rng)).unwrap();
    }
    drop(archive);
    if let Ok(keep) = std::env::var("METAFORGE_BENCH_KEEP") {
        std::fs::copy(&path, keep).unwrap();
    }
    let server =
        metaforge::ui::Server::bind(std::slice::from_ref(&path), "127.0.0.1:0", None, "METAFORGE_UI_TOKEN").unwrap();
    let base = format!("http://{}", server.local_addr());
    std::thread::spawn(move || server.run());
    let fetch = |url: &str| -> (f64, usize) {
        let t = Instant::now();
        let body = ureq::get(url).call().unwrap().body_mut().read_to_string().unwrap();
        (t.elapsed().as_secs_f64() * 1e3, body.len())
    };
    println!("dashboard: an archive of {n} candidates");
    for round in ["first", "again"] {
        let (page, page_bytes) = fetch(&format!("{base}/"));
        let (wait, _) = fetch(&format!("{base}/run/0/wait?seen="));
        let (view, view_bytes) = fetch(&format!("{base}/run/0"));
        println!(
            "  {round}: page {page:.0} ms ({page_bytes} B), progress {wait:.0} ms, run view {view:.0} ms ({} KiB); first paint's fetches {:.0} ms (target < 1000 ms)",
            view_bytes / 1024,
            page + wait + view
        );
    }
}
