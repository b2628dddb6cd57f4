"""benchmarks/gpu_check.py: the tiny CPU run writes every section to JSON and Markdown, and its projection and
targets compute what they say from given figures."""
from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import harness
from harness.presets import tomllib

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "benchmarks" / "gpu_check.py"
sys.path.insert(0, str(REPO / "benchmarks"))  # the script imports its neighbour common.py, as scripts do
import gpu_check  # noqa: E402

CONFIGS = ("full_ft", "lora", "tome-low", "tome-high", "pyra-low", "pyra-high", "small_peft")
VARIANTS = ("full", "tome-low", "tome-high", "pyra-low", "pyra-high")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess, Path]:
    out = tmp_path_factory.mktemp("gpu_check")
    done = subprocess.run([sys.executable, str(SCRIPT), "--tiny", "--device", "cpu", "--out", str(out)],
                          capture_output=True, text=True, cwd=REPO,
                          timeout=gpu_check.TINY_DEADLINE_S + 120)  # past the deadline: the measurement in flight
    return done, out


def test_tiny_run_exits_zero_and_writes_both_files(tiny_run) -> None:
    done, out = tiny_run
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert (out / "gpu_check.json").is_file() and (out / "gpu_check.md").is_file()
    # a timestamped progress line per measurement, flushed as it goes; the Markdown printed at the end
    assert re.search(r"^\d\d:\d\d:\d\d \[\s*\d+\.\d s\] training full_ft fp32: ", done.stdout, re.MULTILINE)
    assert "## Targets" in done.stdout


def test_tiny_run_measures_every_section(tiny_run) -> None:
    _, out = tiny_run
    results = json.loads((out / "gpu_check.json").read_text())
    assert results["complete"] and not results["errors"] and not results["skipped"]
    assert results["environment"]["torch"] and results["environment"]["timm"] and results["settings"]["tiny"]
    assert results["data"]["train_images"] == 16 and results["data"]["decode_seconds_cold"] > 0

    cells = {(row["config"], row["precision"]): row for row in results["training"]}
    assert set(cells) == {(config, precision) for config in CONFIGS for precision in ("fp32", "bf16")}
    for row in cells.values():
        assert row["train_img_per_s"] > 0 and row["bare_img_per_s"] > 0 and row["harness_vs_bare"] > 0
        assert 0 < row["input_share"] < 1 and row["epoch_s"] > 0 and row["eval_s"] > 0 and row["peak_mem_mb"] > 0
    assert cells[("small_peft", "fp32")]["backbone"] == "vit_micro_small_patch4_32"

    for precision in ("fp32", "bf16"):
        rows = {row["variant"]: row for row in results["inference"][precision]}
        assert set(rows) == set(VARIANTS)
        assert rows["full"]["speedup"] == pytest.approx(1.0) and rows["full"]["gmacs_ratio"] == pytest.approx(1.0)
        assert rows["tome-high"]["gmacs_ratio"] > 3 and rows["pyra-high"]["speedup"] > 0

    breakdown = results["breakdown"]
    assert [row["variant"] for row in breakdown["rows"]] == list(gpu_check.BREAKDOWN_VARIANTS)
    for row in breakdown["rows"]:
        assert 0 < row["host_ms"] <= row["forward_ms"] and row["time_on"] == "host" and row["kernels"] is None
        assert row["stored_forward_ms"] > 0
        assert sum(row["families"].values()) == pytest.approx(row["profiled_ms"]) and row["profiled_ms"] > 0
        assert 0 < len(row["top_ops"]) <= gpu_check.BREAKDOWN_TOP_OPS
        assert all(op["op"].startswith("aten::") and op["calls"] > 0 for op in row["top_ops"])
    merging = {row["variant"]: row["families"].get("matching and merge", 0.0) for row in breakdown["rows"]}
    assert merging["tome-high"] > merging["full"]  # the merge's gathers, sorts and scatters are seen where they run

    repeat = results["repeatability"]
    assert len(repeat["medians"]) == 5 and repeat["spread"] >= 0 and repeat["cv"] >= 0

    projection = results["projection"]
    assert len(projection["configs"]) == 9 and projection["tasks"] == 19
    for precision in ("fp32", "bf16"):
        part = projection[precision]
        assert not part["missing"] and len(part["rows"]) == 9 and part["total_h"] > 0
        assert part["total_h"] == pytest.approx(sum(part[key] for key in (
            "train_h", "eval_h", "measure_h", "diffrate_search_h", "small_peft_match_h", "decode_h")))

    assert len(results["targets"]) == 8
    assert all(target["passed"] in (True, False) for target in results["targets"])  # every one measured


