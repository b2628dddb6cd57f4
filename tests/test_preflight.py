"""Preflight: backbones are checked and their weights found on disk before any run, with no network at all."""
import time

import huggingface_hub
import pytest
import timm
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

import harness
from harness import backbones
from harness.cli import main
from harness.preflight import preflight

HUB_VIT = "test_vit.r160_in1k"  # timm's smallest hub ViT (0.37 M parameters): weights only on the HF hub
MICRO = "vit_micro_small_patch4_32"


@pytest.fixture(autouse=True)
def offline(tmp_path, monkeypatch):
    """Empty caches, and every way timm could download made to fail the test: a lookup must never need them."""
    def no_network(*args, **kwargs):
        raise AssertionError("the network was asked for")

    cache = tmp_path / "hf-hub"
    cache.mkdir()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(timm.models._hub, "hf_hub_download", no_network)
    monkeypatch.setattr(timm.models._hub, "download_url_to_file", no_network)
    monkeypatch.setattr(timm.models._builder, "load_state_dict_from_url", no_network)
    return cache


def cache_repo(cache, repo: str, filename: str, state_dict: dict) -> None:
    """Lay out ``repo`` as ``huggingface_hub`` leaves a download: refs/main names the snapshot holding the file."""
    folder = cache / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text("0123abcd")
    snapshot = folder / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    if filename.endswith(".safetensors"):
        save_file(state_dict, str(snapshot / filename))
    else:
        torch.save(state_dict, snapshot / filename)


def seeded(name: str, **kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, **kwargs)


@pytest.mark.parametrize("filename", ["model.safetensors", "pytorch_model.bin"])  # timm's order of hub files
def test_weights_in_the_hugging_face_cache_resolve_and_load_without_network(offline, filename):
    source = seeded(HUB_VIT)
    cache_repo(offline, f"timm/{HUB_VIT}", filename, source.state_dict())
    assert backbones.resolve_weights(HUB_VIT).name == filename
    model = harness.create_backbone(HUB_VIT, num_classes=3)  # a new head, the cached body
    assert torch.equal(model.blocks[1].attn.qkv.weight, source.blocks[1].attn.qkv.weight)
    assert model.head.out_features == 3 and model.adaptbench_pretrained
    assert preflight([HUB_VIT], None) == {HUB_VIT: backbones.resolve_weights(HUB_VIT)}


def test_a_cached_safetensors_loads_even_where_timms_cfg_names_a_big_vision_npz(offline):
    name = "vit_tiny_patch16_224.augreg_in21k"  # custom_load: the cfg's own source is an .npz
    source = seeded(name, num_classes=0)
    cache_repo(offline, f"timm/{name}", "model.safetensors", source.state_dict())
    model = harness.create_backbone(name, num_classes=3)
    assert torch.equal(model.blocks[2].mlp.fc1.weight, source.blocks[2].mlp.fc1.weight)


def test_missing_weights_are_one_line_naming_backbone_cache_and_fix_at_once(offline):
    name = "vit_base_patch16_224.orig_in21k"
    started = time.perf_counter()
    with pytest.raises(harness.UserError) as error:
        harness.create_backbone(name, num_classes=3, pretrained=True)
    assert time.perf_counter() - started < 2  # no hub retries (timm alone takes ~46 s offline)
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"cannot load pretrained weights for '{name}' offline")
    assert str(offline / "models--timm--vit_base_patch16_224.orig_in21k") in message and f"timm/{name}" in message
    assert f"timm.create_model('{name}', pretrained=True)" in message
    assert "--weights PATH" in message and "--no-pretrained" in message
    with pytest.raises(harness.UserError, match="cannot load pretrained weights"):
        preflight([name], None)
    assert preflight([name], False) == {name: None}


def test_a_url_source_is_found_in_torch_hubs_checkpoint_folder(tmp_path):
    name = "deit_small_distilled_patch16_224"
    with pytest.raises(harness.UserError, match="torch hub's cache has no"):
        backbones.resolve_weights(name)
    checkpoint = tmp_path / "torch" / "hub" / "checkpoints" / "deit_small_distilled_patch16_224-649709d9.pth"
    checkpoint.parent.mkdir(parents=True)
    checkpoint.touch()
    assert backbones.resolve_weights(name) == checkpoint


