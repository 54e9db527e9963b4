"""Mixed precision (`--precision`): the forward pass and the loss under `torch.autocast`.

| `--precision` | matrix products in forward and loss | gradients             | devices    |
|---------------|-------------------------------------|-----------------------|------------|
| `fp32`        | float32 (the default)               | float32               | any        |
| `bf16`        | bfloat16 (autocast)                 | float32, unscaled     | CUDA, CPU  |
| `fp16`        | float16 (autocast)                  | float32, loss scaled  | CUDA only  |

The weights stay float32 (autocast casts per operation), so checkpoints, export and validation
are the same as an fp32 run's. fp16 scales the loss before backward (`torch.amp.GradScaler`)
so small gradients do not flush to zero, unscales before clipping, and skips the optimizer
step of a batch whose gradients overflowed; the scaler's state goes into every checkpoint. On
a CPU without bfloat16 instructions, `bf16` is slower than `fp32`: it is there for CPUs that
have them and for parity with GPU runs.
"""

from __future__ import annotations

import contextlib

import torch

PRECISIONS = ("fp32", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager[None]:
    """The context a training step's forward pass and loss run in."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=_DTYPES[precision])


def grad_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler:
    """Loss scaling for fp16; for the others a scaler that passes everything through."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")