def test_tiny_markdown_has_every_table(tiny_run) -> None:
    _, out = tiny_run
    text = (out / "gpu_check.md").read_text()
    for heading in ("## Targets", "## Training", "## Inference", "## Repeatability", "## Agreement with the CPU",
                    "## Where a forward's time goes", "## Projection", "## Data"):
        assert heading in text
    assert "Tiny smoke run" in text and "| small_peft-high" in text and "total GPU-h" in text
    assert re.search(r"\| (pass|FAIL) +\|", text)
    # the section ran (on a CPU it compares the CPU with itself), in fp32 and in bf16
    assert re.search(r"\| tome-high +\| 16/16 +\|.* yes +\|", text)


def test_agreement_counts_the_images_whose_logits_differ_from_the_cpus() -> None:
    images = torch.randn(8, 3, 4, 4)
    same = gpu_check.agreement(torch.nn.Flatten().eval(), images, torch.device("cpu"))
    assert same == {"images": 8, "max_relative_diff": 0.0, "agreeing": 8, "same_top1": 8, "bf16_error": 0.0,
                    "bf16_math_error": 0.0, "bf16_kernels_agree": True, "bf16_failure": None}
    # dropout left in training mode draws another mask on the copy: the two sides compute different functions
    noisy = gpu_check.agreement(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Dropout(0.5)).train(), images,
                                torch.device("cpu"))
    assert noisy["agreeing"] < 8 and noisy["max_relative_diff"] > gpu_check.AGREEMENT_TOLERANCE


class _NoBf16Kernel(torch.nn.Flatten):
    """A model whose bf16 forward has no kernel on this device (as some ops lack one on older GPUs)."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if torch.is_autocast_enabled("cpu"):
            raise RuntimeError("\"addmm_impl_cpu_\" not implemented for\n'BFloat16'")
        return super().forward(images)


def test_a_model_without_a_bf16_kernel_keeps_its_fp32_agreement_and_says_why_bf16_did_not_run() -> None:
    result = gpu_check.agreement(_NoBf16Kernel().eval(), torch.randn(4, 3, 2, 2), torch.device("cpu"))
    assert result["agreeing"] == 4 and result["max_relative_diff"] == 0.0
    assert result["bf16_error"] is None and result["bf16_kernels_agree"] is None
    assert result["bf16_failure"] == "\"addmm_impl_cpu_\" not implemented for 'BFloat16'"
    section = "\n".join(gpu_check._agreement_lines([{"variant": "full", **result}]))
    assert "- full in bf16 did not run: \"addmm_impl_cpu_\" not implemented for 'BFloat16'" in section


class _RoundsInDefaultKernels(torch.nn.Flatten):
    """A model bf16 leaves exact through the math kernel and moves by 5e-4 through the default ones."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        flat = super().forward(images)
        rounding = torch.is_autocast_enabled("cpu") and torch.backends.cuda.flash_sdp_enabled()
        return flat + 5e-4 * flat.abs().max() if rounding else flat  # 5e-4 of the largest logit


def test_default_kernels_within_the_tolerance_agree_when_the_math_kernel_has_no_error() -> None:
    result = gpu_check.agreement(_RoundsInDefaultKernels().eval(), torch.randn(4, 3, 2, 2), torch.device("cpu"))
    assert result["bf16_math_error"] == 0.0 and result["bf16_error"] == pytest.approx(5e-4, rel=1e-3)
    assert result["bf16_kernels_agree"]


