//! The fixed base agent that plays every episode: the experiment's agent model choosing where
//! each object goes (`templates/episodes/place_choice.j2`, mechanics in `placement.rs`), with
//! the memory's warnings acted on for it or shown to it as text (`heed_warnings`), the
//! same model picking whole actions (`templates/episodes/base_agent.j2`), or a scripted policy
//! for tests.
//!
//! Why the base agent is fixed and host-side: a memory design is judged by how much its
//! retrieved text helps the same player (ALMA's protocol); the player is not searched over.

use std::collections::BTreeSet;

use anyhow::Result;
use serde::Serialize;
use serde_json::json;

use super::env::{EnvServer, Game, GameState};
use super::placement::{put_parts, room_of, PlacePolicy};
use crate::llm::{Calibration, CallParams, Gateway, Message, Usage};
use crate::propose::Templates;

/// One step of a trajectory, as the memory design's `update` receives it.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    pub action: String,
    pub observation: String,
    pub score: f64,
}

/// One played episode.
#[derive(Debug, Clone, Serialize)]
pub struct Play {
    /// The state after reset (what `retrieve` and `update` are shown, see `observation_for`).
    #[serde(skip)]
    pub start: GameState,
    pub trajectory: Vec<Step>,
    /// The game's own normalised score at the end.
    pub reward: f64,
    pub success: bool,
    #[serde(skip)]
    pub usage: Usage,
}

/// Who plays.
pub enum BaseAgent<'a> {
    /// The experiment's agent model, one call per step.
    Model {
        gateway: &'a Gateway,
        templates: &'a Templates,
    },
    /// The agent model chooses where each object goes, by its likelihood of each place given
    /// the memory text; taking and opening are done for it (`placement.rs` says why).
    PlaceChoice {
        gateway: &'a Gateway,
        templates: &'a Templates,
        scoring: PlaceScoring,
        warnings: Warnings,
    },
    /// A deterministic policy that reads the memory text for `object ... location` lines:
    /// for unit tests of the protocol only (no model), never a reported figure.
    Scripted,
}

/// What `retrieve` and `update` see of an episode's start.
pub fn observation_for(game: &Game, start: &GameState) -> serde_json::Value {
    json!({
        "game": game.game,
        "task": start.task,
        "observation": start.observation,
        "inventory": start.inventory,
        "valid_actions": start.valid_actions,
    })
}

impl BaseAgent<'_> {
    /// Plays `game` from its start with `memory` (may be empty) in the agent's context.
    pub fn play(&self, env: &mut EnvServer, game: &Game, memory: &str, max_steps: u32) -> Result<Play> {
        let start = env.reset(game)?;
        let mut state = start.clone();
        let mut trajectory: Vec<Step> = Vec::new();
        let mut usage = Usage::default();
        let mut policy = ScriptedPolicy::default();
        let mut placer = PlacePolicy::default();
        for _ in 0..max_steps {
            if state.done {
                break;
            }
            let action = match self {
                BaseAgent::Scripted => match policy.next(&state, memory, game.seed) {
                    Some(a) => a,
                    None => break,
                },
                BaseAgent::PlaceChoice {
                    gateway,
                    templates,
                    scoring,
                    warnings,
                } => {
                    let room = room_of(&start.observation);
                    let choose = |object: &str, places: &[String]| {
                        let (place, used) = match warnings {
                            Warnings::Shown => {
                                choose_place(gateway, templates, *scoring, room, object, places, memory)?
                            }
                            Warnings::Heeded => {
                                let (places, shown) = heed_warnings(memory, object, places);
                                choose_place(gateway, templates, *scoring, room, object, &places, &shown)?
                            }
                        };
                        usage.merge(&used);
                        Ok(place)
                    };
                    match placer.next(&state, choose)? {
                        Some(a) => a,
                        None => break,
                    }
                }
                BaseAgent::Model { gateway, templates } => {
                    // Task actions first (take, put, open), then the rest: the list is numbered
                    // and small models tend to answer with the first entries.
                    let mut actions = state.valid_actions.clone();
                    actions.sort_by_key(|a| {
                        ["take ", "put ", "open "]
                            .iter()
                            .position(|p| a.starts_with(p))
                            .unwrap_or(3)
                    });
                    let prompt = templates.render(
                        "episodes/base_agent.j2",
                        json!({
                            "task": start.task,
                            "memory": memory,
                            "observation": state.observation,
                            "inventory": state.inventory,
                            "valid_actions": actions,
                            "history": trajectory.iter().rev().take(8).rev().map(|s| &s.action).collect::<Vec<_>>(),
                        }),
                    )?;
                    let params = CallParams {
                        max_tokens: Some(24),
                        ..CallParams::default()
                    };
                    let req = gateway.request(vec![Message::new("user", prompt)], params, 0);
                    let reply = gateway.complete(&req)?;
                    usage.add(&reply);
                    choose_action(&reply.text, &actions)
                }
            };
            let before = state.score;
            state = env.step(&action)?;
            policy.observe(&action, before, state.score);
            placer.observe(&action, before, state.score);
            trajectory.push(Step {
                action,
                observation: state.observation.clone(),
                score: state.score,
            });
        }
        Ok(Play {
            start,
            trajectory,
            reward: state.score,
            success: state.success,
            usage,
        })
    }
}

