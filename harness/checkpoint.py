"""Mid-run checkpoints (``--checkpoint-every N``): a run killed at epoch 90 of 100 goes on from its last
checkpoint when it is run again, and ends where an uninterrupted run ends (bit for bit on the CPU).

A checkpoint is one file beside the run's record, ``<stem>.checkpoint.pt``, written atomically after every N-th
epoch: the whole model's state, the optimizer's and the fp16 gradient scaler's, every random generator a run
draws from (torch's, CUDA's, numpy's, Python's and the training loader's shuffling), and what the run has
measured so far (its curve, evaluations, training time). It belongs to one config: its key is in the file and a
file of another key is not loaded. A run that finishes removes it; so does one that fails for a reason a rerun
would meet again (an error, a NaN loss, out of memory). It is kept when the process died, was interrupted, was
stopped by Slurm (preempted, out of time) or timed out, which is what it is for.
"""
from __future__ import annotations

import io
import random
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .store import replace_atomically

CHECKPOINT_SUFFIX = ".checkpoint.pt"


def rng_state(loader_generator: torch.Generator | None, device: torch.device) -> dict:
    """Every generator a run draws from. On a GPU only the run's device's: a resumed run may see fewer GPUs
    (a worker sees its one as cuda:0), where restoring all of them would fail on a device that is not there."""
    numpy_state = np.random.get_state()
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
            "numpy": (numpy_state[0], torch.from_numpy(numpy_state[1].astype(np.int64)), *numpy_state[2:]),
            "python": random.getstate(),
            "loader": None if loader_generator is None else loader_generator.get_state()}


def restore_rng(state: dict, loader_generator: torch.Generator | None, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if isinstance(state["cuda"], torch.Tensor) and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    random.setstate(state["python"])
    if loader_generator is not None and state["loader"] is not None:
        loader_generator.set_state(state["loader"])


class Checkpointer:
    """Saves one run's checkpoint every ``every`` epochs (0: never), and loads the one there is: a run started
    again without ``--checkpoint-every`` still goes on from where it was."""

    def __init__(self, path: Path, every: int, key: str, log: Callable[[str], None] = print) -> None:
        self.path, self.every, self.key, self.log = Path(path), every, key, log

    def due(self, epoch: int, epochs: int) -> bool:
        """After this epoch? Not after the last one: the finished run's record replaces it."""
        return self.every > 0 and epoch % self.every == 0 and epoch < epochs

    def save(self, state: dict) -> None:
        def write(temporary: str) -> None:
            buffer = io.BytesIO()
            torch.save({**state, "key": self.key}, buffer)
            with open(temporary, "wb") as handle:
                handle.write(buffer.getbuffer())

        replace_atomically(self.path, write)

    def load(self) -> dict | None:
        """The saved state, or None when there is none; an unreadable file or another run's is passed over (and
        said so), and the run starts from its first epoch. A temporary that a process killed while saving left
        behind (a whole model's state) is removed: only the run that owns the checkpoint loads it."""
        for stale in self.path.parent.glob(f".{self.path.name}.*.tmp"):
            stale.unlink(missing_ok=True)
            self.log(f"  removed {stale.name}, a checkpoint left half-written by a killed run")
        if not self.path.exists():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as exc:  # a damaged file: torch raises a different type per way of damage
            self.log(f"  checkpoint {self.path.name} cannot be read ({type(exc).__name__}); starting afresh")
            return None
        if not isinstance(state, dict) or state.get("key") != self.key:
            self.log(f"  checkpoint {self.path.name} belongs to another run; starting afresh")
            return None
        return state

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
