"""Training precision and speed switches: autocast with a scaler for fp16, TF32 and cudnn.benchmark for one run,
torch.compile of the training step, each recorded in the row and noted by the report."""
import copy
import json

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from conftest import run_record, tiny_vit, write_runs

import harness
from harness import pipeline, report
from harness.cli import main
from harness.data import Normalize
from harness.train import TrainConfig, Trainer, backend_flags, build_optimizer

CPU = torch.device("cpu")
NORMALIZE = Normalize((0.5,) * 3, (0.25,) * 3, CPU)


def _batch(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8, generator=generator), torch.arange(8) % 3


def _trainer(precision: str = "fp32", model=None, **kwargs) -> Trainer:
    if model is None:
        torch.manual_seed(0)
        model = harness.adapt(tiny_vit(), "lora")
    return Trainer(model, build_optimizer(model, TrainConfig()), NORMALIZE, precision=precision, **kwargs)


def _head_dtypes(trainer: Trainer) -> list:
    seen = []
    trainer.model.head.register_forward_hook(lambda module, inputs, output: seen.append(output.dtype))
    return seen


def test_bf16_trains_on_cpu_under_autocast_with_the_loss_in_fp32():
    bf16, fp32 = _trainer("bf16"), _trainer("fp32")
    seen = _head_dtypes(bf16)
    before = {name: p.detach().clone() for name, p in bf16.model.named_parameters() if p.requires_grad}
    torch.manual_seed(1)
    loss = bf16.train_step(*_batch())
    assert seen == [torch.bfloat16]  # autocast was active in the forward pass
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    torch.manual_seed(1)
    assert loss != fp32.train_step(*_batch())  # same weights, batch and dropout; another precision
    assert any(not torch.equal(p, before[name]) for name, p in bf16.model.named_parameters() if name in before)
    assert not bf16.scaler.is_enabled()


def test_evaluation_runs_in_inference_mode_in_the_training_precision():
    trainer = _trainer("bf16")
    seen, inference = _head_dtypes(trainer), []
    trainer.model.head.register_forward_hook(lambda *args: inference.append(torch.is_inference_mode_enabled()))
    accuracy = trainer.evaluate([_batch(0), _batch(1)])
    assert 0 <= accuracy <= 100 and seen == [torch.bfloat16] * 2 and inference == [True, True]
    fp32 = _trainer("fp32")
    seen = _head_dtypes(fp32)
    fp32.evaluate([_batch(0)])
    assert seen == [torch.float32]


def test_fp32_step_is_the_plain_step_bit_for_bit():
    """No autocast, no scaler, the same ops in the same order as before the switches: published numbers hold."""
    trainer = _trainer("fp32")
    model = copy.deepcopy(trainer.model)
    optimizer = build_optimizer(model, TrainConfig())
    for seed in range(3):
        images, labels = _batch(seed)
        torch.manual_seed(seed)  # the same dropout in both
        logits = model(NORMALIZE(images))
        expected = F.cross_entropy(logits, labels)
        expected.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        torch.manual_seed(seed)
        assert torch.equal(trainer.train_step(images, labels), expected.detach())
    assert all(torch.equal(a, b) for a, b in zip(trainer.model.parameters(), model.parameters()))


def test_fp16_scales_the_loss_with_an_enabled_grad_scaler(monkeypatch):
    """torch >= 2.3 runs fp16 autocast and GradScaler on the CPU too, so fp16 is tested here for real."""
    assert [_trainer(precision).scaler.is_enabled() for precision in ("fp32", "bf16", "fp16")] == [False, False, True]
    trainer = _trainer("fp16")
    seen, scaled = _head_dtypes(trainer), []
    scale = trainer.scaler.scale
    monkeypatch.setattr(trainer.scaler, "scale", lambda loss: scaled.append(loss) or scale(loss))
    before = {name: p.detach().clone() for name, p in trainer.model.named_parameters() if p.requires_grad}
    loss = trainer.train_step(*_batch())
    assert seen == [torch.float16] and len(scaled) == 1 and loss.dtype == torch.float32 and torch.isfinite(loss)
    assert trainer.scaler.get_scale() == 65536.0  # no overflow: the step was taken, the scale kept
    assert any(not torch.equal(p, before[name]) for name, p in trainer.model.named_parameters() if name in before)


