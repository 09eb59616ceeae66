"""The hybrid cache: what Qwen3-Next remembers between forward passes.

A decoder that mixes two kinds of layers needs two kinds of memory (the book's reference page, "The
hybrid cache"):

* a gated-attention layer keeps every past key and value (``attention.KVCache``): its memory grows by
  ``2 * num_key_value_heads * head_dim`` numbers per token;
* a Gated DeltaNet layer keeps a fixed-size state (``deltanet.DeltaNetState``): the last
  ``linear_conv_kernel_dim`` inputs of its short convolution and one ``Dk x Dv`` matrix per value
  head, whatever the context length.

``HybridCache`` holds one of these per layer, in ``config.layer_types`` order, plus what the model needs
across calls: how many tokens have been seen and, for left-padded batches, the running 2-D padding
mask ``(B, seq_len)`` (1 = real token, 0 = padding). It can keep some batch rows (finished sequences
leave the batch) or reorder them (beam search), and reports the memory its cached tokens take, in bytes, per layer type,
measured from the tensors (an attention layer's buffers keep some spare room for the next tokens,
see ``attention.KVCache``, which these counts leave out).

Mirrors the hybrid behaviour of ``transformers``' ``DynamicCache`` for Qwen3-Next (attention layers
plus linear-attention layers with conv and recurrent states). Leaves out: static pre-allocation,
offloading to CPU, and sliding windows (Qwen3-Next has none).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from .attention import KVCache
from .config import Qwen3NextConfig
from .deltanet import DeltaNetState


class HybridCache:
    """Per-layer caches for a hybrid stack, plus the running padding mask and token count."""

    def __init__(self, layers: list, layer_types: list[str], batch_size: int):
        if len(layers) != len(layer_types):
            raise ValueError(f"layers: expected one cache per layer type ({len(layer_types)}), found {len(layers)}")
        self.layers = list(layers)
        self.layer_types = list(layer_types)
        self.batch_size = batch_size
        # tokens seen per row so far, padding included: the length of the attention layers' K and V
        self.seq_len = 0
        # (B, seq_len) padding mask, or None while every token seen so far is real (the common case)
        self.attention_mask: torch.Tensor | None = None
        # the sizes of the model the cache was made for (for_config), so another model can refuse it
        self.model_sizes: dict | None = None

    @classmethod
    def for_config(cls, config: Qwen3NextConfig, batch_size: int) -> HybridCache:
        """An empty cache for ``config``: a KV cache per attention layer, a state per DeltaNet layer.

        Both start empty; their tensors come with the first forward pass, on its device and in its dtype.
        """
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size: expected a positive integer, found {batch_size!r}")
        layers = [KVCache() if kind == "full_attention" else DeltaNetState() for kind in config.layer_types]
        cache = cls(layers, config.layer_types, batch_size)
        cache.model_sizes = _cached_sizes(config)
        return cache

    def check_made_for(self, config: Qwen3NextConfig) -> None:
        """Refuse a cache made by a model whose layers or cached shapes differ from ``config``'s."""
        if list(self.layer_types) != list(config.layer_types):
            raise ValueError(f"cache: made for a model with layer types {_short(self.layer_types)}, "
                             f"this model has {_short(config.layer_types)}")
        if self.model_sizes is not None:
            for name, value in _cached_sizes(config).items():
                if self.model_sizes[name] != value:
                    raise ValueError(f"cache: made for a model with {name}={self.model_sizes[name]}, "
                                     f"this model has {name}={value}")

    # --------------------------------------------------------------------------------- access
    def __getitem__(self, layer_idx: int):
        return self.layers[layer_idx]

    def __iter__(self) -> Iterator:
        return iter(self.layers)

    # --------------------------------------------------------------------------- padding mask
    def extend_mask(self, new_mask: torch.Tensor | None, num_new: int, device=None) -> torch.Tensor | None:
        """Record ``num_new`` new tokens and return the padding mask over all of them ``(B, seq_len + new)``.

        ``new_mask`` may cover only the new tokens ``(B, new)`` or everything ``(B, seq_len + new)``
        (what ``transformers`` passes); a whole mask replaces the one kept so far, so zeros in its past
        part hide those tokens from the attention layers from now on. Returns ``None`` when no padding
        has ever been seen, so the layers can take their fast unmasked path.
        """
        self._check_new_mask(new_mask, num_new)
        past, B = self.seq_len, self.batch_size
        if new_mask is not None:
            new_mask = new_mask.to(torch.long)
            if new_mask.shape[1] == past + num_new:  # the whole mask: it may hide past tokens too
                whole = new_mask
            else:  # the new tokens only: the past keeps the mask it had
                old = self.attention_mask
                if old is None:
                    old = torch.ones(B, past, dtype=torch.long, device=new_mask.device)
                whole = torch.cat([old.to(new_mask.device), new_mask], dim=1)  # (B, past + new)
            # no padding anywhere, before or now: stay on the fast unmasked path
            self.attention_mask = None if self.attention_mask is None and bool(whole.all()) else whole
        elif self.attention_mask is not None:  # no mask given: the new tokens are real
            ones = torch.ones(B, num_new, dtype=torch.long, device=self.attention_mask.device)
            self.attention_mask = torch.cat([self.attention_mask, ones], dim=1)
        self.seq_len = past + num_new
        return self.attention_mask

    def _check_new_mask(self, new_mask: torch.Tensor | None, num_new: int) -> None:
        B, past = self.batch_size, self.seq_len
        if new_mask is not None and (
            new_mask.dim() != 2 or new_mask.shape[0] != B or new_mask.shape[1] not in (num_new, past + num_new)
        ):
            raise ValueError(
                f"attention_mask: expected shape ({B}, {num_new}) or ({B}, {past + num_new}) "
                f"(new tokens or all tokens), found {tuple(new_mask.shape)}"
            )

    # ---------------------------------------------------------------------------- batch rows
    def reorder(self, index) -> HybridCache:
        """The batch becomes rows ``index`` of the old one, in that order (repeats allowed), in place.

        ``index``: a list or 1-D LongTensor of row numbers. Beam search reorders rows this way.
        """
        index = self._check_row_numbers(index)
        for layer in self.layers:
            layer.reorder(index)  # each per-layer cache gathers its own rows
        if self.attention_mask is not None:
            self.attention_mask = self.attention_mask.index_select(0, index.to(self.attention_mask.device))
        self.batch_size = int(index.numel())
        return self

    def keep_rows(self, rows) -> HybridCache:
        """Keep only ``rows``, in their order, in place: finished sequences leave the batch.

        ``rows``: a boolean mask ``(B,)`` (True = keep) or increasing row numbers.
        """
        return self.reorder(self._check_rows_to_keep(rows))

    def _check_row_numbers(self, index) -> torch.Tensor:
        """``index`` as a 1-D LongTensor of existing rows, or a clear error."""
        index = torch.as_tensor(index)
        if index.dim() != 1 or index.dtype != torch.long:
            raise ValueError(
                f"index: expected a 1-D LongTensor of row numbers, found {tuple(index.shape)} {index.dtype}"
            )
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= self.batch_size):
            raise ValueError(f"index: rows must be in 0..{self.batch_size - 1}, found {index.tolist()}")
        return index

    def _check_rows_to_keep(self, rows) -> torch.Tensor:
        """``rows`` (a boolean mask or increasing row numbers) as a 1-D LongTensor of row numbers."""
        rows = torch.as_tensor(rows)
        if rows.dtype == torch.bool:
            if rows.shape != (self.batch_size,):
                raise ValueError(
                    f"index: a boolean row mask must have shape ({self.batch_size},), found {tuple(rows.shape)}"
                )
            return rows.nonzero().squeeze(-1)
        rows = self._check_row_numbers(rows)
        if rows.numel() > 1 and not bool((rows[1:] > rows[:-1]).all()):
            raise ValueError(f"rows: expected increasing row numbers (to reorder, use reorder), found {rows.tolist()}")
        return rows

    # -------------------------------------------------------------------------------- memory
    def layer_nbytes(self) -> list[int]:
        """Bytes of each layer's cached tokens and states, measured from the tensors themselves."""
        return [int(layer.nbytes()) for layer in self.layers]

    def memory_report(self) -> dict[str, int]:
        """Measured bytes per layer type, plus the padding mask and the total."""
        report = {kind: 0 for kind in ("full_attention", "linear_attention")}
        for kind, n in zip(self.layer_types, self.layer_nbytes(), strict=True):
            report[kind] += n
        mask = self.attention_mask
        report["mask"] = 0 if mask is None else mask.numel() * mask.element_size()
        report["total"] = sum(report.values())
        return report

    def __repr__(self) -> str:
        kinds = {k: self.layer_types.count(k) for k in ("full_attention", "linear_attention")}
        return (f"HybridCache(batch_size={self.batch_size}, seq_len={self.seq_len}, "
                f"attention_layers={kinds['full_attention']}, deltanet_layers={kinds['linear_attention']}, "
                f"padded={self.attention_mask is not None})")


# the config fields behind what the cache holds: the shapes of its keys, values, conv windows and states,
# and the width of the residual stream they were computed from
_CACHE_SHAPE_FIELDS = ("hidden_size", "num_key_value_heads", "head_dim", "linear_num_key_heads",
                       "linear_num_value_heads", "linear_key_head_dim", "linear_value_head_dim",
                       "linear_conv_kernel_dim")


def _cached_sizes(config: Qwen3NextConfig) -> dict[str, int]:
    return {name: getattr(config, name) for name in _CACHE_SHAPE_FIELDS}


def _short(layer_types: list[str]) -> str:
    kinds = "".join("A" if k == "full_attention" else "D" for k in layer_types)
    return f"{len(layer_types)} layers ({kinds}: D = DeltaNet, A = attention)"
