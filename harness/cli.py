"""Command line: ``python run.py [OPTIONS]`` plans, runs and tabulates a benchmark (see ``--help``);
``python run.py report [RUNS]...`` analyses finished runs (see ``report --help``)."""
from __future__ import annotations

import dataclasses
import math
import os
import re
import shlex
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import click
import torch

from . import presets, registry
from .backbones import describe_backbones
from .claims import Claims
from .errors import UserError
from .vocabulary import NONE, named_levels
from .measure import MeasureConfig, timing_presets
from .config import RunConfig
from .data import TaskData, cache_dir
from .estimate import EstimateUnavailable, describe, estimate
from .plan import NORMALIZATIONS, default_compression, describe_plan, load_tasks, plan_runs, resolve_device
from .results import summary_table
from .progress import SweepProgress
from .runner import WAIT_SECONDS, LocalExecutor, RunOptions, inline_executor, run_all, to_run, triage, worker_job
from .slurm import CLUSTERS
from .store import STATUS_OK, STATUS_RUNNING, RunStore, attempt_outcome, written_by
from .train import LR_SCHEDULES, SELECTIONS, TrainConfig

if TYPE_CHECKING:
    from .report import SuiteReport


def _finite(value: float | None, name: str) -> float | None:
    if value is not None and not math.isfinite(value):
        raise click.BadParameter(f"{value} is not a finite number", param_hint=name)
    return value


def _split(value: str) -> list[str]:
    """Comma-separated items, each once, in order; a bracketed list such as ``[8,8,4]`` stays one item."""
    return list(dict.fromkeys(part.strip() for part in re.findall(r"\[[^\]]*\]|[^,\[\]]+", value) if part.strip()))


def _parse_ints(value: str | None, name: str, minimum: int = 1, maximum: int | None = None) -> tuple[int, ...] | None:
    if value is None:
        return None
    try:
        numbers = tuple(dict.fromkeys(int(part) for part in _split(value)))  # 0,00: one seed, as 0,0
    except ValueError:
        raise click.BadParameter(f"'{value}' is not a comma-separated list of integers", param_hint=name) from None
    if not numbers or min(numbers) < minimum or (maximum is not None and max(numbers) > maximum):
        bounds = f"from {minimum} to {maximum}" if maximum is not None else f"of at least {minimum}"
        raise click.BadParameter(f"give one or more integers {bounds}", param_hint=name)
    return numbers


def _check_writable(folder: Path, what: str, fix: str) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise UserError(f"{what} {folder} is not writable ({exc.strerror or exc}); {fix}") from None


def _check_claims_lock(folder: Path) -> None:
    """A run folder another user made: its lock file, which every sweep writes to claim a run, is theirs; with
    their umask 022 the folder is group-writable and the lock is not, and the first claim would fail."""
    lock = Claims(folder).lock
    if lock.exists() and not os.access(lock, os.W_OK):
        raise UserError(f"{lock}, which every sweep in {folder} writes to claim its runs, is not writable by you; "
                        f"ask its owner to run chmod g+w {lock} (or to share the folder under umask 002), or choose "
                        f"another --out")


def _print_tasks(tasks: dict[str, TaskData], selection: str) -> None:
    """Which folder and list files each task on disk uses (those a run with ``selection`` reads), and why a task
    cannot run."""
    for name, task in tasks.items():
        files = task.identity.get("files")
        if task.problem is not None:
            click.echo(f"  {name}: cannot run, its runs are recorded as failed: {task.problem}")
        elif files:
            used = [files[split] for split in task.used_splits(selection) if split in files]
            click.echo(f"  {name}: {task.identity['folder']} ({', '.join(used)})")


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


CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 110}
_ARGV = "adaptbench.argv"


