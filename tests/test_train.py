"""Tests of qwen3next.train (the pieces of a training step and the loop) and of the trained model the
package ships (qwen3next.tiny_pretrained_path)."""

import math
import subprocess
import sys

import pytest
import torch

import qwen3next
from qwen3next import Qwen3NextConfig, Qwen3NextForCausalLM, Tokenizer
from qwen3next.deltanet import GatedDeltaNet
from qwen3next.reference import max_abs_diff
from qwen3next.stories import END_OF_TEXT, OPENINGS, entropy_floor, generate_stories, train_story_tokenizer
from qwen3next.train import (
    IGNORE,
    JsonlLog,
    TrainConfig,
    balance_loss,
    clip_gradients,
    compute_losses,
    evaluate,
    init_for_training,
    learning_rate,
    mtp_loss,
    next_token_loss,
    no_weight_decay,
    packed_batches,
    param_groups,
    resting_decay,
    save_pretrained,
    story_batch,
    story_model_config,
    train,
)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tok():
    return train_story_tokenizer(num_merges=2000, num_stories=500)


def _small(tok, mtp=True):
    cfg = Qwen3NextConfig.tiny(vocab_size=-(-len(tok) // 64) * 64, hidden_size=32, num_hidden_layers=4,
                               num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                               linear_num_key_heads=1, linear_num_value_heads=2, linear_key_head_dim=16,
                               linear_value_head_dim=16, num_experts=4, num_experts_per_tok=2,
                               moe_intermediate_size=16, shared_expert_intermediate_size=16)
    torch.manual_seed(0)
    return Qwen3NextForCausalLM(cfg, mtp=mtp)


# --------------------------------------------------------------------------------- initialisation
def _log_decays(model):
    return torch.cat([resting_decay(m).log() for m in model.modules() if isinstance(m, GatedDeltaNet)])


def test_reference_init_forgets_at_once_and_training_init_remembers():
    cfg = Qwen3NextConfig.tiny(linear_num_value_heads=64, linear_num_key_heads=32)
    torch.manual_seed(0)
    model = Qwen3NextForCausalLM(cfg)
    g_ref = _log_decays(model)  # g = -A softplus(1), A ~ U(0.01, 16): mean -8 * 1.313
    assert -12 < float(g_ref.mean()) < -9
    init_for_training(model, generator=torch.Generator().manual_seed(0))
    g = _log_decays(model)
    assert float(g.min()) >= -1.6 and float(g.max()) < 0 and float(g.mean()) > -0.5
    for m in model.modules():
        if isinstance(m, GatedDeltaNet):
            dt = torch.nn.functional.softplus(m.dt_bias.detach())  # softplus(softplus^-1(dt)) = dt
            assert float(dt.min()) >= 1e-3 * (1 - 1e-5) and float(dt.max()) <= 1e-1 * (1 + 1e-5)
            A = m.A_log.detach().exp()
            assert float(A.min()) > 0 and float(A.max()) <= 16


# ----------------------------------------------------------------------------------------- losses
def test_next_token_loss_is_the_models_own(model):
    ids = torch.randint(0, model.config.vocab_size, (2, 9), generator=torch.Generator().manual_seed(0))
    labels = ids.clone()
    labels[0, 5:] = IGNORE
    with torch.no_grad():
        out = model(ids, labels=labels)
        assert torch.allclose(next_token_loss(out.logits, labels), out.loss)


def test_mtp_loss_scores_the_token_after_next():
    V = 5
    labels = torch.tensor([[0, 1, 2, 3]])
    logits = torch.full((1, 3, V), -30.0)  # row t predicts labels[t + 2]
    logits[0, 0, 2] = logits[0, 1, 3] = 30.0
    assert float(mtp_loss(logits, labels)) < 1e-6  # the last row has nothing to predict
    logits[0, 1, 3], logits[0, 1, 0] = -30.0, 30.0  # row 1 now bets on the wrong token
    assert float(mtp_loss(logits, labels)) > 10


def test_balance_loss_of_one_layer_is_the_reference():
    from transformers.models.qwen3_next.modeling_qwen3_next import load_balancing_loss_func

    logits = 3 * torch.randn(24, 8, generator=torch.Generator().manual_seed(0))
    ref = load_balancing_loss_func((logits,), 8, 2)
    assert torch.allclose(balance_loss([logits], 8, 2), ref)
    assert math.isclose(float(balance_loss([torch.zeros(6, 8)], 8, 2)), 2.0)  # uniform router: top_k


def test_global_batch_balance_lets_sequences_specialise():
    """Two sequences, each sent wholly to its own experts: unbalanced within each, balanced together."""
    E, T = 4, 10
    logits = torch.full((2 * T, E), -5.0)
    logits[:T, :2] = 5.0  # sequence 0 -> experts 0, 1
    logits[T:, 2:] = 5.0  # sequence 1 -> experts 2, 3
    global_batch = float(balance_loss([logits], E, 2))
    per_sequence = float(balance_loss([logits], E, 2, micro_batches=2))
    assert math.isclose(global_batch, 2.0, rel_tol=1e-3)  # balanced over the batch
    assert per_sequence > 3.9  # each micro-batch looks collapsed onto two experts
    with pytest.raises(ValueError, match="does not divide"):
        balance_loss([logits], E, 2, micro_batches=3)


def test_compute_losses_adds_the_parts(tok):
    model = _small(tok)
    ids = next(packed_batches(tok, 2, 40))
    with torch.no_grad():
        losses = compute_losses(model, ids, mtp_weight=0.5, balance_coef=0.1)
    expected = losses.lm + 0.5 * losses.mtp + 0.1 * losses.balance
    assert torch.allclose(losses.total, expected)
    assert len(balance_router_layers(model)) == model.config.num_hidden_layers + 1  # trunk + MTP layer


def balance_router_layers(model):
    return [m for m in model.modules() if type(m).__name__ == "SparseMoeBlock"]


# -------------------------------------------------------------------------------------- optimiser
def test_weight_decay_groups(tok):
    model = _small(tok)
    skip = no_weight_decay(model)
    groups = param_groups(model, 0.1)
    decayed = {id(p) for p in groups[0]["params"]}
    names = {id(p): n for n, p in model.named_parameters()}
    assert groups[0]["weight_decay"] == 0.1 and groups[1]["weight_decay"] == 0.0
    assert len(decayed) + len(groups[1]["params"]) == len(names)
    assert all(names[id(p)] in skip for p in groups[1]["params"])
    assert any(n.endswith("linear_attn.A_log") for n in skip)
    assert any(n.endswith("linear_attn.norm.weight") for n in skip)
    zero_centred = [p for n, p in model.named_parameters() if n.endswith("input_layernorm.weight")]
    assert zero_centred and all(id(p) in decayed for p in zero_centred)


def test_decay_pulls_a_zero_centred_gain_to_one_and_a_plain_gain_to_zero():
    w_zero_centred = torch.nn.Parameter(torch.full((4,), 0.5))  # gain 1 + w = 1.5
    w_plain = torch.nn.Parameter(torch.full((4,), 1.5))  # gain w = 1.5
    opt = torch.optim.AdamW([w_zero_centred, w_plain], lr=0.1, weight_decay=0.5)
    for _ in range(200):
        w_zero_centred.grad, w_plain.grad = torch.zeros(4), torch.zeros(4)  # no signal from the loss
        opt.step()
    assert torch.allclose(1 + w_zero_centred.detach(), torch.ones(4), atol=1e-3)
    assert float(w_plain.detach().max()) < 1e-3


def test_learning_rate_schedule():
    lrs = [learning_rate(s, 100, 1.0, 10, final_ratio=0.1) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:], strict=False))
    assert learning_rate(100, 100, 1.0, 10) == pytest.approx(0.1)


