import sys

import pytest
import timm
import torch

import harness
from harness.measure import count_gmacs


def diffrate_module():
    harness.load_plugins()
    return next(module for name, module in sys.modules.items() if name.startswith("_adaptbench_plugins.methods.diffrate"))


def micro():
    torch.manual_seed(0)
    return timm.create_model("vit_micro_small_patch4_32", num_classes=4)


def batches(count=3):
    generator = torch.Generator().manual_seed(1)
    return [torch.randn(8, 3, 32, 32, generator=generator) for _ in range(count)]


def test_uncompressed_diffrate_keeps_the_plain_model_logits():
    plain = micro().eval()
    patched = diffrate_module().patch_diffrate(micro()).eval()
    patched.load_state_dict(plain.state_dict())
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():  # sorting tokens by importance changes nothing while none is dropped
        torch.testing.assert_close(patched(images), plain(images), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("level", ["low", "high"])
def test_found_rates_reach_the_gmacs_of_tome_at_the_same_level(level):
    model = harness.adapt(micro(), "diffrate", compression=level, train_data=batches(), search_steps=6)
    info = model.adaptbench_info
    deployed = harness.merge_for_inference(model)
    assert count_gmacs(deployed, 32) == pytest.approx(info["target_gmacs"], rel=0.02)
    tome = harness.merge_for_inference(harness.adapt(micro(), "tome", compression=level))
    assert info["target_gmacs"] == pytest.approx(count_gmacs(tome, 32), rel=1e-6)
    assert info["prune_kept"].startswith("65,") and info["merge_kept"].startswith("65,")  # block 0 keeps all
    assert not any("proxy" in name for name, _ in deployed.named_parameters())


def test_search_moves_the_rates_when_the_target_moves():
    low = harness.adapt(micro(), "diffrate", compression="low", train_data=batches(), search_steps=12)
    high = harness.adapt(micro(), "diffrate", compression="high", train_data=batches(), search_steps=12)
    assert high.adaptbench_info["search_gmacs"] < 0.9 * low.adaptbench_info["search_gmacs"]
    assert high.adaptbench_info["merge_kept"] != low.adaptbench_info["merge_kept"]


def test_gmacs_formula_matches_the_counter_and_tokens_follow_the_counts():
    module = diffrate_module()
    model = module.patch_diffrate(micro()).eval()
    module.set_kept(model, [65, 40, 30, 30, 20, 20, 20, 10, 10, 10, 8, 8], [65, 35, 30, 25, 20, 15, 12, 10, 9, 8, 8, 6])
    seen = []
    for block in model.blocks:
        block.mlp.register_forward_hook(lambda module_, inputs, output: seen.append(inputs[0].shape[1]))
    assert module.diffrate_gmacs(model) == pytest.approx(count_gmacs(model, 32), rel=1e-9)
    assert seen == [65, 35, 30, 25, 20, 15, 12, 10, 9, 8, 8, 6]


def test_search_needs_training_images():
    with pytest.raises(harness.UserError, match="searches its rates on training images"):
        harness.adapt(micro(), "diffrate", compression="high")