def test_undone_steps_put_back_the_scaler_state():
    trainer = _trainer("fp16")
    trainer.train_step(*_batch())
    state = trainer.scaler.state_dict()
    with pipeline.undone_steps(trainer):
        trainer.train_step(*_batch(1))
        trainer.scaler.update(new_scale=8.0)
    assert trainer.scaler.state_dict() == state
    with pipeline.undone_steps(_trainer("fp32")):  # a disabled scaler has no state to put back
        pass


def test_an_unknown_precision_is_refused_by_the_config():
    with pytest.raises(ValueError, match="precision must be one of fp32, bf16, fp16, not 'fp8'"):
        TrainConfig(precision="fp8")


def test_a_gpu_without_bfloat16_is_refused_in_one_line(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla V100")
    normalize = Normalize((0.5,) * 3, (0.25,) * 3, CPU)
    normalize.device = torch.device("cuda")  # no tensor moves before the check
    model = tiny_vit()
    with pytest.raises(harness.UserError, match="--train-precision bf16: Tesla V100 does not support bfloat16; "
                                                "use --train-precision fp16 or fp32"):
        Trainer(model, build_optimizer(model, TrainConfig()), normalize, precision="bf16")


def _flags():
    return (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark)


def test_backend_flags_hold_for_a_cuda_run_and_are_put_back(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    before = _flags()
    cuda = torch.device("cuda")
    with backend_flags(TrainConfig(tf32=True, cudnn_benchmark=True), cuda) as in_effect:
        assert _flags() == (True, True, True) and in_effect == {"train_tf32_effective": True}
    assert _flags() == before
    with pytest.raises(RuntimeError, match="boom"), backend_flags(TrainConfig(tf32=False), cuda) as in_effect:
        assert _flags() == (False, False, False) and in_effect == {"train_tf32_effective": False}
        raise RuntimeError("boom")
    assert _flags() == before
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 0))  # no TF32 before Ampere
    with backend_flags(TrainConfig(tf32=True), cuda) as in_effect:
        assert in_effect == {"train_tf32_effective": False}
    with backend_flags(TrainConfig(tf32=True, cudnn_benchmark=True), CPU) as in_effect:  # CPU: nothing touched
        assert _flags() == before and in_effect == {"train_tf32_effective": False}


