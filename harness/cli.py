"""Command line: ``python run.py [OPTIONS]`` plans, runs and tabulates a benchmark (see ``--help``)."""
from __future__ import annotations

import os
import re
import sys
import tempfile
import time
from pathlib import Path

import click

from . import registry
from .backbones import describe_backbones
from .errors import UserError
from .results import STATUS_OK, load_records, summary_table, write_csv
from .runner import describe_plan, load_tasks, plan_runs, resolve_device, run_all


def _split(value: str) -> list[str]:
    """Comma-separated items; a bracketed list such as ``[8,8,4]`` stays one item."""
    return [part.strip() for part in re.findall(r"\[[^\]]*\]|[^,\[\]]+", value) if part.strip()]


def _parse_seeds(ctx: click.Context, param: click.Parameter, value: str) -> list[int]:
    try:
        seeds = [int(part) for part in _split(value)]
    except ValueError:
        raise click.BadParameter(f"'{value}' is not a comma-separated list of integers, e.g. 0,1,2") from None
    if not seeds or min(seeds) < 0:
        raise click.BadParameter("give one or more non-negative integers, e.g. 0,1,2")
    return seeds


def _check_writable(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out):
            pass
    except OSError as exc:
        raise UserError(f"output folder {out} is not writable ({exc.strerror or exc}); choose another with --out")


def _print_listing() -> None:
    click.echo("Methods:")
    for name, spec in registry.methods().items():
        click.echo(f"  {name:<14} {spec.description}{'  [compresses]' if spec.compresses else ''}")
    click.echo("Tasks:")
    for name, spec in registry.tasks().items():
        click.echo(f"  {name:<22} [{spec.suite}/{spec.group}] {spec.description}")
    click.echo("Task groups:")
    for name, members in registry.task_selectors().items():
        click.echo(f"  {name:<22} {', '.join(members)}")
    click.echo("Backbones (any timm VisionTransformer name also works):")
    for name, description in describe_backbones().items():
        click.echo(f"  {name:<36} {description}")


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.option("--methods", default="full_ft,lora", show_default=True,
              help="Comma-separated methods (see --list).")
@click.option("--tasks", default="offline", show_default=True,
              help="Comma-separated tasks or task groups, e.g. offline, vtab, vtab-natural (see --list).")
@click.option("--backbone", default=None, help="timm backbone name.  [default: each task's default]")
@click.option("--compression", default=None,
              help="Comma-separated levels for methods that compress: none, low, high, a factor such as 2.5x, or "
                   "a bracketed per-block list such as [8,8,4,...]; other methods always run uncompressed.  "
                   "[default: low,high]")
@click.option("--epochs", type=click.IntRange(min=1), default=None,
              help="Training epochs.  [default: the task's: 100 for VTAB-1k as in PYRA, fewer offline]")
@click.option("--warmup-epochs", type=click.IntRange(min=0), default=None,
              help="Linear warm-up epochs.  [default: a tenth of --epochs]")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Peak learning rate of AdamW.  [default: 1e-3]")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True, help="Training batch.")
@click.option("--seeds", default="0", show_default=True, callback=_parse_seeds,
              help="Comma-separated seeds; each gives one run per method and task.")
@click.option("--bench-batch", type=click.IntRange(min=1), default=64, show_default=True,
              help="Batch size of the inference throughput measurement.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--pretrained/--no-pretrained", default=None,
              help="Load backbone weights.  [default: when the backbone has weights]")
@click.option("--data-root", type=click.Path(path_type=Path), envvar="ADAPTBENCH_DATA", default=None,
              help="Folder holding on-disk datasets (VTAB-1k); also $ADAPTBENCH_DATA.")
@click.option("--out", type=click.Path(path_type=Path), default=Path("runs"), show_default=True,
              help="Folder for the per-run JSON files and results.csv.")
@click.option("--plugins", multiple=True,
              help="Plugin .py file or module to load (repeatable or comma-separated).")
@click.option("--force", is_flag=True, help="Rerun configs that already have a finished result file.")
@click.option("--list", "list_only", is_flag=True, help="List methods, tasks, task groups and backbones, then exit.")
@click.option("--dry-run", is_flag=True, help="Print the run plan without running it.")
def main(**options: object) -> None:
    """Adapt pretrained ViTs with each method on each task, then measure accuracy, speed, memory and FLOPs.

    With no options it runs the offline default: full fine-tuning and LoRA on the embedded task suite,
    on the CPU in a few minutes. Each run writes one JSON file to --out; results.csv aggregates them.
    Exit code: 0 all runs ok, 1 some run failed (recorded with its reason), 2 bad input.
    """
    try:
        sys.exit(_main(**options))
    except UserError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)


def _main(methods: str, tasks: str, backbone: str | None, compression: str, epochs: int | None,
          warmup_epochs: int | None, lr: float | None, batch_size: int, seeds: list[int], bench_batch: int,
          device: str, pretrained: bool | None, data_root: Path | None, out: Path, plugins: tuple[str, ...],
          force: bool, list_only: bool, dry_run: bool) -> int:
    registry.load_plugins([source for value in plugins for source in _split(value)])
    if list_only:
        _print_listing()
        return 0
    method_names = _split(methods)
    for name in method_names:
        registry.get_method(name)
    task_names = registry.expand_tasks(_split(tasks))
    if not method_names or not task_names:
        raise UserError("--methods and --tasks need at least one name each; see --list")
    resolved_device = resolve_device(device)
    if not dry_run:
        _check_writable(out)
    started = time.perf_counter()
    click.echo(f"Preparing {len(task_names)} task(s): {', '.join(task_names)}")
    task_data = load_tasks(task_names, data_root)
    overrides = {"epochs": epochs, "warmup_epochs": warmup_epochs, "lr": lr, "batch_size": batch_size}
    levels = None if compression is None else (_split(compression) or ["none"])
    configs = plan_runs(method_names, task_data, seeds=seeds, compressions=levels,
                        backbone=backbone, pretrained=pretrained, device=resolved_device,
                        train_overrides=overrides, bench_batch=bench_batch)
    if dry_run:
        click.echo("\n".join(describe_plan(configs)))
        return 0
    click.echo(f"Running {len(configs)} run(s) on {resolved_device} with {os.cpu_count()} CPU core(s); "
               f"results -> {out}/")
    records = run_all(configs, task_data, out, resolved_device, force=force, log=click.echo)
    csv_path = write_csv(out, load_records(out))
    click.echo("\n" + summary_table(records) + "\n")
    failed = sum(record["status"] != STATUS_OK for record in records)
    click.echo(f"{len(records) - failed} ok, {failed} failed in {time.perf_counter() - started:.0f}s. "
               f"Per-run files: {out}/*.json; all runs: {csv_path}")
    return 1 if failed else 0
