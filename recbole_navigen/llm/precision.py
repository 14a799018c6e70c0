"""Numeric precision of NaviGen's backbone (`precision` key): `fp32`, or `bf16` mixed precision, where
matrix products run in bfloat16 under `torch.autocast` while weights, gradients and the optimizer's state
stay float32 (what Hugging Face's Trainer does with `bf16=True`; bfloat16 has float32's range, so no loss
scaling). Log-softmax and losses are computed in float32 by autocast itself.
"""

from __future__ import annotations

import contextlib

import torch

PRECISIONS = ("fp32", "bf16")


def check_precision(precision: str) -> str:
    """`precision` if it is known; a clear error naming the key otherwise."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {list(PRECISIONS)}, not {precision!r}")
    return precision


def autocast(precision: str, device: torch.device):
    """The context NaviGen's forward passes run in on `device` (training, beam search, sampling)."""
    if check_precision(precision) == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