class DefaultGroup(click.Group):
    """A group whose default command takes every command line that does not start with a subcommand's name,
    so ``python run.py --methods lora`` (and plain ``python run.py``, and ``--help``) stay the run command
    they always were, while ``python run.py report`` reaches the report."""

    def __init__(self, *args: object, default: str, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.default = default

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        ctx.meta[_ARGV] = list(args)  # the report records its own command line in provenance.json
        if not args or args[0] not in self.commands:
            args = [self.default, *args]
        return super().parse_args(ctx, args)


class RunCommand(click.Command):
    """The run command, whose usage line says that its name can be left out."""

    def format_usage(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        formatter.write_usage(ctx.find_root().info_name, "[run] [OPTIONS]")


@click.group(cls=DefaultGroup, default="run", context_settings=CONTEXT)
def main() -> None:
    """adaptbench: run the benchmark (the default command) or report on finished runs."""


def _exit_with(code: Callable[[], int]) -> None:
    """Exit with the command's code; bad input is one line on stderr and exit code 2."""
    try:
        sys.exit(code())
    except UserError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)


RUN_EPILOG = """\b
Other commands:
  report [RUNS]...  leaderboard, Pareto plots and the Adverse Compression test of finished runs
                    (python run.py report --help)
  status [RUNS]...  what the runs of a folder are doing: done, running, queued, failed (python run.py status --help)
  migrate RUNS...   upgrade run files written by an older adaptbench (python run.py migrate --help)"""


DEFAULTS = presets.load("defaults")
# harness.report.MATCH_TOLERANCE, not imported here: pandas loads only for the report (a test checks they agree).
MATCH_TOLERANCE = 0.10


@main.command("run", cls=RunCommand, context_settings=CONTEXT, epilog=RUN_EPILOG)
@click.option("--preset", type=click.Choice([*presets.paper_preset_names(), "list"]), default=None,
              help="A paper's whole set-up (harness/presets/paper/): methods, tasks, levels, backbone, recipe, "
                   "normalisation, timing; any option given explicitly overrides it. The closing report sets the "
                   "board beside the paper's published figures where the preset lists them (report --paper). "
                   "'list' shows them.")
@click.option("--methods", default=",".join(DEFAULTS["methods"]), show_default=True,
              help="Comma-separated methods (see --list).")
@click.option("--tasks", default=",".join(DEFAULTS["tasks"]), show_default=True,
              help="Comma-separated tasks or task groups, e.g. offline, vtab, vtab-natural (see --list).")
@click.option("--backbone", default=None, help="timm backbone name.  [default: each task's default]")
@click.option("--compression", default=None,
              help=f"Comma-separated levels for methods that compress: {', '.join((NONE, *named_levels()))}, a "
                   f"factor such as 2.5x, or a bracketed per-block list such as [8,8,4,...]; other methods always "
                   f"run uncompressed.  [default: {','.join(default_compression())}]")
@click.option("--epochs", type=click.IntRange(min=1), default=None,
              help="Training epochs.  [default: the task's: 100 for VTAB-1k as in PYRA, fewer offline]")
@click.option("--warmup-epochs", type=click.IntRange(min=0), default=None,
              help="Linear warm-up epochs.  [default: a tenth of --epochs]")
@click.option("--lr-schedule", type=click.Choice(LR_SCHEDULES), default="per_step", show_default=True,
              help="per_step: linear warm-up, then cosine to the minimum lr, set every step. per_epoch_lagged: the "
                   "PYRA code's curve, timm 0.5.4's cosine stepped after each epoch (one epoch behind, peaking "
                   "below --lr; the paper presets' choice).")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True, max=math.inf, max_open=True), default=None,
              callback=lambda ctx, param, value: _finite(value, "--lr"),
              help="Peak learning rate of AdamW.  [default: the task's for what the method trains (the offline "
                   "suite: 1e-3 for full fine-tuning, 1e-2 for adapters), else 1e-3]")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True, help="Training batch.")
@click.option("--train-precision", type=click.Choice(["fp32", "bf16", "fp16"]), default="fp32", show_default=True,
              help="Training and evaluation precision: fp32 (the paper's), or autocast in bf16 or fp16 (fp16 with a "
                   "gradient scaler). Recorded in every row; the report notes runs not trained in fp32.")
@click.option("--tf32/--no-tf32", default=False, show_default=True, help="CUDA: TF32 matmuls and convolutions.")
@click.option("--cudnn-benchmark", is_flag=True, help="CUDA: let cuDNN pick the fastest kernels (cudnn.benchmark).")
@click.option("--compile-train", is_flag=True, help="torch.compile the model for training.")
@click.option("--no-save-adapters", is_flag=True,
              help="Do not save each run's trainable parameters (<out>/<run>.adapter.safetensors).")
@click.option("--selection", type=click.Choice(SELECTIONS), default="test", show_default=True,
              help="What picks the reported evaluation: test (PYRA's protocol: train on train + val, report the "
                   "best test evaluation and the last) or val (train on train only, evaluate val and test each "
                   "time, also record test_acc_at_best_val: a number no test accuracy helped to choose; needs "
                   "VTAB-1k's train800.txt and val200.txt).")
@click.option("--seeds", default="0", show_default=True,
              callback=lambda ctx, param, value: list(_parse_ints(value, "--seeds", minimum=0, maximum=2 ** 32 - 1)),
              help="Comma-separated seeds; each gives one run per method and task.")
@click.option("--bench-batch", default=None, callback=lambda ctx, param, value: _parse_ints(value, "--bench-batch"),
              help="Comma-separated batch sizes of the inference throughput sweep; the first gives the headline "
                   "figure, 1 adds batch-1 latency.  [default: 64; 512 with --bench-preset pyra]")
@click.option("--bench-preset", type=click.Choice(timing_presets()), default="default", show_default=True,
              envvar="ADAPTBENCH_BENCH_PRESET",
              help="Timing protocol, a table of harness/presets/timing.toml: default (warm-up of at least 3 "
                   "iterations and 1 s, then 7 timed repeats of 2 iterations), pyra (batch 512, fp32, 10 s "
                   "warm-up, 10 s timed, as PYRA measured) or quick (default without the 1 s, for smoke runs; "
                   "figures can read low, and the report says so); also $ADAPTBENCH_BENCH_PRESET.")
@click.option("--amp", type=click.Choice(["bf16", "fp16"]), default=None,
              help="Measure inference under autocast at this precision.  [default: fp32, as PYRA]")
@click.option("--compile", "compile_model", is_flag=True, help="Measure inference of torch.compile(model).")
@click.option("--flops-breakdown", is_flag=True, help="Also record the GMACs of every block.")
@click.option("--profile", is_flag=True,
              help="Write torch.profiler traces of a few training and inference steps to <out>/<run>/profile "
                   "(open with: tensorboard --logdir <out>).")
@click.option("--max-spread", type=click.FloatRange(min=0), default=0.10, show_default=True,
              help=f"A throughput whose IQR / median exceeds this is measured again, up to {MeasureConfig.attempts} "
                   "times in all, then flagged as noisy (infer_noisy).")