def test_clip_gradients():
    p = torch.nn.Linear(3, 3)
    for q in p.parameters():
        q.grad = torch.full_like(q, 10.0)
    before = clip_gradients(p, 1.0)
    after = math.sqrt(sum(float((q.grad ** 2).sum()) for q in p.parameters()))
    assert before == pytest.approx(10.0 * math.sqrt(12)) and after == pytest.approx(1.0, rel=1e-4)


# ------------------------------------------------------------------------------------------- data
def test_packed_rows_start_with_a_story(tok):
    eot = tok.token_to_id(END_OF_TEXT)
    batch = next(packed_batches(tok, 3, 300, seed=1))
    assert batch.shape == (3, 300)
    starts = {tok.encode(o)[0] for o in OPENINGS}
    assert all(int(row[0]) in starts for row in batch)
    for row in batch.tolist():  # every end-of-text is followed by the start of a story
        assert all(row[i + 1] in starts for i, t in enumerate(row[:-1]) if t == eot)


def test_evaluation_scores_exactly_the_tokens_of_the_floor(tok):
    stories = generate_stories(6, seed=2)
    ids, labels = story_batch(stories, tok)
    assert int((labels[:, 1:] != IGNORE).sum()) == entropy_floor(stories, tok).tokens
    result = evaluate(_small(tok).eval(), ids, labels)
    assert set(result) == {"val_lm", "val_accuracy", "val_mtp"}
    assert result["val_lm"] > entropy_floor(stories, tok).nats_per_token  # an untrained model is far above


