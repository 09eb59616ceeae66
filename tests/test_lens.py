"""Tests for qwen3next.lens: the read-outs agree with the model's own forward pass."""

from __future__ import annotations

import torch

from qwen3next import Qwen3NextConfig, Qwen3NextForCausalLM, Tokenizer, tiny_pretrained_path
from qwen3next.lens import deltanet_gates, logit_lens, residual_stream, shared_expert_gates, story_ids
from qwen3next.stories import generate_stories


def _model_and_ids():
    torch.manual_seed(0)
    model = Qwen3NextForCausalLM(Qwen3NextConfig.tiny()).eval()
    return model, torch.randint(0, model.config.vocab_size, (2, 11))


def test_stream_and_lens_end_where_the_model_ends():
    model, ids = _model_and_ids()
    with torch.no_grad():
        out = model(ids, output_hidden_states=True)
    stream = residual_stream(model, ids)
    assert len(stream) == model.config.num_hidden_layers + 1
    assert torch.equal(stream[0], out.hidden_states[0])
    torch.testing.assert_close(model.model.norm(stream[-1]), out.hidden_states[-1])
    lens = logit_lens(model, ids)
    assert lens.shape == (len(stream), 2, 11, model.config.vocab_size)
    torch.testing.assert_close(lens[-1], out.logits)
    assert not torch.allclose(lens[0], lens[-1])  # the layers change the prediction
    assert not any(m._forward_hooks for m in model.model.layers)  # hooks removed


def test_deltanet_gates_are_the_layers_own():
    model, ids = _model_and_ids()
    gates = deltanet_gates(model, ids)
    types = model.config.layer_types
    assert sorted(gates) == [i for i, t in enumerate(types) if t == "linear_attention"]
    layer = model.model.layers[0]
    with torch.no_grad():
        x = layer.input_layernorm(model.model.embed_tokens(ids))
        mixer = layer.linear_attn
        *_, b, a = mixer.split_projections(mixer.in_proj_qkvz(x), mixer.in_proj_ba(x))
    beta, g = gates[0]
    torch.testing.assert_close(beta, b.sigmoid())
    expected_g = -mixer.A_log.exp() * torch.nn.functional.softplus(a + mixer.dt_bias)
    torch.testing.assert_close(g, expected_g)
    assert beta.shape == g.shape == (2, 11, model.config.linear_num_value_heads)
    assert not torch.equal(gates[0][1], gates[1][1])  # each layer its own gates


def test_shared_expert_gates_are_the_blocks_own():
    model, ids = _model_and_ids()
    seen = []
    hook = model.model.layers[2].mlp.register_forward_hook(lambda m, i, o: seen.append(i[0]))
    gates = shared_expert_gates(model, ids)
    hook.remove()
    assert sorted(gates) == list(range(model.config.num_hidden_layers))
    with torch.no_grad():
        x = seen[0].reshape(-1, model.config.hidden_size)
        expected = model.model.layers[2].mlp.shared_expert_gate(x).squeeze(-1).sigmoid()
    torch.testing.assert_close(gates[2], expected)
    assert gates[2].shape == (2 * 11,) and ((gates[2] > 0) & (gates[2] < 1)).all()


def test_story_ids_put_an_end_of_text_before_and_after_each_story():
    tok = Tokenizer.from_pretrained(tiny_pretrained_path())
    stories = generate_stories(2, seed=3)
    ids = story_ids(tok, stories)[0].tolist()
    eot = tok.eos_token_id
    assert ids[0] == eot and ids[-1] == eot and ids.count(eot) == 3
    first = ids.index(eot, 1)
    assert tok.decode(ids[1:first]) == stories[0].text
    assert tok.decode(ids[first + 1:-1]) == stories[1].text
