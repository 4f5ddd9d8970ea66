"""Small helpers shared by the kernel modules (imports triton)."""
from __future__ import annotations

import os

import torch
import triton


def is_interpreter() -> bool:
    """True when kernels run under ``TRITON_INTERPRET=1`` (CPU, numpy arithmetic)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def check_tensor(name: str, t: torch.Tensor, *, ndim=None, dtypes=None, contiguous_last=True):
    """Raise a ValueError naming the argument when ``t`` does not fit what a launcher needs."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if ndim is not None and t.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dims, got shape {tuple(t.shape)}")
    if dtypes is not None and t.dtype not in dtypes:
        raise ValueError(f"{name} has dtype {t.dtype}; allowed: {', '.join(map(str, dtypes))}")
    if contiguous_last and t.numel() and t.stride(-1) != 1:
        raise ValueError(f"{name} must be contiguous in its last dim (stride {t.stride()})")


def compile_for(kernel, signature: dict, constexprs: dict, arch: int = 90):
    """Compile a ``@triton.jit`` kernel for ``sm_<arch>`` without a GPU (ptxas ships with triton).

    Used by the CPU test suite to catch GPU-frontend errors the interpreter accepts. Must run in a
    process where ``TRITON_INTERPRET`` is not set (see ``tests/compile_check.py``).
    """
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    sig = dict(signature)
    for k in constexprs:
        sig[k] = "constexpr"
    src = ASTSource(fn=kernel, signature=sig, constexprs=constexprs)
    return triton.compile(src, target=GPUTarget("cuda", arch, 32))


def as_rows(name: str, t: torch.Tensor, d: int) -> torch.Tensor:
    """``t`` viewed as ``[rows, d]`` without a copy, or a ValueError naming the argument."""
    try:
        return t.view(-1, d)
    except RuntimeError:
        raise ValueError(f"{name} of shape {tuple(t.shape)} and strides {t.stride()} cannot be viewed as "
                         f"[rows, {d}] without a copy; pass a tensor whose leading dims flatten") from None