def test_bf16_agreement_tells_a_default_attention_kernel_that_drops_the_size_bias(monkeypatch, tiny_inference) -> None:
    models, _ = tiny_inference
    images = torch.randn(16, 3, gpu_check.TINY.image_size, gpu_check.TINY.image_size,
                         generator=torch.Generator().manual_seed(0))
    sound = gpu_check.agreement(models["tome-high"], images, torch.device("cpu"))
    assert sound["bf16_kernels_agree"] and 0 < sound["bf16_error"] < 0.1  # micro-S: 0.073, the broken kernel 0.25

    attention = torch.nn.functional.scaled_dot_product_attention

    def drops_the_bias_in_bf16(q, k, v, attn_mask=None, **options):
        # sdpa_kernel(MATH) switches the other backends off: only the default kernels lose the bias
        default_kernels = torch.backends.cuda.flash_sdp_enabled() and q.dtype == torch.bfloat16
        return attention(q, k, v, attn_mask=None if default_kernels else attn_mask, **options)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", drops_the_bias_in_bf16)
    broken = gpu_check.agreement(models["tome-high"], images, torch.device("cpu"))
    assert not broken["bf16_kernels_agree"] and broken["agreeing"] == 16
    assert broken["bf16_math_error"] == pytest.approx(sound["bf16_math_error"])


def test_ops_fall_in_their_families_and_attention_is_found_by_name_on_any_backend() -> None:
    assert gpu_check.op_family("aten::addmm") == "matmul"
    assert gpu_check.op_family("aten::scatter_reduce") == "matching and merge"
    assert gpu_check.op_family("aten::copy_") == "copies and casts"
    for kernel_op in ("aten::_efficient_attention_forward", "aten::_flash_attention_forward",
                      "aten::_scaled_dot_product_cudnn_attention"):
        assert gpu_check.op_family(kernel_op) == "attention"
    assert gpu_check.op_family("aten::gelu") == gpu_check.OTHER_FAMILY


def test_breakdown_reads_device_busy_and_speed_ups_from_its_rows_and_says_when_the_profiler_saw_nothing() -> None:
    def row(variant: str, forward_ms: float, stored_ms: float, profiled_ms: float, families: dict) -> dict:
        return {"variant": variant, "forward_ms": forward_ms, "host_ms": 7.6, "host_share": 7.6 / forward_ms,
                "kernels": 400, "stored_forward_ms": stored_ms, "profiled_ms": profiled_ms, "families": families,
                "time_on": "device",
                "top_ops": [{"op": "aten::addmm", "calls": 49, "ms": profiled_ms}] if profiled_ms else []}
    rows = [row("full", 16.0, 12.0, 12.0, {"matmul": 12.0}), row("tome-high", 8.0, 4.0, 0.0, {})]
    text = "\n".join(gpu_check._breakdown_tables({"precision": "bf16", "batch": 256, "forwards": 5, "rows": rows}))
    assert re.search(r"\| full +\| 16\.00 +\| 1\.00x +\| 7\.60 +\| 48 % +\| 75 % +\| 400 +\| 12\.00 +\| 1\.00x +\|",
                     text)
    assert re.search(r"\| tome-high +\| 8\.00 +\| 2\.00x +\| 7\.60 +\| 95 % +\| 0 % +\| 400 +\| 4\.00 +\| 3\.00x +\|",
                     text)
    assert re.search(r"\| full +\| 12\.00 +\| 12\.00 +\|", text)  # the family table: all, then matmul
    assert "saw no device time in some forward" in text
    assert re.search(r"\| full +\| aten::addmm +\| 49 +\| 12\.000 +\| 100\.0 % +\|", text)
    rows[1].update(stored_forward_ms=None, stored_error="scatter_reduce not implemented for 'BFloat16'")
    text = "\n".join(gpu_check._breakdown_tables({"precision": "bf16", "batch": 256, "forwards": 5, "rows": rows}))
    assert re.search(r"\| tome-high +\| 8\.00 +\| 2\.00x +\| 7\.60 +\| 95 % +\| 0 % +\| 400 +\| - +\| - +\|", text)
    assert "\n\n- tome-high stored in bf16 did not run: scatter_reduce not implemented for 'BFloat16'\n" in text


def test_vtab_test_sizes_name_every_vtab_task() -> None:
    with open(REPO / "tasks" / "vtab.toml", "rb") as handle:
        assert set(gpu_check.VTAB_TEST_SIZES) == set(tomllib.load(handle))


