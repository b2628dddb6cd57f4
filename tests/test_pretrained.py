import numpy as np
import pytest
import timm
import torch
from safetensors.torch import load_file

import harness
from harness import backbones
from harness.pretrain import (PretrainRecipe, load_probe, make_corpus, mimetic_init_, pretrain, probe_accuracy, save,
                              save_probe)

TINY = PretrainRecipe(classes_per_family=2, images_per_class=12, batch_size=8, epochs=1, probe_per_class=2)
MICRO_BACKBONES = backbones.MICRO_VITS


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
    save_probe(tiny_corpus, weights_dir)
    images, labels = load_probe(weights_dir)
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


@pytest.mark.parametrize("name", MICRO_BACKBONES)
def test_shipped_weights_match_their_checksum_and_recorded_probe_accuracy(name):
    record = backbones.verify_shipped_weights(name)
    model = timm.create_model(name, pretrained=True)  # the pretraining head too
    images, labels = load_probe()
    assert probe_accuracy(model, images, labels) == pytest.approx(record["probe_accuracy"], abs=0.5)
    assert record["probe_accuracy"] > 5 * 100 / record["classes"]  # the weights learned the corpus


def test_corpus_has_every_family_and_balanced_classes(tiny_corpus):
    labels = tiny_corpus["labels"]
    assert TINY.classes == 6 and set(labels) == set(range(6))
    assert (np.bincount(labels) == TINY.images_per_class).all()
    means = [tiny_corpus["images"][labels == label].std(axis=(1, 2, 3)).mean() for label in range(6)]
    assert min(means) > 10  # every class draws a visible pattern, not a flat image


def test_mimetic_init_makes_attention_start_near_identity():
    model = timm.create_model("vit_micro_small_patch4_32")
    mimetic_init_(model, torch.Generator().manual_seed(0))
    attention = model.blocks[0].attn
    dim, head_dim = attention.qkv.in_features, attention.head_dim
    weight = attention.qkv.weight
    query_key = weight[:head_dim].T @ weight[dim:dim + head_dim]  # first head
    value_out = attention.proj.weight @ weight[2 * dim:]
    off_diagonal = ~torch.eye(dim, dtype=torch.bool)
    assert query_key.diagonal().mean() > 3 * query_key[off_diagonal].abs().mean()
    assert value_out.diagonal().mean() < -3 * value_out[off_diagonal].abs().mean()


def test_offline_default_adapts_the_shipped_pretrained_backbones():
    from click.testing import CliRunner

    from harness.cli import main

    plan = CliRunner().invoke(main, ["--dry-run", "--tasks", "count"]).output
    assert "vit_micro_base_patch4_32" in plan and "pretrained=True" in plan and "pretrained=False" not in plan


def test_the_shipped_family_stays_small_enough_to_ship():
    sizes = {name: backbones.shipped_weights(name).stat().st_size for name in MICRO_BACKBONES}
    assert len(sizes) >= 3 and sum(sizes.values()) <= 15e6, sizes
