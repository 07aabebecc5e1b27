//! Memory designs on the episodic domain (`twc`): real TextWorldExpress games in real game
//! servers, real sandboxed workers holding the designs, and a SCRIPTED base agent (a fixed
//! policy that reads the memory text; src/episodic/agent.rs), so the figures are exact and
//! repeatable. The protocol is ALMA's: the first half of a shuffled episode sequence (or a set
//! count) fills the memory, the rest is scored against the same player without memory.

mod common;

use common::*;
use metaforge::config::EvaluationConfig;
use metaforge::domain::Scorer;
use metaforge::episodic::{Episodic, PlaceScoring};
use metaforge::evaluate::{Evaluation, Evaluator, Outcome};

/// Evaluates each design on the same 80-episode validation sequence (40 fill, 40 scored).
fn evaluate_designs(designs: &[&str]) -> Vec<Evaluation> {
    evaluate_designs_with(scripted_episodes(), designs)
}

/// As `evaluate_designs`, with the episodes' settings `episodes` (its fill count, say).
fn evaluate_designs_with(episodes: metaforge::config::EpisodesConfig, designs: &[&str]) -> Vec<Evaluation> {
    let val = sequence(80);
    let episodic = Episodic::new(&episodes).unwrap();
    // The scripted base agent makes no model call; the gateway is there for the designs' own.
    let gateway = scripted_gateway("unused");
    let cfg = EvaluationConfig::default();
    let evaluator = Evaluator {
        gateway: &gateway,
        models: None,
        cfg: &cfg,
        scorer: Scorer::Exact,
        agent_contract: None,
        require_call_contracts: false,
        episodic: Some(&episodic),
        executor: &metaforge::executor::Executor::Local,
    };
    designs
        .iter()
        .map(|code| {
            evaluator
                .evaluate(code, &val, metaforge::types::Split::Val, &|| {})
                .unwrap()
        })
        .collect()
}