def _figures(epoch_s: float = 1.0, step_ms: float = 31.25, eval_rate: float = 1000.0) -> dict:
    """Results as the check records them, every cell alike."""
    training = [{"config": config, "precision": precision, "epoch_s": epoch_s, "step_ms": step_ms,
                 "eval_img_per_s": eval_rate, "train_img_per_s": 1000 / epoch_s, "input_share": 0.01,
                 "harness_vs_bare": 0.99} for config in CONFIGS for precision in ("fp32", "bf16")]
    inference = {precision: [{"variant": variant, "img_per_s": 1000.0, "batch": 256, "speedup": 1.0,
                              "gmacs_ratio": 1.0} for variant in VARIANTS] for precision in ("fp32", "bf16")}
    return {"training": training, "inference": inference,
            "data": {"train_images": 1000, "decode_img_per_s": 1000.0}}


def test_projection_adds_up_the_preset() -> None:
    harness.load_plugins()
    projection = gpu_check.project(_figures())
    tests = sum(gpu_check.VTAB_TEST_SIZES.values())
    runs = 9 * 19
    train = runs * (100 * 1.0 + 2 * 0.03125)  # 100 epochs of 1 s, plus the memory probe and the first step
    evaluation = 9 * 11 * tests / 1000.0  # 11 evaluations of every test split per config (epochs 1, 11, ..., 91, 100)
    measure = runs * 20.0  # the pyra timing preset: 10 s warm-up + 10 s timed, at batch 512 (0.5 s a batch)
    search = 2 * 19 * 60 * (4 / 3) * 0.03125  # diffrate at 2 levels: 60 steps at 4/3 of LoRA's fp32 step
    # small_peft at 2 levels, once each (the process keeps the match): tome and one smaller candidate, in three
    # interleaved rounds of the preset, the later two warmed up by one iteration (a batch of 512, 0.512 s)
    match = 2 * 2 * (20.0 + 2 * (0.512 + 10.0))
    decode = (19 * 1000 + tests) / 1000.0
    part = projection["bf16"]
    assert part["train_h"] * 3600 == pytest.approx(train)
    assert part["eval_h"] * 3600 == pytest.approx(evaluation)
    assert part["measure_h"] * 3600 == pytest.approx(measure)
    assert part["diffrate_search_h"] * 3600 == pytest.approx(search)
    assert part["small_peft_match_h"] * 3600 == pytest.approx(match)
    assert part["small_peft_match_per_run_h"] * 3600 == pytest.approx(19 * match)  # a process per run
    assert part["decode_h"] * 3600 == pytest.approx(decode)
    assert part["total_h"] * 3600 == pytest.approx(train + evaluation + measure + search + match + decode)
    assert {row["config"]: row["from"] for row in part["rows"]}["diffrate-high"] == "tome-high bf16"


def test_projection_without_a_cell_is_partial() -> None:
    harness.load_plugins()
    figures = _figures()
    figures["training"] = [row for row in figures["training"] if row["config"] != "small_peft"]
    part = gpu_check.project(figures)["fp32"]
    assert part["total_h"] is None and part["missing"] == ["small_peft-low", "small_peft-high"]
    assert part["partial_total_h"] > 0


def test_targets_pass_and_fail_at_their_bounds() -> None:
    harness.load_plugins()
    figures = _figures()
    figures["training"][0].update(input_share=0.05, harness_vs_bare=0.95)  # at the bounds: pass
    high = next(row for row in figures["inference"]["fp32"] if row["variant"] == "tome-high")
    high.update(speedup=2.99, gmacs_ratio=3.46)
    figures["repeatability"] = {"medians": [100.0, 101.0, 102.0, 100.5, 101.5], "spread": 0.0198, "cv": 0.007}
    figures["projection"] = gpu_check.project(figures)
    results = {row["target"]: row for row in gpu_check.targets(figures)}
    assert results["input pipeline share of the training step"]["passed"] is True
    assert results["harness training loop vs bare PyTorch loop (img/s ratio)"]["passed"] is True
    assert results["speed-up at high compression, tome-high, fp32"]["passed"] is False
    assert "2.99x (GMACs ratio 3.46x" in results["speed-up at high compression, tome-high, fp32"]["measured"]
    assert results["speed-up at high compression, pyra-high, fp32"]["passed"] is False  # 1.0x in these figures
    repeat = next(row for name, row in results.items() if name.startswith("5 measurements"))
    assert repeat["passed"] is True
    table = next(row for name, row in results.items() if name.startswith("ViT-B/16 table"))
    hours = figures["projection"]["bf16"]["total_h"]
    assert table["passed"] is (hours <= 4.0) and math.isfinite(hours) and "fp32 training:" in table["measured"]


