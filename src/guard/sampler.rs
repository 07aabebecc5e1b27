//! The guarded call (SEVerA's FGGM restated for our gateway): the model is only a proposal
//! distribution. Sample, check, and after `max_attempts` rejections return the fallback,
//! itself checked — so whatever the model says, a returned value satisfies the contract.

use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::Value;

use super::contract::{Contract, Stage, Violation};

#[derive(Debug, Clone, PartialEq)]
pub enum GuardOutcome {
    Accepted {
        value: Value,
        repaired: bool,
    },
    Fallback {
        value: Value,
    },
    /// The caller broke the precondition: no model call was made.
    PreconditionViolated(Violation),
    /// Every attempt was rejected and there is no fallback (or it failed at run time).
    Unsatisfied(String),
}

/// How a guarded call ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CallEnd {
    /// A reply passed the contract.
    #[default]
    Accepted,
    /// No reply passed within the attempts; the proved fallback was returned.
    Fallback,
    /// The precondition refused the call before any model call.
    Pre,
    /// No reply passed and the contract has no fallback.
    Unsatisfied,
}

impl CallEnd {
    /// The name agent contracts see in the call's event (`outcome`).
    pub fn as_str(self) -> &'static str {
        match self {
            CallEnd::Accepted => "accepted",
            CallEnd::Fallback => "fallback",
            CallEnd::Pre => "pre",
            CallEnd::Unsatisfied => "unsatisfied",
        }
    }
}

/// What one guarded call did, for the per-candidate guard metrics.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CallRecord {
    pub contract: String,
    /// Model calls made (0 when the precondition failed).
    pub attempts: u32,
    pub outcome: CallEnd,
    pub rejects: Vec<Stage>,
    pub repaired: bool,
    pub model_errors: u32,
    /// Host time spent checking (model latency excluded).
    pub check_time: Duration,
}

/// Runs `model(attempt, feedback)` until an answer passes `contract`. `feedback` holds the
/// violations so far (for `reask`). A model error ends sampling early: the fallback covers
/// a failing model as it covers a wrong one.
pub fn guarded_call(
    contract: &Contract,
    input: &Value,
    mut model: impl FnMut(u32, &[Violation]) -> Result<String, String>,
) -> (GuardOutcome, CallRecord) {
    let mut record = CallRecord {
        contract: contract.id.clone(),
        ..Default::default()
    };
    let timed = |f: &mut dyn FnMut()| {
        let t = Instant::now();
        f();
        t.elapsed()
    };
    let mut pre = Ok(());
    record.check_time += timed(&mut || pre = contract.precondition(input));
    if let Err(v) = pre {
        record.outcome = CallEnd::Pre;
        record.rejects.push(Stage::Pre);
        return (GuardOutcome::PreconditionViolated(v), record);
    }
    let mut feedback: Vec<Violation> = Vec::new();
    for attempt in 1..=contract.max_attempts() {
        record.attempts = attempt;
        let raw = match model(attempt, &feedback) {
            Ok(raw) => raw,
            Err(_) => {
                record.model_errors += 1;
                break;
            }
        };
        let mut checked = None;
        record.check_time += timed(&mut || checked = Some(contract.check(input, &raw)));
        match checked.expect("set by the closure") {
            Ok(c) => {
                record.outcome = CallEnd::Accepted;
                record.repaired = c.repaired;
                return (
                    GuardOutcome::Accepted {
                        value: c.value,
                        repaired: c.repaired,
                    },
                    record,
                );
            }
            Err(v) => {
                record.rejects.push(v.stage);
                feedback.push(v);
            }
        }
    }
    let mut result = None;
    record.check_time += timed(&mut || {
        result = Some(match contract.fallback_value(input) {
            None => Err("no fallback".to_string()),
            Some(Err(e)) => Err(format!("fallback failed: {e}")),
            Some(Ok(v)) => contract
                .check_value(input, &v)
                .map(|()| v)
                .map_err(|e| format!("fallback breaks its own contract: {e}")),
        })
    });
    match result.expect("set by the closure") {
        Ok(value) => {
            record.outcome = CallEnd::Fallback;
            (GuardOutcome::Fallback { value }, record)
        }
        Err(why) => {
            record.outcome = CallEnd::Unsatisfied;
            let last = feedback
                .last()
                .map(|v| v.to_string())
                .unwrap_or_else(|| "the model failed".into());
            (
                GuardOutcome::Unsatisfied(format!(
                    "contract {:?}: {} attempts rejected (last: {last}); {why}",
                    contract.id, record.attempts
                )),
                record,
            )
        }
    }
}

/// The reask message that follows a rejected answer.
pub fn reask_feedback(v: &Violation) -> String {
    format!("Your previous answer was rejected ({v}). Answer again, following the required format exactly.")
}

#[cfg(test)]
mod tests {
    use super::super::contract::ContractSpec;
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn contract(spec: Value) -> Contract {
        Contract::compile("c", serde_json::from_value::<ContractSpec>(spec).unwrap()).unwrap()
    }

