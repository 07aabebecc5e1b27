//! CEL expressions over JSON values: the one expression language of every contract (call
//! pre/postconditions, agent invariants, final-output checks).
//!
//! Why CEL (the `cel` crate): it always terminates, has no side effects, and its syntax is
//! known from Kubernetes and Envoy, and an evaluation costs microseconds
//! (`cargo bench --bench guard_overhead`).
//! A missing field or a type error is an evaluation error, and callers treat an error as a
//! violation, never as a pass (AgentAssert's rule for missing fields).

use std::fmt;

use std::sync::{Arc, LazyLock};

use cel::common::types::{CelBool, CelString};
use cel::{Context, Env, Program, Value as CelValue};
use serde_json::Value;

/// The standard library, built once: a fresh `Context::default()` builds it per evaluation,
/// which was most of every check's cost (`cargo bench --bench guard_overhead`). `matches` is
/// ours: the crate's compiles its pattern on every call, this one keeps compiled patterns
/// per thread.
static STDLIB: LazyLock<Arc<Env>> = LazyLock::new(|| {
    let mut env = Env::stdlib();
    cel::add_overload!(env, fn cached_matches: (CelString, CelString) -> Result<CelBool>, name = "matches", id = "matches")
        .expect("the crate's own `matches` is compiled out (no `regex` feature)");
    cel::add_member_overload!(env, fn cached_matches: (CelString, CelString) -> Result<CelBool>, name = "matches")
        .expect("the crate's own `matches` is compiled out (no `regex` feature)");
    Arc::new(env)
});

/// Patterns kept per thread; cleared when it grows past this (contracts use a handful).
const KEPT_PATTERNS: usize = 256;

fn cached_matches(this: &CelString<'_>, re: &CelString<'_>) -> Result<CelBool, cel::ExecutionError> {
    thread_local! {
        static PATTERNS: std::cell::RefCell<std::collections::HashMap<String, regex::Regex>> = Default::default();
    }
    PATTERNS.with(|cache| {
        let mut cache = cache.borrow_mut();
        if !cache.contains_key(re.inner()) {
            let compiled = regex::Regex::new(re.inner()).map_err(|err| cel::ExecutionError::FunctionError {
                function: "matches".to_string(),
                message: format!("'{}' not a valid regex:\n{err}", re.inner()),
            })?;
            if cache.len() >= KEPT_PATTERNS {
                cache.clear();
            }
            cache.insert(re.inner().to_string(), compiled);
        }
        Ok(CelBool::from(cache[re.inner()].is_match(this.inner())))
    })
}

fn context<'a>(vars: &[(&str, &Value)]) -> Result<Context<'a, 'static>, String> {
    let mut context = Context::with_env(STDLIB.clone());
    for (name, value) in vars {
        let v = cel::to_value(value).map_err(|e| format!("`{name}` cannot be passed to CEL: {e}"))?;
        context.add_variable_from_value(*name, v);
    }
    Ok(context)
}

/// A compiled CEL expression with its source kept for diagnostics.
pub struct Cel {
    source: String,
    program: Program,
}

impl fmt::Debug for Cel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Cel({:?})", self.source)
    }
}

impl Cel {
    pub fn compile(source: &str) -> Result<Self, String> {
        let program = Program::compile(source).map_err(|e| format!("CEL `{source}` does not compile: {e}"))?;
        Ok(Self {
            source: source.to_string(),
            program,
        })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    pub fn program(&self) -> &Program {
        &self.program
    }

    /// Whether the expression names this variable (e.g. a postcondition that reads `input`).
    pub fn mentions(&self, variable: &str) -> bool {
        self.program.references().has_variable(variable)
    }

    /// Evaluates to JSON with the given variables bound.
    pub fn eval(&self, vars: &[(&str, &Value)]) -> Result<Value, String> {
        let context = context(vars)?;
        let out = self
            .program
            .execute(&context)
            .map_err(|e| format!("`{}` failed: {e}", self.source))?;
        out.json()
            .map_err(|e| format!("`{}` gave a value with no JSON form: {e:?}", self.source))
    }

    /// Evaluates a predicate; anything but `true` (false, an error, a non-boolean) is a
    /// failure with a reason.
    pub fn holds(&self, vars: &[(&str, &Value)]) -> Result<(), String> {
        let context = context(vars)?;
        match self.program.execute(&context) {
            Ok(CelValue::Bool(true)) => Ok(()),
            Ok(CelValue::Bool(false)) => Err(format!("`{}` is false", self.source)),
            Ok(other) => Err(format!("`{}` gave {other:?}, not a boolean", self.source)),
            Err(e) => Err(format!("`{}` failed: {e}", self.source)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Pins the dialect details the contracts rely on.
    #[test]
    fn dialect_details_are_pinned() {
        let out = json!({"qty": 3});
        let input = json!({"max": 5});
        let post = Cel::compile("output.qty >= 0 && output.qty <= input.max").unwrap();
        assert!(post.holds(&[("output", &out), ("input", &input)]).is_ok());
        assert!(post.mentions("input") && post.mentions("output"));
        // Missing field: an error, so a violation.
        let err = post.holds(&[("output", &json!({})), ("input", &input)]).unwrap_err();
        assert!(err.contains("failed"), "{err}");
        // A JSON float against an int literal compares numerically.
        let half = Cel::compile("output.x > 0").unwrap();
        assert!(half.holds(&[("output", &json!({"x": 0.5}))]).is_ok());
        // A non-boolean result is a failure, not a pass.
        assert!(Cel::compile("1 + 1").unwrap().holds(&[]).is_err());
        assert_eq!(
            Cel::compile("{'a': 1 + 2}").unwrap().eval(&[]).unwrap(),
            json!({"a": 3})
        );
        assert!(Cel::compile("size(output) <= 3")
            .unwrap()
            .holds(&[("output", &json!("abc"))])
            .is_ok());
        assert!(Cel::compile("output.matches('^[0-9]+$')")
            .unwrap()
            .holds(&[("output", &json!("12"))])
            .is_ok());
        assert!(Cel::compile("output >").is_err());
    }
}
