"""The search-quality table: each configuration's mean held-out gain over K search seeds, on
one experiment or several, and each configuration's difference from random search.

    python3 scripts/search_quality.py [--recorded FILE]... [--save FILE] \
        BIN OUT K CONFIG[,CONFIG...] NAME[:K] [NAME[:K]...]

BIN is the metaforge binary, OUT the folder of archives `OUT/NAME-CONFIG-SEED.db` (what
`scripts/search-quality.sh` writes), NAME an experiment's file name without `.toml`, with
its own search seeds after a colon where they differ from K. K is a number of search seeds
(1 to K), a range FROM-TO of them, or 0 for an experiment whose runs are all recorded.

`--save FILE` writes the runs read from the archives as JSON (each run's seed, gain, whether
it was a significant win, and whether validation picked it); `--recorded FILE` adds the runs
such a file holds to those read from archives, so that seeds run on another machine, or whose
archives are gone, count in the table with the ones at hand. A seed given both ways is an
error. A run recorded without its validation pick leaves the last column unknown.

Per experiment: the gain of each search seed is the paired held-out difference of the best
discovered agent over the best seed, whether or not validation ranked it above the seed (0
when no discovered agent was evaluated on the whole validation pool, so none was tested).
With several experiments, the difference from random search is also pooled: the mean over
experiments of each one's difference in mean gain. Why stratified
and not one pool of runs: experiments differ far more in what a search can gain than the
configurations do, and a pool would count that spread as noise. Its interval sums the
per-experiment Welch variances; its p-value permutes configuration labels within each
experiment only. Experiments may have different numbers of seeds: each one's difference is
still an unbiased estimate, with the variance its own seeds give it.

The last column, "picked by validation", is the gain a user gets who keeps whichever of the
two validation ranked higher: the seed's 0 where validation ranked the discovered agent below
it. The tables compare configurations by the gain above; this one says how often validation
would have chosen the discovered agent at all.
"""
import argparse
import itertools
import json
import math
import random
import statistics
import subprocess
import sys

# Two-sided 95% t quantiles by degrees of freedom (small K).
T = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262,
     10: 2.228, 12: 2.179, 15: 2.131, 20: 2.086, 30: 2.042}


def t95(df):
    """The quantile at the nearest tabulated degrees of freedom below (the wider interval)."""
    df = max(1, int(df))
    return 1.96 if df > 30 else T[max(d for d in T if d <= df)]


def seed_range(spec):
    """The search seeds a K (1 to K, none for 0) or a FROM-TO names."""
    first, _, last = spec.rpartition("-") if "-" in spec else ("1", "", spec)
    try:
        seeds = range(int(first), int(last) + 1)
    except ValueError:
        seeds = None
    if seeds is None or (seeds and seeds[0] < 1) or (not seeds and spec != "0"):
        sys.exit(f"search_quality: no search seeds in {spec!r}; "
                 "fix: give K >= 0 or FROM-TO with 1 <= FROM <= TO")
    return seeds


def read_runs(binary, out, name, config, seeds):
    """Each search seed's run as a record: its gain, whether it was a significant win, and
    whether validation ranked the discovered agent at least as high as the seed."""
    runs = []
    for seed in seeds:
        db = f"{out}/{name}-{config}-{seed}.db"
        run = subprocess.run([binary, "status", db, "--json"], capture_output=True, text=True)
        if run.returncode != 0:
            sys.exit(f"search_quality: cannot read {db}: {run.stderr.strip()}; "
                     f"fix: run scripts/search-quality.sh on {name} with seeds {seeds[0]}-{seeds[-1]} first")
        status = json.loads(run.stdout)
        if not status.get("finished"):
            sys.exit(f"search_quality: {db} has not finished; fix: rerun scripts/search-quality.sh, which resumes it")
        c = status.get("test_comparison")
        diff = c["paired"]["diff"] if c else 0.0
        runs.append({
            "seed": seed,
            "gain": diff,
            "win": bool(c and c["paired"]["p_two_sided"] < 0.05 and diff > 0),
            "picked": bool(c and not c["discovered_val"] < c["seed_val"]),
        })
    return runs


