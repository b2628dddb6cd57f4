"""Shared fixtures: a private data cache, and a plugin file written outside the repository."""
from __future__ import annotations

import os
import tempfile
import textwrap
from pathlib import Path

import pytest

# Generated task data goes to a throw-away cache, never the user's ~/.cache.
os.environ.setdefault("ADAPTBENCH_CACHE", tempfile.mkdtemp(prefix="adaptbench-test-cache-"))

EXTERNAL_PLUGIN = textwrap.dedent('''
    """A third-party plugin: one task and one method, registered without touching adaptbench."""
    import numpy as np
    import harness


    @harness.register_method("bitfit")
    def bitfit(model, compression=None):
        """BitFit: train only the biases (and the head)."""
        harness.set_trainable(model, lambda name: name.endswith(".bias"))
        return model


    @harness.register_task("tiny_bright", suite="tiny", group="natural")
    def tiny_bright(data_root=None):
        """Bright or dark 16x16 images: a task any model learns in one epoch."""
        rng = np.random.default_rng(0)

        def split(n):
            labels = np.arange(n) % 2
            images = rng.integers(0, 100, (n, 3, 16, 16)) + 150 * labels[:, None, None, None]
            return harness.ArrayDataset(images.astype(np.uint8), labels)

        return harness.TaskData(split(48), split(16), split(32), num_classes=2, image_size=16,
                                default_backbone="vit_micro_small_patch4_32", default_epochs=1)
''')


@pytest.fixture(scope="session")
def plugin_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("outside_repo") / "my_plugin.py"
    path.write_text(EXTERNAL_PLUGIN)
    return path


@pytest.fixture(scope="session")
def loaded_plugin(plugin_file: Path) -> Path:
    import harness

    harness.load_plugins([str(plugin_file)])
    return plugin_file


def tiny_vit(**kwargs):
    """A 16x16, depth-2 timm ViT for fast tests."""
    import timm

    args = dict(img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=2, num_classes=3)
    return timm.create_model("vit_base_patch16_224", pretrained=False, **{**args, **kwargs})