/// How the place-choosing player compares places.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlaceScoring {
    /// The likeliest answer sentence wins.
    Likeliest,
    /// The answer sentence whose likelihood rises most from a content-free question (the same
    /// room and memory, the object replaced by `templates/episodes/neutral_object.j2`) to the
    /// real one: what the memory and the room make likely whatever the object is held cancels
    /// (`Calibration`), so a line about another object no longer sends this one to its place.
    Calibrated,
}

/// What the place-choosing player does with a memory line that warns against a place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Warnings {
    /// Shown to the model with the rest of the text.
    Shown,
    /// Obeyed, not shown: see `heed_warnings`.
    Heeded,
}

/// The places the player chooses among, and the memory text it reads, when it heeds
/// warnings: a warning line (`is_warning`) that names `object` takes the places it names off
/// `places` (unless that would leave none), and no warning line is shown to the model.
///
/// Why: the small model cannot act on a negation. Scoring places as the end of a sentence,
/// it is drawn to every place its text names, so "not: the sofa for the cushion" sends the
/// cushion to the sofa. What a design learns from a put that lowered the score can only help
/// this player if the player, not the model, acts on it.
pub fn heed_warnings(memory: &str, object: &str, places: &[String]) -> (Vec<String>, String) {
    let names: Vec<&str> = places.iter().map(String::as_str).collect();
    let avoided = avoided_locations(memory, object, &names);
    let kept: Vec<String> = places
        .iter()
        .filter(|p| !avoided.contains(&p.as_str()))
        .cloned()
        .collect();
    let shown: Vec<&str> = memory.lines().filter(|l| !is_warning(l)).collect();
    let places = if kept.is_empty() { places.to_vec() } else { kept };
    (places, shown.join("\n"))
}

/// Where the agent model puts `object`: the place whose answer sentence
/// (`templates/episodes/place_answer.j2`) it finds likeliest after the question, with the
/// memory text in its context, by `scoring`; and what the call used.
///
/// Why a whole sentence: each place is scored as the end of "The <object> goes in the …", so
/// a memory line that states the place in words like those is copied. Asked for a bare place
/// name after the question, the small model mostly ignored a memory that named the place.
pub fn choose_place(
    gateway: &Gateway,
    templates: &Templates,
    scoring: PlaceScoring,
    room: &str,
    object: &str,
    places: &[String],
    memory: &str,
) -> Result<(String, Usage)> {
    let question = |object: &str| -> Result<(String, Vec<String>)> {
        let prompt = templates.render(
            "episodes/place_choice.j2",
            json!({"memory": memory, "room": room, "object": object, "places": places}),
        )?;
        let answers = places
            .iter()
            .map(|place| templates.render("episodes/place_answer.j2", json!({"object": object, "place": place})))
            .collect::<Result<_>>()?;
        Ok((prompt, answers))
    };
    let (prompt, answers) = question(object)?;
    let calibration = match scoring {
        PlaceScoring::Likeliest => None,
        PlaceScoring::Calibrated => {
            let neutral = templates.render("episodes/neutral_object.j2", json!({}))?;
            let (prompt, choices) = question(neutral.trim())?;
            Some(Calibration {
                messages: vec![Message::new("user", prompt)],
                choices,
            })
        }
    };
    let params = CallParams {
        choices: answers.clone(),
        calibration,
        temperature: Some(0.0),
        ..CallParams::default()
    };
    let req = gateway.request(vec![Message::new("user", prompt)], params, 0);
    let reply = gateway.complete(&req)?;
    let mut usage = Usage::default();
    usage.add(&reply);
    let at = answers.iter().position(|a| *a == reply.text).unwrap_or(0);
    Ok((places[at].clone(), usage))
}