def load_recorded(paths):
    """Runs recorded in `--save` files: {"experiments": {NAME: {CONFIG: [run, ...]}}}."""
    recorded = {}
    for path in paths:
        try:
            with open(path) as f:
                experiments = json.load(f)["experiments"]
            for name, configs in experiments.items():
                for config, runs in configs.items():
                    for r in runs:
                        if not isinstance(r["seed"], int) or not isinstance(r["gain"], (int, float)) \
                                or not isinstance(r["win"], bool) or r.get("picked") not in (True, False, None):
                            raise ValueError(f"run {r!r} of {name}, {config}")
                    recorded.setdefault((name, config), []).extend(runs)
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            sys.exit(f"search_quality: cannot read recorded runs from {path}: {e!r}; fix: give a file "
                     '{"experiments": {NAME: {CONFIG: [{"seed": 1, "gain": 0.1, "win": true, '
                     '"picked": true}, ...]}}}, as --save writes')
    return recorded


def difference(a, b):
    """Mean of a minus mean of b, its Welch variance and degrees of freedom."""
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    v = va + vb
    df = v ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1)) if v > 0 else 1
    return statistics.fmean(a) - statistics.fmean(b), v, df


def permutation_p(strata, observed, draws=20000, seed=0):
    """One-sided p of the stratified difference: labels permuted within each stratum. Exact
    when there are few enough arrangements, else Monte Carlo."""
    def stat(split):
        return statistics.fmean(statistics.fmean(a) - statistics.fmean(b) for a, b in split)

    arrangements = 1
    for a, b in strata:
        arrangements *= math.comb(len(a) + len(b), len(a))
    if arrangements <= draws:
        per_stratum = []
        for a, b in strata:
            pool = a + b
            per_stratum.append([([pool[i] for i in idx], [pool[i] for i in range(len(pool)) if i not in idx])
                                for idx in itertools.combinations(range(len(pool)), len(a))])
        hits = total = 0
        for split in itertools.product(*per_stratum):
            total += 1
            hits += stat(split) >= observed - 1e-12
        return hits / total, "exact"
    rng = random.Random(seed)
    hits = 0
    for _ in range(draws):
        split = []
        for a, b in strata:
            pool = a + b
            rng.shuffle(pool)
            split.append((pool[:len(a)], pool[len(a):]))
        hits += stat(split) >= observed - 1e-12
    return (hits + 1) / (draws + 1), f"{draws} random permutations"


def collect(binary, out, k, configs, names, recorded):
    """Each (experiment, configuration)'s runs, recorded first, then from archives."""
    seeds = {}
    for arg in names:
        name, _, own = arg.partition(":")
        seeds[name] = seed_range(own or k)
    runs = {}
    for name, own in seeds.items():
        for cfg in configs:
            got = list(recorded.get((name, cfg), [])) + read_runs(binary, out, name, cfg, own)
            seen = [r["seed"] for r in got]
            twice = sorted({s for s in seen if seen.count(s) > 1})
            if twice:
                sys.exit(f"search_quality: {name}, {cfg}: search seeds {twice} are both recorded and "
                         "read from archives; fix: leave them out of NAME:K or of the recorded file")
            if not got:
                sys.exit(f"search_quality: {name}, {cfg}: no runs; fix: give its search seeds "
                         "after NAME: or a --recorded file that holds them")
            runs[(name, cfg)] = sorted(got, key=lambda r: r["seed"])
    return list(seeds), runs


def runs_json(experiments, note=None):
    """The `--save` file: one run per line, so a diff shows which runs changed."""
    head = f' "note": {json.dumps(note)},\n' if note else ""
    parts = []
    for name, configs in experiments.items():
        rows = []
        for cfg, runs in configs.items():
            lines = ",\n".join("    " + json.dumps(r) for r in runs)
            rows.append(f"   {json.dumps(cfg)}: [\n{lines}\n   ]")
        parts.append(f"  {json.dumps(name)}: {{\n" + ",\n".join(rows) + "\n  }")
    return "{\n" + head + ' "experiments": {\n' + ",\n".join(parts) + "\n }\n}\n"