    fn json_qty() -> Contract {
        contract(json!({
            "repair": ["first_json_object"], "parse": "json",
            "schema": {"type": "object", "required": ["qty"], "properties": {"qty": {"type": "integer"}}},
            "post": "output.qty >= 0 && output.qty <= input.max",
            "max_attempts": 4, "fallback": {"cel": "{'qty': input.max}"}
        }))
    }

    #[test]
    fn first_valid_attempt_is_accepted() {
        let c = json_qty();
        let replies = ["nope", "{\"qty\": 99}", "{\"qty\": 3}", "{\"qty\": 4}"];
        let (out, rec) = guarded_call(&c, &json!({"max": 5}), |i, fb| {
            assert_eq!(fb.len() as u32, i - 1, "feedback grows with each rejection");
            Ok(replies[i as usize - 1].to_string())
        });
        assert_eq!(
            out,
            GuardOutcome::Accepted {
                value: json!({"qty": 3}),
                repaired: false
            }
        );
        assert_eq!(
            (rec.attempts, rec.rejects.clone()),
            (3, vec![Stage::Parse, Stage::Post])
        );
    }

    #[test]
    fn exhaustion_gives_the_fallback_after_exactly_k_attempts() {
        let c = json_qty();
        let mut calls = 0;
        let (out, rec) = guarded_call(&c, &json!({"max": 5}), |_, _| {
            calls += 1;
            Ok("{\"qty\": -1}".into())
        });
        assert_eq!(
            out,
            GuardOutcome::Fallback {
                value: json!({"qty": 5})
            }
        );
        assert_eq!((calls, rec.attempts, rec.outcome), (4, 4, CallEnd::Fallback));
    }

    #[test]
    fn precondition_failure_never_calls_the_model() {
        let c = contract(json!({"pre": "input.max >= 0", "fallback": {"const": "x"}}));
        let (out, rec) = guarded_call(&c, &json!({"max": -1}), |_, _| panic!("model called"));
        assert!(matches!(out, GuardOutcome::PreconditionViolated(_)));
        assert_eq!(rec.attempts, 0);
    }

    #[test]
    fn no_fallback_means_unsatisfied_and_a_bad_fallback_is_caught() {
        let c = contract(json!({"parse": "int", "max_attempts": 2}));
        let (out, _) = guarded_call(&c, &json!({}), |_, _| Ok("seven".into()));
        assert!(
            matches!(out, GuardOutcome::Unsatisfied(ref m) if m.contains("no fallback")),
            "{out:?}"
        );
        let c = contract(json!({"parse": "int", "post": "output > 0", "fallback": {"const": 0}}));
        let (out, _) = guarded_call(&c, &json!({}), |_, _| Ok("-3".into()));
        assert!(
            matches!(out, GuardOutcome::Unsatisfied(ref m) if m.contains("breaks its own contract")),
            "{out:?}"
        );
    }

    #[test]
    fn model_errors_fall_back() {
        let c = contract(json!({"parse": "int", "fallback": {"const": 1}}));
        let (out, rec) = guarded_call(&c, &json!({}), |_, _| Err("budget exhausted".into()));
        assert_eq!(out, GuardOutcome::Fallback { value: json!(1) });
        assert_eq!(rec.model_errors, 1);
    }

    /// Model outputs: arbitrary text, plus near-misses that exercise every stage.
    fn model_output() -> impl Strategy<Value = Result<String, String>> {
        prop_oneof![
            any::<String>().prop_map(Ok),
            (-1000i64..1000).prop_map(|q| Ok(format!("{{\"qty\": {q}}}"))),
            (-1000i64..1000).prop_map(|q| Ok(format!("Answer: ```{{\"qty\": {q}, \"note\": \"}}\"}}``` done"))),
            any::<f64>().prop_map(|q| Ok(format!("{{\"qty\": {q}}}"))),
            Just(Ok("{\"qty\": \"3\"}".to_string())),
            Just(Err("transport error".to_string())),
        ]
    }

    proptest! {
        /// SEVerA's guarantee restated for our gateway: for any sequence of model outputs, a
        /// guarded call with a verified fallback returns a value satisfying its contract.
        #[test]
        fn any_model_behaviour_yields_a_value_that_satisfies_the_contract(
            outputs in proptest::collection::vec(model_output(), 1..10),
            max in 0i64..50,
        ) {
            let c = json_qty();
            let input = json!({"max": max});
            let (out, rec) = guarded_call(&c, &input, |i, _| outputs[(i as usize - 1) % outputs.len()].clone());
            let value = match out {
                GuardOutcome::Accepted { value, .. } | GuardOutcome::Fallback { value } => value,
                other => panic!("a verified fallback never leaves the caller without a value: {other:?}"),
            };
            prop_assert!(c.check_value(&input, &value).is_ok(), "{value} breaks the contract");
            prop_assert!(rec.attempts <= c.max_attempts());
        }
    }
}