fn seed(name: &str) -> String {
    std::fs::read_to_string(format!("{}/archive/memory/{name}.py", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

/// Runs a memory search to its end with the scripted meta-model and agent model (fixtures);
/// `settings` are the experiment's own sections (name, domain, search, proposers). Returns
/// the archive.
fn scripted_memory_search(dir: &std::path::Path, settings: &str) -> std::path::PathBuf {
    let exp = dir.join("memory.toml");
    let models = format!(
        "[models.meta]\nbackend = \"scripted\"\nmodel = \"meta\"\nscript = \"{}\"\n[models.agent]\nbackend = \"scripted\"\nmodel = \"agent\"\nscript = \"{}\"\n[evaluation]\ntasks_in_flight = 4\ntask_timeout_s = 30\n",
        fixtures().join("scripted_meta_memory.json").display(),
        fixtures().join("scripted_agent.json").display(),
    );
    std::fs::write(&exp, format!("{settings}{models}")).unwrap();
    let db = dir.join("memory.db");
    run_to_end(&exp, &db);
    db
}

fn rewards(e: &Evaluation) -> (f64, f64) {
    let (mut with, mut without) = (0.0, 0.0);
    for t in &e.tasks {
        let v: serde_json::Value = serde_json::from_str(t.output.as_deref().unwrap()).unwrap();
        with += v["reward"].as_f64().unwrap();
        without += v["baseline"].as_f64().unwrap();
    }
    let n = e.tasks.len() as f64;
    (with / n, without / n)
}

#[test]
fn key_value_facts_beat_no_memory_on_a_fixed_episode_sequence() {
    let names = ["no_memory", "kv_facts", "trajectory_retrieval", "insight_list"];
    let codes: Vec<String> = names.iter().map(|n| seed(n)).collect();
    let e = evaluate_designs(&codes.iter().map(String::as_str).collect::<Vec<_>>());
    // The figures docs/memory.md quotes, printed with --nocapture.
    for (name, x) in names.iter().zip(&e) {
        let (with, without) = rewards(x);
        eprintln!(
            "{name:<22} reward {with:.3} with memory, {without:.3} without; gain {:.3} [{:.3}, {:.3}] ({})",
            x.mean, x.ci_lo, x.ci_hi, x.outcome
        );
    }
    let (none, kv) = (&e[0], &e[1]);
    for x in [none, kv] {
        assert_eq!(x.outcome, Outcome::Ok, "{}", x.detail);
        assert_eq!(x.tasks.len(), 40, "the second half of the sequence is scored");
    }
    // No memory is the baseline itself: the same player on the same games, gain exactly 0.
    assert_eq!(none.mean, 0.0, "{:?}", none.tasks);
    let (with, without) = rewards(kv);
    eprintln!(
        "kv_facts: reward {with:.3} with memory vs {without:.3} without; gain {:.3} [{:.3}, {:.3}]",
        kv.mean, kv.ci_lo, kv.ci_hi
    );
    assert!(
        kv.mean > 0.0 && kv.ci_lo > 0.0,
        "kv facts gain {} [{}, {}]",
        kv.mean,
        kv.ci_lo,
        kv.ci_hi
    );
    assert!(with > without);
    // What the base agent was given is kept with each scored episode.
    assert!(
        kv.tasks.iter().any(|t| t.output.as_deref().unwrap().contains(" -> ")),
        "{:?}",
        kv.tasks[0].output
    );
}

#[test]
fn a_set_fill_count_fills_the_memory_with_that_many_episodes_and_scores_the_rest() {
    // A design that says how many episodes it was updated with: each scored episode's
    // record keeps the text the player was given.
    let counter = "class Memory:\n    def __init__(self):\n        self.n = 0\n\n    def retrieve(self, observation):\n        return f\"updated {self.n} times\"\n\n    def update(self, observation, trajectory, reward):\n        self.n += 1\n";
    let val = sequence(80);
    for (fill, scored) in [(None, 40), (Some(60), 20)] {
        let e = &evaluate_designs_with(
            metaforge::config::EpisodesConfig {
                fill,
                ..scripted_episodes()
            },
            &[counter],
        )[0];
        assert_eq!(e.outcome, Outcome::Ok, "{}", e.detail);
        let ids: Vec<&str> = e.tasks.iter().map(|t| t.task_id.as_str()).collect();
        let last: Vec<&str> = val[80 - scored..].iter().map(|t| t.id.as_str()).collect();
        assert_eq!(ids, last, "fill {fill:?}: the episodes after the fill are scored");
        let filled = 80 - scored;
        for t in &e.tasks {
            let out = t.output.as_deref().unwrap();
            assert!(out.contains(&format!("updated {filled} times")), "fill {fill:?}: {out}");
        }
    }
}

#[test]
fn a_design_that_raises_or_exceeds_its_limits_is_recorded_as_such() {
    let raising = "class Memory:\n    def retrieve(self, observation):\n        raise ValueError('index is corrupt')\n\n    def update(self, observation, trajectory, reward):\n        pass\n";
    let hog = "class Memory:\n    def __init__(self):\n        self.blobs = []\n\n    def retrieve(self, observation):\n        return 'kept nothing'\n\n    def update(self, observation, trajectory, reward):\n        self.blobs.append(bytearray(8 << 30))\n";
    let e = evaluate_designs(&[raising, hog]);
    let (raised, hogged) = (&e[0], &e[1]);
    assert_eq!(raised.outcome, Outcome::Error, "{}", raised.detail);
    assert!(raised
        .tasks
        .iter()
        .all(|t| t.outcome == metaforge::types::TaskOutcome::Error));
    assert!(
        raised.tasks[0]
            .error
            .as_deref()
            .unwrap()
            .contains("ValueError: index is corrupt"),
        "{:?}",
        raised.tasks[0].error
    );
    // Failed retrievals count as reward 0 (ALMA): a gain below zero, not a skipped episode.
    assert!(raised.mean < 0.0);
    assert_eq!(hogged.outcome, Outcome::Error, "{}", hogged.detail);
    assert!(
        hogged.detail.contains("update() raised on 40 of 40 fill episodes") && hogged.detail.contains("MemoryError"),
        "{}",
        hogged.detail
    );
}

/// A design cannot play the game itself: asking the host for a fill episode with a text, or
/// a scored episode without one, is refused; each scored episode is played once, with the
/// text `retrieve` returned. (The design reaches the private RPC module on purpose here.)
#[test]
fn a_design_cannot_play_outside_the_protocol() {
    let cheat = r#"from metaforge import _rpc


class Memory:
    def retrieve(self, observation):
        said = []
        for episode, text in ((FILL, "put everything right"), (SCORED, None), ("twc-train-999999", "x")):
            try:
                _rpc.play_episode(episode, text)
                said.append("played " + episode)
            except Exception as exc:
                said.append(str(exc))
        return "\n".join(said)

    def update(self, observation, trajectory, reward):
        pass
"#;
    let val = sequence(80);
    let code = format!("FILL = {:?}\nSCORED = {:?}\n{cheat}", val[0].id, val[40].id);
    let e = &evaluate_designs(&[&code])[0];
    assert_eq!(e.outcome, Outcome::Ok, "{}", e.detail);
    for t in &e.tasks {
        let out = t.output.as_deref().unwrap();
        assert!(
            out.contains("fills the memory: it is played without retrieval"),
            "{out}"
        );
        assert!(out.contains("is scored: it is played with the retrieved text"), "{out}");
        assert!(out.contains("is not in this sequence"), "{out}");
        assert!(!out.contains("played twc"), "{out}");
    }
}

/// A whole run on the episodic domain: the seeds from archive/memory/, then two proposals
/// from a SCRIPTED meta model that are broken designs (one raises in `retrieve`, one runs
/// out of memory in `update`). Both are recorded with their outcome, the run goes on to the
/// held-out test, and `status` reports reward with and without memory per design.
#[test]
fn a_memory_search_records_broken_designs_and_finishes() {
    let dir = tempfile::tempdir().unwrap();
    let db = scripted_memory_search(
        dir.path(),
        r#"name = "memory-test"
seed = 2
[domain]
name = "twc"
val_size = 16
test_size = 8
[domain.episodes]
base_agent = "scripted"
max_steps = 10
[search]
seeds = ["all"]
generations = 1
proposals_per_generation = 2
test_top_k = 1
[proposers]
operators = 0.0
rewrite = 1.0
[proposers.rewrite_options]
reflexion_rounds = 0
debug_rounds = 0
"#,
    );
    assert_archive_sound(&db);
    assert_eq!(count(&db, "SELECT count(*) FROM candidates WHERE kind = 'memory'"), 6);
    assert_eq!(
        count(&db, "SELECT count(*) FROM proposals WHERE status = 'runtime_error'"),
        2,
        "both broken designs are recorded as runtime errors"
    );
    assert_eq!(
        count(&db, "SELECT count(*) FROM task_results t JOIN evaluations e ON e.id = t.evaluation_id JOIN candidates c ON c.id = e.candidate_id WHERE c.name = 'raising retrieve' AND t.outcome = 'error'"),
        8
    );
    assert!(count(&db, "SELECT count(*) FROM evaluations WHERE split = 'test'") >= 1);
    let status = ok(&metaforge(dir.path(), &["status", db.to_str().unwrap()]));
    assert!(
        status.contains("memory designs: mean reward with / without memory"),
        "{status}"
    );
    assert!(status.contains("Key-value facts (SQLite)"), "{status}");
    assert!(
        status.contains("best discovered memory design") || status.contains("no discovered candidate was tested"),
        "the verdict names what was searched: {status}"
    );
    assert!(!status.contains("best discovered agent"), "{status}");
}

/// The base agent the embedded model plays (`place_choice`) puts an object where a memory text
/// says it goes, right or wrong: the real SmolLM2-135M at temperature 0, no memory design in
/// between. The memory lines are in the two forms the designs write: the game's own reply to
/// a put, and an `object -> place` fact among facts about other objects.
#[test]
fn the_model_played_agent_puts_an_object_where_the_memory_says() {
    let choose = place_chooser(PlaceScoring::Likeliest);
    // Each object with a memory that puts it somewhere the model would not put it unaided.
    let mut followed = Vec::new();
    for object in ["used tissue", "TV remote control", "teapot"] {
        let prior = choose(object, "");
        for place in ["wastepaper basket", "book case", "end table"]
            .into_iter()
            .filter(|p| *p != prior)
        {
            let told = format!("You put the cushion in the sofa.\nYou put the {object} in the {place}.\nYou put the picture in the TV stand.");
            let chosen = choose(object, &told);
            eprintln!("{object}: without memory {prior:?}, told {place:?}, chose {chosen:?}");
            followed.push(chosen == place);
        }
    }
    let n = followed.iter().filter(|f| **f).count();
    assert!(
        n * 4 >= followed.len() * 3,
        "the memory was followed in {n} of {} cases (see above)",
        followed.len()
    );
    let facts = "cushion -> sofa\nused tissue -> wastepaper basket\npicture -> TV stand";
    assert_eq!(choose("used tissue", facts), "wastepaper basket");
}

/// A memory that names a place for one object pulls the `place_choice` player's other
/// objects there too (a fact about the used tissue sends the teapot to the book case). The
/// calibrated player (`place_calibrated`), which judges each place against the same question
/// about no object in particular, is not pulled: the test holds the real model's scoring to
/// that. It also prints how often each player follows a fact about the object it holds, the
/// figure that says whether the model ties a fact to its object at all (benches/RESULTS.md).
#[test]
fn a_fact_about_another_object_pulls_only_the_uncalibrated_player() {
    let players = [
        ("place_choice", place_chooser(PlaceScoring::Likeliest)),
        ("place_calibrated", place_chooser(PlaceScoring::Calibrated)),
    ];
    let (mut pulled, mut followed, mut cases) = ([0, 0], [0, 0], [0, 0]);
    for (object, other) in [
        ("cushion", "used tissue"),
        ("teapot", "TV remote control"),
        ("picture", "cushion"),
    ] {
        let alone: Vec<String> = players.iter().map(|(_, choose)| choose(object, "")).collect();
        for place in ["wastepaper basket", "book case", "end table", "arm chair"] {
            for (i, (name, choose)) in players.iter().enumerate() {
                let before = &alone[i];
                if before == place {
                    continue;
                }
                cases[i] += 1;
                let other_fact = choose(object, &format!("{other} -> {place}"));
                let own_fact = choose(object, &format!("{object} -> {place}"));
                pulled[i] += usize::from(other_fact == place);
                followed[i] += usize::from(own_fact == place);
                eprintln!("{name} {object} -> {place}: alone {before:?}, told of the {other} {other_fact:?}, told of itself {own_fact:?}");
            }
        }
    }
    for (i, (name, _)) in players.iter().enumerate() {
        eprintln!(
            "{name}: pulled by a fact about another object in {} of {}, followed a fact about its own in {} of {}",
            pulled[i], cases[i], followed[i], cases[i]
        );
    }
    assert!(
        cases.iter().all(|c| *c >= 6),
        "too few cases where the player did not already choose the place: {cases:?}"
    );
    assert!(
        pulled[0] * 4 >= cases[0],
        "the plain player should be pulled in a quarter of the cases or more: {pulled:?} of {cases:?}"
    );
    assert!(
        pulled[1] * 4 < cases[1],
        "calibration should cancel the pull: {pulled:?} of {cases:?}"
    );
}

/// The place the real embedded model chooses for an object in a living room, by `scoring`,
/// given a memory text.
fn place_chooser(scoring: PlaceScoring) -> impl Fn(&str, &str) -> String {
    use metaforge::episodic::agent::choose_place;
    let gateway = gateway_from(
        "backend = \"local\"\nmodel = \"smollm2-135m\"\nmax_tokens = 24\nmax_concurrency = 4\ntemperature = 0.0",
    );
    let templates = metaforge::propose::Templates::embedded().unwrap();
    let living: Vec<String> = [
        "TV stand",
        "arm chair",
        "book case",
        "coffee table",
        "end table",
        "side table",
        "sofa",
        "wastepaper basket",
    ]
    .map(String::from)
    .to_vec();
    move |object: &str, memory: &str| {
        choose_place(
            &gateway,
            &templates,
            scoring,
            "You are in the living room.",
            object,
            &living,
            memory,
        )
        .unwrap()
        .0
    }
}

/// With operators the only proposers, the no-memory seed (cheapest, so always on the Pareto
/// front) is never a parent: no operator can change it, and every step spent on it proposed
/// nothing ("no operator applied"). Scripted base agent; real games and sandboxes.
#[test]
fn an_operator_only_memory_search_spends_no_step_on_the_no_memory_design() {
    let dir = tempfile::tempdir().unwrap();
    let db = scripted_memory_search(
        dir.path(),
        r#"name = "memory-parents"
seed = 3
[domain]
name = "twc"
val_size = 8
test_size = 4
[domain.episodes]
base_agent = "scripted"
max_steps = 8
[search]
seeds = ["no_memory", "kv_facts"]
generations = 1
proposals_per_generation = 4
test_top_k = 1
parent_selection = "pareto"
[proposers]
operators = 1.0
"#,
    );
    assert_eq!(count(&db, "SELECT count(*) FROM proposals WHERE kind LIKE 'op:%'"), 4);
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM proposals WHERE reason LIKE 'no operator applied%'"
        ),
        0,
        "a step went to a parent no operator can change"
    );
    assert_eq!(
        count(&db, "SELECT count(*) FROM proposals p JOIN candidates c ON p.parents LIKE '%' || c.id || '%' WHERE c.name = 'No memory' AND p.kind LIKE 'op:%'"),
        0
    );
    // The bandit learns from each step's credit, and credit from the comparison with the
    // parent on the same scored episodes: a memory design is not raced, but compared.
    let evaluated = count(
        &db,
        "SELECT count(*) FROM proposals WHERE kind LIKE 'op:%' AND status = 'evaluated'",
    );
    assert!(evaluated > 0, "no operator's design was evaluated");
    assert_eq!(
        count(&db, "SELECT count(*) FROM events WHERE kind = 'race' AND json_extract(detail, '$.kind') LIKE 'op:%' AND json_extract(detail, '$.paired.n') = 4"),
        evaluated,
        "each evaluated design is compared with its parent on the 4 scored validation episodes"
    );
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM events c JOIN events r ON r.step = c.step AND r.kind = 'race' AND json_extract(r.detail, '$.kind') LIKE 'op:%'
             WHERE c.kind = 'credit' AND json_extract(c.detail, '$.improved') = (json_extract(r.detail, '$.paired.diff') > 0)"
        ),
        evaluated,
        "a step's credit says whether its design beat its parent"
    );
}
