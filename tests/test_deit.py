"""DeiT distilled (PYRA's DeiT experiment): every method adapts timm's VisionTransformerDistilled, and the
distillation token (position 1) is never merged or pruned."""
import sys

import pytest
import timm
import torch
from timm.models.deit import VisionTransformerDistilled
from torch import nn

import harness
from harness.backbones import check_supported, known_backbone, smaller_in_family
from harness.compression import resolve_schedule, schedule_gmacs
from harness.data import Normalize
from harness.measure import count_gmacs
from harness.train import TrainConfig, Trainer, build_optimizer

DEIT_B = "deit_base_distilled_patch16_224"


def tiny_deit() -> nn.Module:
    """timm's DeiT-B distilled class at 32x32, patch 4 (64 patches + class + distillation token), width 32."""
    torch.manual_seed(0)
    model = timm.create_model(DEIT_B, pretrained=False, img_size=32, patch_size=4, embed_dim=32, depth=4,
                              num_heads=2, num_classes=3)
    model.adaptbench_pretrained = False  # small_peft's smaller DeiT starts random too: no hub weights here
    return model


def diffrate_module():
    harness.load_plugins()
    return next(module for name, module in sys.modules.items()
                if name.startswith("_adaptbench_plugins.methods.diffrate"))


def images(count: int = 4, seed: int = 1) -> torch.Tensor:
    return torch.randn(count, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def make_blocks_identity(model: nn.Module) -> nn.Module:
    """Zero every block's attention and MLP output: the residual stream then carries each token's embedding
    unchanged, so a token never merged or dropped leaves the model exactly as it entered (keys still differ, so
    the methods still rank and match tokens)."""
    with torch.no_grad():
        for block in model.blocks:
            for layer in (block.attn.proj, block.mlp.fc2):
                layer.weight.zero_()
                layer.bias.zero_()
    return model


def assert_prefix_tokens_untouched(model: nn.Module, tokens_left: int) -> None:
    with torch.no_grad():
        features = model.forward_features(images())
        entering = model.pos_embed[:, :2] + torch.cat([model.cls_token, model.dist_token], dim=1)
        assert features.shape[1] == tokens_left < 66  # tokens did go
        torch.testing.assert_close(features[:, :2], model.norm(entering).expand(len(features), -1, -1),
                                   rtol=0, atol=1e-6)


METHODS = [("full_ft", "none"), ("lora", "none"), ("tome", "low"), ("pyra", "low"), ("diffrate", "low"),
           ("small_peft", "none")]


@pytest.mark.parametrize("method, compression", METHODS)
def test_every_method_adapts_trains_and_predicts_on_deit_distilled(method, compression):
    context = {"train_data": [images(8, seed) for seed in range(2)], "search_steps": 4} if method == "diffrate" else {}
    model = harness.adapt(tiny_deit(), method, compression, **context)
    assert isinstance(model, VisionTransformerDistilled)  # patched in place (small_peft: a DeiT-S), never forked
    assert model.head_dist.weight.requires_grad and model.head.weight.requires_grad
    trainer = Trainer(model, build_optimizer(model, TrainConfig()), Normalize((0.5,) * 3, (0.25,) * 3, "cpu"))
    labels = torch.tensor([0, 1, 2, 0])
    uint8 = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    assert torch.isfinite(trainer.train_step(uint8, labels))
    deployed = harness.merge_for_inference(model).eval()
    with torch.no_grad():
        assert deployed(images(2)).shape == (2, 3)


def test_training_output_is_the_mean_of_both_heads_as_deit_fine_tunes():
    model = tiny_deit().train()  # timm returns (head, head_dist) in training only with distilled_training set
    assert model.distilled_training is False
    batch = images()
    features = model.forward_features(batch)
    expected = (model.head(features[:, 0]) + model.head_dist(features[:, 1])) / 2
    torch.testing.assert_close(model(batch), expected)


def test_the_class_head_loss_trains_the_class_head_alone_and_evaluation_still_averages_both_heads():
    """The PYRA code's DeiT training (``outputs, _ = model(samples)``): the distillation head keeps its
    initialisation, and the prediction is still the mean of both heads."""
    import torch.nn.functional as F

    model = harness.adapt(tiny_deit(), "full_ft")
    head, head_dist = model.head.weight.detach().clone(), model.head_dist.weight.detach().clone()
    trainer = Trainer(model, build_optimizer(model, TrainConfig()), Normalize((0.5,) * 3, (0.25,) * 3, "cpu"),
                      distilled_loss="class_head")
    uint8 = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    labels = torch.tensor([0, 1, 2, 0])
    with torch.no_grad():
        features = model.forward_features(trainer.normalize(uint8))
        expected = F.cross_entropy(model.head(features[:, 0]), labels)
    assert trainer.train_step(uint8, labels).item() == pytest.approx(expected.item(), rel=1e-5)
    assert torch.equal(model.head_dist.weight, head_dist) and not torch.equal(model.head.weight, head)
    model.eval()
    with torch.no_grad():
        features = model.forward_features(images())
        torch.testing.assert_close(model(images()), (model.head(features[:, 0]) + model.head_dist(features[:, 1])) / 2)


def test_the_class_head_loss_is_refused_in_the_plan_for_a_backbone_without_a_distillation_head():
    from harness.errors import UserError
    from harness.plan import _check_adapts

    config = TrainConfig(distilled_loss="class_head")
    _check_adapts("lora", "none", "deit_tiny_distilled_patch16_224", 32, 3, config)
    with pytest.raises(UserError, match="vit_tiny_patch16_224 has no distillation head; use a distilled backbone"):
        _check_adapts("lora", "none", "vit_tiny_patch16_224", 32, 3, config)


@pytest.mark.parametrize("method", ["tome", "pyra"])
def test_token_merging_never_merges_the_distillation_token(method):
    model = make_blocks_identity(harness.adapt(tiny_deit(), method, "low")).eval()
    assert_prefix_tokens_untouched(model, 66 - sum(model.merge_schedule))
    assert torch.equal(model.merge_state.size[:, :2], torch.ones(4, 2, 1))  # nothing merged into them either


def test_diffrate_never_prunes_or_merges_the_distillation_token():
    module = diffrate_module()
    model = make_blocks_identity(module.patch_diffrate(tiny_deit())).eval()
    module.set_kept(model, [66, 20, 12, 1], [66, 12, 8, 1])  # the last block as far as it goes: both + 1 patch
    assert [block.merge_kept for block in model.blocks] == [66, 12, 8, 3]
    assert_prefix_tokens_untouched(model, 3)
    assert torch.equal(model.rate_state.size[:, :2], torch.ones(4, 2, 1))


def test_diffrate_search_keeps_the_distillation_token_live():
    model = make_blocks_identity(tiny_deit())
    model = harness.adapt(model, "diffrate", "low", train_data=[images(8)], search_steps=3)
    assert all(block.merge_kept >= 3 for block in model.blocks)
    module = diffrate_module()
    for block in model.blocks[1:]:  # a search forward, every block pushed to keep as few tokens as it can
        block.prune_proxy, block.merge_proxy = module.RateProxy(64, 2), module.RateProxy(64, 2)
        with torch.no_grad():
            block.prune_proxy.logits[-1] = block.merge_proxy.logits[-1] = 30.0
    model.rate_state.searching = True
    with torch.no_grad():
        features = model.forward_features(images())
    assert torch.equal(model.rate_state.mask[:, :2], torch.ones(4, 2))
    entering = model.pos_embed[:, :2] + torch.cat([model.cls_token, model.dist_token], dim=1)
    torch.testing.assert_close(features[:, :2], model.norm(entering).expand(4, -1, -1), rtol=0, atol=1e-6)


def test_gmacs_formulas_count_the_distillation_head():
    tome = harness.merge_for_inference(harness.adapt(tiny_deit(), "tome", "low"))
    assert schedule_gmacs(tome, tome.merge_schedule) == pytest.approx(count_gmacs(tome, 32), rel=1e-9)
    module = diffrate_module()
    diffrate = module.patch_diffrate(tiny_deit())
    module.set_kept(diffrate, [66, 40, 30, 20], [66, 30, 25, 12])
    assert module.diffrate_gmacs(diffrate) == pytest.approx(count_gmacs(diffrate, 32), rel=1e-9)


def test_deit_b_takes_the_pyra_codes_schedules_and_deit_s_is_its_small_model():
    check_supported(DEIT_B)
    with torch.device("meta"):
        model = timm.create_model(DEIT_B, pretrained=False, num_classes=10)
    assert resolve_schedule(model, "low") == [16] * 6 + [10] * 6
    assert resolve_schedule(model, "high") == [40, 34, 30, 24, 18, 14, 10, 8, 4, 4, 3, 3]
    with torch.device("meta"):
        adapted = harness.adapt(timm.create_model(DEIT_B, pretrained=False, num_classes=10), "tome", "low")
    assert adapted.merge_schedule == [16] * 6 + [10] * 6
    info = known_backbone(model)
    assert info.family == "deit" and [small.name for small in smaller_in_family(info)] == [
        "deit_small_distilled_patch16_224"]
    assert harness.lora_rank_for(model.embed_dim) == 8