/// The valid action a model reply means: the numbered one it starts with, else an exact line,
/// else the longest valid action the reply contains, else the one sharing most words; `look
/// around` when nothing matches.
pub fn choose_action(reply: &str, valid: &[String]) -> String {
    // The prompt numbers the actions: a reply that starts with a number picks that one.
    let digits: String = reply.trim_start().chars().take_while(char::is_ascii_digit).collect();
    if let Ok(n) = digits.parse::<usize>() {
        if (1..=valid.len()).contains(&n) {
            return valid[n - 1].clone();
        }
    }
    let norm = |s: &str| {
        s.trim()
            .trim_matches(|c: char| "\"'`.*:>".contains(c))
            .trim()
            .to_lowercase()
    };
    for line in reply.lines() {
        let mut l = norm(line);
        if let Some(rest) = l.strip_prefix("action") {
            l = norm(rest);
        }
        if let Some(v) = valid.iter().find(|v| v.to_lowercase() == l) {
            return v.clone();
        }
    }
    let lower = reply.to_lowercase();
    if let Some(v) = valid
        .iter()
        .filter(|v| lower.contains(&v.to_lowercase()))
        .max_by_key(|v| v.len())
    {
        return v.clone();
    }
    let words: BTreeSet<&str> = lower
        .split(|c: char| !c.is_alphanumeric() && c != '-')
        .filter(|w| !w.is_empty())
        .collect();
    valid
        .iter()
        .map(|v| {
            (
                v.to_lowercase()
                    .split_whitespace()
                    .filter(|w| words.contains(*w))
                    .count(),
                v,
            )
        })
        .filter(|(n, _)| *n > 0)
        .max_by_key(|(n, v)| (*n, std::cmp::Reverse(v.len())))
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| "look around".into())
}

/// The scripted player: takes each object, puts it where the memory text says it goes
/// (opening a closed container first), else tries the places in a fixed order drawn from a
/// hash of (object, game); a put that lowers the score was wrong, so it takes the object
/// back and tries the next place. It therefore learns the right place within an episode at
/// the cost of steps, and a memory that remembers places saves those steps: with and without
/// memory differ only by what the memory says.
#[derive(Default)]
struct ScriptedPolicy {
    taken: BTreeSet<String>,
    placed: BTreeSet<String>,
    tried: std::collections::BTreeMap<String, BTreeSet<String>>,
}

impl ScriptedPolicy {
    /// Learns from the last action's effect on the score.
    fn observe(&mut self, action: &str, before: f64, after: f64) {
        if let Some((object, location)) = put_parts(action) {
            if after > before {
                self.placed.insert(object.to_string());
            } else {
                self.tried
                    .entry(object.to_string())
                    .or_default()
                    .insert(location.to_string());
            }
        }
    }

