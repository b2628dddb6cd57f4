import dataclasses
import pytest
import timm
import torch

import harness
from conftest import tiny_vit
from harness.compression import resolve_schedule, schedule_gmacs
from harness import registry
from harness.measure import MeasureConfig, Throughput, count_gmacs
from harness.token_merging import Matching, bipartite_soft_matching, merge_weighted, token_counts


def micro(**kwargs):
    return timm.create_model("vit_micro_small_patch4_32", num_classes=5, **kwargs)


def test_zero_merging_gives_the_unpatched_logits():
    torch.manual_seed(0)
    plain = micro().eval()
    patched = micro().eval()
    patched.load_state_dict(plain.state_dict())
    harness.token_merging.patch_token_merging(patched, [0] * 12)
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(patched(images), plain(images), rtol=1e-5, atol=1e-5)


def test_token_counts_follow_the_schedule():
    model = harness.adapt(micro(), "tome", compression="high").eval()
    seen = []
    for block in model.blocks:
        block.mlp.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0].shape[1]))
    with torch.no_grad():
        model(torch.randn(2, 3, 32, 32))
    assert seen == token_counts(model, model.merge_schedule)
    assert seen[0] == 65 - model.merge_schedule[0] and seen[-1] == 65 - sum(model.merge_schedule)


def test_r_is_capped_at_half_the_mergeable_tokens():
    model = harness.adapt(micro(), "tome", compression="[40,40,0,0,0,0,0,0,0,0,0,0]")
    assert model.merge_schedule[:2] == [32, 16]  # 64 mergeable, then 32


