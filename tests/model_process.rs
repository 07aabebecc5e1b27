//! The embedded model on CPUs unlike the build machine's, and when it crashes: the build is
//! portable and holds no AMX kernel; a model process that dies is restarted once and the run
//! goes on; one that dies again stops the run at a step boundary with a message that names
//! what died, and `resume` then ends as a run that never stopped. All on the real model
//! (SmolLM2-135M), crashed on purpose by `METAFORGE_MODEL_FAULT` at its Nth decode call.

use std::path::Path;
use std::process::Command;

mod common;

use common::{archive_digest, assert_archive_sound, bin, count};

/// Why this test exists: built with `-march=native` on an Intel CPU with AMX, ggml compiled
/// its AMX kernels, and every use of the embedded model died at the first decode
/// (`tileloadd` in `tinygemm_kernel_amx`). On a CPU without AMX the same configuration built
/// no AMX code and passed every test, so the test reads the configuration itself, on any
/// machine: ggml's compile flags must name the portable instruction sets and never
/// `-march=native`, and the object code must hold no AMX tile instruction.
#[test]
fn the_build_is_portable_and_holds_no_amx_kernel() {
    let flags = metaforge::llm::local::build_flags();
    assert!(!flags.is_empty(), "build.rs did not record ggml's CPU flags");
    assert!(
        !flags.contains("-march=native"),
        "ggml was built for the build machine's CPU: {flags}"
    );
    assert!(!flags.contains("-mamx"), "ggml was built with AMX: {flags}");
    assert!(
        flags.contains("-mavx2") && flags.contains("-mfma"),
        "ggml lacks the AVX2 level: {flags}"
    );
    let lib = metaforge::llm::local::build_library().expect("build.rs found libggml-cpu.a");
    let out = Command::new("objdump")
        .args(["-d", "--no-show-raw-insn", lib])
        .output()
        .unwrap();
    assert!(out.status.success(), "objdump failed on {lib}");
    let code = String::from_utf8_lossy(&out.stdout);
    assert!(code.contains("vfmadd"), "objdump read no AVX2 code from {lib}");
    for tile in ["ldtilecfg", "tileloadd", "tdpbssd", "tdpbf16ps", "tilezero"] {
        assert!(!code.contains(tile), "{lib} holds the AMX instruction {tile}");
    }
    // What the binary refuses without: the features those flags use.
    assert_eq!(
        metaforge::llm::local::build_features(),
        ["sse4_2", "avx", "f16c", "fma", "avx2", "bmi2"]
    );
}

/// A search on the real model, small, with every request decoded alone and no prefix
/// reuse, so a request sent again to a restarted model process gets the very same answer.
fn experiment(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("exp.toml");
    std::fs::write(
        &path,
        r#"name = "model-process"
seed = 2
[domain]
name = "arith"
val_size = 6
test_size = 6
[models.meta]
max_tokens = 24
max_concurrency = 1
prefix_reuse = false
hang_timeout_s = 60
[models.agent]
max_tokens = 24
temperature = 0.0
max_concurrency = 1
prefix_reuse = false
hang_timeout_s = 60
[search]
seeds = ["direct_answer"]
generations = 1
proposals_per_generation = 3
test_top_k = 1
[proposers]
operators = 1.0
llm_instruction = 0.0
[evaluation]
tasks_in_flight = 2
task_timeout_s = 120
"#,
    )
    .unwrap();
    path
}

fn run(exp: &Path, db: &Path, fault: Option<&str>) -> std::process::Output {
    let mut cmd = Command::new(bin());
    cmd.args(["run", "--quiet"]).arg(exp).arg("--db").arg(db);
    match fault {
        Some(f) => cmd.env("METAFORGE_MODEL_FAULT", f),
        None => cmd.env_remove("METAFORGE_MODEL_FAULT"),
    };
    cmd.output().unwrap()
}

fn events(db: &Path, kind: &str) -> Vec<serde_json::Value> {
    let c = rusqlite::Connection::open(db).unwrap();
    let mut s = c
        .prepare("SELECT detail FROM events WHERE kind = ?1 ORDER BY id")
        .unwrap();
    s.query_map([kind], |r| r.get::<_, String>(0))
        .unwrap()
        .map(|d| serde_json::from_str(&d.unwrap()).unwrap())
        .collect()
}