# ------------------------------------------------------------------------------------------- loop
def test_a_few_steps_lower_the_loss_and_are_logged(tok, tmp_path):
    model = _small(tok)
    init_for_training(model, generator=torch.Generator().manual_seed(0))
    cfg = TrainConfig(steps=30, batch_size=4, seq_len=64, lr=1e-2, warmup_steps=3, eval_every=15, eval_stories=8,
                      sample_tokens=8)
    history = train(model, tok, cfg, log_path=tmp_path / "log.jsonl", progress=False)
    first, last = sum(r["lm"] for r in history[:3]) / 3, sum(r["lm"] for r in history[-3:]) / 3
    assert last < first - 1.5, (first, last)
    records = JsonlLog.read(tmp_path / "log.jsonl")
    assert records[0]["config"]["steps"] == 30 and len(records) == 31
    evals = [r for r in records if "val_lm" in r]
    assert [r["step"] for r in evals] == [15, 30] and evals[1]["val_lm"] < evals[0]["val_lm"]
    assert evals[0]["floor"] == pytest.approx(entropy_floor(generate_stories(8, seed=10_000), tok).nats_per_token)
    assert isinstance(evals[-1]["sample"], str) and evals[-1]["sample"].startswith(cfg.sample_prompt)


def test_mixed_precision_training_keeps_float32_weights_and_learns(tok):
    model = _small(tok)
    init_for_training(model, generator=torch.Generator().manual_seed(0))
    cfg = TrainConfig(steps=20, batch_size=4, seq_len=64, lr=1e-2, warmup_steps=3, eval_every=20, eval_stories=8,
                      sample_tokens=8, mixed_precision=True)
    history = train(model, tok, cfg, progress=False)
    first, last = sum(r["lm"] for r in history[:3]) / 3, sum(r["lm"] for r in history[-3:]) / 3
    assert last < first - 1.0, (first, last)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert math.isfinite(history[-1]["val_lm"])

def test_save_pretrained_round_trip_with_transformers(tok, tmp_path):
    from transformers import AutoTokenizer
    from transformers import Qwen3NextForCausalLM as Reference

    model = _small(tok).eval()
    d = save_pretrained(model, tmp_path / "ckpt", tok)
    ours = Qwen3NextForCausalLM.from_pretrained(d, mtp=True)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in ours.state_dict().items())
    ids = torch.tensor([tok.encode(generate_stories(1, seed=3)[0].text)])
    assert AutoTokenizer.from_pretrained(d).encode(generate_stories(1, seed=3)[0].text) == ids[0].tolist()
    ref = Reference.from_pretrained(d).eval()
    with torch.no_grad():
        assert max_abs_diff(ours(ids).logits, ref(ids).logits) < 1e-5