@click.option("--refuse-noisy", is_flag=True,
              help=f"Fail a run whose throughput is still noisy after {MeasureConfig.attempts} measurements (its "
                   "figures are kept in its file) instead of flagging it.")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="CPU threads for torch (recorded in every row).  [default: torch's choice]")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--pretrained/--no-pretrained", default=None,
              help="Load backbone weights, found on this machine only (the Hugging Face or torch hub cache, the "
                   "shipped micro weights, or --weights), checked once before any run; a backbone without "
                   "weights needs --no-pretrained.  [default: pretrained]")
@click.option("--weights", type=click.Path(path_type=Path), default=None,
              help="A local weights file for the backbone: safetensors, or a timm/torch checkpoint.")
@click.option("--data-root", type=click.Path(path_type=Path), envvar="ADAPTBENCH_DATA", default=None,
              help="Folder holding on-disk datasets (VTAB-1k); also $ADAPTBENCH_DATA.")
@click.option("--img-size", type=click.IntRange(min=8), default=None,
              help="Image side the data is decoded or resized to.  [default: the task's own size for generated "
                   "data, the backbone's pretrained input size for data on disk]")
@click.option("--normalize", "normalization", type=click.Choice(NORMALIZATIONS), default="backbone",
              show_default=True,
              help="Mean/std of normalisation: the backbone's timm pretrained_cfg, or ImageNet's (what PYRA uses, "
                   "also for orig_in21k weights whose cfg says 0.5); a task that declares its own keeps it.")
@click.option("--check-images", is_flag=True,
              help="Before any run, decode every listed image once (not just check that it exists).")
@click.option("--out", type=click.Path(path_type=Path), default=Path("runs"), show_default=True,
              help="Folder for the per-run JSON files and results.csv.")
@click.option("--plugins", multiple=True,
              help="Plugin .py file or module to load (repeatable or comma-separated).")
@click.option("--executor", type=click.Choice(["inline", "local", "slurm"]), default="inline", show_default=True,
              help="Where runs execute: inline (this process, one after another), local (--jobs worker processes, "
                   "one run each; one GPU per worker on a GPU machine, the CPU threads split between them on a CPU "
                   "one) or slurm (one job array through submitit, see the --slurm-* options).")
@click.option("--jobs", type=click.IntRange(min=1), default=1, show_default=True,
              help="--executor local: runs at once.")
@click.option("--isolate", is_flag=True, help="Same as --executor local --jobs 1: each run in a fresh process.")
@click.option("--slurm-partition", default=None, help="--executor slurm: the partition.")
@click.option("--slurm-time", default="4:00:00", show_default=True,
              help="--executor slurm: each run's time limit in sbatch's --time formats (M, M:S, H:M:S, D-H, D-H:M, "
                   "D-H:M:S: 90:00 is 90 minutes, as in sbatch); at the limit the job is requeued "
                   "and goes on from its last checkpoint (--checkpoint-every).")
@click.option("--slurm-gpus-per-job", type=click.IntRange(min=0), default=1, show_default=True,
              help="--executor slurm: GPUs per run.")
@click.option("--slurm-cpus-per-job", type=click.IntRange(min=1), default=None, help="--executor slurm: CPUs per run.")
@click.option("--slurm-array-parallelism", type=click.IntRange(min=1), default=64, show_default=True,
              help="--executor slurm: array tasks running at once.")
@click.option("--slurm-account", default=None, help="--executor slurm: the account to charge.")
@click.option("--slurm-opt", multiple=True, metavar="KEY=VALUE",
              help="--executor slurm: any other sbatch option, e.g. constraint=h100 (repeatable).")
@click.option("--slurm-cluster", type=click.Choice(CLUSTERS), default="slurm", hidden=True,
              help="submitit's executor: local and debug run the jobs on this machine (tests).")
@click.option("--wait/--no-wait", default=False, show_default=True,
              help="--executor slurm: wait for the array to finish, then summarise; else return once submitted.")
@click.option("--checkpoint-every", type=click.IntRange(min=0), default=0, show_default=True,
              help="Save each run's training state every N epochs (0: never); a run started again goes on from its "
                   "last checkpoint and ends as an uninterrupted one would.")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Seconds a run may take, checked at every training step and once after its measurement; a run "
                   "that takes longer is recorded as failed and the sweep goes on.")
@click.option("--rerun-failed", is_flag=True,
              help="Run again the runs that failed (by default a sweep run again skips them, except those cut "
                   "short: died, interrupted, stopped, or whose data could not be read).")
@click.option("--force", is_flag=True, help="Rerun configs that already have a finished result file.")
@click.option("--report/--no-report", "write_report", default=DEFAULTS["report"], show_default=True,
              help="End with the report of --out (leaderboard, Pareto plots, Adverse Compression verdicts) in "
                   "<out>/report, as `python run.py report <out>` writes it.")
@click.option("--list", "list_only", is_flag=True, help="List methods, tasks, task groups and backbones, then exit.")
@click.option("--dry-run", is_flag=True, help="Print the run plan, with each run's estimated time, without running it.")
@click.option("--no-estimate", is_flag=True,
              help="Skip the cost estimate (it adapts and times a few steps of each distinct model of the plan).")
