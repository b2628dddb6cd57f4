import pytest
import timm
import torch

import harness
from conftest import tiny_vit


def lora_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for name, p in model.named_parameters() if "lora_" in name)


def test_vit_base_lora_has_pyra_parameter_count():
    with torch.device("meta"):
        model = timm.create_model("vit_base_patch16_224", pretrained=False)
    harness.adapt(model, "lora")
    assert lora_params(model) == 294_912  # 12 x (768*8 + 8*2304), the paper's 0.34 %


def test_ranks_follow_pyra_and_the_rule_for_other_widths():
    assert [harness.lora_rank_for(d) for d in (384, 768, 1024)] == [4, 8, 12]
    assert harness.lora_rank_for(96) == 4 and harness.lora_rank_for(1536) == 16


def test_only_lora_and_head_train_and_names_follow_peft():
    model = harness.adapt(tiny_vit(), "lora")
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == {name for name, _ in model.named_parameters() if ".lora_" in name or name.startswith("head.")}
    assert "blocks.0.attn.qkv.lora_A.weight" in trainable and "blocks.1.attn.qkv.lora_B.weight" in trainable
    assert model.blocks[0].attn.qkv.lora_A.weight.shape == (4, 32)
    assert model.blocks[0].attn.qkv.lora_B.weight.shape == (96, 4)  # r -> 3D: q, k and v all adapt


def test_merged_model_equals_unmerged():
    torch.manual_seed(0)
    model = harness.adapt(tiny_vit(), "lora").eval()
    images = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        before = model(images)
        harness.merge_for_inference(model)
        after = model(images)
    assert not any("lora_" in name for name, _ in model.named_parameters())
    assert isinstance(model.blocks[0].attn.qkv, torch.nn.Linear)
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)


def test_lora_update_is_active_from_the_start_as_in_pyra():
    torch.manual_seed(0)
    plain = tiny_vit().eval()
    adapted = harness.adapt(tiny_vit(), "lora").eval()
    renamed = {key.replace("qkv.", "qkv.base_layer."): value for key, value in plain.state_dict().items()}
    loaded = adapted.load_state_dict(renamed, strict=False)
    assert not loaded.unexpected_keys and all(".lora_" in key for key in loaded.missing_keys)
    images = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert not torch.allclose(plain(images), adapted(images))  # B starts trunc-normal, not zero
        for block in adapted.blocks:
            block.attn.qkv.lora_B.weight.zero_()
        torch.testing.assert_close(adapted(images), plain(images))  # ... and B is the only difference


def test_full_ft_trains_everything():
    model = harness.adapt(tiny_vit(), "full_ft")
    assert all(p.requires_grad for p in model.parameters())


def test_rank_option_and_unknown_option():
    model = harness.adapt(tiny_vit(), "lora", rank=2)
    assert model.blocks[0].attn.qkv.lora_A.out_features == 2
    with pytest.raises(harness.UserError, match="no option alpha"):
        harness.adapt(tiny_vit(), "lora", alpha=3)


def test_non_compressing_method_rejects_compression():
    with pytest.raises(harness.UserError, match="does not compress"):
        harness.adapt(tiny_vit(), "lora", compression="high")