    fn next(&mut self, state: &GameState, memory: &str, seed: u64) -> Option<String> {
        let mut puts: Vec<(&str, &str)> = state.valid_actions.iter().filter_map(|a| put_parts(a)).collect();
        puts.sort();
        // An object whose place the memory names goes first: a remembered place costs one step.
        let held: Vec<&str> = puts.iter().map(|(o, _)| *o).collect();
        let all_places: Vec<&str> = puts
            .iter()
            .map(|(_, l)| *l)
            .chain(state.valid_actions.iter().filter_map(|a| a.strip_prefix("open ")))
            .collect();
        let first = held
            .iter()
            .find(|o| {
                remembered_location(memory, o, &all_places)
                    .is_some_and(|l| !self.tried.get(**o).is_some_and(|t| t.contains(l)))
            })
            .or(held.first())
            .copied();
        if let Some(object) = first {
            let tried = self.tried.get(object).cloned().unwrap_or_default();
            let open: Vec<&str> = puts
                .iter()
                .filter(|(o, l)| *o == object && !tried.contains(*l))
                .map(|(_, l)| *l)
                .collect();
            let closed: Vec<&str> = state
                .valid_actions
                .iter()
                .filter_map(|a| a.strip_prefix("open "))
                .filter(|l| !tried.contains(*l))
                .collect();
            let mut places: Vec<&str> = open.iter().chain(closed.iter()).copied().collect();
            places.sort();
            let avoid = avoided_locations(memory, object, &places);
            places.retain(|l| !avoid.contains(l));
            let target = remembered_location(memory, object, &places).or_else(|| {
                let h = object
                    .bytes()
                    .fold(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1, |h, b| {
                        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
                    });
                let pool: Vec<&str> = if open.iter().any(|l| !avoid.contains(l)) {
                    open.iter().filter(|l| !avoid.contains(l)).copied().collect()
                } else if !places.is_empty() {
                    places.clone()
                } else {
                    open.clone()
                };
                (!pool.is_empty()).then(|| pool[(h % pool.len() as u64) as usize])
            })?;
            return Some(if open.contains(&target) {
                format!("put {object} in {target}")
            } else {
                format!("open {target}")
            });
        }
        let object = state
            .valid_actions
            .iter()
            .filter_map(|a| a.strip_prefix("take "))
            .find(|o| !self.placed.contains(*o) && (!self.taken.contains(*o) || self.tried.contains_key(*o)))?;
        self.taken.insert(object.to_string());
        Some(format!("take {object}"))
    }
}

/// Whether a memory line warns against something: its first word is `not`, `avoid` or
/// `wrong` (the convention `templates/episodes/memory_api.j2` tells designs). A whole word,
/// so that "notebook -> desk" stays a fact.
fn is_warning(line: &str) -> bool {
    let first: String = line
        .trim_start()
        .chars()
        .take_while(|c| c.is_alphabetic())
        .collect::<String>()
        .to_lowercase();
    ["not", "avoid", "wrong"].contains(&first.as_str())
}

/// Places a line of `memory` says `object` does not go: the places warning lines that name
/// it name (`places_named`).
fn avoided_locations<'l>(memory: &str, object: &str, locations: &[&'l str]) -> Vec<&'l str> {
    let object = object.to_lowercase();
    memory
        .lines()
        .filter(|l| is_warning(l))
        .map(|l| l.to_lowercase())
        .filter(|l| l.contains(&object))
        .flat_map(|l| places_named(&l, locations))
        .collect()
}

/// The location a line of `memory` gives for `object`: a line naming the whole object (else
/// its last word) and, after it, one of `locations` (the longest named, so "chest of
/// drawers" beats "chest").
fn remembered_location<'l>(memory: &str, object: &str, locations: &[&'l str]) -> Option<&'l str> {
    let object = object.to_lowercase();
    let head = object.split_whitespace().last().unwrap_or(&object).to_string();
    let lines: Vec<String> = memory
        .lines()
        .flat_map(|l| l.split(';'))
        .filter(|l| !is_warning(l))
        .map(|l| l.trim().to_lowercase())
        .collect();
    for needle in [&object, &head] {
        for line in lines.iter().rev() {
            let Some(at) = line.find(needle.as_str()) else { continue };
            let after = &line[at + needle.len()..];
            if let Some(l) = places_named(after, locations).into_iter().max_by_key(|l| l.len()) {
                return Some(l);
            }
        }
    }
    None
}

