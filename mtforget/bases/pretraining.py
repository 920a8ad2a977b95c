"""How the tiny bases pre-train on this device: precision, attention kernel and batch pieces,
shared by the encoder-decoder and the decoder-only recipes."""

from __future__ import annotations

from dataclasses import dataclass

from mtforget.models.loading import default_device
from mtforget.train.loop import native_bf16

# Pre-training batches are random, so each is cut into length-sorted pieces: the same gradient
# with fewer padded tokens, which a CPU computes as if they were real. Two pieces save time in
# float32 and cost about nothing under bf16; more pieces multiply matrices too small to pay. The
# decoder-only bases use them too, for the smaller activations each piece holds.
# (benchmarks/training.py measures steps with and without pieces.)
PIECES = 2


@dataclass(frozen=True)
class Precision:
    """How tiny bases pre-train on this device. Part of their cache key: it changes the weights."""

    bf16: bool  # matrix products under bf16 autocast
    attention: str  # the transformers attention implementation
    pad_to_multiple_of: int  # batch widths (see TrainSettings.pad_to_multiple_of)

    @property
    def name(self) -> str:
        """How a base was pre-trained, for its metadata."""
        return "bf16 autocast" if self.bf16 else "float32"


def pretraining_precision() -> Precision:
    """bf16 where the device multiplies it natively (on a CPU with AVX-512 BF16 it is 1.5x faster
    for tiny:base). On such a CPU, plain ("eager") attention, since the fused attention kernel is
    slower in bf16 than the few small matrix products it replaces, and batch widths in steps of 4,
    so the bf16 kernels built per matrix shape stay few."""
    device = default_device()
    bf16 = native_bf16(device)
    cpu_bf16 = bf16 and device.type == "cpu"
    return Precision(bf16, "eager" if cpu_bf16 else "sdpa", 4 if cpu_bf16 else 1)