def test_a_run_holds_its_backend_flags_from_start_to_end(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    seen = []
    config = type("Config", (), {"train": TrainConfig(tf32=True, cudnn_benchmark=True)})()
    run = pipeline._under_backend_flags(lambda *args, **kwargs: seen.append((_flags(), args, kwargs)) or {"a": 1})
    before = _flags()
    assert run(config, "task", torch.device("cuda"), "log", run_dir=None) == {"a": 1, "train_tf32_effective": True}
    assert seen == [((True, True, True), (config, "task", torch.device("cuda"), "log"), {"run_dir": None})]
    assert _flags() == before
    assert pipeline.train_and_measure.__wrapped__  # the pipeline's run is the wrapped one


def test_compile_trains_a_compiled_model_and_keeps_the_module_for_the_rest(monkeypatch):
    compiled = []

    class Compiled(torch.nn.Module):
        def __init__(self, module):
            super().__init__()
            self.module, self.calls = module, 0

        def forward(self, images):
            self.calls += 1
            return self.module(images)

    monkeypatch.setattr(torch, "compile", lambda model, **kwargs: compiled.append(Compiled(model)) or compiled[-1])
    plain = _trainer("fp32")
    assert plain.trained is plain.model and not compiled
    trainer = _trainer("fp32", compile=True)
    assert len(compiled) == 1 and compiled[0].module is trainer.model and trainer.trained is compiled[0]
    trainer.train_step(*_batch())
    trainer.evaluate([_batch()])
    assert compiled[0].calls == 1  # training ran the compiled model, evaluation the module itself


def invoke(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_a_bf16_run_records_its_switches_in_the_row_and_the_report_says_so(plugin_file, tmp_path, monkeypatch):
    compiled = []
    monkeypatch.setattr(torch, "compile", lambda model, **kwargs: compiled.append(model) or model)
    out = tmp_path / "runs"
    result = invoke("--plugins", str(plugin_file), "--methods", "bitfit", "--tasks", "tiny", "--bench-batch", "8",
                    "--train-precision", "bf16", "--tf32", "--cudnn-benchmark", "--compile-train", "--out", str(out))
    assert result.exit_code == 0, result.output
    record = json.loads(next(out.glob("*.json")).read_text())
    assert record["status"] == "ok" and record["config"]["train"]["precision"] == "bf16"
    assert record["metrics"]["train_tf32_effective"] is False  # a CPU run: TF32 asked for, not in effect
    assert record["metrics"]["precision"] == "fp32"  # inference is measured as --amp says, apart from training
    assert len(compiled) == 1  # the training model, once
    row = pd.read_csv(out / "results.csv").iloc[0]
    assert (row["train_precision"], row["train_tf32"], row["train_cudnn_benchmark"], row["train_compile"]) == (
        "bf16", True, True, True)
    result = invoke("report", str(out), "--out", str(tmp_path / "report"))
    assert result.exit_code == 0, result.output
    assert "note: 1 of 1 runs trained in bf16 (--train-precision), not the paper's fp32" in result.output
    assert "note: 1 of 1 runs trained a torch.compile of the model (--compile-train)" in result.output
    assert "TF32" not in result.output


def _with_train(seed: int, **train) -> dict:
    record = run_record("lora", "count", seed=seed)
    record["config"]["train"].update(train)
    return record


def _notes(tmp_path, name, records) -> list[str]:
    runs, _ = report.load_runs([write_runs(tmp_path / name, records)])
    return report.write_suite_report(runs, tmp_path / f"{name}-report").warnings


def test_the_report_notes_runs_not_trained_as_the_paper_trains(tmp_path):
    notes = _notes(tmp_path, "mixed", [_with_train(0, precision="bf16", tf32=True),
                                       _with_train(1, precision="fp16", compile=True),
                                       _with_train(2, precision="bf16"), _with_train(3, precision="fp32"),
                                       run_record("lora", "count", seed=4)])  # no column: fp32
    assert "2 of 5 runs trained in bf16 (--train-precision), not the paper's fp32" in notes
    assert "1 of 5 runs trained in fp16 (--train-precision), not the paper's fp32" in notes
    assert "1 of 5 runs trained a torch.compile of the model (--compile-train)" in notes
    assert not any("TF32" in note for note in notes)  # asked for, but the record says nothing was in effect
    tf32 = _with_train(5, tf32=True)
    tf32["metrics"]["train_tf32_effective"] = True
    assert "1 of 1 runs used TF32 matmuls and convolutions (--tf32), not the paper's full fp32" in _notes(
        tmp_path, "tf32", [tf32])


def test_fp32_runs_and_records_from_before_the_switches_get_no_note(tmp_path):
    fp32 = [_with_train(seed, precision="fp32", tf32=False, compile=False) for seed in range(2)]
    fp32[0]["metrics"]["train_tf32_effective"] = False
    older = [run_record("lora", "count", seed=seed) for seed in range(2, 4)]
    notes = _notes(tmp_path, "plain", fp32 + older)
    assert not any(word in note for note in notes for word in ("--train-precision", "--tf32", "--compile-train"))


def test_each_compiling_run_starts_from_cleared_dynamo_caches(plugin_file, tmp_path, monkeypatch):
    """Runs of one inline sweep compile new models of the same classes: past dynamo's recompile limit the later
    ones would silently run eagerly, so each run that compiles clears the caches first, and no other run does."""
    resets = []
    monkeypatch.setattr(torch, "compile", lambda model, **kwargs: model)
    monkeypatch.setattr(torch._dynamo, "reset", lambda: resets.append(1))
    common = ["--plugins", str(plugin_file), "--methods", "bitfit", "--tasks", "tiny", "--bench-batch", "8",
              "--seeds", "0,1"]
    result = invoke(*common, "--out", str(tmp_path / "plain"))
    assert result.exit_code == 0, result.output
    assert resets == []
    for flag in ("--compile-train", "--compile"):
        resets.clear()
        result = invoke(*common, flag, "--out", str(tmp_path / flag.strip("-")))
        assert result.exit_code == 0 and "2 ok, 0 failed" in result.output, result.output
        assert len(resets) == 2


def test_the_report_notes_runs_timed_without_a_warm_up_time(tmp_path):
    quick, default = (run_record("lora", "count", seed=seed) for seed in range(2))
    quick["config"]["measure"]["warmup_seconds"] = 0.0
    notes = _notes(tmp_path, "quick", [quick, default])
    assert "1 of 2 runs were timed without a warm-up time (--bench-preset quick): their throughput can read low" \
        in notes
    assert not any("warm-up" in note for note in _notes(tmp_path, "warmed", [default]))
