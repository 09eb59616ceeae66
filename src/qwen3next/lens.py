"""Reading a trained model from the inside (chapters 06-08): what its residual stream predicts after
every layer (the *logit lens*), what gates its Gated DeltaNet layers compute on real text, and how far
each MoE block opens its shared expert.

``story_ids`` writes stories the way the book's model read them in training: each one after an
end-of-text token. The read-outs watch an ordinary forward pass through forward hooks, so they work on any
``Qwen3NextForCausalLM`` without changing it. The routing itself needs no hook: the model returns its
router logits with ``output_router_logits=True``.
"""

from __future__ import annotations

import torch


def story_ids(tokenizer, stories) -> torch.Tensor:
    """``(1, T)`` ids of ``stories`` (``qwen3next.stories.Story``) as one text: an end-of-text token, then
    each story followed by another."""
    eot = tokenizer.eos_token_id
    ids = [eot]
    for story in stories:
        ids += [*tokenizer.encode(story.text), eot]
    return torch.tensor([ids])


def _watch(modules, input_ids: torch.Tensor, model, keep) -> list:
    """Run ``model(input_ids)`` once; ``keep(inputs, output)`` of every module in ``modules``, in order."""
    seen = []
    hooks = [m.register_forward_hook(lambda _m, i, o: seen.append(keep(i, o))) for m in modules]
    try:
        with torch.no_grad():
            model(input_ids)
    finally:
        for hook in hooks:
            hook.remove()
    return seen


def residual_stream(model, input_ids: torch.Tensor) -> list[torch.Tensor]:
    """The residual stream ``(B, T, H)`` after the embedding and after every decoder layer (before the
    final norm), ``num_hidden_layers + 1`` tensors."""
    layers = _watch(model.model.layers, input_ids, model, lambda _i, out: out[0])  # (output, router logits)
    with torch.no_grad():
        return [model.model.embed_tokens(input_ids), *layers]


def logit_lens(model, input_ids: torch.Tensor) -> torch.Tensor:
    """``(L + 1, B, T, V)``: the final norm and ``lm_head`` applied to the stream after the embedding and
    after each of the ``L`` layers; the last entry is the model's own logits."""
    with torch.no_grad():
        return torch.stack([model.lm_head(model.model.norm(h)) for h in residual_stream(model, input_ids)])


def deltanet_gates(model, input_ids: torch.Tensor) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """``{layer index: (beta, g)}`` for every Gated DeltaNet layer, each ``(B, T, H_v)`` in float32: the
    write strength and the log decay the layer computed for every token and value head."""
    mixers = {i: layer.linear_attn for i, layer in enumerate(model.model.layers) if hasattr(layer, "linear_attn")}
    inputs = _watch(mixers.values(), input_ids, model, lambda i, _out: i[0])  # the normed hidden state
    gates = {}
    with torch.no_grad():
        for (i, mixer), x in zip(mixers.items(), inputs, strict=True):
            *_, b, a = mixer.split_projections(mixer.in_proj_qkvz(x), mixer.in_proj_ba(x))
            gates[i] = mixer.gates(b, a)
    return gates


def shared_expert_gates(model, input_ids: torch.Tensor) -> dict[int, torch.Tensor]:
    """``{layer index: (B*T,) gate}`` for every sparse MoE block: the sigmoid gate
    ``sigmoid(w_s . x)`` with which the block adds its shared expert's output, per token."""
    blocks = {i: layer.mlp for i, layer in enumerate(model.model.layers) if hasattr(layer.mlp, "shared_expert_gate")}
    logits = _watch([b.shared_expert_gate for b in blocks.values()], input_ids, model, lambda _i, out: out)
    return {i: g.reshape(-1).float().sigmoid() for i, g in zip(blocks, logits, strict=True)}
