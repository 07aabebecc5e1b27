//! Output contracts: what a model's text (a guarded `llm()` call) or a candidate's final
//! answer must satisfy, checked on the host in a fixed order — repair steps, regex, parse,
//! JSON Schema, CEL postcondition — with a fallback for when no attempt passes.
//!
//! The same spec serves a candidate's own per-call contracts (untrusted: declared as a
//! Python literal in `CONTRACTS`) and the experiment author's final-output contract
//! (trusted: `[output]` of the agent contract TOML).

use std::fmt;

use regex::Regex;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::expr::Cel;

/// The most attempts any contract gets, whatever it asks for.
pub const HOST_MAX_ATTEMPTS: u32 = 8;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ContractSpec {
    /// CEL over `input`: checked before any model call; failing it is the caller's fault.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pre: Option<String>,
    /// Deterministic normalisers applied to the raw text, in order, before any check.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub repair: Vec<Repair>,
    /// A pattern the (repaired) text must contain; anchor it with `^...$` for a full match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
    #[serde(default)]
    pub parse: Parse,
    /// JSON Schema of the parsed value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<Value>,
    /// CEL over `input` and `output` (the parsed value).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub post: Option<String>,
    #[serde(default = "default_attempts")]
    pub max_attempts: u32,
    #[serde(default)]
    pub on_fail: OnFail,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<FallbackSpec>,
}

fn default_attempts() -> u32 {
    3
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Repair {
    Trim,
    StripCodeFences,
    FirstJsonObject,
    LastNumber,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Parse {
    #[default]
    Raw,
    Json,
    Int,
    Float,
}

/// What the next attempt sends after a rejection.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OnFail {
    /// The same prompt plus the violation as feedback (guardrails' `reask`).
    #[default]
    Reask,
    /// The same prompt again, as a new sample.
    Resample,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum FallbackSpec {
    /// A constant value.
    Const(Value),
    /// A CEL expression over `input` (no model involved).
    Cel(String),
}

/// The check that rejected a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    Pre,
    Regex,
    Parse,
    Schema,
    Post,
}

impl Stage {
    pub const ALL: [Stage; 5] = [Stage::Pre, Stage::Regex, Stage::Parse, Stage::Schema, Stage::Post];

    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Pre => "pre",
            Stage::Regex => "regex",
            Stage::Parse => "parse",
            Stage::Schema => "schema",
            Stage::Post => "post",
        }
    }
}

/// Why a value was rejected; `detail` is what the reask feedback shows the model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Violation {
    pub stage: Stage,
    pub detail: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} check failed: {}", self.stage.as_str(), self.detail)
    }
}

/// A value that passed, and whether a repair step changed the text to get there.
#[derive(Debug, Clone, PartialEq)]
pub struct Checked {
    pub value: Value,
    pub repaired: bool,
}

pub enum Fallback {
    Const(Value),
    Cel(Cel),
}

/// A compiled contract: every expression, pattern and schema compiled once, at registration.
pub struct Contract {
    pub id: String,
    pub spec: ContractSpec,
    pre: Option<Cel>,
    regex: Option<Regex>,
    schema: Option<jsonschema::Validator>,
    post: Option<Cel>,
    fallback: Option<Fallback>,
}

impl fmt::Debug for Contract {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Contract({})", self.id)
    }
}

impl Contract {
    /// Compiles a spec; the error lists every part that does not compile, each with its fix.
    pub fn compile(id: &str, spec: ContractSpec) -> Result<Self, Vec<String>> {
        let mut problems = Vec::new();
        let mut cel = |field: &str, src: &Option<String>| match src.as_deref().map(Cel::compile) {
            None => None,
            Some(Ok(c)) => Some(c),
            Some(Err(e)) => {
                problems.push(format!(
                    "contract {id:?} `{field}`: {e}; fix: write a CEL expression such as `output >= 0`"
                ));
                None
            }
        };
        let pre = cel("pre", &spec.pre);
        let post = cel("post", &spec.post);
        let fallback = match &spec.fallback {
            None => None,
            Some(FallbackSpec::Const(v)) => Some(Fallback::Const(v.clone())),
            Some(FallbackSpec::Cel(src)) => cel("fallback.cel", &Some(src.clone())).map(Fallback::Cel),
        };
        let regex = match spec.regex.as_deref().map(Regex::new) {
            None => None,
            Some(Ok(r)) => Some(r),
            Some(Err(e)) => {
                problems.push(format!(
                    "contract {id:?} `regex`: {e}; fix: use Rust regex syntax (no look-around or back-references)"
                ));
                None
            }
        };
        let schema = match &spec.schema {
            None => None,
            Some(s) => match compile_schema(s) {
                Ok(v) => Some(v),
                Err(e) => {
                    problems.push(format!(
                        "contract {id:?} `schema` is not a valid JSON Schema: {e}; fix: correct the schema"
                    ));
                    None
                }
            },
        };
        if spec.max_attempts == 0 {
            problems.push(format!(
                "contract {id:?}: max_attempts = 0; fix: allow at least one attempt"
            ));
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Self {
            id: id.to_string(),
            spec,
            pre,
            regex,
            schema,
            post,
            fallback,
        })
    }

