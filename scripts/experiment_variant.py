"""Prints an experiment file changed for one search-quality configuration and search seed.

    python3 scripts/experiment_variant.py EXP.toml CONFIG SEED
    python3 scripts/experiment_variant.py EXP.toml --capped

The second prints `yes` when the experiment caps tokens or cost (over the run or per model),
so that `scripts/search-quality.sh` knows its runs must not replay each other's calls.

CONFIG: default, random, adas, or race-ahead / race-first-tie / race-sequential (the
experiment with that `evaluation.race_rule`, for choosing the racing rule).

Only the keys the configuration is about change; the step plan, the splits (the domain's
split seed is pinned to the experiment's own) and the budget stay, so the runs compare.
"""
import json
import sys
import tomllib


ADAS_WINDOW = 6144

RACE_RULES = {"ahead": "ahead", "first-tie": "first_tie_goes_on", "sequential": "sequential"}


def variant(exp, config, seed):
    exp = dict(exp)
    domain = dict(exp.get("domain", {}))
    # Every search seed is measured on the same validation and held-out tasks.
    domain.setdefault("split_seed", exp.get("seed", 0))
    exp["domain"] = domain
    exp["seed"] = seed
    exp["name"] = f"{exp.get('name', 'run')}-{config}-{seed}"
    search = dict(exp.get("search", {}))
    proposers = dict(exp.get("proposers", {}))
    if config == "random":
        search["parent_selection"] = "uniform"
        proposers["bandit"] = "fixed"
    elif config == "adas":
        search["parent_selection"] = "uniform"
        for key in ("operators", "diff", "crossover", "llm_instruction"):
            proposers[key] = 0.0
        proposers["rewrite"] = 1.0
        proposers["bandit"] = "fixed"
        options = dict(proposers.get("rewrite_options", {}))
        options["context_candidates"] = 8
        proposers["rewrite_options"] = options
        # Whole programs with the API section do not fit a 2048-token window even with the
        # parent alone; an embedded meta-model gets room for them (it holds 8192).
        models = dict(exp.get("models", {}))
        meta = dict(models.get("meta", {}))
        if meta.get("backend") == "local":
            meta["context_per_sequence"] = max(meta.get("context_per_sequence", 0), ADAS_WINDOW)
            models["meta"] = meta
            exp["models"] = models
    elif config.startswith("race-") and config[5:] in RACE_RULES:
        evaluation = dict(exp.get("evaluation", {}))
        evaluation["race_rule"] = RACE_RULES[config[5:]]
        exp["evaluation"] = evaluation
    elif config != "default":
        sys.exit(f"experiment_variant: unknown configuration {config!r}; use default, random, adas, "
                 + ", ".join(f"race-{r}" for r in RACE_RULES))
    exp["search"] = search
    exp["proposers"] = proposers
    return exp


def capped(exp):
    budget = exp.get("budget", {})
    models = exp.get("models", {}).values()
    return any(budget.get(k) is not None for k in ("max_tokens", "max_cost_usd")) or any(
        m.get(k) is not None for m in models for k in ("budget_tokens", "budget_usd"))


def value(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(value(x) for x in v) + "]"
    raise TypeError(f"cannot write {v!r} as TOML")


def write(table, prefix=""):
    lines = [f"{k} = {value(v)}" for k, v in table.items() if not isinstance(v, dict)]
    for k, v in table.items():
        if isinstance(v, dict):
            name = f"{prefix}{k}"
            lines += ["", f"[{name}]", *write(v, name + ".")]
    return lines


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[2] == "--capped":
        with open(sys.argv[1], "rb") as f:
            print("yes" if capped(tomllib.load(f)) else "no")
        sys.exit(0)
    if len(sys.argv) != 4:
        sys.exit("usage: experiment_variant.py EXP.toml default|random|adas SEED  (or EXP.toml --capped)")
    with open(sys.argv[1], "rb") as f:
        exp = tomllib.load(f)
    print("\n".join(write(variant(exp, sys.argv[2], int(sys.argv[3])))))
