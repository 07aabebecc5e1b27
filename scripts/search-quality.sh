#!/usr/bin/env bash
# Search quality: runs an experiment under K search seeds in three configurations with the
# same step plan and token budget, and prints each one's mean held-out gain of the best
# discovered agent over the best seed, with a 95% interval over the seeds; then each
# configuration's difference from random search, with its interval and a permutation p-value.
#
#   scripts/search-quality.sh EXP.toml K [CONFIG...]
#
# Configurations (all by default):
#   default  the experiment as written (Thompson credit over proposers, its parent selection)
#   random   the random-search baseline: uniform parent selection, fixed proposer weights
#   adas     ADAS-style: the meta-model rewrites whole programs with the archive in its prompt
#   race-ahead, race-first-tie, race-sequential
#            the experiment under that racing rule (`evaluation.race_rule`)
#
# Archives go to runs/search-quality/; a rerun reuses finished ones (delete them to redo).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -lt 2 ]; then
  echo "usage: scripts/search-quality.sh EXP.toml K [default|random|adas|race-ahead|race-first-tie|race-sequential ...]" >&2
  exit 2
fi
exp="$1"; k="$2"; shift 2
configs=("$@"); [ ${#configs[@]} -gt 0 ] || configs=(default random adas)
[ -f "$exp" ] || { echo "search-quality: no experiment file $exp" >&2; exit 2; }
cargo build --release --locked --quiet
bin=target/release/metaforge
out=runs/search-quality; mkdir -p "$out"
name="$(basename "$exp" .toml)"
dir="$(dirname "$exp")"
start=$SECONDS

for cfg in "${configs[@]}"; do
  for seed in $(seq 1 "$k"); do
    db="$out/$name-$cfg-$seed.db"
    if [ -f "$db" ] && "$bin" status "$db" --json 2>/dev/null | python3 -c 'import json,sys; sys.exit(0 if json.load(sys.stdin)["finished"] else 1)'; then
      echo "search-quality: $db finished earlier, reused" >&2
      continue
    fi
    rm -f "$db" "$db-wal" "$db-shm"
    # The variant lives beside the experiment so its relative paths still resolve.
    variant="$dir/.search-quality-$name-$cfg-$seed.toml"
    python3 scripts/experiment_variant.py "$exp" "$cfg" "$seed" > "$variant"
    echo "search-quality: $cfg, search seed $seed ($((SECONDS - start)) s so far)" >&2
    if ! "$bin" run "$variant" --db "$db" --quiet >/dev/null; then
      rm -f "$variant"
      echo "search-quality: the $cfg run with seed $seed failed" >&2
      exit 1
    fi
    rm -f "$variant"
  done
done

python3 - "$out" "$name" "$k" "$bin" "${configs[@]}" <<'EOF'
import json, math, statistics, subprocess, sys
out, name, k, binary, *configs = sys.argv[1:]
k = int(k)
# Two-sided 95% t quantiles by degrees of freedom (small K).
T = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}
print(f"{'config':<9} {'K':>2}  {'mean gain':>10}  {'95% CI':>18}  {'significant wins':>17}  gains per seed")
per_config = {}
for cfg in configs:
    gains, wins = [], 0
    for seed in range(1, k + 1):
        status = json.loads(subprocess.run([binary, "status", f"{out}/{name}-{cfg}-{seed}.db", "--json"],
                                           check=True, capture_output=True, text=True).stdout)
        c = status.get("test_comparison")
        # No discovered agent tested means nothing beat the seeds on validation: gain 0.
        gains.append(c["paired"]["diff"] if c else 0.0)
        wins += bool(c and c["paired"]["p_two_sided"] < 0.05 and c["paired"]["diff"] > 0)
    m = statistics.fmean(gains)
    half = T.get(k - 1, 1.96) * statistics.stdev(gains) / math.sqrt(k) if k > 1 else float("nan")
    print(f"{cfg:<9} {k:>2}  {m:>+10.3f}  [{m - half:+.3f}, {m + half:+.3f}]  {wins:>13} / {k}  "
          + " ".join(f"{g:+.3f}" for g in gains))
    per_config[cfg] = gains

# Each configuration against random search: the difference in mean gain with a Welch 95%
# interval (the seeds of two configurations are independent runs, not pairs), and a one-sided
# exact permutation p-value (small K: no normal approximation).
import itertools
base = per_config.get("random")
if base is not None and k > 1:
    for cfg, gains in per_config.items():
        if cfg == "random":
            continue
        d = statistics.fmean(gains) - statistics.fmean(base)
        va, vb = statistics.variance(gains) / k, statistics.variance(base) / k
        se = math.sqrt(va + vb)
        df = (va + vb) ** 2 / ((va ** 2 + vb ** 2) / (k - 1)) if se > 0 else 1
        half = T.get(max(1, min(9, int(df))), 1.96) * se
        pooled = gains + base
        hits = total = 0
        for idx in itertools.combinations(range(2 * k), k):
            a = [pooled[i] for i in idx]
            b = [pooled[i] for i in range(2 * k) if i not in idx]
            total += 1
            hits += statistics.fmean(a) - statistics.fmean(b) >= d - 1e-12
        print(f"{cfg} - random: {d:+.3f} [{d - half:+.3f}, {d + half:+.3f}], permutation p (one-sided) = {hits / total:.3f}")
EOF
echo "search-quality: $((SECONDS - start)) s in all" >&2
