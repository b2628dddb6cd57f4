import dataclasses
import itertools
import platform
from pathlib import Path

import pytest
import timm
import torch

import harness
from conftest import tiny_vit
from harness.measure import (Throughput, count_gmacs, count_parameters, measure_until_quiet, peak_memory,
                             summarize_rates, time_repeats)


def test_vit_base_gmacs_match_fvcore_convention():
    model = timm.create_model("vit_base_patch16_224", pretrained=False)
    assert count_gmacs(model, 224) == pytest.approx(17.58, abs=0.005)


def test_gmacs_count_attention_even_where_fused_kernels_hide_it():
    model = tiny_vit(depth=1)
    tokens, dim = 17, 32
    attention_macs = 2 * tokens * tokens * dim  # q @ k^T and attn @ v
    total = count_gmacs(model, 16) * 1e9
    linear_macs = tokens * dim * (3 * dim + dim + 8 * dim) + 16 * 3 * 16 * dim + dim * 3
    layer_norm_macs = 5 * (2 * tokens * dim + tokens * dim)  # norm1, norm2, final norm
    assert total == pytest.approx(attention_macs + linear_macs + layer_norm_macs)


def test_merged_lora_costs_no_extra_macs():
    base = count_gmacs(tiny_vit(), 16)
    adapted = harness.merge_for_inference(harness.adapt(tiny_vit(), "lora"))
    assert count_gmacs(adapted, 16) == pytest.approx(base)


def test_parameter_counts():
    model = harness.adapt(tiny_vit(), "lora")
    total, tunable = count_parameters(model)
    assert tunable == sum(p.numel() for n, p in model.named_parameters() if "lora_" in n or n.startswith("head."))
    assert total == sum(p.numel() for p in model.parameters())


def test_time_repeats_uses_the_clock_it_is_given():
    ticks = itertools.count(0.0, 0.5)  # every clock read advances half a second
    calls = []
    seconds = time_repeats(lambda: calls.append(1), warmup=2, repeats=3, iters_per_repeat=4,
                           clock=lambda: next(ticks))
    assert len(calls) == 2 + 3 * 4
    assert seconds == [0.125, 0.125, 0.125]


def test_summary_is_median_and_interquartile_range():
    summary = summarize_rates([10.0, 20.0, 30.0, 40.0, 50.0], batch_size=8)
    assert (summary.median, summary.iqr, summary.repeats) == (30.0, 20.0, 5)


def test_cpu_peak_memory_grows_with_batch():
    model = tiny_vit()
    device = torch.device("cpu")

    def step(batch: int):
        return lambda: model(torch.randn(batch, 3, 16, 16)).sum().backward()

    small, large = peak_memory(step(4), device, model), peak_memory(step(64), device, model)
    assert small.method == "cpu_resident_plus_profiler_peak" and small.reserved_mb is None
    assert large.mb > 2 * small.mb > 0


def test_time_based_warmup_and_timing_follow_the_clock():
    now = [0.0]

    def clock():
        return now[0]

    def run_once():
        now[0] += 0.25  # each iteration takes a quarter second

    seconds = time_repeats(run_once, warmup=1, warmup_seconds=2.0, repeats=1, iters_per_repeat=1,
                           timed_seconds=3.0, clock=clock)
    assert now[0] == pytest.approx(2.0 + 3.0)  # 8 warm-up iterations, then 12 timed ones
    assert seconds == [0.25] * 12


def test_pyra_preset_is_papers_protocol_and_overrides_apply():
    from harness.measure import MeasureConfig

    preset = MeasureConfig.preset("pyra")
    assert (preset.batches, preset.precision, preset.warmup_seconds, preset.timed_seconds) == ((512,), "fp32", 10, 10)
    assert MeasureConfig.preset("pyra", batches=(64,)).batches == (64,)
    assert MeasureConfig.preset("default", precision=None).precision == "fp32"


