"""Weight quantization through bitsandbytes: int8 (LLM.int8()) or nf4 (QLoRA's 4-bit NormalFloat).

bitsandbytes is optional (`pip install zswarm[quant]`) and CUDA-only; it is imported only when
asked for. Every `nn.Linear` inside the blocks is swapped for its bitsandbytes twin; the
quantization itself happens when the new parameters are moved to the GPU.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from zswarm.errors import QuantizationUnavailable

logger = logging.getLogger(__name__)


def import_bitsandbytes():
    try:
        import bitsandbytes as bnb  # noqa: F401
    except Exception as exc:  # ImportError, or a CUDA setup error inside bitsandbytes
        raise QuantizationUnavailable(
            f"--quant needs bitsandbytes with CUDA ({type(exc).__name__}: {exc}); "
            "install it with `pip install 'zswarm[quant]'` or run with --quant none"
        ) from exc
    return bnb


def check_quant_available(quant: str, device: str) -> None:
    if quant == "none":
        return
    if not device.startswith("cuda"):
        raise QuantizationUnavailable(f"--quant {quant} runs on cuda only; this server uses {device}")
    import_bitsandbytes()


def quantize_module_(module: nn.Module, quant: str, device: torch.device, compute_dtype: torch.dtype) -> int:
    """Replace every nn.Linear under `module` in place; returns how many were replaced."""
    if quant == "none":
        return 0
    bnb = import_bitsandbytes()
    replaced = 0
    for name, child in list(module.named_children()):
        if isinstance(child, nn.Linear):
            setattr(module, name, _quantized_linear(bnb, child, quant, device, compute_dtype))
            replaced += 1
        else:
            replaced += quantize_module_(child, quant, device, compute_dtype)
    return replaced


def _quantized_linear(bnb, linear: nn.Linear, quant: str, device: torch.device, compute_dtype: torch.dtype):
    has_bias = linear.bias is not None
    # Weights go through the CPU: bitsandbytes quantizes them on the move to the GPU.
    weight = linear.weight.data.detach().to("cpu", torch.float16)
    if quant == "int8":
        new = bnb.nn.Linear8bitLt(linear.in_features, linear.out_features, bias=has_bias,
                                  has_fp16_weights=False, threshold=6.0)
        new.weight = bnb.nn.Int8Params(weight, requires_grad=False, has_fp16_weights=False)
    elif quant == "nf4":
        new = bnb.nn.Linear4bit(linear.in_features, linear.out_features, bias=has_bias,
                                compute_dtype=compute_dtype, quant_type="nf4")
        new.weight = bnb.nn.Params4bit(weight, requires_grad=False, quant_type="nf4")
    else:
        raise ValueError(f"unknown quantization {quant!r}")
    if has_bias:
        new.bias = nn.Parameter(linear.bias.data.detach().to("cpu", compute_dtype), requires_grad=False)
    new = new.to(device)
    linear.weight = None  # drop the full-precision copy now
    return new