def run(**options: object) -> None:
    """Adapt pretrained ViTs with each method on each task, then measure accuracy, speed, memory and FLOPs.

    With no options it runs the offline default on the CPU in four to ten minutes: LoRA, tome and PYRA at high
    compression and the small model matched to them in speed, on the embedded task suite, then the report
    (leaderboard, Pareto plot, Adverse Compression verdict). Each run writes one JSON file to --out;
    results.csv aggregates them.
    Exit code: 0 all runs ok, 1 some run failed (recorded with its reason), 2 bad input.
    """
    _exit_with(lambda: _main(**_with_preset(options)))


# A preset value that goes with another option is dropped when that option is given: levels go with the methods
# they compress, warm-up and evaluation cadence with the epochs they divide (the planner derives them then), a
# distilled backbone's loss with that backbone.
PRESET_TIES = {"compression": "methods", "warmup_epochs": "epochs", "eval_every": "epochs",
               "distilled_loss": "backbone", "img_size": "backbone"}
# What a [train] value that is no option must be, by its TrainConfig field's type (a float may be written 0); a
# field of another type is left to TrainConfig's own checks.
SETTING_KINDS = {"int": int, "float": (int, float), "str": str, "bool": bool}


def read_paper_preset(name: str, command: click.Command) -> dict:
    """Paper preset ``name`` as its file says, checked against the run command: a ``description``, a ``[run]`` and
    a ``[train]`` table, each key an option of ``command`` or a :class:`TrainConfig` field, each value what that
    option or field takes (an option's value as its type converts it). Anything else is a :class:`UserError`
    naming the file and the key."""
    where = f"harness/presets/{presets.PAPER_DIR}/{name}.toml"
    preset = presets.load(f"{presets.PAPER_DIR}/{name}")
    if not isinstance(preset.get("description"), str) or not all(isinstance(preset.get(table), dict)
                                                                   for table in ("run", "train")):
        raise UserError(f"{where} needs a description (text), a [run] and a [train] table; see the shipped presets "
                        f"beside it")
    params = {param.name: param for param in command.params}
    fields = {field.name: field for field in dataclasses.fields(TrainConfig)}
    checked = {**preset, "run": {}, "train": {}}
    for table in ("run", "train"):
        for key, value in preset[table].items():
            checked[table][key] = _preset_value(where, f"[{table}] {key}", value, params.get(key), fields.get(key))
    settings = {key: value for key, value in {**checked["run"], **checked["train"]}.items()
                if key in fields and key not in params}
    try:
        TrainConfig(**settings)
    except ValueError as exc:
        raise UserError(f"{where}: {exc}") from None
    return checked


def _preset_value(where: str, label: str, value: object, param: click.Parameter | None,
                  field: dataclasses.Field | None) -> object:
    """``value`` of a preset's ``label`` as the option ``param`` (first) or the training setting ``field`` takes it."""
    if param is not None:
        text = ",".join(map(str, value)) if isinstance(value, list) else value
        try:
            converted = param.type.convert(text, param, None)
        except click.BadParameter as exc:
            raise UserError(f"{where}: {label} = {value!r}: {exc.message}") from None
        return value if isinstance(value, list) else converted
    if field is None:
        raise UserError(f"{where}: {label} is neither an option of the run command (see --help) nor a training "
                        f"setting ({', '.join(TrainConfig.__dataclass_fields__)}); remove or rename it")
    kind = SETTING_KINDS.get(field.type, object)
    if not isinstance(value, kind) or (isinstance(value, bool) and field.type != "bool"):
        raise UserError(f"{where}: {label} = {value!r} is not {'an' if field.type == 'int' else 'a'} {field.type}; "
                        f"write one there")
    return value


def expand_preset(preset: dict, options: dict, explicit: set[str]) -> tuple[dict, dict]:
    """``options`` with the preset's values where an option was not given (``explicit``), and the recipe values
    that are no option (warm-up start, minimum lr, ...) for :class:`harness.train.TrainConfig`."""
    options, train_defaults = dict(options), {}
    for key, value in {**preset["run"], **preset["train"]}.items():
        if key in explicit or PRESET_TIES.get(key) in explicit:
            continue
        if key in options:
            options[key] = ",".join(value) if isinstance(value, list) else value
        else:
            train_defaults[key] = value
    return options, train_defaults


def _with_preset(options: dict) -> dict:
    """The run command's options with the chosen paper preset applied (``--preset list``: to be listed)."""
    name = options.pop("preset")
    if name in (None, "list"):
        return {**options, "train_defaults": {}, "list_presets": name == "list", "paper": None}
    context = click.get_current_context()
    # Only the command line overrides a preset: an environment variable ($ADAPTBENCH_BENCH_PRESET=quick for smoke
    # runs) is a default, and a paper preset reproduces its paper's protocol over it.
    explicit = {key for key in options if context.get_parameter_source(key) is click.core.ParameterSource.COMMANDLINE}
    preset = read_paper_preset(name, context.command)
    options, train_defaults = expand_preset(preset, options, explicit)
    click.echo(f"Preset {name}: {preset['description']}")
    # A preset reproduces a paper: where the preset lists what the paper reports, the run's report shows how close
    # it came.
    paper = name if "published" in preset else None
    return {**options, "train_defaults": train_defaults, "list_presets": False, "paper": paper}


def _print_presets() -> None:
    for name in presets.paper_preset_names():
        click.echo(f"  {name:<14} {read_paper_preset(name, run)['description']}")