def test_per_block_gmacs_add_up_to_the_blocks_share_of_the_total():
    from harness.measure import gmacs_per_block

    model = harness.adapt(tiny_vit(depth=3), "tome", compression="[4,2,0]")
    blocks = gmacs_per_block(model, 16)
    assert len(blocks) == 3 and blocks[0] > blocks[1] > blocks[2] > 0  # fewer tokens in every later block
    assert sum(blocks) < count_gmacs(model, 16)  # patch embedding, final norm and head are outside the blocks


def test_cuda_peak_memory_counts_the_model_and_its_phase_not_what_else_is_on_the_device(monkeypatch):
    """No GPU needed: torch.cuda's counters are replaced by a fake allocator that the phase moves. 100 MiB are on
    the device before the phase (a task's splits kept there, the model); the phase peaks 3 MiB above them."""
    calls = []
    mib = 2 ** 20
    memory = {"allocated": 100 * mib, "peak": 105 * mib, "reserved": 130 * mib}  # peaks of an earlier phase

    def reset(device):
        calls.append("reset")
        memory.update(peak=memory["allocated"], reserved=memory["allocated"])

    def phase():
        calls.append("phase")
        memory.update(peak=103 * mib, reserved=104 * mib)

    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: calls.append("empty"))
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: memory["allocated"])
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", reset)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: memory["peak"])
    monkeypatch.setattr(torch.cuda, "max_memory_reserved", lambda device=None: memory["reserved"])
    model = tiny_vit()
    measured = peak_memory(phase, torch.device("cuda"), model)
    assert calls == ["empty", "reset", "phase"]
    assert measured.mb == pytest.approx(harness.measure.resident_tensor_bytes(model) / mib + 3.0)
    assert (measured.reserved_mb, measured.method) == (104.0, "cuda_resident_plus_peak_above_start")


def _throughputs(*spreads: float):
    """A measure() that returns figures of these relative spreads in turn, and the list of what it returned."""
    returned = []

    def measure():
        returned.append(Throughput(median=100.0, iqr=100.0 * spreads[len(returned)], repeats=7, batch_size=8))
        return returned[-1]

    return measure, returned


def test_quiet_figure_is_measured_once():
    measure, returned = _throughputs(0.05, 0.01)
    result = measure_until_quiet(measure, max_spread=0.1, attempts=3)
    assert len(returned) == 1 and result.attempts == 1 and result.relative_spread == pytest.approx(0.05)


def test_noisy_figure_is_measured_again_until_quiet():
    measure, returned = _throughputs(0.3, 0.08, 0.01)
    result = measure_until_quiet(measure, max_spread=0.1, attempts=3)
    assert len(returned) == 2 and result.attempts == 2 and result.relative_spread == pytest.approx(0.08)


def test_figure_noisy_every_time_gives_the_least_noisy_attempt():
    measure, returned = _throughputs(0.3, 0.2, 0.4)
    result = measure_until_quiet(measure, max_spread=0.1, attempts=3)
    assert len(returned) == 3 and result.attempts == 3 and result.relative_spread == pytest.approx(0.2)


def test_out_of_memory_halves_the_batch_until_it_fits():
    from harness.measure import MeasureConfig, inference_throughput

    tried = []

    class FitsSixteen(torch.nn.Module):
        def forward(self, images):
            tried.append(len(images))
            if len(images) > 16:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
            return images.mean()

    quick = MeasureConfig(warmup_iters=1, warmup_seconds=0.0, repeats=3, iters_per_repeat=1)
    result = inference_throughput(FitsSixteen(), 8, torch.device("cpu"), batch_size=64, settings=quick)
    assert result.batch_size == 16 and tried[:3] == [64, 32, 16]


def test_out_of_memory_while_making_the_input_halves_the_batch_too(monkeypatch):
    from harness.measure import MeasureConfig, inference_throughput

    real = torch.randn

    def randn(*shape, **kwargs):
        if shape[0] > 16:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(*shape, **kwargs)

    monkeypatch.setattr(harness.measure.torch, "randn", randn)
    quick = MeasureConfig(warmup_iters=1, warmup_seconds=0.0, repeats=3, iters_per_repeat=1)
    result = inference_throughput(torch.nn.Flatten(), 8, torch.device("cpu"), batch_size=64, settings=quick)
    assert result.batch_size == 16


