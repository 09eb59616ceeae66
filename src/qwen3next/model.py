"""The Qwen3-Next decoder stack and its causal-language-model head.

Assembles the blocks of the earlier chapters into the 48-layer hybrid model of Qwen3-Next-80B-A3B
(Qwen team, "Qwen3-Next", 2025; the DeltaNet layers follow Yang et al., "Gated Delta Networks", 2024):

    x = embed_tokens(input_ids)
    for each layer i:   x = x + mixer_i(input_layernorm(x))          # Gated DeltaNet or gated attention
                        x = x + mlp_i(post_attention_layernorm(x))     # sparse MoE (or a dense MLP)
    logits = lm_head(norm(x))

Layer ``i`` uses gated attention when ``config.layer_types[i] == "full_attention"`` and a Gated
DeltaNet otherwise (3 DeltaNet layers to every attention layer in the release). Mirrors
``Qwen3NextDecoderLayer``, ``Qwen3NextModel`` and ``Qwen3NextForCausalLM`` of ``transformers``:
same parameter names (the Hub checkpoint keys), same random initialisation, same load-balancing loss.

Padding: a left-padded batch passes ``attention_mask``; positions then count real tokens only
(``cumsum(mask) - 1``, what ``transformers``' ``generate`` feeds the reference), so a padded row
computes exactly what it computes alone. ``mtp=True`` adds the checkpoint's MTP head
(:mod:`qwen3next.mtp`) as ``model.mtp``; ``forward`` never runs it. Leaves out: gradient
checkpointing, tensor/pipeline parallel plans, and heads other than the causal LM.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .cache import HybridCache
from .checkpoint import open_checkpoint
from .config import Qwen3NextConfig
from .decoder_layer import DecoderLayer
from .deltanet import GatedDeltaNet
from .experts import StackedExperts
from .linear import Linear
from .loss import linear_cross_entropy, next_token_targets
from .moe import load_balancing_loss
from .norms import RMSNorm, RMSNormGated
from .rope import RotaryEmbedding
from .weights import load_weights


@dataclass
class CausalLMOutput:
    """What a forward pass returns. Only ``logits`` is always set."""

    logits: torch.Tensor  # (B, T, V), or (B, logits_to_keep, V)
    cache: HybridCache | None = None
    loss: torch.Tensor | None = None  # next-token cross-entropy (+ aux loss), when labels are given
    aux_loss: torch.Tensor | None = None  # load-balancing loss, when router logits are asked for
    router_logits: tuple[torch.Tensor, ...] | None = None  # one (B*T, E) per MoE layer
    # embeddings, then each layer's output; the last one after the final norm (as the reference returns it)
    hidden_states: tuple[torch.Tensor, ...] | None = None


class Qwen3NextModel(nn.Module):
    """Embedding, the hybrid stack, final norm: token ids (B, T) -> hidden states (B, T, H)."""

    def __init__(self, config: Qwen3NextConfig):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = RotaryEmbedding(config)  # only a non-persistent inv_freq buffer

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cache: HybridCache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        output_hidden_states: bool = False,
        return_router_logits: bool = False,
    ) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        self._check_forward_inputs(input_ids if inputs_embeds is None else inputs_embeds, attention_mask, cache)
        x = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds  # (B, T, H)
        B, T, _ = x.shape
        past = 0 if cache is None else cache.seq_len
        mask = self._padding_mask(attention_mask, cache, T, x.device)  # (B, past + T) or None
        if position_ids is None:
            position_ids = self._positions(mask, B, T, past, x.device)  # (B, T)
        cos, sin = (None, None)
        if any(t == "full_attention" for t in self.config.layer_types):
            cos, sin = self.rotary_emb(position_ids)  # (B, T, rotary_dim) each

        hidden_states, router_logits = [x], []
        for i, layer in enumerate(self.layers):
            x, logits_i = layer(x, cos, sin, attention_mask=mask, cache=None if cache is None else cache[i])
            if return_router_logits and logits_i is not None:
                router_logits.append(logits_i)
            if output_hidden_states:
                hidden_states.append(x)
        x = self.norm(x)
        if output_hidden_states:  # like the reference: the last entry is after the final norm
            hidden_states[-1] = x
        return x, hidden_states, router_logits

    def _check_forward_inputs(self, tokens: torch.Tensor, attention_mask, cache) -> None:
        B, T = tokens.shape[:2]
        if cache is not None and not isinstance(cache, HybridCache):
            raise TypeError(f"cache: expected a HybridCache (model.new_cache(batch_size)), "
                            f"found {type(cache).__name__}")
        if cache is not None:
            cache.check_made_for(self.config)
            if cache.batch_size != B:
                raise ValueError(f"cache: built for batch size {cache.batch_size}, but input_ids has {B} rows")
        if attention_mask is not None and not isinstance(attention_mask, torch.Tensor):
            raise TypeError(f"attention_mask: expected a tensor (B, T) of 1 and 0, "
                            f"found {type(attention_mask).__name__}")
        if cache is None and attention_mask is not None and tuple(attention_mask.shape) != (B, T):
            raise ValueError(
                f"attention_mask: expected shape ({B}, {T}) (1 = real token, 0 = padding), "
                f"found {tuple(attention_mask.shape)}"
            )

    @staticmethod
    def _padding_mask(attention_mask, cache, T, device):
        """The 2-D padding mask over all tokens, or None when nothing is padding."""
        if cache is not None:  # the cache keeps the mask of the earlier tokens
            return cache.extend_mask(attention_mask, T, device)
        if attention_mask is None or bool(attention_mask.all()):
            return None
        return attention_mask.to(torch.long)

    @staticmethod
    def _positions(mask, B, T, past, device):
        if mask is None:
            return torch.arange(past, past + T, device=device).expand(B, T)  # (B, T)
        # a row's first real token is position 0, whatever padding precedes it (like generate())
        pos = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)  # (B, past + T)
        return pos[:, -T:]


class Qwen3NextForCausalLM(nn.Module):
    """Qwen3-Next with its language-model head: token ids (B, T) -> next-token logits (B, T, V)."""

    def __init__(self, config: Qwen3NextConfig, mtp: bool = False):
        super().__init__()
        if config.tie_word_embeddings:
            raise ValueError("tie_word_embeddings: Qwen3-Next has an untied lm_head; found true")
        self.config = config
        device = torch.get_default_device()
        # shapes first, on the meta device (no memory, no random fill), then storage, then one fill
        with torch.device("meta"):
            self.model = Qwen3NextModel(config)
            self.lm_head = Linear(config.hidden_size, config.vocab_size, bias=False)
            if mtp:  # the checkpoint's multi-token-prediction head (qwen3next.mtp), keys mtp.*
                from .mtp import MultiTokenPredictor

                self.mtp = MultiTokenPredictor(config)
        if device.type != "meta":
            self.to_empty(device=device)
            self.init_weights()

    # -------------------------------------------------------------------------------- weights
    @torch.no_grad()
    def init_weights(self) -> None:
        """Fill every parameter (and the RoPE buffer) as the reference does; nothing to fill on meta."""
        if self.lm_head.weight.is_meta:
            return
        filled = set()

        def init(module):
            if self._init_weights(module):
                filled.update(id(t) for t in (*module.parameters(recurse=False), *module.buffers(recurse=False)))

        self.apply(init)  # children before parents, like the reference's post_init
        # storage comes from to_empty: a tensor we know no rule for would hold whatever was in memory
        missed = [name for name, t in (*self.named_parameters(), *self.named_buffers()) if id(t) not in filled]
        if missed:
            raise RuntimeError(f"init_weights: no initialisation rule for parameters {missed[:5]}")

    def _init_weights(self, module: nn.Module) -> bool:
        """The reference's random initialisation (``Qwen3NextPreTrainedModel._init_weights``).

        Fills ``module``'s own parameters; returns whether it knew how. Every matrix is drawn from
        N(0, ``initializer_range``) (not torch's default for the layer); the norms, the DeltaNet's
        ``dt_bias`` and ``A_log`` and the RoPE frequencies start as their modules define.
        """
        if isinstance(module, (nn.Linear, nn.Conv1d, nn.Embedding)):
            module.weight.normal_(0.0, self.config.initializer_range)
            if getattr(module, "bias", None) is not None:
                module.bias.zero_()
        elif isinstance(module, StackedExperts):
            module.normal_(self.config.initializer_range)
        elif isinstance(module, (RMSNorm, RMSNormGated, GatedDeltaNet)):
            module.reset_parameters()
        elif isinstance(module, RotaryEmbedding):
            module.reset_inv_freq()
        else:
            return False
        return True

    @classmethod
    def from_pretrained(cls, path, dtype: torch.dtype | str | None = None, device="cpu",
                        offload_experts: bool = False, expert_cache_size: int | None = None,
                        check_finite: bool = True, mtp: bool = False):
        """Load a Hub-format checkpoint directory: open and check it, build the model on the meta device
        (nothing allocated), then let :func:`qwen3next.weights.load_weights` fill it (``check_finite``:
        refuse a weight holding NaN or Inf, naming it). ``mtp=True`` also attaches the checkpoint's
        ``mtp.*`` head as ``model.mtp`` (:func:`qwen3next.mtp.attach_mtp`)."""
        ckpt = open_checkpoint(path)
        with torch.device("meta"):
            model = cls(ckpt.config)
        model = load_weights(model, ckpt, dtype=dtype, device=device, offload_experts=offload_experts,
                             expert_cache_size=expert_cache_size, check_finite=check_finite)
        if mtp:
            from .mtp import attach_mtp

            attach_mtp(model, ckpt, dtype=dtype, device=device)
        return model

    def compile_decoding(self, enabled: bool = True) -> None:
        """Run the layers' one-token steps through ``torch.compile`` (``False``: eager again);
        see :meth:`qwen3next.decoder_layer.DecoderLayer.compile_decoding`. The first step after it compiles
        (seconds); results equal the eager ones to float32 rounding."""
        for layer in self.model.layers:
            layer.compile_decoding(enabled)

    def new_cache(self, batch_size: int = 1) -> HybridCache:
        """An empty hybrid cache for ``batch_size`` rows (its tensors come with the first forward pass)."""
        return HybridCache.for_config(self.config, batch_size)

    # -------------------------------------------------------------------------------- forward
    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cache: HybridCache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_router_logits: bool | None = None,
        output_hidden_states: bool = False,
        logits_to_keep: int = 0,
    ) -> CausalLMOutput:
        """Logits for ``input_ids (B, T)``.

        ``cache``: continue from it and update it in place (``out.cache`` is the same object).
        ``attention_mask``: ``(B, T)`` or ``(B, past + T)``, 1 for real tokens, 0 for left padding.
        ``position_ids (B, T)``: override the positions used by RoPE.
        ``output_router_logits``: also return each MoE layer's router logits and the load-balancing loss.
        ``logits_to_keep``: if > 0, only the last that many positions go through ``lm_head``.
        """
        self._check_forward_inputs(input_ids, inputs_embeds, position_ids, labels, logits_to_keep,
                                   output_router_logits, output_hidden_states)
        if output_router_logits is None:
            output_router_logits = self.config.output_router_logits
        hidden, hidden_states, router_logits = self.model(
            input_ids, attention_mask=attention_mask, position_ids=position_ids, cache=cache,
            inputs_embeds=inputs_embeds, output_hidden_states=output_hidden_states,
            return_router_logits=output_router_logits,
        )
        if logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]
        loss = None
        if labels is not None:  # the logits and their cross-entropy in one pass (linear_cross_entropy)
            loss, logits = linear_cross_entropy(hidden, self.lm_head.weight, next_token_targets(labels, hidden))
        else:
            logits = self.lm_head(hidden)
        out = CausalLMOutput(logits=logits, cache=cache)  # logits (B, T, V)
        if output_hidden_states:
            out.hidden_states = tuple(hidden_states)
        if output_router_logits:
            out.router_logits = tuple(router_logits)
            out.aux_loss = self._aux_loss(out.router_logits, attention_mask, hidden_states[0].shape[1])
        if loss is not None:
            out.loss = loss if out.aux_loss is None else loss + self.config.router_aux_loss_coef * out.aux_loss
        return out

    def _aux_loss(self, router_logits, attention_mask, T: int) -> torch.Tensor:
        """The load-balancing loss over the new tokens' router rows (padding excluded)."""
        token_mask = None if attention_mask is None else attention_mask[:, -T:]
        return load_balancing_loss(router_logits, self.config.num_experts, self.config.num_experts_per_tok, token_mask)

    def _check_forward_inputs(self, input_ids, inputs_embeds, position_ids, labels, logits_to_keep,
                              output_router_logits, output_hidden_states) -> None:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("give exactly one of input_ids (B, T) and inputs_embeds (B, T, H)")
        if input_ids is not None:
            self._check_token_ids(input_ids)
        else:
            self._check_embeddings(inputs_embeds)
        shape = tuple((input_ids if input_ids is not None else inputs_embeds).shape[:2])
        if position_ids is not None and not isinstance(position_ids, torch.Tensor):
            raise TypeError(f"position_ids: expected a LongTensor {shape}, found {type(position_ids).__name__}")
        if position_ids is not None and tuple(position_ids.shape) not in (shape, (1, shape[1])):
            raise ValueError(
                f"position_ids: expected shape {shape} or (1, {shape[1]}), found {tuple(position_ids.shape)}"
            )
        if isinstance(logits_to_keep, bool) or not isinstance(logits_to_keep, int):
            raise TypeError(f"logits_to_keep: expected an integer (0 keeps every position), found {logits_to_keep!r}")
        if logits_to_keep < 0:
            raise ValueError(f"logits_to_keep: expected 0 or a positive number of positions, found {logits_to_keep}")
        flags = {"output_router_logits": output_router_logits, "output_hidden_states": output_hidden_states}
        for name, flag in flags.items():
            if not isinstance(flag, bool) and not (flag is None and name == "output_router_logits"):  # None: config's
                raise TypeError(f"{name}: expected True or False, found {flag!r}")
        if labels is not None and logits_to_keep:
            raise ValueError("labels: the loss needs the logits of every position; do not pass logits_to_keep")

    def _check_token_ids(self, input_ids: torch.Tensor) -> None:
        if not isinstance(input_ids, torch.Tensor):
            raise TypeError(f"input_ids: expected a LongTensor (B, T) of token ids, found {type(input_ids).__name__}")
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids: expected shape (B, T), found {tuple(input_ids.shape)}")
        if input_ids.dtype not in (torch.long, torch.int32, torch.int64):
            raise TypeError(f"input_ids: expected integer token ids, found dtype {input_ids.dtype}")
        if input_ids.shape[1] == 0:
            raise ValueError("input_ids: no tokens (T = 0); give at least one")
        if input_ids.device.type != "meta" and input_ids.numel():
            lo, hi = (int(t) for t in torch.aminmax(input_ids))  # one pass, not two
            if lo < 0 or hi >= self.config.vocab_size:
                raise ValueError(
                    f"input_ids: token ids must be in 0..{self.config.vocab_size - 1} (vocab_size), "
                    f"found {lo}..{hi}"
                )

    def _check_embeddings(self, inputs_embeds: torch.Tensor) -> None:
        if not isinstance(inputs_embeds, torch.Tensor):
            raise TypeError(f"inputs_embeds: expected a tensor (B, T, H), found {type(inputs_embeds).__name__}")
        if inputs_embeds.dim() != 3 or inputs_embeds.shape[-1] != self.config.hidden_size:
            raise ValueError(
                f"inputs_embeds: expected shape (B, T, {self.config.hidden_size}), "
                f"found {tuple(inputs_embeds.shape)}"
            )
        if inputs_embeds.shape[1] == 0:
            raise ValueError("inputs_embeds: no positions (T = 0); give at least one")
        dtype = self.model.embed_tokens.weight.dtype
        if inputs_embeds.dtype != dtype:
            raise ValueError(f"inputs_embeds: dtype {inputs_embeds.dtype}, but the model computes in {dtype}; "
                             f"convert them with .to({dtype})")

    # --------------------------------------------------------------------------------- counts
    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())
        if exclude_embeddings:
            n -= self.model.embed_tokens.weight.numel() + self.lm_head.weight.numel()
        return n