    pub fn max_attempts(&self) -> u32 {
        self.spec.max_attempts.clamp(1, HOST_MAX_ATTEMPTS)
    }

    pub fn has_fallback(&self) -> bool {
        self.fallback.is_some()
    }

    pub fn post(&self) -> Option<&Cel> {
        self.post.as_ref()
    }

    pub fn pre(&self) -> Option<&Cel> {
        self.pre.as_ref()
    }

    pub fn fallback(&self) -> Option<&Fallback> {
        self.fallback.as_ref()
    }

    pub fn precondition(&self, input: &Value) -> Result<(), Violation> {
        match &self.pre {
            Some(p) => p.holds(&[("input", input)]).map_err(|detail| Violation {
                stage: Stage::Pre,
                detail,
            }),
            None => Ok(()),
        }
    }

    /// Runs the pipeline on a model's text.
    pub fn check(&self, input: &Value, raw: &str) -> Result<Checked, Violation> {
        let mut text = raw.to_string();
        for step in &self.spec.repair {
            text = repair(*step, &text);
        }
        let repaired = text != raw;
        if let Some(r) = &self.regex {
            if !r.is_match(&text) {
                return Err(Violation {
                    stage: Stage::Regex,
                    detail: format!("the answer does not match /{}/", r.as_str()),
                });
            }
        }
        let value = parse(self.spec.parse, &text).map_err(|detail| Violation {
            stage: Stage::Parse,
            detail,
        })?;
        self.check_parsed(input, &value)?;
        Ok(Checked { value, repaired })
    }

    /// The checks that apply to an already parsed value (a fallback's): the regex too when
    /// the value is text, then schema and postcondition.
    pub fn check_value(&self, input: &Value, value: &Value) -> Result<(), Violation> {
        self.check_shape(value)?;
        self.check_post(input, value)
    }

    /// The checks that do not read `input` on a parsed value: the regex when the value is
    /// text, and the schema. A constant fallback passes them for every input or for none.
    pub fn check_shape(&self, value: &Value) -> Result<(), Violation> {
        if let (Some(r), Parse::Raw) = (&self.regex, self.spec.parse) {
            let text = value.as_str().unwrap_or_default();
            if !value.is_string() || !r.is_match(text) {
                return Err(Violation {
                    stage: Stage::Regex,
                    detail: format!("{value} does not match /{}/", r.as_str()),
                });
            }
        }
        self.check_schema(value)
    }

    fn check_parsed(&self, input: &Value, value: &Value) -> Result<(), Violation> {
        self.check_schema(value)?;
        self.check_post(input, value)
    }

    fn check_schema(&self, value: &Value) -> Result<(), Violation> {
        if let Some(schema) = &self.schema {
            if let Some(e) = schema.iter_errors(value).next() {
                let path = e.instance_path().to_string();
                return Err(Violation {
                    stage: Stage::Schema,
                    detail: if path.is_empty() {
                        e.to_string()
                    } else {
                        format!("{path}: {e}")
                    },
                });
            }
        }
        Ok(())
    }

    fn check_post(&self, input: &Value, value: &Value) -> Result<(), Violation> {
        if let Some(post) = &self.post {
            post.holds(&[("input", input), ("output", value)])
                .map_err(|detail| Violation {
                    stage: Stage::Post,
                    detail,
                })?;
        }
        Ok(())
    }

    /// The fallback's value for this input (None when the contract has no fallback).
    pub fn fallback_value(&self, input: &Value) -> Option<Result<Value, String>> {
        self.fallback.as_ref().map(|f| match f {
            Fallback::Const(v) => Ok(v.clone()),
            Fallback::Cel(c) => c.eval(&[("input", input)]),
        })
    }
}

/// Compiles a JSON Schema with linear-time `pattern` matching (the crate's default engine
/// backtracks) and no resolvers (built without them: a `$ref` reaches no file or network).
pub fn compile_schema(schema: &Value) -> Result<jsonschema::Validator, String> {
    jsonschema::options()
        .with_pattern_options(jsonschema::PatternOptions::regex())
        .build(schema)
        .map_err(|e| e.to_string())
}