/// One reference run, and the two crashes against it: dying once costs nothing but a
/// reload; dying twice stops the run, keeps what was stored, and `resume` ends it as if
/// nothing had happened.
#[test]
fn a_crashing_model_process_is_restarted_once_then_stops_the_run_with_its_cause() {
    let _one = common::one_model_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let exp = experiment(dir.path());
    let reference = dir.path().join("reference.db");
    let out = run(&exp, &reference, None);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(events(&reference, "model_restarted").is_empty());
    let expected = archive_digest(&reference);

    // Dies once, at its 40th decode call (inside the run's first steps): restarted, the
    // requests it held are sent again, and the run ends as the reference did.
    let once = dir.path().join("once.db");
    let out = run(&exp, &once, Some("segv:40"));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let restarts = events(&once, "model_restarted");
    assert_eq!(restarts.len(), 1, "{restarts:?}");
    assert_eq!(restarts[0]["life"], 1);
    assert!(restarts[0]["how"].as_str().unwrap().contains("SIGSEGV"), "{restarts:?}");
    assert_eq!(restarts[0]["restarted_with"], "prefix_reuse = false");
    assert_eq!(archive_digest(&once), expected, "a restarted model changed the run");

    // Hangs at its 40th decode call, holding a request it never answers: after the hang
    // timeout it is killed and restarted like a crash, and the run ends as the reference did.
    // (The timeout is generous: on a loaded 2-core machine a healthy reply can take seconds.)
    let hung = dir.path().join("hung.db");
    let out = run(&exp, &hung, Some("hang:40"));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let restarts = events(&hung, "model_restarted");
    assert_eq!(restarts.len(), 1, "{restarts:?}");
    assert!(
        restarts[0]["how"]
            .as_str()
            .unwrap()
            .contains("stopped answering (requests waited 60 s with no reply) and was killed"),
        "{restarts:?}"
    );
    assert_eq!(
        archive_digest(&hung),
        expected,
        "a model restarted after hanging changed the run"
    );

    // Dies at its 250th decode call, and the restarted process at its 250th too (the run
    // makes about 870 in five steps): the run stops before storing the step it was in,
    // saying what died, how, on which CPU, and what next.
    let twice = dir.path().join("twice.db");
    let out = run(&exp, &twice, Some("abort:250:2"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    for words in [
        "the embedded model (",
        "was killed by signal 6 (SIGABRT",
        "restarted with prefix_reuse = false, it was killed by signal 6",
        "CPU: ",
        "llama.cpp in this build: ",
        "`metaforge doctor`",
        "Nothing stored is lost",
        &format!("`metaforge resume {}`", twice.display()),
    ] {
        assert!(stderr.contains(words), "missing {words:?} in:\n{stderr}");
    }
    assert_eq!(events(&twice, "model_failed").len(), 1);
    assert_eq!(events(&twice, "model_restarted").len(), 1, "the first death is stored");
    assert_archive_sound(&twice);
    let stored = count(&twice, "SELECT count(*) FROM events WHERE kind = 'step_done'");
    assert!(stored >= 1, "the steps before the death are kept");
    assert_eq!(
        count(&twice, "SELECT count(*) FROM runs WHERE finished_at IS NOT NULL"),
        0
    );

    let out = Command::new(bin())
        .args(["resume", "--quiet"])
        .arg(&twice)
        .env_remove("METAFORGE_MODEL_FAULT")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(
        archive_digest(&twice),
        expected,
        "resume after the model's death differs from a run that never stopped"
    );
}

/// `doctor` loads the model in a process of its own and decodes; its exit code says whether
/// the embedded model can run here (1 when it cannot), whatever the sandbox layers say.
#[test]
fn doctor_checks_the_model_for_real_and_its_exit_code_says_so() {
    let _one = common::one_model_at_a_time();
    let out = Command::new(bin())
        .args(["doctor", "--json"])
        .env_remove("METAFORGE_MODEL_FAULT")
        .output()
        .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let model = &report["embedded_model"];
    assert!(model["result"]["Ok"]["tokens"].as_u64().unwrap() > 0, "{model}");
    assert!(model["system_info"].as_str().unwrap().contains("AVX2 = 1"), "{model}");
    assert!(!model["cpu"]["model"].as_str().unwrap().is_empty());
    let expected = if report["all_active"] == true { 0 } else { 3 };
    assert_eq!(out.status.code(), Some(expected), "{report}");

    let out = Command::new(bin())
        .arg("doctor")
        .env("METAFORGE_MODEL_FAULT", "segv:1")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("[FAILED]") && text.contains("SIGSEGV"), "{text}");
    assert!(text.contains("built for:  -m"), "{text}");
}

/// A faster build beside metaforge (`scripts/build-avx512.sh` puts `metaforge-avx512` there)
/// runs the model process when this CPU has what that build needs, and metaforge itself does
/// otherwise. The variant here is a copy of this build, whose needs any machine running the
/// tests meets; which binary ran is what `doctor` reports.
#[test]
fn the_model_process_runs_from_a_variant_build_beside_metaforge() {
    let _one = common::one_model_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let main = dir.path().join("metaforge");
    std::fs::copy(bin(), &main).unwrap();
    let runs_from = || {
        let out = Command::new(&main)
            .args(["doctor", "--json"])
            .env_remove("METAFORGE_BIN")
            .env_remove("METAFORGE_MODEL_BIN")
            .env_remove("METAFORGE_MODEL_FAULT")
            .output()
            .unwrap();
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let model = &report["embedded_model"];
        assert!(model["result"]["Ok"].is_object(), "{model}");
        model["binary"].as_str().unwrap().to_string()
    };
    assert_eq!(runs_from(), main.display().to_string());
    let variant = dir.path().join("metaforge-avx512");
    std::fs::copy(bin(), &variant).unwrap();
    assert_eq!(runs_from(), variant.display().to_string());
}
