//! The base agent's tidying mechanics when the model only chooses places
//! (`base_agent = "place_avoid"`, `"place_choice"` or `"place_calibrated"`).
//!
//! Why split the work this way: a 135M model asked for whole actions from a numbered list
//! answers with the first entries. It takes both objects and never puts one away, so no
//! episode teaches anything and no memory can help. What a memory can tell is where an object
//! goes, so that one decision is the model's (its likelihood of each place, with the memory
//! text in its context) and the rest is done for it: take every loose object, open a closed
//! place before putting into it, and after a put that lowered the score take the object back
//! and choose again among the places not yet tried. A memory that names the right place then
//! saves the steps of wrong tries, and the steps are capped.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::Result;

use super::env::GameState;

/// One episode's tidying state.
#[derive(Default)]
pub struct PlacePolicy {
    /// Objects put where the score rose.
    placed: BTreeSet<String>,
    /// Places each object was put without a score rise.
    tried: BTreeMap<String, BTreeSet<String>>,
    /// The place chosen for an object that is still in hand (kept across the open step).
    chosen: BTreeMap<String, String>,
}

impl PlacePolicy {
    /// Learns from the last action's effect on the score.
    pub fn observe(&mut self, action: &str, before: f64, after: f64) {
        if let Some((object, place)) = put_parts(action) {
            self.chosen.remove(object);
            if after > before {
                self.placed.insert(object.to_string());
            } else {
                self.tried
                    .entry(object.to_string())
                    .or_default()
                    .insert(place.to_string());
            }
        }
    }

    /// The next action, or None when nothing is left to do. `choose(object, places)` returns
    /// one of `places`: where the object should go.
    pub fn next(
        &mut self,
        state: &GameState,
        mut choose: impl FnMut(&str, &[String]) -> Result<String>,
    ) -> Result<Option<String>> {
        let mut held: Vec<&str> = state
            .valid_actions
            .iter()
            .filter_map(|a| put_parts(a))
            .map(|(o, _)| o)
            .collect();
        held.dedup();
        if let Some(object) = held.first().copied() {
            let tried = self.tried.get(object).cloned().unwrap_or_default();
            let open: Vec<String> = state
                .valid_actions
                .iter()
                .filter_map(|a| put_parts(a))
                .filter(|(o, _)| *o == object)
                .map(|(_, p)| p.to_string())
                .collect();
            let closed = state.valid_actions.iter().filter_map(|a| a.strip_prefix("open "));
            let mut places: Vec<String> = open
                .iter()
                .cloned()
                .chain(closed.map(str::to_string))
                .filter(|p| !tried.contains(p))
                .collect();
            places.sort();
            places.dedup();
            if places.is_empty() {
                // Tried everywhere: leave it in hand.
                return Ok(None);
            }
            let place = match self.chosen.get(object).filter(|p| places.contains(p)) {
                Some(p) => p.clone(),
                None => {
                    let p = choose(object, &places)?;
                    self.chosen.insert(object.to_string(), p.clone());
                    p
                }
            };
            return Ok(Some(if open.contains(&place) {
                format!("put {object} in {place}")
            } else {
                format!("open {place}")
            }));
        }
        let loose = state
            .valid_actions
            .iter()
            .filter_map(|a| a.strip_prefix("take "))
            .find(|o| !self.placed.contains(*o));
        Ok(loose.map(|o| format!("take {o}")))
    }
}

/// (object, place) of a `put <object> in <place>` action.
pub(super) fn put_parts(action: &str) -> Option<(&str, &str)> {
    action.strip_prefix("put ")?.split_once(" in ")
}

/// The room sentence of an observation ("You are in the kitchen."), for the place prompt.
pub fn room_of(observation: &str) -> &str {
    observation.split_inclusive('.').next().map(str::trim).unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(actions: &[&str], score: f64) -> GameState {
        GameState {
            valid_actions: actions.iter().map(|s| s.to_string()).collect(),
            score,
            ..GameState::default()
        }
    }

    #[test]
    fn takes_then_puts_where_the_chooser_says_and_retries_elsewhere_after_a_wrong_put() {
        let mut p = PlacePolicy::default();
        let mut asked: Vec<Vec<String>> = Vec::new();
        let s = state(&["look around", "open wardrobe", "take shirt"], 0.0);
        let a = p.next(&s, |_, _| unreachable!()).unwrap();
        assert_eq!(a.as_deref(), Some("take shirt"));

        // In hand: the chooser sees the open places and the closed one, and picks the closed.
        let s = state(&["open wardrobe", "put shirt in bed", "put shirt in desk"], 0.25);
        let a = p
            .next(&s, |_, places| {
                asked.push(places.to_vec());
                Ok("wardrobe".into())
            })
            .unwrap();
        assert_eq!(a.as_deref(), Some("open wardrobe"));
        assert_eq!(asked[0], ["bed", "desk", "wardrobe"]);
        // Once open, the choice is kept, not asked again.
        let s = state(
            &[
                "close wardrobe",
                "put shirt in bed",
                "put shirt in desk",
                "put shirt in wardrobe",
            ],
            0.25,
        );
        let a = p.next(&s, |_, _| unreachable!()).unwrap();
        assert_eq!(a.as_deref(), Some("put shirt in wardrobe"));

        // The score fell: wrong place. The object is taken back, and the next choice leaves
        // the wardrobe out.
        p.observe("put shirt in wardrobe", 0.25, 0.0);
        let s = state(&["take shirt"], 0.0);
        assert_eq!(
            p.next(&s, |_, _| unreachable!()).unwrap().as_deref(),
            Some("take shirt")
        );
        let s = state(
            &["put shirt in bed", "put shirt in desk", "put shirt in wardrobe"],
            0.25,
        );
        let a = p
            .next(&s, |_, places| {
                assert_eq!(places, ["bed", "desk"]);
                Ok("desk".into())
            })
            .unwrap();
        assert_eq!(a.as_deref(), Some("put shirt in desk"));
        p.observe("put shirt in desk", 0.25, 0.5);
        // Placed: not taken again.
        let s = state(&["look around", "take shirt"], 0.5);
        assert_eq!(p.next(&s, |_, _| unreachable!()).unwrap(), None);
    }

    #[test]
    fn the_room_is_the_first_sentence() {
        assert_eq!(
            room_of("You are in the pantry. In one part of the room you see a shelf."),
            "You are in the pantry."
        );
        assert_eq!(room_of(""), "");
    }
}
