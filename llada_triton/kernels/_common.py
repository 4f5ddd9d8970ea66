"""Helpers shared by the kernel modules: PDL launch options, config memoisation, argument checks, CPU compile
checks, the PDL wait and weight prefetch."""
from __future__ import annotations

import functools
import inspect
import os

import torch
import triton
import triton.language as tl

try:
    from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait  # noqa: F401
    _HAS_GDC = True
except Exception:  # older triton
    _HAS_GDC = False


@functools.lru_cache(maxsize=None)
def is_interpreter() -> bool:
    """True under ``TRITON_INTERPRET=1`` (CPU). Read once: triton fixes the choice when it decorates the kernels."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@functools.lru_cache(maxsize=None)
def _sm90_or_newer(index: int) -> bool:
    return torch.cuda.get_device_capability(index)[0] >= 9


# PDL at decode sizes only: it pays at batch 1, costs time between cuBLAS GEMMs (results/decisions.md)
PDL_MAX_ROWS = 64


def gdc_options(t: torch.Tensor, rows: int) -> dict:
    """Launch keywords turning programmatic dependent launch (PDL) on for a kernel taking ``USE_GDC``, on ``t``'s
    device over ``rows`` token rows, or ``{}``. With PDL (sm_90+) a kernel may start while its predecessor
    finishes and waits for it in :func:`gdc_wait_and_release`. Off above :data:`PDL_MAX_ROWS` rows, under the
    interpreter, on CPUs, older GPUs or tritons, and with ``LLADA_PDL=0`` (the A/B switch)."""
    if (rows > PDL_MAX_ROWS or is_interpreter() or t.device.type != "cuda"
            or os.environ.get("LLADA_PDL", "1") == "0" or not _HAS_GDC
            or not _sm90_or_newer(t.device.index if t.device.index is not None else torch.cuda.current_device())):
        return {}
    return {"USE_GDC": True, "launch_pdl": True}


def memo_config(fn):
    """Memoise a launch-config function of hashable arguments; every call returns a new dict."""
    cached = functools.lru_cache(maxsize=4096)(fn)

    @functools.wraps(fn)
    def fresh(*args, **kwargs) -> dict:
        return dict(cached(*args, **kwargs))
    return fresh


def cdiv(a: int, b: int) -> int:
    """``ceil(a / b)`` for host-side ints (``triton.cdiv`` is a slow constexpr function when called from Python)."""
    return -(-a // b)


def next_pow2(n: int) -> int:
    """The smallest power of two >= ``n`` (1 for ``n <= 1``), for host-side ints (see :func:`cdiv`)."""
    return 1 << max(int(n) - 1, 0).bit_length()


def check_tensor(name: str, t: torch.Tensor, *, ndim=None, dtypes=None, contiguous_last=True):
    """Raise a ValueError naming the argument when ``t`` does not fit what a launcher needs."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if ndim is not None and t.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dims, got shape {tuple(t.shape)}")
    if dtypes is not None and t.dtype not in dtypes:
        raise ValueError(f"{name} has dtype {t.dtype}; allowed: {', '.join(map(str, dtypes))}")
    if contiguous_last and t.ndim and t.numel() and t.stride(-1) != 1:
        raise ValueError(f"{name} must be contiguous in its last dim (stride {t.stride()})")


def check_shape(name: str, t, shape, dtypes, device: torch.device, contiguous_last=True):
    """Raise naming the argument unless ``t`` is a ``shape`` tensor of one of ``dtypes`` on ``device``."""
    check_tensor(name, t, dtypes=dtypes, contiguous_last=contiguous_last)
    if tuple(t.shape) != tuple(shape) or t.device != device:
        want = f"[{shape[0]}]" if len(shape) == 1 else tuple(shape)
        raise ValueError(f"{name} must be {want} on {device}, got {tuple(t.shape)} on {t.device}")