def test_an_older_timm_than_the_project_needs_stops_the_check_with_one_line(monkeypatch, tmp_path) -> None:
    installed = {"torch": "2.11.0+cu130", "timm": "1.0.20"}
    monkeypatch.setattr(gpu_check.importlib.metadata, "version", installed.__getitem__)
    assert gpu_check.unmet_requirements() == [
        "timm 1.0.20 is installed; adaptbench needs timm>=1.0.21: pip install 'timm>=1.0.21' (where no package "
        "index is reachable, bring its wheel)"]
    installed["timm"] = "1.0.21"
    assert gpu_check.unmet_requirements() == []  # a local build tag (+cu130) is not a version of its own
    monkeypatch.setattr(sys, "argv", ["gpu_check.py", "--tiny", "--device", "cpu", "--out", str(tmp_path)])
    installed["timm"] = "0.9.16"
    assert gpu_check.main() == 2
    assert not any(tmp_path.iterdir())  # stopped before anything was measured or written


# The machine a GPU is lent on runs the check with its own packages: one without submitit, one with an old timm.
MACHINE_PACKAGES = textwrap.dedent('''
    import importlib.metadata, os, sys

    class Lacking:
        def find_spec(self, name, path=None, target=None):
            if name == os.environ.get("LACKING"):
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, Lacking())
    if os.environ.get("TIMM_VERSION"):
        version = importlib.metadata.version
        importlib.metadata.version = lambda name: os.environ["TIMM_VERSION"] if name == "timm" else version(name)
''')


