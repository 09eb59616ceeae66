"""FP8 block quantisation as the ``-FP8`` releases of Qwen3-Next store it.

What it implements
    * :func:`dequantize_fp8` and :func:`quantize_fp8`: e4m3 weights and one ``weight_scale_inv`` per
      128 x 128 block, ``W = W_fp8 * scale_inv`` (the fine-grained FP8 quantisation of the DeepSeek-V3
      technical report).
    * :func:`fp8_candidate`: which weights the releases quantise (their ``modules_to_not_convert`` keep
      embeddings, head, norms, router and DeltaNet's small parameters in bf16).
    * :func:`write_fp8_checkpoint`: an FP8 copy of a safetensors checkpoint, for tests and the chapter.

Mirrors ``transformers``' ``integrations/finegrained_fp8.py`` (dequantisation on load).

Leaves out: FP8 matmuls and keeping weights quantised in memory (the loader dequantises), activation
scales, other quantisation formats (GPTQ, AWQ, bitsandbytes).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from .checkpoint import CONFIG_FILE, INDEX_FILE, open_checkpoint
from .hub_layout import SCALE_SUFFIX
from .safetensors_file import read_header

FP8_MAX = 448.0  # largest finite e4m3 value


def dequantize_fp8(w: torch.Tensor, scale_inv: torch.Tensor, block: tuple[int, int] = (128, 128),
                   dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """``W = W_fp8 * scale_inv``, each scale covering one ``block`` of rows x columns (edge blocks are cut).

    w (O, I) float8; scale_inv (ceil(O/bo), ceil(I/bi)); returns (O, I) in ``dtype``.
    """
    _check_fp8_args(w, block, scale_inv)
    O, I = w.shape
    bo, bi = block
    s = (scale_inv.float().repeat_interleave(bo, dim=0)[:O]
         .repeat_interleave(bi, dim=1)[:, :I])  # (O, I)
    return (w.float() * s).to(dtype)


def quantize_fp8(w: torch.Tensor, block: tuple[int, int] = (128, 128),
                 scale_dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Block-quantise a 2-D weight to e4m3 the way the ``-FP8`` releases are made.

    Each block's largest magnitude maps to 448 (the largest e4m3 value): ``scale_inv = amax / 448``,
    ``W_fp8 = W / scale_inv``. Returns ``(W_fp8 (O, I), scale_inv (ceil(O/bo), ceil(I/bi)))``.
    """
    _check_fp8_args(w, block)
    O, I = w.shape
    bo, bi = block
    nO, nI = -(-O // bo), -(-I // bi)
    padded = torch.zeros(nO * bo, nI * bi, dtype=torch.float32)
    padded[:O, :I] = w.float()
    blocks = padded.view(nO, bo, nI, bi)  # (nO, bo, nI, bi)
    amax = blocks.abs().amax(dim=(1, 3)).clamp(min=1e-12)  # (nO, nI)
    scale_inv = amax / FP8_MAX
    q = (blocks / scale_inv[:, None, :, None]).view(nO * bo, nI * bi)[:O, :I]
    return q.to(torch.float8_e4m3fn), scale_inv.to(scale_dtype)


def _check_fp8_args(w: torch.Tensor, block: tuple[int, int], scale_inv: torch.Tensor | None = None) -> None:
    """A 2-D weight, a block of two positive sizes, and (dequantising) one scale per block."""
    if not isinstance(w, torch.Tensor) or w.dim() != 2:
        raise ValueError(f"w: expected a 2-D weight, found {getattr(w, 'shape', type(w).__name__)}")
    if not (len(block) == 2 and all(isinstance(b, int) and not isinstance(b, bool) and b > 0 for b in block)):
        raise ValueError(f"block: expected two positive integers, found {block!r}")
    if scale_inv is not None:
        want = tuple(-(-d // b) for d, b in zip(w.shape, block, strict=True))
        if tuple(scale_inv.shape) != want:
            raise ValueError(f"scale_inv: expected shape {list(want)} (one scale per {block[0]}x{block[1]} block "
                             f"of {list(w.shape)}), found {list(scale_inv.shape)}")


# Which weights the -FP8 releases keep in bf16 (their quantization_config's modules_to_not_convert):
# embeddings, head, norms, the router and shared-expert gate, and DeltaNet's small parameters.
FP8_KEEP = re.compile(r"(embed_tokens|lm_head|norm|\.mlp\.gate\.|shared_expert_gate|in_proj_ba|conv1d|A_log|dt_bias)")


def fp8_candidate(name: str, shape: tuple[int, ...]) -> bool:
    """Would the FP8 releases store this weight in e4m3? (2-D projection weights outside ``FP8_KEEP``)."""
    return len(shape) == 2 and name.endswith(".weight") and not FP8_KEEP.search(name)


def write_fp8_checkpoint(src: str | Path, dst: str | Path, block: tuple[int, int] = (128, 128),
                         scale_dtype: torch.dtype = torch.float32) -> Path:
    """Write an FP8 copy of a safetensors checkpoint, shard for shard, with ``quantization_config`` set.

    For tests and the chapter: the real ``-FP8`` files cannot be downloaded here.
    """
    from safetensors import safe_open
    from safetensors.torch import save_file

    ckpt = open_checkpoint(src)
    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    weight_map: dict[str, str] = {}
    for f in ckpt.files:
        out: dict[str, torch.Tensor] = {}
        with safe_open(f, framework="pt") as sf:
            for name in sf.keys():
                t = sf.get_tensor(name)
                if fp8_candidate(name, tuple(t.shape)):
                    out[name], out[name + SCALE_SUFFIX] = quantize_fp8(t, block, scale_dtype)
                else:
                    out[name] = t.to(torch.bfloat16) if t.is_floating_point() else t
        save_file(out, dst / f.name, metadata={"format": "pt"})
        weight_map.update({n: f.name for n in out})
    raw = dict(ckpt.raw_config)
    raw["quantization_config"] = {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
                                  "weight_block_size": list(block)}
    raw["torch_dtype"] = "bfloat16"
    raw.pop("dtype", None)
    (dst / CONFIG_FILE).write_text(json.dumps(raw, indent=2))
    if ckpt.index is not None:
        total = sum(i.nbytes for f in ckpt.files for i in read_header(dst / f.name)[0].values())
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (dst / INDEX_FILE).write_text(json.dumps(index, indent=2))
    return dst