def picked_column(runs):
    if any(r.get("picked") is None for r in runs):
        return "unknown (recorded without it)"
    kept = [r["gain"] if r["picked"] else 0.0 for r in runs]
    return f"{statistics.fmean(kept):+.3f} ({sum(r['picked'] for r in runs)} of {len(runs)} picked)"


def print_tables(configs, names, runs):
    table = {}
    for name in names:
        k = len(runs[(name, configs[0])])
        print(f"{name}:")
        print(f"{'config':<16} {'K':>2}  {'mean gain':>10}  {'95% CI':>18}  {'significant wins':>17}  "
              f"{'gains per seed':<{7 * k}}  picked by validation")
        for cfg in configs:
            rows = runs[(name, cfg)]
            k = len(rows)
            g = [r["gain"] for r in rows]
            m = statistics.fmean(g)
            half = t95(k - 1) * statistics.stdev(g) / math.sqrt(k) if k > 1 else float("nan")
            wins = sum(r["win"] for r in rows)
            print(f"{cfg:<16} {k:>2}  {m:>+10.3f}  [{m - half:+.3f}, {m + half:+.3f}]  {wins:>13} / {k}  "
                  + f"{' '.join(f'{d:+.3f}' for d in g):<{7 * k}}  " + picked_column(rows))
            table[(name, cfg)] = g
        if "random" in configs and min(len(table[(name, c)]) for c in configs) > 1:
            for cfg in configs:
                if cfg == "random":
                    continue
                a, b = table[(name, cfg)], table[(name, "random")]
                d, v, df = difference(a, b)
                half = t95(df) * math.sqrt(v)
                p, how = permutation_p([(a, b)], d)
                print(f"{cfg} - random: {d:+.3f} [{d - half:+.3f}, {d + half:+.3f}], "
                      f"permutation p (one-sided, {how}) = {p:.3f}")
        print()
    if len(names) > 1 and "random" in configs and min(len(g) for g in table.values()) > 1:
        for cfg in configs:
            if cfg == "random":
                continue
            strata = [(table[(n, cfg)], table[(n, "random")]) for n in names]
            parts = [difference(a, b) for a, b in strata]
            d = statistics.fmean(p[0] for p in parts)
            v = sum(p[1] for p in parts) / len(parts) ** 2
            # Satterthwaite over the strata's variances.
            den = sum((p[1] / len(parts) ** 2) ** 2 / p[2] for p in parts if p[1] > 0)
            df = v ** 2 / den if den > 0 else 1
            half = t95(df) * math.sqrt(v)
            p, how = permutation_p(strata, d)
            print(f"{cfg} - random over {len(names)} experiments (mean of each one's difference): "
                  f"{d:+.3f} [{d - half:+.3f}, {d + half:+.3f}], permutation p (one-sided, {how}) = {p:.4f}")


def main():
    parser = argparse.ArgumentParser(description="The search-quality table over search seeds.")
    parser.add_argument("--recorded", action="append", default=[], metavar="FILE",
                        help="runs recorded by --save, added to those read from archives")
    parser.add_argument("--save", metavar="FILE", help="write the runs read from archives as JSON")
    parser.add_argument("binary")
    parser.add_argument("out")
    parser.add_argument("k")
    parser.add_argument("configs")
    parser.add_argument("names", nargs="+")
    args = parser.parse_args()
    configs = args.configs.split(",")
    recorded = load_recorded(args.recorded)
    names, runs = collect(args.binary, args.out, args.k, configs, args.names, recorded)
    if args.save:
        own = {}
        for (name, cfg), rows in runs.items():
            fresh = [r for r in rows if r not in recorded.get((name, cfg), [])]
            if fresh:
                own.setdefault(name, {})[cfg] = fresh
        with open(args.save, "w") as f:
            f.write(runs_json(own))
    print_tables(configs, names, runs)


if __name__ == "__main__":
    main()
