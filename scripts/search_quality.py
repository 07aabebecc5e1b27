"""The search-quality table: each configuration's mean held-out gain over K search seeds, on
one experiment or several, and each configuration's difference from random search.

    python3 scripts/search_quality.py BIN OUT K CONFIG[,CONFIG...] NAME[:K] [NAME[:K]...]

BIN is the metaforge binary, OUT the folder of archives `OUT/NAME-CONFIG-SEED.db` (what
`scripts/search-quality.sh` writes), NAME an experiment's file name without `.toml`, with
its own number of search seeds after a colon where it differs from K.

Per experiment: the gain of each search seed is the paired held-out difference of the best
discovered agent over the best seed, whether or not validation ranked it above the seed (0
when no discovered agent was evaluated on the whole validation pool, so none was tested).
With several experiments, the difference from random search is also pooled: the mean over
experiments of each one's difference in mean gain. Why stratified
and not one pool of runs: experiments differ far more in what a search can gain than the
configurations do, and a pool would count that spread as noise. Its interval sums the
per-experiment Welch variances; its p-value permutes configuration labels within each
experiment only.

The last column, "picked by validation", is the gain a user gets who keeps whichever of the
two validation ranked higher: the seed's 0 where validation ranked the discovered agent below
it. The tables compare configurations by the gain above; this one says how often validation
would have chosen the discovered agent at all.
"""
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


def gains(binary, out, name, config, k):
    """Each search seed's gain, whether it was a significant win, and whether validation ranked
    the discovered agent at least as high as the seed."""
    rows = []
    for seed in range(1, k + 1):
        db = f"{out}/{name}-{config}-{seed}.db"
        run = subprocess.run([binary, "status", db, "--json"], capture_output=True, text=True)
        if run.returncode != 0:
            sys.exit(f"search_quality: cannot read {db}: {run.stderr.strip()}; "
                     f"fix: run scripts/search-quality.sh on {name} with K >= {k} first")
        status = json.loads(run.stdout)
        if not status.get("finished"):
            sys.exit(f"search_quality: {db} has not finished; fix: rerun scripts/search-quality.sh, which resumes it")
        c = status.get("test_comparison")
        diff = c["paired"]["diff"] if c else 0.0
        picked = bool(c and not c["discovered_val"] < c["seed_val"])
        rows.append((diff, bool(c and c["paired"]["p_two_sided"] < 0.05 and diff > 0), picked))
    return rows


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


def main(binary, out, k, configs, names):
    configs = configs.split(",")
    seeds = {}
    for arg in names:
        name, _, own = arg.partition(":")
        seeds[name] = int(own or k)
    names = list(seeds)
    table = {}
    for name in names:
        k = seeds[name]
        print(f"{name}:")
        print(f"{'config':<16} {'K':>2}  {'mean gain':>10}  {'95% CI':>18}  {'significant wins':>17}  "
              f"{'gains per seed':<{7 * k}}  picked by validation")
        for cfg in configs:
            rows = gains(binary, out, name, cfg, k)
            g = [d for d, _, _ in rows]
            m = statistics.fmean(g)
            half = t95(k - 1) * statistics.stdev(g) / math.sqrt(k) if k > 1 else float("nan")
            wins = sum(w for _, w, _ in rows)
            picked = [d if p else 0.0 for d, _, p in rows]
            print(f"{cfg:<16} {k:>2}  {m:>+10.3f}  [{m - half:+.3f}, {m + half:+.3f}]  {wins:>13} / {k}  "
                  + f"{' '.join(f'{d:+.3f}' for d in g):<{7 * k}}  "
                  + f"{statistics.fmean(picked):+.3f} ({sum(p for _, _, p in rows)} of {k} picked)")
            table[(name, cfg)] = g
        if "random" in configs and k > 1:
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
    if len(names) > 1 and "random" in configs and min(seeds.values()) > 1:
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


if __name__ == "__main__":
    if len(sys.argv) < 6:
        sys.exit("usage: search_quality.py BIN OUT K CONFIG[,CONFIG...] NAME [NAME...]")
    main(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5:])
