"""The autocast precision a training run uses, and ``auto``: bf16 only where the hardware multiplies it natively.

bf16 autocast pays on a CUDA GPU with bf16 and on a CPU with AVX-512 (oneDNN's bf16 kernels); on a CPU with AVX2
only, PyTorch multiplies bf16 matrices with a scalar fallback: a training step of the demo model takes 12.9x the
time of fp32 on two such cores (``benchmarks/train_precision.py``; its stage 3 ran at 38 s per step against 2.7 s).
``auto`` picks bf16 where it is native and fp32 elsewhere; an explicit ``bf16`` is kept, with a warning where it is
not native.
"""

from __future__ import annotations

import warnings

import torch

from ..errors import InputError

ACCELERATE_MIXED_PRECISION = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}


def native_bf16() -> bool:
    """Whether bf16 matrix products run natively where training runs: the CUDA or XPU device when there is one,
    else this CPU (through oneDNN)."""
    if torch.cuda.is_available():
        return bool(torch.cuda.is_bf16_supported())
    if hasattr(torch, "xpu") and torch.xpu.is_available():
        return True
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch built without oneDNN
        return False


def check_precision(precision: str, allowed: tuple[str, ...], where: str) -> None:
    choices = ("auto",) + allowed
    if precision not in choices:
        raise InputError(f"{where} precision: {precision!r}; use {', '.join(choices[:-1])} or {choices[-1]}")


def resolve_precision(precision: str) -> str:
    """``precision`` as run on this machine: ``auto`` -> bf16 where native, else fp32; the rest as given (bf16 where
    not native warns, saying to use fp32 or auto)."""
    if precision == "auto":
        return "bf16" if native_bf16() else "fp32"
    if precision == "bf16" and not native_bf16():
        warnings.warn(
            "precision=bf16 where bf16 is not native (a CPU without AVX-512, or a GPU before Ampere): training "
            "runs about 13x slower than in fp32 on such a CPU; pass precision=fp32 or precision=auto",
            stacklevel=2,
        )
    return precision


def accelerate_mixed_precision(precision: str) -> str:
    """accelerate's ``mixed_precision`` ("no", "bf16", "fp16") for a config's precision on this machine."""
    return ACCELERATE_MIXED_PRECISION[resolve_precision(precision)]