fn repair(step: Repair, text: &str) -> String {
    match step {
        Repair::Trim => text.trim().to_string(),
        Repair::StripCodeFences => {
            let t = text.trim();
            match t.strip_prefix("```") {
                Some(rest) => {
                    let body = rest.split_once('\n').map(|(_, b)| b).unwrap_or("");
                    body.trim_end().strip_suffix("```").unwrap_or(body).trim().to_string()
                }
                None => t.to_string(),
            }
        }
        Repair::FirstJsonObject => {
            let Some(start) = text.find('{') else {
                return text.to_string();
            };
            let mut depth = 0usize;
            let mut in_string = false;
            let mut escaped = false;
            for (i, c) in text[start..].char_indices() {
                match c {
                    _ if escaped => escaped = false,
                    '\\' if in_string => escaped = true,
                    '"' => in_string = !in_string,
                    '{' if !in_string => depth += 1,
                    '}' if !in_string => {
                        depth -= 1;
                        if depth == 0 {
                            return text[start..start + i + 1].to_string();
                        }
                    }
                    _ => {}
                }
            }
            text.to_string()
        }
        Repair::LastNumber => {
            static NUMBER: std::sync::LazyLock<Regex> =
                std::sync::LazyLock::new(|| Regex::new(r"-?\d[\d,]*(?:\.\d+)?").expect("valid"));
            match NUMBER.find_iter(text).last() {
                Some(m) => m.as_str().replace(',', ""),
                None => text.to_string(),
            }
        }
    }
}

fn parse(how: Parse, text: &str) -> Result<Value, String> {
    match how {
        Parse::Raw => Ok(Value::String(text.to_string())),
        Parse::Json => serde_json::from_str(text).map_err(|e| format!("not JSON: {e}")),
        Parse::Int => text
            .trim()
            .parse::<i64>()
            .map(Value::from)
            .map_err(|_| format!("{:?} is not an integer", short(text))),
        Parse::Float => text
            .trim()
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map(Value::Number)
            .ok_or_else(|| format!("{:?} is not a number", short(text))),
    }
}

fn short(text: &str) -> String {
    text.chars().take(60).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn qty() -> Contract {
        let spec: ContractSpec = serde_json::from_value(json!({
            "pre": "input.max >= 0",
            "repair": ["strip_code_fences", "first_json_object"],
            "parse": "json",
            "schema": {"type": "object", "required": ["qty"], "properties": {"qty": {"type": "integer"}}},
            "post": "output.qty >= 0 && output.qty <= input.max",
            "fallback": {"const": {"qty": 0}}
        }))
        .unwrap();
        Contract::compile("qty", spec).unwrap()
    }

    #[test]
    fn pipeline_stages_reject_in_order() {
        let c = qty();
        let input = json!({"max": 10});
        let ok = c.check(&input, "Sure:\n```json\n{\"qty\": 4}\n```").unwrap();
        assert_eq!(ok.value, json!({"qty": 4}));
        assert!(ok.repaired);
        let stage = |raw: &str| c.check(&input, raw).unwrap_err().stage;
        assert_eq!(stage("no json here"), Stage::Parse);
        assert_eq!(stage("{\"qty\": \"four\"}"), Stage::Schema);
        assert_eq!(stage("{\"qty\": 11}"), Stage::Post);
        let schema_detail = c.check(&input, "{\"qty\": -1.5}").unwrap_err().detail;
        assert!(schema_detail.contains("/qty"), "{schema_detail}");
        assert_eq!(c.precondition(&json!({"max": -1})).unwrap_err().stage, Stage::Pre);
    }

    #[test]
    fn bad_parts_are_all_named_with_a_fix() {
        let spec: ContractSpec = serde_json::from_value(json!({
            "regex": "(?<=a)b", "post": "output >", "schema": {"type": 7}, "max_attempts": 0
        }))
        .unwrap();
        let problems = Contract::compile("broken", spec).unwrap_err();
        assert_eq!(problems.len(), 4, "{problems:#?}");
        assert!(problems.iter().all(|p| p.contains("\"broken\"") && p.contains("fix:")));
    }

    /// Schemas come from untrusted candidates: a `$ref` must not make the host read a file or
    /// the network (jsonschema is built without its resolvers).
    #[test]
    fn schema_refs_outside_the_schema_are_refused() {
        for target in ["file:///etc/hostname", "http://127.0.0.1:9/x.json"] {
            let spec: ContractSpec =
                serde_json::from_value(json!({"parse": "json", "schema": {"$ref": target}})).unwrap();
            let problems = Contract::compile("r", spec).unwrap_err();
            assert!(problems[0].contains("schema"), "{problems:?}");
        }
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err = serde_json::from_value::<ContractSpec>(json!({"postcondition": "true"})).unwrap_err();
        assert!(err.to_string().contains("postcondition"), "{err}");
    }

    #[test]
    fn repairs() {
        assert_eq!(repair(Repair::LastNumber, "it is 1,234 then 56.5 apples"), "56.5");
        assert_eq!(
            repair(Repair::FirstJsonObject, "x {\"a\": \"}\", \"b\": {}} y"),
            "{\"a\": \"}\", \"b\": {}}"
        );
        assert_eq!(repair(Repair::StripCodeFences, "```\n42\n```"), "42");
    }
}
