"""Peak memory and time of `curate` over a store of N synthetic interactions (SQLite).

    .venv/bin/python benchmarks/dedup/bench_memory.py --rows 100000 1000000 [--work DIR]

For each N: a child process writes N interactions (and their feedback) with executemany, then a fresh
child process runs `feedback.curate.curate` with the default policy (lengths counted with the demo
model's tokenizer) and reports its peak RSS (getrusage), so each figure is one curation alone.
Traffic mix: 70% unrated; 18% thumbs up; 5% down with a correction; 3% down without; 1% up on an
upstream error; 1% up on a truncated answer; 1% two users disagreeing; 1% completions. 3% of the
rated conversations repeat an earlier one verbatim and 3% with a word or two changed; one in twenty
carries an e-mail address or a phone number.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import sqlite3
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

ALIAS = "support"
T0 = datetime(2026, 1, 1, tzinfo=UTC)
CHUNK = 20_000
INTERACTION_COLUMNS = (
    "id, response_id, api_key_id, model_alias, served_version, endpoint, stream, end_user, request_body, "
    "response_body, response_text, finish_reason, status, http_status, error, latency_ms, ttft_ms, "
    "prompt_tokens, completion_tokens, total_tokens, idempotency_key, created_at, completed_at"
)
FEEDBACK_COLUMNS = (
    "interaction_id, rating, score, comment, correction, end_user, api_key_id, created_at, updated_at"
)


def _stamp(value: datetime) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S.%f")  # how SQLAlchemy stores DateTime in SQLite


def generate(db_path: Path, rows: int, seed: int = 0) -> None:
    from corpus import CorpusMaker

    from core.db import migrate

    migrate(f"sqlite:///{db_path}")
    maker = CorpusMaker(seed)
    rng = maker.rng
    recent: list[tuple[str, str]] = []
    conn = sqlite3.connect(db_path)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=OFF")  # a benchmark fixture, not the store's durability
    interactions, feedback = [], []
    for n in range(rows):
        created = T0 + timedelta(seconds=n * 0.5)
        roll = rng.random()
        question, answer = maker.sentence(rng.randint(8, 40)), maker.sentence(rng.randint(40, 160))
        if roll >= 0.70 and recent and rng.random() < 0.06:
            question, answer = rng.choice(recent)
            if rng.random() < 0.5:
                answer = answer + " " + maker.words(1)[0]
        if rng.random() < 0.05:
            question += rng.choice([" mail me at jo.doe@example.com", " call +1 (555) 010-7788"])
        if roll >= 0.70 and len(recent) < 5000:
            recent.append((question, answer))
        endpoint, status, finish = "chat.completions", "ok", "stop"
        body: dict = {"model": ALIAS, "messages": [{"role": "system", "content": maker.system_prompts[n % 5]},
                                                   {"role": "user", "content": question}]}
        votes: list[tuple[str, str | None]] = []
        if roll < 0.70:
            pass  # unrated, like most traffic
        elif roll < 0.88:
            votes = [("up", None)]
        elif roll < 0.93:
            votes = [("down", maker.sentence(rng.randint(20, 80)))]
        elif roll < 0.96:
            votes = [("down", None)]
        elif roll < 0.97:
            votes, status, answer = [("up", None)], "upstream_error", ""
        elif roll < 0.98:
            votes, finish = [("up", None)], "length"
        elif roll < 0.99:
            votes = [("up", None), ("down", None)]
        else:
            votes, endpoint, body = [("up", None)], "completions", {"model": ALIAS, "prompt": question}
        interaction_id = f"req-{n:08d}"
        interactions.append((
            interaction_id, f"chatcmpl-{n}", "key_bench", ALIAS, "v1", endpoint, 0, None, json.dumps(body), None,
            answer, finish, status, 200, None, 120.0, 15.0, 40, 90, 130, None, _stamp(created), _stamp(created),
        ))
        for user, (rating, correction) in enumerate(votes):
            when = _stamp(created + timedelta(seconds=20))
            feedback.append((interaction_id, rating, None, None, correction, f"u{user}", "key_bench", when, when))
        if len(interactions) >= CHUNK or n == rows - 1:
            conn.executemany(f"INSERT INTO interactions ({INTERACTION_COLUMNS}) VALUES ({', '.join('?' * 23)})",
                             interactions)
            conn.executemany(f"INSERT INTO feedback ({FEEDBACK_COLUMNS}) VALUES ({', '.join('?' * 9)})", feedback)
            conn.commit()
            interactions, feedback = [], []
    conn.close()


def run_curate(db_path: Path, home: Path) -> dict:
    from transformers import AutoTokenizer  # noqa: F401  (the length filter's import, ~220 MB with torch)

    from core.db import make_engine
    from feedback.curate import curate
    from feedback.policy import CurationPolicy

    baseline_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    engine = make_engine(f"sqlite:///{db_path}")
    started = time.perf_counter()
    result = curate(engine, home, CurationPolicy(), ALIAS, until=T0 + timedelta(days=365))
    seconds = time.perf_counter() - started
    return {
        "seconds": seconds, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_before_mb": baseline_mb, "n_train": result.n_train, "n_eval": result.n_eval,
        "rated": result.counts["interactions"]["rated"], "counts": result.counts,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--work", type=Path, default=Path("var/bench-memory"))
    parser.add_argument("--child", choices=["generate", "curate"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    work = args.work.resolve()
    if args.child:
        db_path = work / f"rows-{args.rows[0]}.db"
        if args.child == "generate":
            generate(db_path, args.rows[0])
        else:
            print(json.dumps(run_curate(db_path, work / f"home-{args.rows[0]}")))
        return

    work.mkdir(parents=True, exist_ok=True)
    results = []
    for rows in args.rows:
        home = work / f"home-{rows}"
        if not (home / "models" / "demo-base" / "tokenizer.json").exists():
            # In a child: this process stays small, as Linux hands a parent's peak RSS down to its children.
            target = str(home / "models" / "demo-base")
            build = f"from trainer.demo_model import build_demo_model; build_demo_model({target!r})"
            subprocess.run([sys.executable, "-c", build], check=True, capture_output=True)
        db_path = work / f"rows-{rows}.db"
        if not db_path.exists():
            started = time.perf_counter()
            subprocess.run([sys.executable, __file__, "--child", "generate", "--rows", str(rows), "--work", str(work)],
                           check=True)
            print(f"generated {rows:,} interactions in {time.perf_counter() - started:.0f} s", flush=True)
        # Start from no earlier version, so every run measures the same work.
        shutil.rmtree(home / "datasets", ignore_errors=True)
        with sqlite3.connect(db_path) as conn:
            conn.execute("DELETE FROM datasets")
        out = subprocess.run([sys.executable, __file__, "--child", "curate", "--rows", str(rows), "--work", str(work)],
                             check=True, capture_output=True, text=True)
        result = json.loads(out.stdout.strip().splitlines()[-1])
        result["rows"], result["db_mb"] = rows, db_path.stat().st_size / 2**20
        results.append(result)
        print(json.dumps(result), flush=True)

    print("| interactions | rated | kept (train/eval) | curate wall | interactions/s | peak RSS | RSS after imports |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['rows']:,} | {r['rated']:,} | {r['n_train']:,} / {r['n_eval']:,} | {r['seconds']:.0f} s | "
              f"{r['rows'] / r['seconds']:,.0f} | {r['peak_rss_mb']:,.0f} MB | {r['rss_before_mb']:,.0f} MB |")


if __name__ == "__main__":
    main()