@pytest.mark.parametrize("machine, message", [
    ({"LACKING": "submitit"}, "error: submitit is not installed; the check imports it"),
    # an old timm whose modules harness imports from are not there: its version is what the line names
    ({"TIMM_VERSION": "0.9.16", "LACKING": "timm.models._hub"},
     "error: timm 0.9.16 is installed; adaptbench needs timm>=1.0.21"),
])
def test_a_machine_lacking_a_package_or_with_an_old_one_is_told_so_in_one_line(tmp_path, machine, message) -> None:
    (tmp_path / "sitecustomize.py").write_text(MACHINE_PACKAGES)
    path = os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))
    done = subprocess.run([sys.executable, str(Path(gpu_check.__file__)), "--tiny", "--device", "cpu", "--out",
                           str(tmp_path / "out")], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": path, **machine})
    assert done.returncode == 2 and done.stderr.startswith(message) and done.stderr.count("\n") == 1, done.stderr
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def tiny_inference() -> tuple[dict, dict]:
    """The tiny run's inference models, and their GMACs as the check records them."""
    harness.load_plugins()
    check = gpu_check.Check(Path("unused"), deadline_s=1e9)
    models = gpu_check.build_inference_models(check, gpu_check.TINY, 10, torch.device("cpu"))
    return models, check.results["inference_gmacs"]


def _compiled_check(tmp_path: Path, gmacs: dict) -> "gpu_check.Check":
    check = gpu_check.Check(tmp_path, deadline_s=1e9)
    check.results["inference_gmacs"] = gmacs
    check.results["settings"] = {"compiled_inference": True, "infer_batch": gpu_check.TINY.infer_batch,
                                 "budgets": {"infer_rounds": gpu_check.TINY_BUDGETS.infer_rounds}}
    return check


def test_compiled_inference_times_full_and_tome_high_compiled_once_each(monkeypatch, tmp_path,
                                                                      tiny_inference) -> None:
    tiny_inference_models, gmacs = tiny_inference
    compiled = []
    # a compilation on the CPU takes 30 s or more: what is tested here is what the section does around it
    monkeypatch.setattr(gpu_check.torch, "compile", lambda model: compiled.append(model) or model)
    check = _compiled_check(tmp_path, gmacs)
    gpu_check.section_compiled_inference(check, gpu_check.TINY, tiny_inference_models, gpu_check.TINY_BUDGETS,
                                         torch.device("cpu"))
    assert compiled == [tiny_inference_models["full"], tiny_inference_models["tome-high"]]
    assert set(check.results["compile_seconds"]) == {"full", "tome-high"}  # each compiled on its own first
    rows = {row["variant"]: row for row in check.results["compiled_inference"]["bf16"]}
    assert set(rows) == {"full", "tome-high"} and rows["tome-high"]["gmacs_ratio"] > 3
    assert len(rows["tome-high"]["rounds"]) == gpu_check.TINY_BUDGETS.infer_rounds
    informational = [row for row in gpu_check.targets(check.results) if "compiled" in row["target"]]
    assert len(informational) == 1 and informational[0]["passed"] in (True, False)
    markdown = (tmp_path / "gpu_check.md").read_text()
    assert "## Inference under torch.compile" in markdown and "compilation: full " in markdown


def test_a_failing_compilation_is_recorded_once_per_model_and_not_retried(monkeypatch, tmp_path,
                                                                          tiny_inference) -> None:
    tiny_inference_models, gmacs = tiny_inference

    def broken(model):
        def call(images):
            raise RuntimeError("no C compiler for triton's launcher")
        return call
    monkeypatch.setattr(gpu_check.torch, "compile", broken)
    check = _compiled_check(tmp_path, gmacs)
    gpu_check.section_compiled_inference(check, gpu_check.TINY, tiny_inference_models, gpu_check.TINY_BUDGETS,
                                         torch.device("cpu"))
    assert [error["what"] for error in check.results["errors"]] == [
        "compiled_inference full compilation", "compiled_inference tome-high compilation"]
    assert "compiled_inference" not in check.results and check.results["compile_seconds"] == {}


def test_each_compilation_waits_for_its_reserve_before_the_deadline(monkeypatch, tmp_path, tiny_inference) -> None:
    tiny_inference_models, gmacs = tiny_inference
    check = _compiled_check(tmp_path, gmacs)
    compiled = []

    def compile_slowly(model):  # the first compilation takes all but half the reserve
        compiled.append(model)
        check.deadline_s = check.elapsed() + gpu_check.COMPILED_RESERVE_S / 2
        return model
    monkeypatch.setattr(gpu_check.torch, "compile", compile_slowly)
    gpu_check.section_compiled_inference(check, gpu_check.TINY, tiny_inference_models, gpu_check.TINY_BUDGETS,
                                         torch.device("cpu"))
    assert compiled == [tiny_inference_models["full"]] and list(check.results["compile_seconds"]) == ["full"]
    assert len(check.results["skipped"]) == 1 and check.results["skipped"][0].startswith(
        "compiled inference tome-high (")
    assert [row["variant"] for row in check.results["compiled_inference"]["bf16"]] == ["full"]


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_compiled_inference_without_a_compiler_is_skipped_with_the_reason_before_compiling(
        monkeypatch, tmp_path, tiny_inference, device) -> None:
    tiny_inference_models, gmacs = tiny_inference
    monkeypatch.setattr(gpu_check.shutil, "which", lambda name: None)
    monkeypatch.delenv("CC", raising=False)
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setattr(gpu_check.importlib.util, "find_spec", lambda name: object())  # triton, wherever it is not
    monkeypatch.setattr(gpu_check.torch, "compile", lambda model: pytest.fail("compiled without a compiler"))
    check = _compiled_check(tmp_path, gmacs)
    gpu_check.section_compiled_inference(check, gpu_check.TINY, tiny_inference_models, gpu_check.TINY_BUDGETS,
                                         torch.device(device))
    expected = "no C compiler (gcc, clang, cc or $CC)" if device == "cuda" else "no C++ compiler (g++, clang++, c++"
    assert len(check.results["skipped"]) == 1 and expected in check.results["skipped"][0]


def test_a_model_that_cannot_run_stored_in_bf16_keeps_its_autocast_breakdown() -> None:
    class Picky(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = torch.nn.Linear(3 * 4 * 4, 5)

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            if self.linear.weight.dtype == torch.bfloat16:
                raise RuntimeError("no bf16 kernel for this op")
            return self.linear(images.flatten(1))

    result = gpu_check.forward_breakdown(Picky().eval(), 4, 2, "bf16", torch.device("cpu"), forwards=2)
    assert result["forward_ms"] > 0 and result["profiled_ms"] > 0
    assert result["stored_forward_ms"] is None and result["stored_error"] == "no bf16 kernel for this op"
