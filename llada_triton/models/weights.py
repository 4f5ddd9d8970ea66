"""Strict, streaming weight loading from Hugging Face safetensors checkpoints.

Params are plain tensors in dataclasses; Q/K/V are fused into one ``[(H + 2 Hkv) D, d]`` matrix and ``ff_proj``
(gate) / ``up_proj`` into one ``[2h, d]``. Each target is allocated once on the target device and dtype and each
checkpoint tensor copied into its slot as its shard is read (host memory near one shard).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, fields
from typing import Dict, Iterator, List, Optional, Tuple

import torch

from llada_triton.kernels.reference import rope_tables
from .config import LLaDAConfig, read_json

__all__ = ["LayerParams", "Params", "load_params", "param_name_map", "WeightError", "init_params",
           "save_checkpoint", "write_safetensors", "stream_checkpoint", "fill_random"]

PREFIX = "model.transformer."


class WeightError(ValueError):
    """A checkpoint that does not match the config (names the tensor and the file)."""


@dataclass
class LayerParams:
    attn_norm: torch.Tensor   # [d]
    w_qkv: torch.Tensor       # [(H + 2 Hkv) * D, d]: rows q, then k, then v
    w_o: torch.Tensor         # [d, d]            (attn_out)
    ff_norm: torch.Tensor     # [d]
    w_gate_up: torch.Tensor   # [2h, d]: rows [0, h) ff_proj (gate), [h, 2h) up_proj
    w_down: torch.Tensor      # [d, h]            (ff_out)
    b_qkv: Optional[torch.Tensor] = None  # [(H + 2 Hkv) * D]: q, k, v biases (cfg.qkv_bias), else None


@dataclass
class Params:
    """Every family's parameters (``layers`` hold the family's layer records, e.g. :class:`LayerParams`)."""
    wte: torch.Tensor         # [V, d]
    layers: List[LayerParams]
    ln_f: torch.Tensor        # [d]
    lm_head: torch.Tensor     # [V, d]            (transformer.ff_out; wte when weight_tying)
    rope_cos: torch.Tensor    # fp32 [max_sequence_length, D]
    rope_sin: torch.Tensor    # fp32 [max_sequence_length, D]

    dtype = property(lambda self: self.wte.dtype)
    device = property(lambda self: self.wte.device)

    def tensors(self) -> Iterator[Tuple[str, torch.Tensor]]:
        for f in ("wte", "ln_f", "lm_head"):
            yield f, getattr(self, f)
        for i, lp in enumerate(self.layers):  # LayerParams, or another family's layer record (None: absent)
            for f in fields(lp):
                t = getattr(lp, f.name)
                if t is not None:
                    yield f"layers.{i}.{f.name}", t


def param_name_map(cfg: LLaDAConfig) -> Dict[str, Tuple[str, Optional[int], slice, Tuple[int, ...]]]:
    """The one explicit map: checkpoint name -> (target param path, layer or None, row slice, shape)."""
    d, D, h, V = cfg.d_model, cfg.head_dim, cfg.mlp_hidden_size, cfg.vocab_size
    nq, nkv = cfg.n_heads * D, cfg.n_kv_heads * D
    m = {PREFIX + "wte.weight": ("wte", None, slice(None), (V, d)),
         PREFIX + "ln_f.weight": ("ln_f", None, slice(None), (d,))}
    if not cfg.weight_tying:
        m[PREFIX + "ff_out.weight"] = ("lm_head", None, slice(None), (V, d))
    for i in range(cfg.n_layers):
        b = f"{PREFIX}blocks.{i}."
        m.update({
            b + "attn_norm.weight": ("attn_norm", i, slice(None), (d,)),
            b + "q_proj.weight": ("w_qkv", i, slice(0, nq), (nq, d)),
            b + "k_proj.weight": ("w_qkv", i, slice(nq, nq + nkv), (nkv, d)),
            b + "v_proj.weight": ("w_qkv", i, slice(nq + nkv, nq + 2 * nkv), (nkv, d)),
            b + "attn_out.weight": ("w_o", i, slice(None), (d, d)),
            b + "ff_norm.weight": ("ff_norm", i, slice(None), (d,)),
            b + "ff_proj.weight": ("w_gate_up", i, slice(0, h), (h, d)),
            b + "up_proj.weight": ("w_gate_up", i, slice(h, 2 * h), (h, d)),
            b + "ff_out.weight": ("w_down", i, slice(None), (d, h)),
        })
    return m


def new_params(cfg, layers: list, rope_dim: int, *, device, dtype) -> Params:
    """:class:`Params` around a family's ``layers``: uninitialised ``wte``, ``ln_f`` and ``lm_head`` (``wte`` when
    tied), RoPE tables over ``rope_dim`` features."""
    cos, sin = rope_tables(rope_dim, cfg.rope_theta, cfg.max_sequence_length, device)
    wte = torch.empty((cfg.vocab_size, cfg.d_model), device=device, dtype=dtype)
    return Params(wte=wte, layers=layers, ln_f=torch.empty(cfg.d_model, device=device, dtype=dtype),
                  lm_head=wte if cfg.weight_tying else torch.empty_like(wte), rope_cos=cos, rope_sin=sin)


def _empty_params(cfg: LLaDAConfig, device, dtype) -> Params:
    d, D, h = cfg.d_model, cfg.head_dim, cfg.mlp_hidden_size
    nqkv = (cfg.n_heads + 2 * cfg.n_kv_heads) * D
    e = lambda *shape: torch.empty(shape, device=device, dtype=dtype)  # noqa: E731
    layers = [LayerParams(attn_norm=e(d), w_qkv=e(nqkv, d), w_o=e(d, cfg.n_heads * D), ff_norm=e(d),
                          w_gate_up=e(2 * h, d), w_down=e(d, h), b_qkv=e(nqkv) if cfg.qkv_bias else None)
              for _ in range(cfg.n_layers)]
    params = new_params(cfg, layers, D, device=device, dtype=dtype)
    if not cfg.rope:  # identity rotation: x * 1 + rotate_half(x) * 0 == x exactly
        params.rope_cos, params.rope_sin = torch.ones_like(params.rope_cos), torch.zeros_like(params.rope_sin)
    return params


def _slot(params: Params, name: str, entry: tuple) -> torch.Tensor:
    """The rows of ``params`` that a name-map entry ``(field, layer or None[, expert or None], rows, shape)`` names."""
    fld, layer, *expert, rows, _ = entry  # the MoE maps add an expert index
    t = getattr(params if layer is None else params.layers[layer], fld)
    if t is None:
        raise WeightError(f"tensor {name!r} has no slot (field {fld!r} of layer {layer})")
    return (t if not expert or expert[0] is None else t[expert[0]])[rows]


def _shard_plan(path: str) -> Dict[str, List[str]]:
    """file -> tensor names, from ``model.safetensors.index.json`` or a single ``model.safetensors``."""
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.isfile(index):
        weight_map = read_json(index).get("weight_map")
        if not isinstance(weight_map, dict):
            raise WeightError(f"{index}: no 'weight_map' object")
        plan: Dict[str, List[str]] = {}
        for name, fname in weight_map.items():
            plan.setdefault(fname, []).append(name)
        return plan
    single = os.path.join(path, "model.safetensors")
    if os.path.isfile(single):
        return {"model.safetensors": None}  # every tensor in the file
    raise FileNotFoundError(f"no model.safetensors or model.safetensors.index.json in {path!r}")


def load_params(path: str, cfg: LLaDAConfig, *, device="cpu", dtype: torch.dtype = torch.bfloat16,
                name_map: Optional[Dict] = None) -> Params:
    """Load a checkpoint folder strictly (:func:`stream_checkpoint`), shard by shard, straight to ``device`` and
    ``dtype``. ``name_map``: the family's map in the form of :func:`param_name_map` (default: LLaDA's)."""
    return load_into(path, _empty_params(cfg, device, dtype), param_name_map(cfg) if name_map is None else name_map)


@torch.no_grad()
def load_into(path: str, params: Params, name_map: Dict, *, describe_missing=None) -> Params:
    """Fill ``params`` from a checkpoint folder by :func:`stream_checkpoint`, each tensor into its name-map slot."""
    stream_checkpoint(path, {n: e[-1] for n, e in name_map.items()},
                      lambda name, t: _slot(params, name, name_map[name]).copy_(t), describe_missing=describe_missing)
    return params


def stream_checkpoint(path: str, shapes: Dict[str, Tuple[int, ...]], write, *, describe_missing=None) -> None:
    """Hand every tensor of a safetensors checkpoint folder once to ``write(name, tensor)``, shard by shard, strictly:
    ``shapes`` maps each expected name to its shape; an unexpected, duplicated, mis-shaped, unreadable or missing
    tensor raises :class:`WeightError` naming it and the file (``describe_missing(names)`` may phrase the missing)."""
    from safetensors import safe_open

    seen: Dict[str, str] = {}
    for fname, wanted in _shard_plan(path).items():
        fpath = os.path.join(path, fname)
        if not os.path.isfile(fpath):
            raise WeightError(f"shard {fname!r} named by the index is missing in {path!r}")
        try:
            handle = safe_open(fpath, framework="pt", device="cpu")
        except Exception as e:  # safetensors raises its own error type for corrupt headers
            raise WeightError(f"cannot read {fpath!r}: {e}") from e
        with handle as f:
            present = set(f.keys())
            todo = sorted(present) if wanted is None else wanted
            for name in todo:
                if name not in present:
                    raise WeightError(f"tensor {name!r} is named by the index for {fname!r} but the file lacks it")
                if name not in shapes:
                    raise WeightError(f"unexpected tensor {name!r} in {fname!r} (not part of this config)")
                if name in seen:
                    raise WeightError(f"tensor {name!r} appears twice ({seen[name]!r} and {fname!r})")
                shp = tuple(f.get_slice(name).get_shape())
                if shp != tuple(shapes[name]):
                    raise WeightError(f"tensor {name!r} in {fname!r} has shape {shp}, expected {tuple(shapes[name])}")
                try:
                    t = f.get_tensor(name)
                except Exception as e:
                    raise WeightError(f"cannot read tensor {name!r} from {fpath!r} (truncated or corrupt?): {e}") from e
                write(name, t)
                del t
                seen[name] = fname
            if wanted is not None:
                extra = sorted(present - set(wanted))
                if extra:
                    raise WeightError(f"{fname!r} holds tensors the index does not list: {extra[:5]}")
    missing = sorted(set(shapes) - set(seen))
    if missing:
        what = describe_missing(missing) if describe_missing else f"e.g. {missing[:5]}"
        raise WeightError(f"checkpoint {path!r} lacks {len(missing)} tensors, {what}")


def init_params(cfg: LLaDAConfig, *, device="cpu", dtype=torch.float32, seed: int = 0, std: float = 0.02) -> Params:
    """Random parameters (norm weights near 1) for tests, benchmarks and training from scratch."""
    return fill_random(_empty_params(cfg, device, dtype), seed=seed, std=std)


@torch.no_grad()
def fill_random(params: Params, *, seed: int = 0, std: float = 0.02) -> Params:
    """Fill any family's ``params`` in place on their device: norms ``1 + 0.1 N(0, 1)``, the rest ``std N(0, 1)``."""
    dev = params.device
    g = torch.Generator(device=dev).manual_seed(seed)
    for name, t in params.tensors():
        v = torch.randn(t.shape, generator=g, device=dev, dtype=torch.float32)
        t.copy_(v.mul_(0.1).add_(1.0) if name.endswith("norm") or name == "ln_f" else v.mul_(std))
        del v
    return params


