"""A pool of fixed-size DeltaNet states: one *slot* per running request, for every DeltaNet layer.

A Gated DeltaNet layer remembers a sequence in a state of constant size (chapter 06): the last ``K``
inputs of its short convolution, ``(conv_dim, K)``, and one ``Dk x Dv`` matrix per value head,
``(Hv, Dk, Dv)``. A server therefore does not page this memory the way it pages keys and values
(:mod:`qwen3next.paged_kv`): it keeps a pool of ``num_slots`` states per layer and gives each running
request one slot index. A batch of requests reads its rows with the slot indices, runs the layer, and
writes the new states back to the same indices; a wrong index silently gives one request another's
memory, which is why the tests check outputs request by request.

The recurrent state is kept in float32 (``state_dtype``) whatever the activations are: it
accumulates over the whole sequence, and engines that kept it in 16 bits lost accuracy (the book's
reference page, :ref:`ref-serving`). The conv window is kept in the activation dtype, as the layer
produces it.

The same class stores *snapshots*: a copy of a request's states at one position (a prefix-cache
block boundary, a chat turn), taken with :func:`copy_slot` and restored the same way.

Mirrors the "mamba cache" of vLLM (``MambaSpec``, one state per request, indexed by
``state_indices_tensor``) and SGLang's ``MambaPool``; leaves out the padding of a slot to the
attention block size that vLLM's single memory pool needs (a separate pool here).
"""

from __future__ import annotations

import torch

from .deltanet import DeltaNetState


class StatePool:
    """``conv[l]`` ``(num_slots, conv_dim, K)`` and ``recurrent[l]`` ``(num_slots, Hv, Dk, Dv)`` per
    DeltaNet layer ``l`` (DeltaNet layers numbered among themselves), with a free list of slots."""

    def __init__(self, num_layers: int, num_slots: int, conv_dim: int, kernel: int, num_heads: int,
                 key_dim: int, value_dim: int, dtype: torch.dtype = torch.float32,
                 state_dtype: torch.dtype = torch.float32, device=None):
        if not isinstance(num_slots, int) or num_slots < 1:
            raise ValueError(f"num_slots: expected a positive integer, found {num_slots!r}")
        layers = max(num_layers, 1)
        self.num_slots = num_slots
        self.conv = torch.zeros(layers, num_slots, conv_dim, kernel, dtype=dtype, device=device)
        self.recurrent = torch.zeros(layers, num_slots, num_heads, key_dim, value_dim, dtype=state_dtype,
                                     device=device)
        self._free = list(range(num_slots - 1, -1, -1))  # a stack: pop() gives the lowest slot

    @classmethod
    def for_config(cls, config, num_slots: int, dtype=torch.float32, state_dtype=torch.float32,
                   device=None) -> StatePool:
        layers = config.layer_types.count("linear_attention")
        return cls(layers, num_slots, config.linear_conv_dim, config.linear_conv_kernel_dim,
                   config.linear_num_value_heads, config.linear_key_head_dim, config.linear_value_head_dim,
                   dtype=dtype, state_dtype=state_dtype, device=device)

    # ------------------------------------------------------------------------------ allocation
    @property
    def num_free(self) -> int:
        return len(self._free)

    def allocate(self) -> int:
        """A free slot, zeroed (an empty state: the layer then starts from nothing, as alone)."""
        if not self._free:
            raise RuntimeError(f"StatePool: all {self.num_slots} slots are in use")
        slot = self._free.pop()
        self.conv[:, slot].zero_()
        self.recurrent[:, slot].zero_()
        return slot

    def free(self, slot: int) -> None:
        if slot in self._free or not 0 <= slot < self.num_slots:
            raise ValueError(f"slot {slot}: not an allocated slot of this pool")
        self._free.append(slot)
        self._free.sort(reverse=True)

    def nbytes_per_slot(self) -> int:
        """Bytes one request's states take over all DeltaNet layers."""
        conv = self.conv[:, 0].numel() * self.conv.element_size()
        return conv + self.recurrent[:, 0].numel() * self.recurrent.element_size()

    # ------------------------------------------------------------------------ reading, writing
    def gather(self, layer: int, slots: list[int]) -> DeltaNetState:
        """The states of ``slots`` at DeltaNet layer ``layer``, copied into a batch the layer can use
        (its recurrent state in float32, as the layer computes it)."""
        index = torch.tensor(slots, dtype=torch.long, device=self.conv.device)
        conv = self.conv[layer].index_select(0, index)  # (B, conv_dim, K)
        recurrent = self.recurrent[layer].index_select(0, index).float()  # (B, Hv, Dk, Dv)
        return DeltaNetState(conv, recurrent)

    def scatter(self, layer: int, slots: list[int], state: DeltaNetState) -> None:
        """Write the batch ``state`` back to ``slots`` (cast to the pool's dtypes)."""
        if len(set(slots)) != len(slots):  # two rows, one slot: which state survives is undefined
            raise ValueError(f"scatter: slots {slots} repeat a slot; a batch holds each request once")
        index = torch.tensor(slots, dtype=torch.long, device=self.conv.device)
        self.conv[layer].index_copy_(0, index, state.conv_state.to(self.conv.dtype))
        self.recurrent[layer].index_copy_(0, index, state.recurrent_state.to(self.recurrent.dtype))


def copy_slot(src: StatePool, src_slot: int, dst: StatePool, dst_slot: int, layer: int | None = None) -> None:
    """Copy one slot's states (every layer, or only ``layer``) from ``src`` to ``dst``: a snapshot when
    ``dst`` stores snapshots, a restore when it is the pool of running requests."""
    layers = slice(None) if layer is None else slice(layer, layer + 1)
    dst.conv[layers, dst_slot] = src.conv[layers, src_slot]
    dst.recurrent[layers, dst_slot] = src.recurrent[layers, src_slot]