@pytest.mark.parametrize("suffix", ["safetensors", "pth", "pt"])
def test_a_weights_file_loads_as_safetensors_or_torch_checkpoint(tmp_path, suffix):
    source = seeded(MICRO, num_classes=5)
    path = tmp_path / f"fine_tuned.{suffix}"
    if suffix == "safetensors":
        save_file(source.state_dict(), str(path))
    else:  # a training checkpoint keeps the weights under "model" (timm reads that key)
        torch.save({"model": source.state_dict()} if suffix == "pth" else source.state_dict(), path)
    model = harness.create_backbone(MICRO, num_classes=5, weights=path)
    loaded = model.state_dict()
    for key, value in source.state_dict().items():
        assert torch.equal(loaded[key], value) or key.startswith("head."), key  # timm's rule: a new head
    assert not torch.equal(model.head.weight, source.head.weight)  # (its class count was not pretrained)
    assert preflight([MICRO], None, path) == {MICRO: path}


def test_bad_weights_are_one_line_each(tmp_path):
    (tmp_path / "notes.txt").touch()
    other = tmp_path / "base.safetensors"
    save_file(seeded("vit_micro_base_patch4_32").state_dict(), str(other))
    unrelated = tmp_path / "resnet.pth"  # loads "fine" in timm (non-strict with a new head): loads nothing
    torch.save({"model": {"fc.weight": torch.zeros(3, 8)}}, unrelated)
    cases = [(tmp_path / "missing.pth", "does not exist"), (tmp_path, "is a folder"),
             (tmp_path / "notes.txt", "is not a weights file timm reads"),
             (other, f"cannot load pretrained weights for '{MICRO}' from {other}"),
             (unrelated, f"lacks 150 of the tensors of '{MICRO}'")]
    for path, expected in cases:
        with pytest.raises(harness.UserError, match=expected) as error:
            harness.create_backbone(MICRO, num_classes=3, weights=path)
        assert "\n" not in str(error.value)
    with pytest.raises(harness.UserError, match="--no-pretrained; drop one"):
        harness.create_backbone(MICRO, num_classes=3, pretrained=False, weights=other)
    with pytest.raises(harness.UserError, match="contradict"):
        preflight([MICRO], False, other)
    with pytest.raises(harness.UserError, match="--weights fits one backbone"):
        preflight([MICRO, "vit_micro_base_patch4_32"], None, other)


def test_a_vit_without_pretrained_weights_is_refused_unless_pretrained_is_false():
    name = "vit_base_patch16_gap_224"  # timm registers it "untrained": no source at all
    for pretrained in (None, True):
        with pytest.raises(harness.UserError, match=f"backbone '{name}' has no pretrained weights in timm.*"
                                                    f"--no-pretrained") as error:
            preflight([name], pretrained)
        assert "\n" not in str(error.value)
    assert preflight([name], False) == {name: None}


@pytest.mark.parametrize("name, problem", [
    ("vit_base_patch16_18x2_224", "has ParallelThingsBlock blocks, not timm's plain Block"),  # 2 parallel branches
    ("vit_base_patch16_reg4_gap_256", "has 4 register tokens"),
    ("resnet18", "is a ResNet, not a timm VisionTransformer"),
])
def test_architectures_the_methods_cannot_patch_are_refused_with_one_line(name, problem):
    for check in (lambda: preflight([name], False), lambda: harness.create_backbone(name, 3, pretrained=False)):
        with pytest.raises(harness.UserError, match=f"backbone '{name}' {problem}") as error:
            check()
        assert "\n" not in str(error.value)


def test_an_unsupported_backbone_stops_the_plan_with_one_line():
    result = CliRunner().invoke(main, ["--dry-run", "--tasks", "count", "--backbone", "vit_base_patch16_18x2_224"])
    assert result.exit_code == 2 and "ParallelThingsBlock blocks" in result.output
    assert "Traceback" not in result.output and "AttributeError" not in result.output


def test_micro_vits_still_load_their_shipped_weights_and_small_peft_needs_no_hub():
    found = preflight(["vit_micro_base_patch4_32", "vit_micro_base_patch4_32"], None, also=[MICRO])
    assert found == {name: backbones.shipped_weights(name) for name in ("vit_micro_base_patch4_32", MICRO)}
    big = harness.create_backbone("vit_micro_base_patch4_32", 3)
    shipped = timm.create_model("vit_micro_base_patch4_32", pretrained=True)
    assert torch.equal(big.blocks[5].mlp.fc2.weight, shipped.blocks[5].mlp.fc2.weight)
    small = harness.adapt(big, "small_peft")  # its smaller backbone resolves through the same local lookup
    assert small.adaptbench_info["small_backbone"] == "vit_micro_medium_patch4_32"
