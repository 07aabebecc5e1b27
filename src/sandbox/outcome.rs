//! Typed outcomes: how an evaluation ended, from what the workers did. Stored with the
//! evaluation (`evaluations.outcome`) and fed back to the proposer as text.
//!
//! Why one place: the hostile-code corpus, the evaluator and the proposer's feedback must
//! agree on what a breach is called.

use crate::types::{Outcome, TaskOutcome};

use super::worker::{TaskRun, WorkerExit, WorkerRun};

/// How one task ended, from its report and how its worker ended.
pub fn task_outcome(task: &TaskRun, exit: &WorkerExit) -> TaskOutcome {
    if task.finished {
        return match task.error.as_deref() {
            None => TaskOutcome::Ok,
            Some(e) => error_kind(e),
        };
    }
    match exit {
        WorkerExit::Timeout => TaskOutcome::Timeout,
        WorkerExit::CpuLimit => TaskOutcome::CpuLimit,
        WorkerExit::LoadError(_) => TaskOutcome::LoadError,
        WorkerExit::ProtocolViolation(_) => TaskOutcome::ProtocolViolation,
        WorkerExit::Crashed {
            signal: Some(nix::libc::SIGXFSZ),
            ..
        } => TaskOutcome::OutputLimit,
        _ => TaskOutcome::Crashed,
    }
}

/// Names the breach behind a task's exception text (`Type: message`).
pub fn error_kind(error: &str) -> TaskOutcome {
    if error.starts_with("MemoryError") {
        TaskOutcome::MemoryLimit
    } else if error.starts_with("RecursionError") {
        TaskOutcome::RecursionLimit
    } else if error.starts_with("PolicyDenied") || error.starts_with("PermissionError") {
        TaskOutcome::PolicyDenied
    } else if error.starts_with("OutputLimitExceeded")
        || error.contains("[Errno 27]") // EFBIG: the file-size rlimit
        || error.contains("[Errno 28]")
    // ENOSPC: the scratch tmpfs is full
    {
        TaskOutcome::OutputLimit
    } else {
        TaskOutcome::Error
    }
}

/// The outcome of an evaluation run by `runs` (one per shard), with detail lines for the
/// proposer. Precedence: a policy denial names the root cause of whatever followed, then
/// how the worker ended, then protocol abuse, then what the tasks did.
pub fn classify(runs: &[&WorkerRun], cpu_s: u64) -> (Outcome, Vec<String>) {
    let mut details = Vec::new();
    if let Some(d) = runs.iter().flat_map(|r| r.denials.iter()).next() {
        let all: Vec<&str> = runs
            .iter()
            .flat_map(|r| r.denials.iter().map(|d| d.what.as_str()))
            .take(5)
            .collect();
        details.push(format!("the sandbox refused: {}", all.join("; ")));
        return (Outcome::PolicyDenied { what: d.what.clone() }, details);
    }
    let mut outcome = Outcome::Ok;
    for run in runs {
        let exit_outcome = match &run.exit {
            WorkerExit::Completed => None,
            WorkerExit::LoadError(e) => Some((Outcome::LoadError, e.clone())),
            WorkerExit::Timeout => Some((
                Outcome::Timeout,
                "the worker passed its deadline and was killed".to_string(),
            )),
            WorkerExit::CpuLimit => Some((
                Outcome::CpuLimit,
                format!("the worker used more than {cpu_s} CPU seconds"),
            )),
            WorkerExit::ProtocolViolation(e) => Some((Outcome::ProtocolViolation, e.clone())),
            WorkerExit::Crashed {
                signal: Some(nix::libc::SIGXFSZ),
                ..
            } => Some((
                Outcome::OutputLimit,
                "the worker wrote a file over the size limit".into(),
            )),
            WorkerExit::Crashed {
                signal,
                code,
                stderr_tail,
            } => Some((
                Outcome::Crashed { signal: *signal },
                format!("worker died (signal {signal:?}, exit code {code:?})\n{stderr_tail}"),
            )),
        };
        if let Some((o, d)) = exit_outcome {
            if outcome == Outcome::Ok {
                outcome = o;
            }
            details.push(d);
        }
    }
    let violations: u32 = runs.iter().map(|r| r.protocol_violations).sum();
    if outcome == Outcome::Ok && violations > 0 {
        outcome = Outcome::ProtocolViolation;
        details.push(format!(
            "{violations} forged or malformed messages on the worker's pipes"
        ));
    }
    let mut kinds = Vec::new();
    for run in runs {
        let mut ids: Vec<&String> = run.tasks.keys().collect();
        ids.sort();
        for id in ids {
            let task = &run.tasks[id];
            let kind = task_outcome(task, &run.exit);
            if kind != TaskOutcome::Ok && task.finished && details.len() < 3 {
                details.push(format!(
                    "task {id}: {}\n{}",
                    task.error.as_deref().unwrap_or(""),
                    task.traceback.as_deref().unwrap_or("")
                ));
            }
            kinds.push((kind, task.error.clone()));
        }
    }
    if outcome == Outcome::Ok && !kinds.is_empty() {
        if let Some((_, e)) = kinds.iter().find(|(k, _)| *k == TaskOutcome::PolicyDenied) {
            outcome = Outcome::PolicyDenied {
                what: e.clone().unwrap_or_default(),
            };
        } else if kinds.iter().any(|(k, _)| *k == TaskOutcome::OutputLimit) {
            outcome = Outcome::OutputLimit;
        } else if kinds.iter().all(|(k, _)| *k == TaskOutcome::MemoryLimit) {
            outcome = Outcome::MemoryLimit;
        } else if kinds.iter().all(|(k, _)| *k != TaskOutcome::Ok) {
            outcome = Outcome::Error;
        }
    }
    (outcome, details)
}