def save_checkpoint(params: Params, cfg: LLaDAConfig, path: str, *, dtype=torch.bfloat16,
                    max_shard_bytes: Optional[int] = None, name_map: Optional[Dict] = None) -> List[str]:
    """Write ``params`` as safetensors in the Hugging Face layout (unfused names; ``name_map``: the family's,
    default LLaDA's) in ``dtype`` (an MoE expert bias in fp32: the trained routing), sharded when asked; the
    caller writes config.json. Returns the file names."""
    tensors = {}
    for name, entry in (param_name_map(cfg) if name_map is None else name_map).items():
        t = _slot(params, name, entry).detach()
        tensors[name] = t.to("cpu", torch.float32 if entry[0] == "expert_bias" else dtype).contiguous()
    return write_safetensors(tensors, path, max_shard_bytes=max_shard_bytes)


def write_safetensors(tensors: Dict[str, torch.Tensor], path: str, *,
                      max_shard_bytes: Optional[int] = None) -> List[str]:
    """Write named CPU tensors as ``model.safetensors``, or as shards of at most ``max_shard_bytes`` (a tensor
    never split) plus ``model.safetensors.index.json``; returns the file names."""
    from safetensors.torch import save_file

    os.makedirs(path, exist_ok=True)
    if not max_shard_bytes:
        save_file(tensors, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
        return ["model.safetensors"]
    shards: List[Dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, t in tensors.items():
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += nbytes
    files, weight_map = [], {}
    for i, shard in enumerate(shards):
        fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, os.path.join(path, fname), metadata={"format": "pt"})
        files.append(fname)
        weight_map.update({k: fname for k in shard})
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    with open(os.path.join(path, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
    return files