def check_like(name: str, t, shape, dtype: torch.dtype, device: torch.device, contiguous_last=True):
    """:func:`check_shape` with one dtype, unless ``t`` is None (an optional argument)."""
    if t is not None:
        check_shape(name, t, shape, (dtype,), device, contiguous_last)


def check_out(name: str, t, shape, dtype: torch.dtype, device: torch.device, contiguous_last=True) -> torch.Tensor:
    """An output argument: ``t`` after :func:`check_like`, or a new contiguous ``shape`` tensor when None."""
    check_like(name, t, shape, dtype, device, contiguous_last)
    return torch.empty(shape, device=device, dtype=dtype) if t is None else t


def check_vector(name: str, t, n: int, dtypes, device: torch.device, contiguous_last=True):
    """:func:`check_shape` for a ``[n]`` tensor."""
    check_shape(name, t, (n,), dtypes, device, contiguous_last)


def compile_for(kernel, signature: dict, constexprs: dict, arch: int = 90):
    """Compile a ``@triton.jit`` kernel for ``sm_<arch>`` without a GPU (CPU tests; not under ``TRITON_INTERPRET``)."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    constexprs = with_defaults(kernel, signature, constexprs)
    sig = {**signature, **{k: "constexpr" for k in constexprs}}
    src = ASTSource(fn=kernel, signature=sig, constexprs=constexprs)
    return triton.compile(src, target=GPUTarget("cuda", arch, 32))


def with_defaults(kernel, signature: dict, constexprs: dict) -> dict:
    """``constexprs`` plus the defaults of the kernel's parameters that neither dict names (``USE_GDC``...)."""
    out = dict(constexprs)
    for name, prm in inspect.signature(kernel.fn).parameters.items():
        if name not in signature and name not in out and prm.default is not inspect.Parameter.empty:
            out[name] = prm.default
    return out


DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def clamp_pow2(n: int, lo: int, hi: int) -> int:
    """The power of two >= ``n``, clamped to ``[lo, hi]``."""
    return max(lo, min(hi, next_pow2(n)))


def dot_flags(dtype: torch.dtype) -> dict:
    """GEMM constexprs: ``UPCAST`` bf16 operands (the interpreter cannot compute on bf16), ``IEEE`` (no TF32)."""
    interp = is_interpreter()
    return dict(UPCAST=interp and dtype == torch.bfloat16, IEEE=dtype == torch.float32 and not interp)


def as_rows(name: str, t: torch.Tensor, d: int) -> torch.Tensor:
    """``t`` viewed as ``[rows, d]`` without a copy, or a ValueError naming the argument."""
    try:
        return t.view(-1, d)
    except RuntimeError:
        raise ValueError(f"{name} of shape {tuple(t.shape)} and strides {t.stride()} cannot be viewed as "
                         f"[rows, {d}] without a copy; pass a tensor whose leading dims flatten") from None


@triton.jit
def gdc_wait_and_release(USE_GDC: tl.constexpr):
    """With PDL: wait for the previous kernel of the stream to complete, then let the next one launch."""
    if USE_GDC:
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()


@triton.jit
def prefetch_weight_rows(w_ptr, rows, stride, k0, K, USE_GDC: tl.constexpr):
    """With PDL, before :func:`gdc_wait_and_release`: prefetch into L2 the 256 bytes from column ``k0`` of each
    weight row in ``rows`` (no kernel writes weights), so the first K-step starts warm (results/decisions.md)."""
    if USE_GDC:
        line = 1024 // w_ptr.dtype.element_ty.primitive_bitwidth        # elements of a 128-byte line
        cols = tl.minimum(k0 + tl.arange(0, 2) * line, K - 1)
        ptrs = w_ptr + rows.to(tl.int64)[:, None] * stride + cols[None, :]
        tl.inline_asm_elementwise("prefetch.global.L2 [$1];", "=r,l", [ptrs], dtype=tl.int32, is_pure=False, pack=1)
