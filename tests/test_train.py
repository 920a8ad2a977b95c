"""The training loop: resumable checkpoints, divergence, TensorBoard logging."""

import pytest
import torch

from mtforget.bases.specs import TinySpec
from mtforget.bases.tiny_seq2seq import build_model
from mtforget.errors import TrialDiverged
from mtforget.models.language import LanguageTokens
from mtforget.train.loop import StepBatches, TrainSettings, train
from tests.conftest import EQUIVALENCE_ATOL, Kill, OnLoss, tiny_world

SPEC = TinySpec(d_model=32, layers=1, heads=2, ffn_dim=64, vocab_size=300, steps=1, batch_size=8, lr=1e-3)


@pytest.fixture(scope="module")
def setup():
    _, _, tokenizer, examples = tiny_world(n_languages=3, segments=200, n_examples=120)
    return tokenizer, examples


def _model(tokenizer, dtype=torch.float32):
    torch.manual_seed(0)
    return build_model(SPEC, tokenizer).to(dtype)


def test_step_batches_are_a_function_of_seed_and_step():
    full = list(StepBatches(n=20, batch_size=6, seed=1, start=0, total=9))
    assert list(StepBatches(n=20, batch_size=6, seed=1, start=5, total=9)) == full[5:]
    assert sorted(i for b in full[:4] for i in b) == list(range(20))  # one epoch covers every example once


def test_length_grouped_batches_pad_less_and_keep_every_example_once():
    import random

    lengths = [random.Random(i).randint(1, 80) for i in range(960)]
    grouped = StepBatches(n=960, batch_size=32, seed=3, start=0, total=60, lengths=lengths)
    plain = StepBatches(n=960, batch_size=32, seed=3, start=0, total=60)
    batches = list(grouped)

    def padding(bs):  # padded cells when each batch pads to its longest example
        return sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in bs)

    assert sorted(i for b in batches[:30] for i in b) == list(range(960))  # an epoch: every example once
    assert padding(batches[:30]) < 0.3 * padding(list(plain)[:30])
    assert list(StepBatches(n=960, batch_size=32, seed=3, start=41, total=60, lengths=lengths)) == batches[41:]
    # Batch order stays random: lengths do not rise or fall steadily through the epoch.
    means = [sum(lengths[i] for i in b) / len(b) for b in batches[:30]]
    assert means != sorted(means) and means != sorted(means, reverse=True)


def test_sorted_pieces_train_as_one_batch_with_less_padding(setup):
    from mtforget.train.loop import _sorted_pieces

    tokenizer, examples = setup
    control = LanguageTokens(tokenizer)
    whole, pieces = _sorted_pieces(control, 1, 1, examples[:32]), _sorted_pieces(control, 4, 1, examples[:32])
    assert len(whole) == 1 and len(pieces) == 4

    def cells(batches):  # padded positions included
        return sum(b["input_ids"].numel() + b["labels"].numel() for b in batches)

    def real(batches):
        return sum(int(b["attention_mask"].sum() + (b["labels"] != -100).sum()) for b in batches)

    assert real(pieces) == real(whole) and cells(pieces) < cells(whole)

    results = []
    for n in (1, 4):
        model = _model(tokenizer, torch.float64)  # see EQUIVALENCE_ATOL
        settings = TrainSettings(lr=3e-3, batch_size=32, max_steps=3, seed=0, group_by_length=False, micro_batches=n)
        outcome = train(model, control, examples, settings, progress=False)
        results.append((model.state_dict(), outcome))
    (one, a), (split, b) = results
    assert a.tokens == b.tokens and b.train_loss == pytest.approx(a.train_loss, rel=1e-6)
    for name, value in one.items():  # the same gradient, up to float rounding
        assert torch.allclose(value, split[name], rtol=0, atol=EQUIVALENCE_ATOL), name


def test_widths_padded_to_a_multiple_train_as_unpadded(setup):
    from mtforget.train.loop import _sorted_pieces

    tokenizer, examples = setup
    control = LanguageTokens(tokenizer)
    plain, padded = _sorted_pieces(control, 2, 1, examples[:32]), _sorted_pieces(control, 2, 8, examples[:32])
    for p, q in zip(plain, padded):
        for key in ("input_ids", "labels"):
            assert q[key].shape[1] % 8 == 0 and q[key].shape[1] >= p[key].shape[1]
            assert torch.equal(q[key][:, : p[key].shape[1]], p[key])
        assert int(q["attention_mask"].sum()) == int(p["attention_mask"].sum())  # the extra columns are masked
        assert int((q["labels"] != -100).sum()) == int((p["labels"] != -100).sum())  # and unlabelled
    assert any(q["input_ids"].shape[1] > p["input_ids"].shape[1] for p, q in zip(plain, padded))  # it padded

    results = []
    for multiple in (1, 8):
        model = _model(tokenizer, torch.float64)  # see EQUIVALENCE_ATOL
        settings = TrainSettings(lr=3e-3, batch_size=32, max_steps=3, seed=0, group_by_length=False,
                                 micro_batches=2, pad_to_multiple_of=multiple)
        outcome = train(model, control, examples, settings, progress=False)
        results.append((model.state_dict(), outcome))
    (one, a), (other, b) = results
    assert a.tokens == b.tokens and b.train_loss == pytest.approx(a.train_loss, rel=1e-6)
    for name, value in one.items():
        assert torch.allclose(value, other[name], rtol=0, atol=EQUIVALENCE_ATOL), name


