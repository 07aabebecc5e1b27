//! Archive at scale: `cargo bench --bench archive_scale`.
//!
//! Builds synthetic archives of 10k and 100k candidates (each with a 20-task validation
//! evaluation and one lineage edge, one transaction per step as the loop writes them) and
//! prints: insert throughput, file size, resume time (open + next step + the scored
//! candidates), Pareto front time with the O(n log n) sweep against the pairwise definition
//! (the baseline, timed at 10k only: it is quadratic), parent-selection time per draw for
//! each strategy, and the host's peak memory. `METAFORGE_BENCH_SIZES` overrides the sizes
//! (comma-separated).

use std::time::Instant;

use metaforge::archive::{
    pareto_front, pareto_front_pairwise, select_parent, Archive, NewRun, ParentSelection, DEFAULT_OBJECTIVES,
};
use metaforge::config::Experiment;
use rand::SeedableRng;

#[path = "synthetic/mod.rs"]
mod synthetic;

use synthetic::{step, CONFIG};

fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn main() {
    let sizes: Vec<u64> = std::env::var("METAFORGE_BENCH_SIZES")
        .unwrap_or_else(|_| "10000,100000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let exp = Experiment::parse(CONFIG, "bench config", std::path::Path::new(".")).unwrap();
    for n in sizes {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("scale.db");
        let run = NewRun {
            name: exp.name.clone(),
            seed: exp.seed,
            domain: exp.domain.name.clone(),
            config_toml: CONFIG.into(),
        };
        let mut archive = Archive::create(&path, &run, &[]).unwrap();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(n);
        let start = Instant::now();
        for i in 0..n {
            archive.commit_step(&step(i, &mut rng)).unwrap();
        }
        let insert = start.elapsed().as_secs_f64();
        drop(archive);
        let bytes: u64 = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum();
        println!(
            "{n} candidates: inserted in {insert:.1} s ({:.0} steps/s, 20 task results each), archive {:.0} MiB",
            n as f64 / insert,
            bytes as f64 / 1048576.0
        );

        let start = Instant::now();
        let archive = Archive::open_existing(&path).unwrap();
        let opened = start.elapsed().as_secs_f64();
        let next = archive.next_step().unwrap();
        let stepped = start.elapsed().as_secs_f64();
        let scored = archive.scored(metaforge::types::Split::Val).unwrap();
        let resume = start.elapsed().as_secs_f64();
        assert_eq!(next, n);
        println!(
            "  resume (open, next step, load {} scored candidates): {:.0} ms (open {:.0}, next step {:.0}, scored {:.0})",
            scored.len(),
            resume * 1e3,
            opened * 1e3,
            (stepped - opened) * 1e3,
            (resume - stepped) * 1e3
        );

        let start = Instant::now();
        let front = pareto_front(&scored, DEFAULT_OBJECTIVES);
        let sweep = start.elapsed().as_secs_f64();
        if n <= 20_000 {
            let start = Instant::now();
            let reference = pareto_front_pairwise(&scored, DEFAULT_OBJECTIVES);
            let pairwise = start.elapsed().as_secs_f64();
            assert_eq!(front, reference);
            println!(
                "  pareto front ({} members): sweep {:.2} ms vs pairwise definition {:.0} ms — {:.0}x faster",
                front.len(),
                sweep * 1e3,
                pairwise * 1e3,
                pairwise / sweep
            );
        } else {
            println!(
                "  pareto front ({} members): sweep {:.2} ms (pairwise skipped: quadratic)",
                front.len(),
                sweep * 1e3
            );
        }
        if n <= 20_000 {
            // Worst case for the pairwise definition: every candidate on the front (an exact
            // score/cost trade-off), so no early exit helps it.
            let mut line = scored.clone();
            for (k, c) in line.iter_mut().enumerate() {
                c.score = k as f64 / n as f64;
                c.tokens = 100 + k as u64;
                c.cost = 0.0;
            }
            let start = Instant::now();
            let front = pareto_front(&line, DEFAULT_OBJECTIVES);
            let sweep = start.elapsed().as_secs_f64();
            let start = Instant::now();
            assert_eq!(front, pareto_front_pairwise(&line, DEFAULT_OBJECTIVES));
            let pairwise = start.elapsed().as_secs_f64();
            println!(
                "  pareto front, worst case ({} members): sweep {:.2} ms vs pairwise {:.0} ms — {:.0}x faster",
                front.len(),
                sweep * 1e3,
                pairwise * 1e3,
                pairwise / sweep
            );
        }
        for strategy in ParentSelection::ALL {
            let draws = 200;
            let start = Instant::now();
            for _ in 0..draws {
                select_parent(&scored, strategy, DEFAULT_OBJECTIVES, &mut rng).unwrap();
            }
            println!(
                "  select_parent {strategy:<10} {:.3} ms per draw",
                start.elapsed().as_secs_f64() * 1e3 / draws as f64
            );
        }
        println!(
            "  host memory: RSS {} KiB, peak {} KiB",
            status_kib("VmRSS:"),
            status_kib("VmHWM:")
        );
    }
}
