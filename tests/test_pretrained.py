import pytest
import timm
import torch
from safetensors.torch import load_file

import harness
from harness import backbones
from harness.pretrain import PretrainRecipe, make_corpus, make_probe, pretrain, probe_accuracy, save

TINY = PretrainRecipe(classes=4, images_per_class=12, batch_size=8, epochs=1, probe_per_class=2)


@pytest.fixture(scope="module")
def tiny_corpus():
    return make_corpus(TINY)


@pytest.fixture
def weights_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(backbones, "WEIGHTS_DIR", tmp_path)
    return tmp_path


def test_without_shipped_weights_micro_backbones_start_random_and_pretrained_true_says_why(weights_dir):
    assert not backbones.has_pretrained_weights("vit_micro_small_patch4_32")
    with pytest.raises(harness.UserError, match="shipped weights for vit_micro_small_patch4_32 are missing"):
        harness.create_backbone("vit_micro_small_patch4_32", num_classes=3, pretrained=True)


def test_weights_load_from_the_local_file_after_their_checksum(weights_dir, tiny_corpus):
    model, record = pretrain("vit_micro_small_patch4_32", TINY, tiny_corpus, max_steps=2, log=lambda line: None)
    save(model, record, weights_dir)
    assert backbones.has_pretrained_weights("vit_micro_small_patch4_32")
    assert backbones.verify_shipped_weights("vit_micro_small_patch4_32")["sha256"] == backbones.hashlib.sha256(
        (weights_dir / "vit_micro_small_patch4_32.safetensors").read_bytes()).hexdigest()
    loaded = harness.create_backbone("vit_micro_small_patch4_32", num_classes=5)  # new head, shipped body
    shipped = load_file(str(weights_dir / "vit_micro_small_patch4_32.safetensors"))
    assert torch.equal(loaded.blocks[3].attn.qkv.weight, shipped["blocks.3.attn.qkv.weight"])
    assert loaded.head.out_features == 5
    same_head = timm.create_model("vit_micro_small_patch4_32", pretrained=True, num_classes=TINY.classes,
                                  pretrained_cfg_overlay=dict(num_classes=TINY.classes))  # keep the tiny head
    images, labels = make_probe(TINY)
    assert probe_accuracy(same_head, images, labels) == pytest.approx(record["probe_accuracy"], abs=0.5)


def test_corrupt_weights_are_refused(weights_dir, tiny_corpus):
    model, record = pretrain("vit_micro_small_patch4_32", TINY, tiny_corpus, max_steps=1, log=lambda line: None)
    path = save(model, record, weights_dir)
    with open(path, "r+b") as handle:
        handle.seek(-4, 2)
        handle.write(b"\x00\x01\x02\x03")
    with pytest.raises(harness.UserError, match="are corrupt"):
        harness.create_backbone("vit_micro_small_patch4_32", num_classes=3, pretrained=True)


def test_pretraining_is_deterministic_given_its_seed(tiny_corpus):
    runs = [pretrain("vit_micro_small_patch4_32", TINY, tiny_corpus, max_steps=3, log=lambda line: None)[1]["losses"]
            for _ in range(2)]
    other_seed = PretrainRecipe(**{**TINY.__dict__, "seed": 1})
    other = pretrain("vit_micro_small_patch4_32", other_seed, make_corpus(other_seed), max_steps=3,
                     log=lambda line: None)[1]["losses"]
    assert len(runs[0]) == 3 and runs[0] == runs[1] and other != runs[0]
