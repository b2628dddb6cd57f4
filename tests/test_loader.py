"""The decoded data path: whole-tensor batches in the same order a DataLoader with the same seed gives, so the
published runs' batches (and accuracies) do not move."""
import pytest
import torch
from torch.utils.data import ConcatDataset, DataLoader

import harness
from harness.data import ArrayDataset, Normalize, TensorBatches, make_loader
from harness.train import TrainConfig, Trainer, build_optimizer, fit


def dataset(n: int = 70, seed: int = 0) -> ArrayDataset:
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 3
    images = torch.randint(0, 120, (n, 3, 16, 16), generator=generator, dtype=torch.uint8) + 60 * labels.view(-1, 1, 1, 1)
    return ArrayDataset(images.to(torch.uint8), labels)


@pytest.mark.parametrize("shuffle", [True, False])
@pytest.mark.parametrize("split", ["array", "concat"])
def test_the_same_batches_as_a_dataloader_with_the_same_seed_epoch_after_epoch(shuffle, split):
    data = dataset() if split == "array" else ConcatDataset([dataset(30, 1), dataset(40, 2)])
    ours = make_loader(data, 16, shuffle=shuffle, seed=7)
    theirs = DataLoader(data, batch_size=16, shuffle=shuffle, generator=torch.Generator().manual_seed(7))
    assert isinstance(ours, TensorBatches) and len(ours) == len(theirs) == 5
    for _ in range(3):
        pairs = list(zip(ours, theirs))
        assert len(pairs) == 5
        for (images, labels), (expected_images, expected_labels) in pairs:
            assert torch.equal(images, expected_images) and torch.equal(labels, expected_labels)


def test_a_streamed_split_gathers_the_same_batches_into_pinned_buffers(monkeypatch):
    """A split too large for the GPU is batched from pinned memory into pinned memory. This machine has no CUDA to
    pin with, so the buffers are plain here: what is tested is that each batch lands whole in a fresh one."""
    import harness.data as data

    buffers = []

    def pinned_empty(shape, dtype):
        buffers.append(torch.empty(shape, dtype=dtype))
        return buffers[-1]

    monkeypatch.setattr(data, "pinned_empty", pinned_empty)
    plain, streamed = make_loader(dataset(), 16, shuffle=True, seed=7), make_loader(dataset(), 16, shuffle=True, seed=7)
    streamed.streamed = True
    for (images, labels), (expected_images, expected_labels) in zip(streamed, plain, strict=True):
        assert torch.equal(images, expected_images) and torch.equal(labels, expected_labels)
        assert images.data_ptr() == buffers[-2].data_ptr() and labels.data_ptr() == buffers[-1].data_ptr()
    assert len(buffers) == 2 * len(plain)


def test_training_a_micro_backbone_on_either_path_gives_the_same_accuracy():
    train, test = dataset(96, 3), dataset(48, 4)
    config = TrainConfig(epochs=2, warmup_epochs=0, eval_every=1, batch_size=16)

    def accuracy(loader_for) -> float:
        torch.manual_seed(0)
        model = harness.create_backbone("vit_micro_small_patch4_32", 3, pretrained=False, img_size=16)
        harness.adapt(model, "lora")
        trainer = Trainer(model, build_optimizer(model, config), Normalize((0.5,) * 3, (0.25,) * 3, "cpu"))
        result = fit(trainer, loader_for(train, True), loader_for(test, False), config, log=lambda line: None)
        return result.test_acc_best, result.curve[-1]["loss"]

    ours = accuracy(lambda data, shuffle: make_loader(data, 16, shuffle=shuffle, seed=0))
    theirs = accuracy(lambda data, shuffle: DataLoader(data, batch_size=16, shuffle=shuffle,
                                                       generator=torch.Generator().manual_seed(0)))
    assert ours == theirs


def test_a_plugins_own_dataset_still_gets_a_dataloader():
    class Listed(torch.utils.data.Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, index):
            return torch.zeros(3, 2, 2, dtype=torch.uint8), torch.tensor(index)

    assert isinstance(make_loader(Listed(), 2, shuffle=False), DataLoader)


def test_a_pass_cut_short_leaves_the_generator_where_a_dataloaders_is():
    """Runs take one batch for the memory probe, then train: drawing a whole epoch's order up front drew the
    sampler's trailing permutation early and moved every later epoch's batches (it changed published results)."""
    ours = make_loader(dataset(), 16, shuffle=True, seed=7)
    theirs = DataLoader(dataset(), batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(7))
    next(iter(ours)), next(iter(theirs))
    for _ in range(2):
        for (images, labels), (expected_images, expected_labels) in zip(ours, theirs, strict=True):
            assert torch.equal(images, expected_images) and torch.equal(labels, expected_labels)