# ------------------------------------------------------------------------------- the shipped model
@pytest.fixture(scope="module")
def shipped():
    path = qwen3next.tiny_pretrained_path()
    return path, Qwen3NextForCausalLM.from_pretrained(path, mtp=True), Tokenizer.from_pretrained(path)


def test_shipped_model_is_the_documented_config(shipped):
    path, model, tok = shipped
    cfg = model.config
    assert cfg.to_dict() == story_model_config(cfg.vocab_size, tok.token_to_id(END_OF_TEXT)).to_dict()
    assert cfg.layer_types.count("full_attention") * 3 == cfg.layer_types.count("linear_attention")
    assert cfg.linear_key_head_dim == cfg.linear_value_head_dim == 64 and cfg.head_dim in (32, 64)
    assert len(tok) <= cfg.vocab_size and hasattr(model, "mtp")
    assert sum(f.stat().st_size for f in path.iterdir()) < 25 * 2**20


def test_shipped_tokenizer_is_ours_in_autotokenizer(shipped):
    """transformers.AutoTokenizer reads the shipped tokenizer.json as our Tokenizer does: same ids on
    stories it never saw, the end-of-text token at our id, the same text back."""
    from transformers import AutoTokenizer

    path, _, tok = shipped
    ref = AutoTokenizer.from_pretrained(path)
    for story in generate_stories(8, seed=4242):
        ids = tok.encode(story.text)
        assert ref.encode(story.text) == ids
        assert ref.decode(ids) == tok.decode(ids) == story.text
    assert ref.convert_tokens_to_ids(END_OF_TEXT) == tok.token_to_id(END_OF_TEXT)
    assert ref.encode("Once upon a time" + END_OF_TEXT) == tok.encode("Once upon a time" + END_OF_TEXT)


@pytest.mark.slow
def test_shipped_model_equals_transformers_and_writes_the_grammar(shipped):
    from transformers import AutoTokenizer
    from transformers import Qwen3NextForCausalLM as Reference

    path, model, tok = shipped
    story = generate_stories(1, seed=123)[0].text
    ids = tok.encode(story)
    assert AutoTokenizer.from_pretrained(path).encode(story) == ids
    ref = Reference.from_pretrained(path).eval()
    x = torch.tensor([ids])
    with torch.no_grad():
        assert max_abs_diff(model(x).logits, ref(x).logits) < 1e-4
    stories = generate_stories(32, seed=77)
    result = evaluate(model, *story_batch(stories, tok))
    floor = entropy_floor(stories, tok).nats_per_token
    assert floor < result["val_lm"] < floor + 0.25  # trained close to the floor, never below it on average


@pytest.mark.slow
def test_generate_command_writes_a_story():
    path = qwen3next.tiny_pretrained_path()
    out = subprocess.run([sys.executable, "-m", "qwen3next", "generate", "--model", str(path), "--prompt",
                          "Once upon a time, there was", "--max-new-tokens", "40"],
                         capture_output=True, text=True, timeout=300, check=True).stdout
    assert out.startswith(" a ") and "named" in out and out.count(".") >= 2


@pytest.mark.slow
def test_installed_package_finds_its_trained_model(tmp_path):
    """A wheel of the package carries the model directory, and tiny_pretrained_path finds it there."""
    import zipfile
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path / "wheel"), str(root)], check=True, capture_output=True, timeout=300)
    (wheel,) = (tmp_path / "wheel").glob("qwen3next-*.whl")
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    shipped = sorted(f.name for f in qwen3next.tiny_pretrained_path().iterdir())
    code = ("import qwen3next; p = qwen3next.tiny_pretrained_path(); "
            "print(p); print(sorted(f.name for f in p.iterdir()))")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env={"PYTHONPATH": str(site)},
                         capture_output=True, text=True, check=True, timeout=120).stdout.splitlines()
    assert Path(out[0]).is_relative_to(site) and out[1] == str(shipped)
    assert {"config.json", "model.safetensors", "tokenizer.json", "train_log.jsonl"} <= set(shipped)