def test_class_token_survives_and_merges_are_size_weighted_means():
    torch.manual_seed(0)
    x = torch.randn(2, 9, 4)
    size = torch.randint(1, 4, (2, 9, 1)).float()
    matching = bipartite_soft_matching(torch.randn(2, 9, 4), r=3, class_token=True)
    merged, merged_size = merge_weighted(x, size, matching)
    assert merged.shape == (2, 6, 4) and merged_size.shape == (2, 6, 1)
    torch.testing.assert_close(merged[:, 0], x[:, 0])  # class token first and untouched
    assert torch.equal(merged_size[:, 0], size[:, 0])
    kept = x.shape[1] - x.shape[1] // 2 - 3  # A tokens left unmerged come first, then the B tokens
    for batch in range(2):
        for slot in range(x.shape[1] // 2):  # every B token is the size-weighted mean of itself and its sources
            b_position = 2 * slot + 1
            sources = [b_position] + [2 * int(s) for s, d in zip(matching.src[batch, :, 0], matching.dst[batch, :, 0])
                                      if int(d) == slot]
            weights = size[batch, sources]
            expected = (x[batch, sources] * weights).sum(0) / weights.sum()
            torch.testing.assert_close(merged[batch, kept + slot], expected)
            assert merged_size[batch, kept + slot, 0] == weights.sum()
    assert torch.allclose(merged_size.sum(1), size.sum(1))  # no token mass is lost


@pytest.mark.parametrize("method", ["tome", "pyra"])
def test_token_sizes_and_so_the_attention_bias_carry_no_gradient(method):
    """The original merges sizes on their own, from ones; ours travel with the tokens, and must not bring their
    gradient along: a bias that requires grad makes a fused attention's backward build a (B, H, N, N) gradient."""
    model = harness.adapt(micro(), method, compression="high").train()
    seen = []
    for block in model.blocks:
        block.attn.register_forward_pre_hook(lambda module, args: seen.append(args[1]))
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    sizes = [size for size in seen if size is not None]
    assert len(sizes) == len(model.blocks) - 1  # every block after the first attends with sizes
    assert not any(size.requires_grad for size in sizes)
    assert any(parameter.grad is not None for name, parameter in model.named_parameters() if "lora_" in name)


@pytest.mark.parametrize("method", ["tome", "pyra", "diffrate"])
def test_the_patched_models_compile_as_one_graph_for_training_and_inference(method):
    """``torch.compile`` can fuse the merge's small kernels only if the whole forward is one graph: a branch on a
    tensor's value (``if score.max() > t``) would break it, and the compiled figures (``--compile``,
    ``--compile-train``, gpu_check) would time a model cut into pieces. The eager backend traces as inductor does,
    without a C compiler."""
    options = {"train_data": [torch.randn(8, 3, 32, 32)], "search_steps": 2} if method == "diffrate" else {}
    model = harness.adapt(micro(), method, compression="high", **options)
    images = torch.randn(2, 3, 32, 32)
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    compiled.train()(images).sum().backward()
    with torch.no_grad():
        torch.testing.assert_close(compiled.eval()(images), model(images), rtol=0, atol=0)
    torch._dynamo.reset()


def test_matching_never_picks_the_class_token_and_merges_the_most_similar_pair():
    # A set: tokens 0 (class), 2, 4; B set: tokens 1, 3. Token 1 equals the class token, token 4 equals token 3.
    metric = torch.tensor([[[1.0, 0], [1.0, 0], [0.7, 0.7], [0, 1.0], [0, 1.0]]])
    matching = bipartite_soft_matching(metric, r=1)
    assert isinstance(matching, Matching)
    assert (matching.src.item(), matching.dst.item()) == (2, 1)  # A-index 2 (token 4) into B-index 1 (token 3)
    assert matching.unmerged.flatten().tolist() == [0, 1]  # class token kept, and first
    assert bipartite_soft_matching(metric, r=0) is None


def test_proportional_attention_changes_nothing_without_merges_but_matters_after():
    torch.manual_seed(0)
    on = harness.adapt(micro(), "tome", compression="high").eval()
    off = harness.adapt(micro(), "tome", compression="high", proportional_attention=False).eval()
    off.load_state_dict(on.state_dict())
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert not torch.allclose(on(images), off(images))


def test_pyra_at_init_equals_tome_and_differs_once_w_d_moves():
    torch.manual_seed(0)
    tome = harness.adapt(micro(), "tome", compression="high").eval()
    pyra = harness.adapt(micro(), "pyra", compression="high").eval()
    missing = pyra.load_state_dict(tome.state_dict(), strict=False).missing_keys
    assert missing and all(".modulator." in key for key in missing)
    images = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(pyra(images), tome(images), rtol=1e-6, atol=1e-6)
        for block in pyra.blocks:
            if block.modulator is not None:
                block.modulator.W_D.normal_()
        assert not torch.allclose(pyra(images), tome(images), atol=1e-4)


def test_pyra_trains_lora_modulators_and_head_and_adds_r_plus_3d_per_block():
    model = harness.adapt(micro(), "pyra", compression="high")
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == {name for name, _ in model.named_parameters()
                         if ".lora_" in name or ".modulator." in name or name.startswith("head.")}
    added = sum(p.numel() for name, p in model.named_parameters() if ".modulator." in name)
    assert added == sum(r + 3 * 48 for r in model.merge_schedule if r > 0)
    assert model.blocks[0].modulator.W_r.shape == (model.merge_schedule[0], 1)


def test_pyra_lr_scale_gets_its_own_optimizer_group():
    from harness.train import TrainConfig, build_optimizer

    model = harness.adapt(micro(), "pyra", compression="low", lr_scale=0.1)
    scales = {group["lr_scale"] for group in build_optimizer(model, TrainConfig()).param_groups}
    assert scales == {1.0, 0.1}


def test_vit_base_gmacs_at_pyra_presets():
    for level, expected in (("low", 8.78), ("high", 5.08)):
        model = harness.merge_for_inference(harness.adapt(timm.create_model("vit_base_patch16_224"), "tome",
                                                          compression=level))
        assert count_gmacs(model, 224) == pytest.approx(expected, rel=0.01)
        assert schedule_gmacs(model, model.merge_schedule) == pytest.approx(count_gmacs(model, 224), rel=1e-9)


@pytest.mark.parametrize("level, reduction", [("low", 2.0), ("high", 3.46), ("2.5x", 2.5)])
def test_derived_schedules_reach_their_gmacs_reduction(level, reduction):
    base = micro()
    model = harness.merge_for_inference(harness.adapt(micro(), "tome", compression=level))
    assert count_gmacs(base, 32) / count_gmacs(model, 32) == pytest.approx(reduction, rel=0.04)
    schedule = model.merge_schedule
    if level != "low":
        assert all(a >= b for a, b in zip(schedule, schedule[1:]))  # decreasing


def test_bad_compression_values_are_user_errors():
    model = micro()
    for value, message in (("medium", "unknown compression 'medium'"), ("[1,2]", "has 2 entries"),
                           ("50x", "out of reach"), ("0.5x", "below 1x")):
        with pytest.raises(harness.UserError, match=message):
            resolve_schedule(model, value)


def test_lora_merges_inside_a_patched_model():
    torch.manual_seed(0)
    model = harness.adapt(tiny_vit(depth=2), "tome", compression="[3,2]").eval()
    images = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        before = model(images)
        harness.merge_for_inference(model)
        torch.testing.assert_close(model(images), before, rtol=1e-5, atol=1e-5)


def test_small_peft_takes_the_next_smaller_backbone_with_lora():
    big = timm.create_model("vit_micro_base_patch4_32", num_classes=7)
    small = harness.adapt(big, "small_peft")
    assert small is not big and small.embed_dim == 80 and small.num_classes == 7
    assert small.adaptbench_info["small_backbone"] == "vit_micro_medium_patch4_32"
    assert small.adaptbench_info["added_params"] == 12 * (80 * 4 + 4 * 240)  # rank 4 on each block's qkv
    assert {n for n, p in small.named_parameters() if p.requires_grad} == \
        {n for n, _ in small.named_parameters() if ".lora_" in n or n.startswith("head.")}


@pytest.mark.parametrize("pretrained", [True, False])
def test_small_peft_is_pretrained_exactly_when_the_big_backbone_is(pretrained):
    big = harness.create_backbone("vit_micro_base_patch4_32", 3, pretrained=pretrained)
    small = harness.adapt(big, "small_peft")
    shipped = timm.create_model("vit_micro_medium_patch4_32", pretrained=True)
    same = torch.equal(small.blocks[0].mlp.fc1.weight, shipped.blocks[0].mlp.fc1.weight)
    assert same is pretrained


QUICK_TIMING = MeasureConfig(batches=(8,), warmup_iters=1, warmup_seconds=0.0, repeats=3, iters_per_repeat=1)


def test_small_peft_matches_throughput_when_compressed_and_records_the_ratio():
    big = timm.create_model("vit_micro_base_patch4_32", num_classes=3)
    big.adaptbench_pretrained = False  # as create_backbone marks a model built without weights
    small = harness.adapt(big, "small_peft", compression="high", measure=QUICK_TIMING)
    info = small.adaptbench_info
    smaller = {"vit_micro_medium_patch4_32", "vit_micro_small_plus_patch4_32", "vit_micro_small_patch4_32"}
    assert info["small_backbone"] in smaller and small.pretrained_cfg["architecture"] == info["small_backbone"]
    assert info["matched_throughput_ratio"] > 0 and info["compressed_reference_img_per_s"] > 0
    assert info["matched_method"] == "tome"  # the report sets other compressed methods against it through its rows


def test_small_peft_throughput_matching_leaves_the_seeded_start_unchanged(monkeypatch):
    """Timing builds the compressed model and every candidate from random weights; the chosen model still starts
    as the seed alone says. The (fake) speeds make the match the next smaller size, the unmatched choice."""
    speeds = {96: 900.0, 80: 900.0, 56: 2000.0, 48: 3000.0}
    method_globals = registry.get_method("small_peft").fn.__globals__
    monkeypatch.setitem(method_globals, "deployed_throughput", lambda model, image_size, device, settings,
                        batch_size=None: Throughput(speeds[model.embed_dim], 0.0, 1, settings.batches[0]))
    monkeypatch.setitem(method_globals, "MATCHES", {})

    def adapted(compression):
        big = timm.create_model("vit_micro_base_patch4_32", num_classes=3)
        torch.manual_seed(0)
        return harness.adapt(big, "small_peft", compression=compression, measure=QUICK_TIMING)

    plain, matched = adapted(None), adapted("high")
    assert matched.adaptbench_info["small_backbone"] == plain.adaptbench_info["small_backbone"]
    for (name, a), (_, b) in zip(plain.state_dict().items(), matched.state_dict().items()):
        assert torch.equal(a, b), name


def test_small_peft_times_candidates_under_the_runs_own_timing_settings_once_a_process(monkeypatch):
    timed = []
    method_globals = registry.get_method("small_peft").fn.__globals__
    speeds = {96: 900.0, 80: 700.0, 56: 950.0, 48: 1300.0}  # micro-B (under tome), medium, small-plus, small

    def fake_throughput(model, image_size, device, settings, batch_size=None):
        timed.append((model.embed_dim, settings))
        return Throughput(speeds[model.embed_dim], 0.0, 1, settings.batches[0])

    monkeypatch.setitem(method_globals, "deployed_throughput", fake_throughput)
    monkeypatch.setitem(method_globals, "MATCHES", {})
    settings = MeasureConfig(batches=(16,), precision="bf16", compile=True)
    small = harness.adapt(timm.create_model("vit_micro_base_patch4_32", num_classes=3), "small_peft",
                          compression="high", measure=settings)
    rounds = method_globals["MATCH_ROUNDS"]
    # Interleaved: each round times the compressed reference, then each of the three smaller sizes; only the first
    # round warms up for the run's warm-up time.
    warm = dataclasses.replace(settings, warmup_iters=1, warmup_seconds=0.0)
    assert timed == [(width, round_settings) for round_settings in [settings] + [warm] * (rounds - 1)
                     for width in (96, 80, 56, 48)] and rounds >= 3
    assert small.adaptbench_info["small_backbone"] == "vit_micro_small_plus_patch4_32"
    assert small.adaptbench_info["matched_throughput_ratio"] == pytest.approx(950.0 / 900.0)
    again = harness.adapt(timm.create_model("vit_micro_base_patch4_32", num_classes=5), "small_peft",
                          compression="high", measure=settings)
    assert len(timed) == 4 * rounds and again.adaptbench_info == small.adaptbench_info  # another task: timed once
    harness.adapt(timm.create_model("vit_micro_base_patch4_32", num_classes=5), "small_peft", compression="low",
                  measure=settings)
    assert len(timed) == 8 * rounds  # another level is another match


def test_small_peft_refuses_the_smallest_backbone():
    with pytest.raises(harness.UserError, match="smallest backbone of its family"):
        harness.adapt(micro(), "small_peft")


@pytest.mark.parametrize("reference, chosen", [(1000.0, "vit_tiny_patch16_224"),
                                               (1800.0, "vit_micro_small_patch4_32")])
def test_small_peft_picks_the_closest_throughput_size_of_a_family_of_three(monkeypatch, reference, chosen):
    """A family of three (the two micro ViTs and, between them, a ViT-Ti at 32 px), with fake throughputs: the
    compressed micro-B runs ``reference`` img/s, ViT-Ti 1,150 and micro-S 2,000."""
    from harness import backbones
    from harness.backbones import BackboneInfo

    family = {"vit_micro_base_patch4_32": 2, "vit_tiny_patch16_224": 1, "vit_micro_small_patch4_32": 0}
    for name, rank in family.items():
        monkeypatch.setitem(backbones.KNOWN_BACKBONES, name, BackboneInfo(name, "three", rank, name))
    speeds = {96: reference, 192: 1150.0, 48: 2000.0}

    def fake_throughput(model, image_size, device, settings, batch_size=None):
        return Throughput(speeds[model.embed_dim], 0.0, 1, settings.batches[0])

    monkeypatch.setitem(registry.get_method("small_peft").fn.__globals__, "deployed_throughput", fake_throughput)
    monkeypatch.setitem(registry.get_method("small_peft").fn.__globals__, "MATCHES", {})
    big = timm.create_model("vit_micro_base_patch4_32", num_classes=3)
    big.adaptbench_pretrained = False  # as create_backbone marks a model built without weights
    small = harness.adapt(big, "small_peft", compression="high", measure=QUICK_TIMING)
    info = small.adaptbench_info
    assert info["small_backbone"] == chosen
    assert info["matched_throughput_ratio"] == pytest.approx(speeds[small.embed_dim] / reference)