def test_bf16_autocast_keeps_float32_weights_and_tracks_float32_training(setup):
    tokenizer, examples = setup
    losses = []
    for bf16 in (False, True):
        model = _model(tokenizer)
        products = set()  # the dtypes the linear layers compute in
        for module in model.modules():
            if isinstance(module, torch.nn.Linear):
                module.register_forward_hook(lambda module, args, out: products.add(out.dtype))
        settings = TrainSettings(lr=3e-3, batch_size=16, max_steps=6, seed=0, log_every=3, bf16=bf16)
        outcome = train(model, LanguageTokens(tokenizer), examples, settings, progress=False)
        assert all(p.dtype == torch.float32 for p in model.parameters())
        # Autocast is on exactly when asked: whether it changes a logged loss depends on the CPU's kernels.
        assert products == ({torch.bfloat16} if bf16 else {torch.float32})
        losses.append([h["train_loss"] for h in outcome.history])
    (full, mixed) = losses
    assert mixed[-1] < mixed[0]  # it learns
    assert mixed == pytest.approx(full, rel=0.03)  # and stays close to float32 (bf16 rounds matrix products)


def test_dev_checks_build_no_autograd_graph(setup):
    tokenizer, examples = setup
    model = _model(tokenizer)
    grad_modes = []
    model.register_forward_hook(lambda module, args, out: grad_modes.append((module.training, torch.is_grad_enabled())))
    settings = TrainSettings(lr=1e-3, batch_size=8, max_steps=2, eval_every=1, seed=0)
    train(model, LanguageTokens(tokenizer), examples[16:], settings, dev=examples[:16], progress=False)
    assert (True, True) in grad_modes  # training steps
    assert (False, False) in grad_modes and (False, True) not in grad_modes  # dev checks: no graph


def test_resumed_training_equals_uninterrupted(setup, tmp_path):
    tokenizer, examples = setup
    settings = TrainSettings(lr=3e-3, batch_size=8, max_steps=12, eval_every=3, checkpoint_every=4, seed=0)
    dev = examples[:16]

    reference = _model(tokenizer)
    outcome = train(reference, LanguageTokens(tokenizer), examples[16:], settings, dev=dev, progress=False)

    def kill_at_7(step, loss):
        if step == 7:
            raise Kill()
        return loss

    interrupted = _model(tokenizer)
    with pytest.raises(Kill):
        train(interrupted, LanguageTokens(tokenizer), examples[16:], settings, dev=dev, progress=False,
              callbacks=[OnLoss(kill_at_7)], checkpoint_dir=tmp_path / "ckpt")
    assert (tmp_path / "ckpt" / "checkpoint.json").is_file()

    seen = []
    resumed = _model(tokenizer)  # fresh weights: everything must come from the checkpoint
    result = train(resumed, LanguageTokens(tokenizer), examples[16:], settings, dev=dev, progress=False,
                   callbacks=[OnLoss(lambda step, loss: seen.append(step) or loss)], checkpoint_dir=tmp_path / "ckpt")
    assert result.resumed_from == 4 and seen == list(range(5, 13))
    assert result.best_step == outcome.best_step and result.best_dev_loss == pytest.approx(outcome.best_dev_loss)
    for (name, a), b in zip(reference.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name


def test_non_finite_loss_raises(setup):
    tokenizer, examples = setup
    with pytest.raises(TrialDiverged, match="non-finite training loss .* at step 3"):
        train(_model(tokenizer), LanguageTokens(tokenizer), examples, TrainSettings(lr=1e-3, batch_size=8, max_steps=5),
              progress=False, callbacks=[OnLoss(lambda step, loss: loss * float("inf") if step == 3 else loss)])


def test_tensorboard_logging(setup, tmp_path):
    pytest.importorskip("tensorboard")
    tokenizer, examples = setup
    train(_model(tokenizer), LanguageTokens(tokenizer), examples, TrainSettings(lr=1e-3, batch_size=8, max_steps=4,
          log_every=2), progress=False, log_dir=tmp_path / "tb")
    assert list((tmp_path / "tb").rglob("events.out.tfevents.*"))
