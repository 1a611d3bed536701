"""`tuneloop train` and `tuneloop merge`: rich output, clear one-line errors for bad input (no tracebacks)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

console = Console()


def _fail(message: str, code: int = 2) -> None:
    from rich.markup import escape

    console.print(f"[red]error[/]: {escape(message)}")  # a child's log lines hold brackets ([rank0]: ...)
    raise typer.Exit(code)


def _human_bytes(value: int | None) -> str:
    if not value:
        return "-"
    return f"{value / 2**30:.2f} GiB" if value >= 2**30 else f"{value / 2**20:.0f} MiB"


def train_command(
    dataset: str = typer.Option(..., "--dataset", help="Dataset version id under HOME/datasets, or its directory."),
    config: Path | None = typer.Option(None, "--config", help="YAML file of TrainConfig fields."),
    overrides: list[str] | None = typer.Option(None, "--set", help="Override a field: key=value (repeatable)."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
    processes: int | None = typer.Option(
        None, "--processes", help="Train in N processes (accelerate launch: one per GPU, gloo on CPU); the effective "
                                  "batch is N x batch_size x grad_accumulation. Sets the config's `processes`."),
) -> None:
    """Fine-tune the base model on a dataset version (QLoRA on CUDA, LoRA on CPU) and publish the run."""
    import dataclasses

    from core.clock import utcnow
    from core.settings import load_settings
    from trainer.config import ConfigError, load_train_config
    from trainer.data import DatasetError, resolve_dataset_dir
    from trainer.launch import TrainingProcessError, train_in_subprocess, uses_launcher
    from trainer.rundir import RunInProgressError
    from trainer.train import plan, train

    try:
        settings = load_settings()
        extra = [f"processes={processes}"] if processes is not None else []  # the option wins over file and --set
        train_config = load_train_config(config, [*(overrides or []), *extra])
        dataset_dir = resolve_dataset_dir(dataset, settings.home)
        train_config = dataclasses.replace(  # the settings fill what the file and --set leave empty
            train_config, base_model=train_config.base_model or settings.resolved_base_model,
            output_dir=train_config.output_dir or str(settings.home / "runs"))
        decided = plan(train_config, dataset_dir)
        version, resolved = decided.dataset, decided.resolved
    except (ConfigError, DatasetError) as err:
        _fail(str(err))
    console.print(
        f"training on [bold]{version.id}[/], {decided.method.method} ({decided.method.reason}): "
        f"{len(version.train)} train / {len(version.eval)} eval - "
        f"{resolved.device}, {'QLoRA nf4' if resolved.quantization == 'nf4' else 'LoRA'}, "
        f"lr {resolved.learning_rate:g}, {resolved.epochs:g} epochs"
    )
    try:
        if uses_launcher(train_config):  # the ranks run under `accelerate launch`; a single process stays here
            log_path = settings.home / "logs" / f"train-{utcnow():%Y%m%d-%H%M%S}-{version.id}.log"
            count = train_config.processes
            console.print(f"{count} process{'es' if count > 1 else ''} through accelerate launch; log: {log_path}")
            result = train_in_subprocess(train_config, dataset_dir, timeout_s=None, log_path=log_path)
        else:
            result = train(train_config, dataset_dir, progress=not quiet)
    except (RunInProgressError, TrainingProcessError) as err:
        _fail(str(err), code=1)
    meta = result.metadata
    table = Table("train loss", "eval loss", "steps", "tokens/s", "peak memory", "wall", title=result.run_id)
    peak = meta["throughput"].get("peak_cuda_allocated_bytes") or meta["throughput"].get("peak_rss_bytes")
    table.add_row(
        f"{result.final_train_loss:.4f}" if result.final_train_loss is not None else "-",
        f"{result.final_eval_loss:.4f}" if result.final_eval_loss is not None else "-",
        str(meta["global_step"]),
        f"{meta['throughput']['tokens_per_second']:,.0f}" if meta["throughput"]["tokens_per_second"] else "-",
        _human_bytes(peak),
        f"{meta['wall_seconds']:.0f} s",
    )
    console.print(table)
    console.print(f"adapter: {result.adapter_dir}")


def merge_command(
    run: str = typer.Argument(..., help="Run id under HOME/runs, or a run or adapter directory."),
    out: Path | None = typer.Option(None, "--out", help="Merged checkpoint directory; default HOME/models/RUN."),
    adapter_only: bool = typer.Option(False, "--adapter-only", help="Export just the adapter (for vLLM)."),
) -> None:
    """Merge a run's adapter into a self-contained checkpoint, refused unless its logits match the adapter's."""
    from core.settings import load_settings
    from trainer.merge import MergeMismatchError, export_adapter, merge_adapter

    settings = load_settings()
    source = Path(run) if Path(run).exists() else settings.home / "runs" / run
    if not source.exists():
        _fail(f"no run {run!r} (looked for {source})")
    suffix = "-adapter" if adapter_only else ""
    target = out or settings.home / "models" / f"{source.resolve().name}{suffix}"
    try:
        if adapter_only:
            path = export_adapter(source, target)
            console.print(f"[green]adapter exported[/] to {path}")
            return
        path = merge_adapter(source, target)
    except (MergeMismatchError, FileExistsError, FileNotFoundError) as err:
        _fail(str(err), code=1)
    import json

    check = json.loads((path / "merge.json").read_text())["equivalence"]
    console.print(
        f"[green]merged[/] into {path}: max |logit diff| {check['max_abs_diff']:.2e} over "
        f"{check['positions']} positions, top-1 agreement {check['top1_agreement']:.2%}"
    )
