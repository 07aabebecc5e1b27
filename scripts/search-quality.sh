#!/usr/bin/env bash
# Search quality: runs experiments under K search seeds in several configurations with the
# same step plan and token budget, and prints each one's mean held-out gain of the best
# discovered agent over the best seed, with a 95% interval over the seeds; then each
# configuration's difference from random search, with its interval and a permutation p-value,
# per experiment and, given several, pooled over them (scripts/search_quality.py says how).
#
#   scripts/search-quality.sh EXP.toml [EXP.toml...] K|FROM-TO [CONFIG...]
#
# K is a number of search seeds (1 to K) or a range FROM-TO of them, which adds seeds to a
# table whose first ones ran elsewhere (scripts/search_quality.py pools recorded gains with it).
#
# Configurations (all but the racing rules by default):
#   default  the experiment as written (Thompson credit over proposers, its parent selection)
#   random   the random-search baseline: uniform parent selection, fixed proposer weights
#   adas     ADAS-style: the meta-model rewrites whole programs with the archive in its prompt
#            (an embedded meta-model is given a window that holds them)
#   race-ahead, race-first-tie, race-sequential
#            the experiment under that racing rule (`evaluation.race_rule`)
#
# Archives go to runs/search-quality/; a rerun reuses finished ones (delete them to redo), so
# the table of experiments run apart is printed by naming them all again.
#
# An experiment with no token or cost cap replays, in each run, the model calls the runs of it
# before made (`--cache-from` the last finished archive, which holds all of theirs): a request
# is answered as it was, sampled ones included (their seed is part of the request); sent
# again it could differ only where batched decoding rounds differently. The seed agents or
# designs are evaluated alike in every run, and that is most of a memory experiment's hours.
# Under a cap a replayed call would cost nothing and let a run go further than its rivals, so
# there each run sends its own.
set -euo pipefail
cd "$(dirname "$0")/.."
usage="usage: scripts/search-quality.sh EXP.toml [EXP.toml...] K|FROM-TO [default|random|adas|race-ahead|race-first-tie|race-sequential ...]"
exps=()
while [ $# -gt 0 ] && [[ "$1" == *.toml ]]; do exps+=("$1"); shift; done
if [ ${#exps[@]} -eq 0 ] || [ $# -lt 1 ] || ! [[ "$1" =~ ^[0-9]+(-[0-9]+)?$ ]]; then
  echo "$usage" >&2
  exit 2
fi
k="$1"; shift
if [[ "$k" == *-* ]]; then first="${k%-*}"; last="${k#*-}"; else first=1; last="$k"; fi
if [ "$first" -lt 1 ] || [ "$last" -lt "$first" ]; then
  echo "search-quality: no search seeds in $k; fix: give K >= 1 or a range FROM-TO with 1 <= FROM <= TO" >&2
  exit 2
fi
configs=("$@"); [ ${#configs[@]} -gt 0 ] || configs=(default random adas)
for exp in "${exps[@]}"; do
  [ -f "$exp" ] || { echo "search-quality: no experiment file $exp" >&2; exit 2; }
done
cargo build --release --locked --quiet
bin=target/release/metaforge
out=runs/search-quality; mkdir -p "$out"
# A variant left in the experiments' folder would also make the next cargo build rebuild.
variant=""
trap '[ -z "$variant" ] || rm -f "$variant"' EXIT
trap 'exit 130' INT TERM
start=$SECONDS
names=()
for exp in "${exps[@]}"; do
  name="$(basename "$exp" .toml)"
  names+=("$name")
  dir="$(dirname "$exp")"
  cache=""
  capped=$(python3 scripts/experiment_variant.py "$exp" --capped)
  for cfg in "${configs[@]}"; do
    for seed in $(seq "$first" "$last"); do
      db="$out/$name-$cfg-$seed.db"
      if [ -f "$db" ] && "$bin" status "$db" --json 2>/dev/null | python3 -c 'import json,sys; sys.exit(0 if json.load(sys.stdin)["finished"] else 1)'; then
        echo "search-quality: $db finished earlier, reused" >&2
        [ "$capped" = yes ] || cache="$db"
        continue
      fi
      rm -f "$db" "$db-wal" "$db-shm"
      # The variant lives beside the experiment so its relative paths still resolve.
      variant="$dir/.search-quality-$name-$cfg-$seed.toml"
      python3 scripts/experiment_variant.py "$exp" "$cfg" "$seed" > "$variant"
      echo "search-quality: $name, $cfg, search seed $seed ($((SECONDS - start)) s so far)" >&2
      replay=(); [ -z "$cache" ] || replay=(--cache-from "$cache")
      if ! "$bin" run "$variant" --db "$db" "${replay[@]}" --quiet >/dev/null; then
        rm -f "$variant"
        echo "search-quality: the $cfg run of $name with seed $seed failed" >&2
        exit 1
      fi
      rm -f "$variant"
      [ "$capped" = yes ] || cache="$db"
    done
  done
done

python3 scripts/search_quality.py "$bin" "$out" "$k" "$(IFS=,; echo "${configs[*]}")" "${names[@]}"
echo "search-quality: $((SECONDS - start)) s in all" >&2
