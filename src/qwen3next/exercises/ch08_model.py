"""Checks for the exercises of chapter 08, "The model, the cache and generation"."""

from __future__ import annotations

import torch

from ..config import Qwen3NextConfig
from ..generate import filter_logits, generate
from . import check_equal, report

# Exercise 8.4: a tiny model with one deliberately broken layer, and its intact twin.
BROKEN_SEED = 8


def check_deltanet_layer_params(answer: int) -> bool:
    """Parameters of one full-size decoder layer of the DeltaNet kind (mixer + MoE + two norms)."""
    from ..decoder_layer import DecoderLayer

    with torch.device("meta"):
        layer = DecoderLayer(Qwen3NextConfig.full(), 0)
    expected = sum(p.numel() for p in layer.parameters())
    return check_equal(answer, expected, "build DecoderLayer(Qwen3NextConfig.full(), 0) under "
                       "torch.device('meta') and add up p.numel() over its parameters.")


def check_top_p(fn) -> bool:
    """``fn(logits (B, V), p) -> logits`` with the tokens outside the top-p set at ``-inf``."""
    if fn is Ellipsis:
        return check_equal(fn, None, "sort the probabilities, keep each token whose more likely "
                           "predecessors hold less than p in total, set the others to -inf.")
    gen = torch.Generator().manual_seed(8)
    logits = 2.5 * torch.randn(5, 200, generator=gen)
    for p in (0.3, 0.8, 0.95):
        try:
            got = fn(logits.clone(), p)
        except Exception as err:  # a student's function may fail in any way; say how
            return report(False, f"your function raised {type(err).__name__}: {err}")
        if not isinstance(got, torch.Tensor) or got.shape != logits.shape:
            return report(False, "return a tensor shaped like the logits, with -inf where a token is removed.")
        want = torch.isfinite(filter_logits(logits, top_p=p))
        if not torch.equal(torch.isfinite(got), want):
            return report(False, f"with p = {p} you keep a different set of tokens: sort by probability, keep "
                          "each token whose more likely predecessors hold less than p in total.")
    return report(True, "")


GREEDY_HINT = ("make a cache with model.new_cache(batch_size), run the whole prompt through "
               "model(input_ids, cache=cache) once, then repeatedly take the arg-max of the last logits and "
               "feed only that token, shaped (B, 1), with the same cache; return the prompt and the new tokens.")


class _CallLog:
    """A model wrapper that records the shape of the ids of every forward call (to see the cache used)."""

    def __init__(self, model):
        self.model, self.calls = model, []

    def new_cache(self, batch_size: int = 1):
        return self.model.new_cache(batch_size)

    def __call__(self, input_ids, *args, **kwargs):
        self.calls.append(tuple(input_ids.shape))
        return self.model(input_ids, *args, **kwargs)

    def __getattr__(self, name):  # config, eval, ...: whatever else the reader's code asks the model for
        return getattr(self.model, name)


def exercise_model():
    """The tiny random model of exercise 8.3 (seeded), in eval mode."""
    from ..model import Qwen3NextForCausalLM

    torch.manual_seed(83)
    return Qwen3NextForCausalLM(Qwen3NextConfig.tiny()).eval()


def check_greedy(fn) -> bool:
    """``fn(model, input_ids (B, T), max_new_tokens) -> (B, T + max_new_tokens)``: greedy decoding with the cache.

    Compared with :func:`qwen3next.generate.generate` at temperature 0 on prompts of several lengths;
    after the prompt, every forward call must feed one token per row (the cache holds the rest).
    """
    if fn is Ellipsis:
        return check_equal(fn, None, GREEDY_HINT)
    model = exercise_model()
    gen = torch.Generator().manual_seed(8)
    for B, T, n in ((1, 5, 6), (2, 9, 4), (1, 1, 3)):
        ids = torch.randint(0, model.config.vocab_size, (B, T), generator=gen)
        log = _CallLog(model)
        try:
            with torch.no_grad():
                got = fn(log, ids.clone(), n)
        except Exception as err:  # a student's function may fail in any way: say how
            return report(False, f"your function raised {type(err).__name__}: {err}")
        with torch.no_grad():
            want = generate(model, ids, n)
        if not isinstance(got, torch.Tensor) or tuple(got.shape) != tuple(want.shape):
            found = tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__
            return report(False, f"for a ({B}, {T}) prompt and {n} new tokens return a ({B}, {T + n}) tensor of "
                          f"ids, got {found}.")
        if not torch.equal(got, want):
            return report(False, f"for a ({B}, {T}) prompt you chose other tokens. {GREEDY_HINT}")
        if any(c[1] != 1 for c in log.calls[1:]):
            return report(False, f"after the prompt you fed {max(c[1] for c in log.calls[1:])} tokens at once: "
                          f"the cache already holds them. {GREEDY_HINT}")
    return report(True, "")