/// The `locations` that the lowercase `text` names, in their order, less any named only as
/// part of a longer one it names ("desk" in "desk chair").
fn places_named<'l>(text: &str, locations: &[&'l str]) -> Vec<&'l str> {
    let named: Vec<(&'l str, String)> = locations
        .iter()
        .map(|loc| (*loc, loc.to_lowercase()))
        .filter(|(_, lower)| text.contains(lower.as_str()))
        .collect();
    named
        .iter()
        .filter(|(_, lower)| {
            !named
                .iter()
                .any(|(_, other)| other != lower && other.contains(lower.as_str()))
        })
        .map(|(loc, _)| *loc)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_reply_is_mapped_to_a_valid_action() {
        let v = valid(&["take copybook", "open wardrobe", "put copybook in desk", "look around"]);
        assert_eq!(choose_action("put copybook in desk", &v), "put copybook in desk");
        assert_eq!(choose_action("Action: Open wardrobe.", &v), "open wardrobe");
        assert_eq!(
            choose_action("I will put copybook in desk now", &v),
            "put copybook in desk"
        );
        assert_eq!(choose_action("copybook!", &v), "take copybook");
        assert_eq!(choose_action("???", &v), "look around");
        assert_eq!(choose_action("3. put copybook in desk", &v), "put copybook in desk");
        assert_eq!(choose_action(" 2", &v), "open wardrobe");
        assert_eq!(choose_action("9", &v), "look around", "out of range is not an action");
    }

    #[test]
    fn memory_lines_name_the_location_after_the_object() {
        let locs = ["chest of drawers", "desk", "wardrobe"];
        let mem = "clean brown shirt -> wardrobe\ncopybook: desk";
        assert_eq!(remembered_location(mem, "clean brown shirt", &locs), Some("wardrobe"));
        assert_eq!(remembered_location(mem, "copybook", &locs), Some("desk"));
        // The head noun generalises: another shirt goes where a shirt went.
        assert_eq!(remembered_location(mem, "dirty shirt", &locs), Some("wardrobe"));
        assert_eq!(remembered_location(mem, "black blanket", &locs), None);
        assert_eq!(remembered_location("", "copybook", &locs), None);
        // Negative lines are not advice to go there, but a place to avoid.
        let mem = "not: desk for copybook\navoid wardrobe for copybook";
        assert_eq!(remembered_location(mem, "copybook", &locs), None);
        assert_eq!(avoided_locations(mem, "copybook", &locs), vec!["desk", "wardrobe"]);
        // A place inside a longer one's name is not warned against with it.
        let study = ["desk", "desk chair", "shelf"];
        assert_eq!(
            avoided_locations("not: desk chair for copybook", "copybook", &study),
            vec!["desk chair"]
        );
    }

    #[test]
    fn a_player_heeding_warnings_drops_the_warned_places_and_never_reads_a_warning() {
        let places = valid(&["end table", "sofa", "wastepaper basket"]);
        let mem = "cushion -> sofa\nnot: end table for cushion\nNot: wastepaper basket for teapot\nWrong before: put cushion in end table\nnotebook -> end table";
        let (kept, shown) = heed_warnings(mem, "cushion", &places);
        // Only the warning about the cushion counts for it; the teapot's leaves its place.
        assert_eq!(kept, valid(&["sofa", "wastepaper basket"]));
        // The model would be drawn to the places the warnings name, whichever object they
        // are about, so none of them is shown; the other lines are, a fact whose object
        // only begins like a warning word included.
        assert_eq!(shown, "cushion -> sofa\nnotebook -> end table");
        assert!(heed_warnings(mem, "notebook", &places)
            .0
            .contains(&"end table".to_string()));
        let (kept, _) = heed_warnings(mem, "teapot", &places);
        assert_eq!(kept, valid(&["end table", "sofa"]));
        // Warned against everywhere: every place stays a choice rather than none.
        let all = "avoid end table, sofa and wastepaper basket for the cushion";
        assert_eq!(heed_warnings(all, "cushion", &places).0, places);
        assert_eq!(heed_warnings("", "cushion", &places), (places.clone(), String::new()));
    }
}