def _main(methods: str, tasks: str, backbone: str | None, compression: str, epochs: int | None,
          warmup_epochs: int | None, lr_schedule: str, lr: float | None, batch_size: int, train_precision: str,
          tf32: bool, cudnn_benchmark: bool, compile_train: bool, no_save_adapters: bool, selection: str,
          seeds: list[int], bench_batch: tuple[int, ...] | None, bench_preset: str, amp: str | None,
          compile_model: bool, flops_breakdown: bool, profile: bool, max_spread: float, refuse_noisy: bool,
          threads: int | None, device: str, pretrained: bool | None, weights: Path | None, data_root: Path | None,
          img_size: int | None, normalization: str, check_images: bool, out: Path, plugins: tuple[str, ...],
          executor: str, jobs: int,
          isolate: bool, slurm_partition: str | None, slurm_time: str, slurm_gpus_per_job: int,
          slurm_cpus_per_job: int | None, slurm_array_parallelism: int, slurm_account: str | None,
          slurm_opt: tuple[str, ...], slurm_cluster: str, wait: bool, checkpoint_every: int, timeout: float | None,
          rerun_failed: bool, force: bool, write_report: bool, list_only: bool, dry_run: bool, no_estimate: bool,
          train_defaults: dict, list_presets: bool, paper: str | None) -> int:
    plugin_sources = [source for value in plugins for source in _split(value)]
    registry.load_plugins(plugin_sources)
    if list_only or list_presets:
        _print_presets() if list_presets else _print_listing()
        return 0
    method_names = _split(methods)
    for name in method_names:
        registry.get_method(name)
    task_names = registry.expand_tasks(_split(tasks))
    if not method_names or not task_names:
        raise UserError("--methods and --tasks need at least one name each; see --list")
    # Slurm runs happen on nodes with --slurm-gpus-per-job GPUs, whatever the submitting machine has.
    on_nodes = executor == "slurm" and slurm_cluster == "slurm"
    resolved_device = resolve_device(device, cuda=slurm_gpus_per_job > 0 if on_nodes else None)
    if isolate:
        executor, jobs = "local", 1
    if jobs > 1 and executor != "local":
        raise UserError(f"--jobs {jobs} runs worker processes, which --executor {executor} does not; add --executor "
                        f"local")
    slurm = _slurm_settings(slurm_partition, slurm_time, slurm_gpus_per_job, slurm_cpus_per_job,
                            slurm_array_parallelism, slurm_account, slurm_opt, slurm_cluster) \
        if executor == "slurm" else None
    # Each worker gets its share of the cores; recorded in every config (threads change the figures).
    run_threads = threads or (max(1, (os.cpu_count() or 1) // jobs) if executor == "local" and jobs > 1 else 0)
    if run_threads:
        torch.set_num_threads(run_threads)
    measure = MeasureConfig.preset(bench_preset, batches=bench_batch, precision=amp, compile=compile_model or None,
                                   flops_breakdown=flops_breakdown or None, profile=profile or None,
                                   max_spread=max_spread, refuse_noisy=refuse_noisy or None)
    if not dry_run:
        _check_writable(out, "output folder", "choose another with --out")
        _check_claims_lock(out)
    _check_writable(cache_dir(), "the data cache", "point $ADAPTBENCH_CACHE at a writable folder")
    started = time.perf_counter()
    click.echo(f"Preparing {len(task_names)} task(s): {', '.join(task_names)}")
    task_data = load_tasks(task_names, data_root, check_images, selection)
    _print_tasks(task_data, selection)
    overrides = {**train_defaults, "epochs": epochs, "warmup_epochs": warmup_epochs, "lr_schedule": lr_schedule,
                 "lr": lr, "batch_size": batch_size, "selection": selection, "precision": train_precision, "tf32": tf32,
                 "cudnn_benchmark": cudnn_benchmark, "compile": compile_train}
    levels = None if compression is None else (_split(compression) or [NONE])
    configs = plan_runs(method_names, task_data, seeds=seeds, compressions=levels,
                        backbone=backbone, pretrained=pretrained, device=resolved_device,
                        train_overrides=overrides, measure=measure, img_size=img_size,
                        normalization=normalization, weights=weights, threads=run_threads)
    store = RunStore(out)
    rerun = "all" if force else "failed" if rerun_failed else "missing"
    todo = [config for config in configs if to_run(store.read(config), rerun)]
    timeable = resolved_device.type != "cuda" or torch.cuda.is_available()
    unestimated = None if timeable else "no GPU here to time"
    try:
        expected = {} if no_estimate or not timeable else estimate(todo, task_data, resolved_device)
    except EstimateUnavailable as exc:
        expected, unestimated = {}, str(exc)
    parallel = jobs if executor == "local" else 1
    sharing = max(1, min(parallel, len(todo)))  # fewer runs than jobs leave jobs idle
    guess = f"estimated {_estimated_time(sum(expected.values()), sharing)}" if expected else \
        f"not estimated ({unestimated})" if unestimated else "not estimated"
    if dry_run:
        _print_plan(configs, len(todo), store, expected, resolved_device, unestimated, sharing)
        if slurm is not None:
            from .slurm import sbatch_script

            click.echo(f"\nThe sbatch script submitit would submit for the {len(todo)} run(s) not done (one "
                       f"array task each):\n\n" + sbatch_script(slurm, store, len(todo)))
        return 0
    options = RunOptions(save_adapters=not no_save_adapters, checkpoint_every=checkpoint_every, timeout=timeout,
                         rerun=rerun)
    plugin_paths = [str(Path(source).resolve()) if source.endswith(".py") else source for source in plugin_sources]
    progress = SweepProgress(configs, expected, parallel, log=click.echo)
    click.echo(f"Running {len(configs)} run(s) on {resolved_device} with {os.cpu_count()} CPU core(s) "
               f"({executor} executor{f', {jobs} jobs' if parallel > 1 else ''}), {guess} for the {len(todo)} not "
               f"yet done; results -> {out}/")
    running = time.perf_counter()
    if slurm is not None:
        records = _run_on_slurm(configs, task_data, store, resolved_device, plugin_paths, data_root, options, slurm,
                                progress, wait)
        if records is None:
            return 0
    else:
        run = LocalExecutor(jobs, task_data, store, resolved_device, plugin_paths, data_root, options) \
            if executor == "local" else inline_executor(task_data, store, resolved_device, progress.log, options,
                                                        progress)
        records = run_all(configs, store, run, rerun=options.rerun, parallel=parallel, progress=progress)
    took = time.perf_counter() - running
    csv_path = store.write_csv()
    click.echo("\n" + summary_table(records) + "\n")
    failed = [record for record in records if record["status"] != STATUS_OK]
    for record in failed:
        click.echo(f"FAILED {RunConfig.from_dict(record['config']).label} ({record.get('failure', 'error')}): "
                   f"{record.get('reason')}")
    click.echo(f"{len(records) - len(failed)} ok, {len(failed)} failed in {time.perf_counter() - started:.0f}s "
               f"(runs: {describe(took)}, {guess}). "
               f"Per-run files: {out}/*.json; all runs: {csv_path}")
    if write_report and len(failed) < len(records):
        click.echo(f"\nReport of {out}/ (python run.py report {out}):")
        _report((out,), None, (), None, False, "best", MATCH_TOLERANCE, paper, ())
    return 1 if failed else 0


def _estimated_time(seconds: float, parallel: int) -> str:
    """The estimate as the wall time it is compared with: the runs' sum, shared out over ``parallel`` jobs."""
    if parallel == 1:
        return describe(seconds)
    return f"{describe(seconds / parallel)} over {parallel} jobs ({describe(seconds)} one after another)"


def _slurm_settings(partition: str | None, time_limit: str, gpus: int, cpus: int | None, parallelism: int,
                    account: str | None, extra: tuple[str, ...], cluster: str):
    from .slurm import SlurmSettings, parse_options, parse_time

    return SlurmSettings(partition, parse_time(time_limit), gpus, cpus, parallelism, account, parse_options(extra),
                         cluster)


def _print_plan(configs: list[RunConfig], to_do: int, store: RunStore, expected: dict[str, float],
                device: torch.device, unestimated: str | None, parallel: int = 1) -> None:
    """The plan, each run with its state in the output folder and, if it is to run (``to_do`` of them), its
    estimate."""
    from .status import plan_states, tally

    states = plan_states(configs, store)
    click.echo("\n".join(describe_plan(configs, expected, states)))
    click.echo(f"In {store.folder}/: {tally([state for state, _ in states.values()])}")
    kept = f"; not the {len(configs) - to_do} its records cover" if to_do < len(configs) else ""
    if expected:
        click.echo(f"Estimated wall time on {device}: {_estimated_time(sum(expected.values()), parallel)} for "
                   f"the {to_do} run(s) to do{kept}, "
                   f"from a few timed steps of each distinct model (decoding and warm-up not included)")
    elif not to_do:
        click.echo("Nothing to run: the folder's records cover every run of the plan (--rerun-failed, --force run "
                   "them again).")
    elif unestimated:
        click.echo(f"Not estimated: {unestimated}.")


def _run_on_slurm(configs: list[RunConfig], task_data: dict[str, TaskData], store: RunStore, device: torch.device,
                  plugins: list[str], data_root: Path | None, options: RunOptions, settings, progress: SweepProgress,
                  wait: bool) -> list[dict] | None:
    """Submit what is to run as one array; with ``wait``, every config's record once the array has ended (a job
    that ended without finishing its run is recorded as died), else None once submitted."""
    from . import slurm
    from .claims import REQUEUING_EXECUTOR
    from .runner import execute, write_failure

    records, todo = triage(configs, store, progress, options.rerun)
    for config in [config for config in todo if task_data[config.task].problem is not None]:
        records[config.key] = execute(config, task_data[config.task], store, device, lambda line: None, options)
        todo.remove(config)
    busy = {config.key for config in todo if store.claims.owner(config.file_stem) is not None
            or slurm.queued(store, config.file_stem, settings.cluster) is not None}
    todo = [config for config in todo if config.key not in busy]
    attempts = {config.key: uuid.uuid4().hex for config in todo}  # which record, or forced rerun's note, each wrote
    if todo:
        jobs = [worker_job(config, store, "cuda" if device.type == "cuda" else "cpu", data_root, plugins, options,
                           {"name": REQUEUING_EXECUTOR, "attempt": attempt})
                for config, attempt in zip(todo, attempts.values())]
        handles = slurm.submit(jobs, todo, settings, store)
        click.echo(f"Submitted {len(todo)} run(s) to Slurm ({settings.cluster}) as job(s) "
                   f"{handles[0].job_id.split('_')[0]}; logs in {slurm.logs_folder(store)}/"
                   + (f"; {len(busy)} already running or queued" if busy else ""))
    else:
        handles = []
        click.echo(f"Nothing to submit: {len(busy)} run(s) running or queued, the others done")
    if not wait:
        click.echo(f"Follow them with: python run.py status {store.folder}  (the same command again submits "
                   f"only what is not done, running or queued)")
        return None
    slurm.wait(handles)
    for config, handle, attempt in zip(todo, handles, attempts.values()):
        outcome = slurm.job_outcome(handle)
        if outcome == "claimed":  # another sweep had it: waited for below
            busy.add(config.key)
            continue
        record = store.read(config)
        unfinished = record is None or record["status"] == STATUS_RUNNING
        if unfinished or (outcome != "ok" and not written_by(record, attempt)):  # the job ended without its record
            record = write_failure(config, task_data[config.task], store, "died",
                                   f"Slurm job {handle.job_id} ended without finishing the run; see "
                                   f"{handle.paths.stderr}", record, handle.job_id)
            if record is None:  # another sweep found it dead meanwhile and runs it: waited for below
                busy.add(config.key)
                continue
        records[config.key] = attempt_outcome(record, attempt)
    for config in (config for config in configs if config.key in busy):
        announced = False
        while config.key not in records:
            if store.claims.owner(config.file_stem) is not None \
                    or slurm.queued(store, config.file_stem, settings.cluster) is not None:
                if not announced:
                    progress.log(f"waiting for {config.label}: running or queued in another sweep")
                    announced = True
                time.sleep(WAIT_SECONDS)
                continue
            record = store.read(config)
            if record is None or record["status"] == STATUS_RUNNING:
                record = write_failure(config, task_data[config.task], store, "died",
                                       "it was running or queued in another sweep, which ended without finishing "
                                       "it; rerun the sweep to run it again", record)
            if record is not None:  # else claimed by yet another sweep in between: waited for again
                records[config.key] = attempt_outcome(record, attempts.get(config.key))
    return [records[config.key] for config in configs]


@main.command("status", context_settings=CONTEXT)
@click.argument("runs", nargs=-1, type=click.Path(path_type=Path, exists=True, file_okay=False))
def status(**options: object) -> None:
    """What the runs in RUNS (folders; default: runs) are doing: done, running (host, pid, job id, log),
    queued on Slurm, failed (kind and reason). A run whose process died is marked failed (died) here, and a
    sweep run again runs it again. For one plan's missing runs, add --dry-run to the sweep's command line.

    Exit code: 0 nothing failed, 1 some run failed or a run file is damaged, 2 bad input.
    """
    _exit_with(lambda: _status(**options))


def _status(runs: tuple[Path, ...]) -> int:
    from .status import folder_states, tally

    failed = False
    for folder in runs or (Path("runs"),):
        if not folder.is_dir():
            raise UserError(f"no run folder {folder}; pass the --out folder of a sweep")
        rows = folder_states(folder)
        click.echo(f"{folder}/: {tally([state for _, state, _ in rows]) or 'no runs'}")
        for label, state, detail in rows:
            if state != "done":
                click.echo(f"  {state:<8} {label}" + (f": {detail}" if detail else ""))
        failed = failed or any(state in ("failed", "damaged") for _, state, _ in rows)
    return 1 if failed else 0


@main.command("migrate", context_settings=CONTEXT)
@click.argument("runs", nargs=-1, required=True, type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option("--plugins", multiple=True, help="Plugin .py file or module whose tasks or methods the runs used.")
def migrate(**options: object) -> None:
    """Upgrade the run files in RUNS (folders) written before records described their own method and task, so
    that `report` reads them. Files are replaced atomically; configs, keys and figures stay as they were.

    Exit code: 0 every old file upgraded, 1 some could not be (each named with the reason), 2 bad input.
    """
    _exit_with(lambda: _migrate(**options))


def _migrate(runs: tuple[Path, ...], plugins: tuple[str, ...]) -> int:
    from .migrate import migrate as upgrade

    registry.load_plugins([source for value in plugins for source in _split(value)])
    result = upgrade(runs)
    for problem in result.problems:
        click.echo(f"not upgraded: {problem}", err=True)
    click.echo(f"{len(result.upgraded)} run file(s) upgraded, {len(result.current)} already current, "
               f"{len(result.problems)} not upgraded")
    return 1 if result.problems else 0


@main.command("report", context_settings=CONTEXT)
@click.argument("runs", nargs=-1, type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Folder for the report, one sub-folder per task suite.  [default: <first RUNS folder>/report]")
@click.option("--compare", multiple=True, metavar="A,B",
              help="Paired test of two methods' accuracies (A - B), like the Adverse Compression test; "
                   "METHOD@LEVEL pins a compression level (tome@high,lora). Repeatable.")
@click.option("--baseline", type=click.Path(path_type=Path, exists=True, dir_okay=False), default=None,
              help="An older leaderboard.csv: write baseline_diff.csv/.md with the changes against it.")
@click.option("--publish", is_flag=True,
              help="Copy each suite's leaderboard, Pareto plots and Adverse Compression table into "
                   "results/<suite>/ with provenance.json ($ADAPTBENCH_RESULTS replaces results/).")
# The names of harness.report.ACCURACIES, not imported here: pandas loads only for the report (a test checks them).
@click.option("--accuracy", type=click.Choice(["best", "last", "at-best-val"]), default="best", show_default=True,
              help="The per-run accuracy every table, average, plot and test uses: best (test_acc_best, the best "
                   "periodic test evaluation, as PYRA and V-PETL Bench report), last (test_acc_last, free of test "
                   "selection) or at-best-val (test_acc_at_best_val: test accuracy at the best val evaluation of "
                   "runs trained with --selection val; other runs are skipped).")
@click.option("--match-tolerance", type=click.FloatRange(min=0), default=MATCH_TOLERANCE, show_default=True,
              help="Adverse Compression: a verdict only for pairs whose small model runs within this fraction of "
                   "the compressed model's throughput (matched_throughput_ratio 0.9-1.1 by default); others are "
                   "'unmatched (ratio x)'.")
@click.option("--paper", type=click.Choice(presets.paper_preset_names()), default=None,
              help="Also compare the board with the figures this paper preset lists as published "
                   "(harness/presets/paper/NAME.toml, [published]): accuracies ours - paper, and speed-ups, on the "
                   "preset's backbone and suite; writes paper_NAME.csv/.md. A run with --preset NAME does this.")
@click.option("--plugins", multiple=True,
              help="Ignored: run files describe their own tasks and methods (kept so old command lines still work)")
def report(**options: object) -> None:
    """Leaderboard, Pareto plots and the Adverse Compression test of the finished runs in RUNS (folders of
    run files; default: runs).

    Files that are not finished runs (running, failed, damaged or foreign JSON), or that lack the --accuracy
    chosen, are listed with the reason and left out. Every file says which accuracy it holds (a non-default
    one: an `accuracy` column in the CSVs). Exit code: 0 report written, 2 bad input or nothing to report.
    """
    _exit_with(lambda: _report(**options))


def _report(runs: tuple[Path, ...], out: Path | None, compare: tuple[str, ...], baseline: Path | None,
            publish: bool, accuracy: str, match_tolerance: float, paper: str | None,
            plugins: tuple[str, ...]) -> int:
    from . import report as analysis  # pandas, scipy and matplotlib load only for the report

    del plugins  # run files describe their own tasks and methods: no plugin is needed to report on them
    comparisons = [analysis.parse_compare(text) for text in compare]
    folders = list(runs) or [Path("runs")]
    frame, skipped = analysis.load_runs(folders, accuracy)
    for item in skipped:
        click.echo(f"skipped {item}")
    where = ", ".join(map(str, folders))
    if frame.empty:
        raise UserError(f"no finished runs to report in {where}"
                        + (f" ({len(skipped)} skipped, listed above)" if skipped else ""))
    # Bad --compare or --baseline input is refused before any file is written, not after a half-written report.
    analysis.check_compare(frame, comparisons, where)
    if baseline is not None:
        analysis.read_baseline(baseline)
    published = None if paper is None else analysis.published(paper)
    if published is not None and published.suite not in set(frame["suite"]):
        click.echo(f"note: --paper {paper}: no runs of suite {published.suite} to compare with the paper")
    out = out or folders[0] / "report"
    _check_writable(out, "output folder", "choose another with --out")
    if publish:
        from .report.publish import RESULTS_ENV, results_root

        _check_writable(results_root(), "the results folder", f"point ${RESULTS_ENV} at a writable folder")
    root = click.get_current_context().find_root()
    command = shlex.join([root.info_name or "run.py", *root.meta.get(_ARGV, [])])
    for suite, suite_runs in frame.groupby("suite"):
        result = analysis.write_suite_report(suite_runs, out / suite, compare=comparisons, baseline=baseline,
                                             accuracy=accuracy, match_tolerance=match_tolerance, paper=published)
        _print_suite(result)
        if publish:
            target = analysis.publish(result, analysis.provenance(suite_runs, skipped, command, accuracy))
            click.echo(f"Published to {target}/")
    return 0


def _print_suite(result: SuiteReport) -> None:
    from . import report as analysis

    click.echo(f"\n== {result.suite}: {result.board['runs'].sum()} runs, {len(result.board)} leaderboard rows; "
               f"{analysis.accuracy_title(result.accuracy)} ==\n")
    click.echo(analysis.console_leaderboard(result.board))
    for warning in result.warnings:
        click.echo(f"note: {warning}")
    points = f"accuracy points, {result.accuracy.label}"
    tables = {f"Adverse Compression (compressed - small-model baseline, {points})": result.adverse,
              **{f"{stem} (A - B, {points})": table for stem, table in result.comparisons.items()}}
    for title, table in tables.items():
        if not table.empty:
            click.echo(f"\n{title}:\n" + analysis.verdict_lines(table))
    if result.baseline:
        click.echo(f"\nBaseline {result.baseline}")
    if result.paper is not None:
        click.echo(f"\nAgainst the paper: {result.paper.source}\n{result.paper_difference}:\n"
                   + analysis.paper_lines(result.paper_table, result.paper.main_metric))
    click.echo(f"\nWrote {len(result.written)} files to {result.folder}/: "
               + ", ".join(path.name for path in result.written))
    plot = result.folder / "pareto_throughput.png"
    if plot in result.written:
        click.echo(f"Pareto plot (accuracy vs throughput): {plot}")