def broken_pair():
    """A tiny model and the reference with the same weights, except that one layer of ours was changed."""
    import transformers

    from ..model import Qwen3NextForCausalLM
    from ..reference import moe_state_dict_to_reference, reference_config

    cfg = Qwen3NextConfig.tiny()
    torch.manual_seed(BROKEN_SEED)
    ours = Qwen3NextForCausalLM(cfg).eval()
    ref = transformers.Qwen3NextForCausalLM(reference_config(cfg)).eval()
    ref.load_state_dict(moe_state_dict_to_reference(ours.state_dict()))
    with torch.no_grad():  # a small slip, the kind a refactoring makes: one gain off by 5%
        ours.model.layers[_broken_layer()].post_attention_layernorm.weight.add_(0.05)
    return ours, ref


def _broken_layer() -> int:
    gen = torch.Generator().manual_seed(BROKEN_SEED)
    return int(torch.randint(1, Qwen3NextConfig.tiny().num_hidden_layers, (1,), generator=gen))


def check_broken_layer(answer: int) -> bool:
    """The index of the layer that :func:`broken_pair` changed."""
    return check_equal(answer, _broken_layer(), "run layer_differences(ours, ref, ids): the residual "
                       "stream agrees to ~1e-7 up to some layer, and the first layer whose difference jumps "
                       "by orders of magnitude is the broken one.")


# Exercise 8.6: the logit lens of one layer, on the book's trained model and the chapter's held-out stories
LENS_HINT = ("catch the output of model.model.layers[layer] with register_forward_hook (a layer returns a "
             "tuple: the hidden state first), run the model once, remove the hook, then apply "
             "model.model.norm and model.lm_head to the caught (B, T, H) state; layer 0 is the first decoder "
             "layer.")


def _lens_cases():
    """The trained model and ``(ids, layer)`` pairs: one held-out story at two depths, two stories (cut to
    one length) as a batch at two more, the last layer among them (whose read-out is the model's output)."""
    from ..lens import story_ids
    from .trained import held_out_stories, trained_model_and_tokenizer

    model, tokenizer = trained_model_and_tokenizer()
    rows = [story_ids(tokenizer, [story])[0] for story in held_out_stories(2)]
    T = min(len(r) for r in rows)
    last = model.config.num_hidden_layers - 1
    cases = [(rows[0][None], 0), (rows[0][None], 3), (torch.stack([r[:T] for r in rows]), last - 1),
             (torch.stack([r[:T] for r in rows]), last)]
    return model, cases


def check_logit_lens(fn) -> bool:
    """``fn(model, input_ids (B, T), layer) -> (B, T, V)``: the logit lens after decoder layer ``layer``.

    Compared with :func:`qwen3next.lens.logit_lens` on the trained model (one story and a batch of two,
    four layers); the model must carry no hook of ``fn``'s afterwards.
    """
    from ..lens import logit_lens

    if fn is Ellipsis:
        return check_equal(fn, None, LENS_HINT)
    model, cases = _lens_cases()
    for ids, layer in cases:
        case = f"for a ({ids.shape[0]}, {ids.shape[1]}) batch at layer {layer}"
        try:
            got = fn(model, ids.clone(), layer)
        except Exception as err:  # a student's function may fail in any way: say how
            return report(False, f"{case} your function raised {type(err).__name__}: {err}. {LENS_HINT}")
        if any(m._forward_hooks for m in model.modules()):
            return report(False, f"{case} your hook is still on the model after the call: keep the handle "
                          "that register_forward_hook returns and call handle.remove().")
        want = logit_lens(model, ids)[layer + 1]  # [0] is the read-out of the embedding
        if not isinstance(got, torch.Tensor) or tuple(got.shape) != tuple(want.shape):
            found = tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__
            return report(False, f"{case} expected logits of shape {tuple(want.shape)}, got {found}. {LENS_HINT}")
        if not (got.detach().float() - want).abs().max() <= 1e-4 * (1 + want.abs().max()):
            return report(False, f"{case} your logits differ from the lens's. {LENS_HINT}")
    return report(True, "")