@pytest.fixture
def fresh_allocator_setting():
    harness.measure.steady_host_allocator.cache_clear()
    yield
    harness.measure.steady_host_allocator.cache_clear()


def _recorded_mallopt(monkeypatch) -> list:
    calls = []
    monkeypatch.setattr(harness.measure, "_mallopt", lambda parameter, value: calls.append((parameter, value)) or True)
    return calls


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the setting is glibc's")
def test_steady_host_allocator_keeps_freed_memory_and_says_so(monkeypatch, fresh_allocator_setting):
    calls = _recorded_mallopt(monkeypatch)
    assert "freed memory kept" in harness.measure.steady_host_allocator()
    assert calls == [(-3, 32 * 2 ** 20), (-1, 1024 * 2 ** 20)]  # M_MMAP_THRESHOLD, then M_TRIM_THRESHOLD
    harness.measure.steady_host_allocator()
    assert len(calls) == 2  # once per process


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the setting is glibc's")
def test_steady_host_allocator_reports_a_refused_setting(monkeypatch, fresh_allocator_setting):
    monkeypatch.setattr(harness.measure, "_mallopt", lambda parameter, value: False)
    assert harness.measure.steady_host_allocator() == "glibc default (mallopt refused)"


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the setting is glibc's")
def test_inference_timing_sets_the_allocator(monkeypatch, fresh_allocator_setting):
    """Benchmarks time through here; a run sets it before training (tests/test_runner.py)."""
    from harness.measure import MeasureConfig, inference_throughput

    calls = _recorded_mallopt(monkeypatch)
    quick = MeasureConfig(warmup_iters=1, warmup_seconds=0.0, repeats=1, iters_per_repeat=1)
    inference_throughput(tiny_vit(), 16, torch.device("cpu"), batch_size=2, settings=quick)
    assert len(calls) == 2



def test_the_quick_preset_is_the_default_protocol_with_the_tables_own_changes():
    from harness.measure import MeasureConfig
    from harness.presets import tomllib

    with (Path(harness.__file__).parent / "presets" / "timing.toml").open("rb") as handle:
        table = tomllib.load(handle)["quick"]
    assert table and MeasureConfig.preset("quick") == dataclasses.replace(MeasureConfig(), **table)
    assert MeasureConfig.preset("quick").warmup_seconds == 0 < MeasureConfig().warmup_seconds


@pytest.mark.parametrize("environment, option, expected", [(None, None, "default"), ("quick", None, "quick"),
                                                           ("quick", "pyra", "pyra")])
def test_the_timing_preset_is_taken_from_the_environment_unless_the_option_names_one(
        plugin_file, tmp_path, monkeypatch, environment, option, expected):
    from click.testing import CliRunner

    from harness.cli import main
    from harness.measure import MeasureConfig
    from harness.plan import load_tasks, plan_runs

    monkeypatch.delenv("ADAPTBENCH_BENCH_PRESET", raising=False)
    if environment:
        monkeypatch.setenv("ADAPTBENCH_BENCH_PRESET", environment)
    chosen = ["--bench-preset", option] if option else []
    result = CliRunner().invoke(main, ["--plugins", str(plugin_file), "--methods", "lora", "--tasks", "tiny_bright",
                                       "--dry-run", "--no-estimate", "--out", str(tmp_path), *chosen])
    assert result.exit_code == 0, result.output
    (planned,) = plan_runs(["lora"], load_tasks(["tiny_bright"], None), seeds=[0], compressions=None, backbone=None,
                           pretrained=None, device=torch.device("cpu"), train_overrides={},
                           measure=MeasureConfig.preset(expected))
    assert planned.file_stem in result.output
