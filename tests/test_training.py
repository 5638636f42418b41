"""The shared training loop: batches, schedule, checks, metrics log, checkpoints and resumption.

A two-parameter regression model stands in for GPT-2 here (the trainers' own tests run the loop on GPT-2):
every number the loop produces is then cheap to check by hand.
"""

from __future__ import annotations

import dataclasses
import math
import random
import shutil

import pytest
import torch
from torch import nn

from dpo_edu import checkpoints, toy, training
from dpo_edu.sft import SFTConfig
from dpo_edu.training import TrainConfig


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    """Tiny tensors: one thread. Two OpenMP threads on a busy 2-core machine stall at every op (60× slower)."""
    with toy.one_thread():
        yield


class Line(nn.Module):
    """y = w·x + b; checkpoints store its state_dict, so it needs nothing else."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(2, 1)
        self.dropout = nn.Dropout(0.5)

    def forward(self, x):
        return self.linear(self.dropout(x)).squeeze(-1)


# y = 3·x₀ − 2·x₁ + 1 on 10 fixed points
POINTS = [(float(i % 4), float(i // 4), 3.0 * (i % 4) - 2.0 * (i // 4) + 1.0) for i in range(10)]


def _model(seed: int = 0) -> Line:
    torch.manual_seed(seed)
    return Line()


def _loss_fn(model):
    def loss_fn(rows):
        x = torch.tensor([[a, b] for a, b, _ in rows])
        y = torch.tensor([t for _, _, t in rows])
        loss = ((model(x) - y) ** 2).mean()
        return loss, {"mean_target": y.mean().item()}

    return loss_fn


def _step_fn(model):
    return training.minimize(_loss_fn(model))


def _config(**changes) -> TrainConfig:
    base = dict(lr=0.05, batch_size=3, steps=9, warmup_steps=2, progress=False, log_every=1, save_every=2)
    return TrainConfig(**{**base, **changes})


def _train(config, seed=0, **kwargs):
    model = _model(seed)
    return model, training.train_loop(model, POINTS, _step_fn(model), config, **kwargs)


# --- pieces --------------------------------------------------------------------------------------------


def test_each_epoch_visits_every_item_once_in_a_seeded_order():
    items = list("abcdefg")
    stream = training.iterate_batches(items, batch_size=3, seed=5)
    batches = [next(stream) for _ in range(6)]  # 3 batches per epoch (3 + 3 + 1), two epochs
    assert [b.epoch for b in batches] == [0, 0, 0, 1, 1, 1] and [b.index for b in batches] == [0, 1, 2] * 2
    for epoch in (0, 1):
        rows = [r for b in batches if b.epoch == epoch for r in b.rows]
        assert sorted(rows) == list(range(7))
        assert [items[r] for b in batches if b.epoch == epoch for r in b.rows] == [
            x for b in batches if b.epoch == epoch for x in b.items]
    assert [r for b in batches[:3] for r in b.rows] != [r for b in batches[3:] for r in b.rows]  # reshuffled
    again = training.iterate_batches(items, batch_size=3, seed=5)
    assert [next(again).rows for _ in range(6)] == [b.rows for b in batches]
    # Resuming at step 4 gives the batches the uninterrupted stream gave, whatever the random state.
    random.seed(123)
    resumed = training.iterate_batches(items, batch_size=3, seed=5, start_step=4)
    assert [next(resumed).rows for _ in range(2)] == [b.rows for b in batches[4:]]
    other = training.iterate_batches(items, batch_size=3, seed=6)
    assert [next(other).rows for _ in range(3)] != [b.rows for b in batches[:3]]
    ordered = training.iterate_batches(items, batch_size=3, shuffle=False)
    assert next(ordered).rows == [0, 1, 2]
    with pytest.raises(ValueError, match="items is empty"):
        next(training.iterate_batches([], batch_size=3))


def test_warmup_then_constant_or_linear_decay():
    model = _model()
    optimizer, scheduler = training.make_optimizer(model, lr=1.0, total_steps=6, warmup_steps=3)
    lrs = []
    for _ in range(6):
        lrs.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    assert lrs == pytest.approx([1 / 3, 2 / 3, 1, 1, 1, 1])  # lr_t = lr · min(1, (t + 1) / warmup)
    optimizer, scheduler = training.make_optimizer(model, lr=1.0, total_steps=6, warmup_steps=2, schedule="linear")
    lrs = []
    for _ in range(6):
        lrs.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    assert lrs == pytest.approx([0.5, 1, 1, 0.75, 0.5, 0.25])
    _, scheduler = training.make_optimizer(model, lr=0.1, total_steps=5)
    # Two groups (decayed or not); without warmup the full lr from the first step.
    assert scheduler.get_last_lr() == pytest.approx([0.1, 0.1])


def test_weight_decay_spares_biases():
    optimizer, _ = training.make_optimizer(_model(), lr=0.1, total_steps=1, weight_decay=0.1)
    decays = {tuple(p.shape): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    assert decays == {(1, 2): 0.1, (1,): 0.0}


def test_disable_dropout_makes_train_mode_deterministic():
    model = _model().train()
    x = torch.ones(64, 2)
    assert not torch.equal(model(x), model(x))  # p = 0.5 drops different inputs on each pass
    training.disable_dropout(model)
    assert all(m.p == 0.0 for m in model.modules() if isinstance(m, nn.Dropout))
    assert torch.equal(model(x), model(x))


def test_seed_everything_fixes_python_and_torch():
    training.seed_everything(3)
    first = (random.random(), torch.rand(3))
    training.seed_everything(3)
    second = (random.random(), torch.rand(3))
    assert first[0] == second[0] and torch.equal(first[1], second[1])


def test_clip_gradients_returns_the_norm_before_clipping():
    model = _model()
    for p, g in zip(model.parameters(), (torch.tensor([[3.0, 0.0]]), torch.tensor([4.0]))):
        p.grad = g.clone()
    assert training.clip_gradients(model, None) == pytest.approx(5.0)
    assert training.clip_gradients(model, 1.0) == pytest.approx(5.0)
    after = torch.cat([p.grad.flatten() for p in model.parameters()])
    assert after.norm().item() == pytest.approx(1.0, rel=1e-4)
    assert after.tolist() == pytest.approx([0.6, 0.0, 0.8], rel=1e-4)  # the direction is kept


def test_non_finite_loss_names_step_and_batch():
    batch = training.Batch(step=6, epoch=2, index=1, rows=[4, 9, 0], items=[])
    training.check_finite_loss(torch.tensor(1.5), batch)
    with pytest.raises(FloatingPointError, match=r"loss is nan at step 7 \(epoch 2, batch 1, rows \[4, 9, 0\]\)"):
        training.check_finite_loss(torch.tensor(float("nan")), batch)
    with pytest.raises(FloatingPointError, match="loss is inf at step 7"):
        training.check_finite_loss(torch.tensor(float("inf")), batch)
    with pytest.raises(FloatingPointError, match=r"the gradient norm is -inf at step 7"):
        training.check_finite_loss(float("-inf"), batch, "the gradient norm")


def test_an_infinite_gradient_is_caught_before_the_step():
    model = _model()
    model.linear.weight.register_hook(lambda grad: grad * float("inf"))
    with pytest.raises(FloatingPointError, match=r"the gradient norm is (inf|nan) at step 1 \(epoch 0, batch 0"):
        training.train_loop(model, POINTS, _step_fn(model), _config())
    assert torch.isfinite(model.linear.weight).all()  # the weights were not touched


def test_metrics_round_trip_exactly(tmp_path):
    rows = [{"step": 1, "loss": 0.1 + 0.2, "learning_rate": 1e-7 / 3}, {"step": 2, "loss": float("nan"), "note": "é"}]
    back = checkpoints.load_metrics(checkpoints.save_metrics(rows, tmp_path / "sub" / "m.jsonl"))
    assert back[0] == rows[0] and back[0]["loss"] == 0.30000000000000004
    assert math.isnan(back[1]["loss"]) and back[1]["note"] == "é"


@pytest.mark.parametrize(
    "field, value",
    [("lr", 0.0), ("lr", float("inf")), ("batch_size", 0), ("steps", 0), ("epochs", -1.0), ("warmup_steps", -1),
     ("grad_clip", 0.0), ("weight_decay", -0.1), ("schedule", "cosine"), ("log_every", 0), ("batch_size", 2.0),
     ("adam_eps", 0.0)],
)
def test_config_rejects_bad_values_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        TrainConfig(**{field: value})


def test_total_steps_from_epochs():
    assert TrainConfig(batch_size=3, epochs=2.0).total_steps(10) == 8  # 4 batches per epoch
    assert TrainConfig(batch_size=3, epochs=0.5, steps=7).total_steps(10) == 7  # steps wins
    with pytest.raises(ValueError, match="empty"):
        TrainConfig().total_steps(0)


# --- the loop ------------------------------------------------------------------------------------------


def test_loop_fits_and_logs_one_row_per_step_with_trl_names():
    model, metrics = _train(_config(steps=60, lr=0.1, warmup_steps=0))
    assert [m["step"] for m in metrics] == list(range(1, 61))
    assert {"step", "epoch", "loss", "grad_norm", "learning_rate", "mean_target"} <= set(metrics[0])
    assert metrics[0]["epoch"] == pytest.approx(1 / 4) and metrics[-1]["epoch"] == pytest.approx(15)
    assert metrics[-1]["loss"] < 0.05 * metrics[0]["loss"]
    assert not model.training  # handed back in eval mode
    assert model.dropout.p == 0.0  # disable_dropout=True by default


def test_callback_every_log_every_and_at_the_end():
    seen = []
    _train(_config(steps=7, log_every=3), callback=lambda step, row: seen.append((step, row["step"])))
    assert seen == [(3, 3), (6, 6), (7, 7)]


def test_callback_also_at_every_evaluation():
    """Issue 16: notebook 05's dashboard drew only DPO's last evaluation (log_every 10, evaluations every 12)."""
    seen = []
    _train(_config(steps=7, log_every=3, eval_every=2), eval_fn=lambda: {"eval_loss": 1.0},
           callback=lambda step, row: seen.append((step, "eval_loss" in row)))
    assert seen == [(2, True), (3, False), (4, True), (6, True), (7, True)]


def test_progress_bar_shows_the_latest_loss(capsys, tmp_path):
    _train(_config(steps=3, progress=True), checkpoint_dir=tmp_path)
    err = capsys.readouterr().err
    assert "train" in err and "3/3" in err and "loss=" in err
    _train(_config(steps=3, progress=True), checkpoint_dir=tmp_path)
    assert "train: resuming from step 3 of 3" in capsys.readouterr().out


def test_eval_fn_merges_eval_metrics():
    calls = []
    _, metrics = _train(_config(steps=5, eval_every=2), eval_fn=lambda: calls.append(1) or {"eval_loss": 1.0})
    assert [m["step"] for m in metrics if "eval_loss" in m] == [2, 4, 5] and len(calls) == 3


def test_same_seed_same_metrics_and_another_seed_differs():
    _, a = _train(_config())
    _, b = _train(_config())
    _, c = _train(_config(seed=1))
    assert a == b
    assert [m["loss"] for m in a] != [m["loss"] for m in c]  # the shuffle depends on the seed


def test_nan_in_the_loop_names_the_step_and_the_batch():
    def poison(step, row):
        if step == 2:
            with torch.no_grad():
                model.linear.weight.fill_(float("nan"))

    model = _model()
    with pytest.raises(FloatingPointError, match=r"step 3 \(epoch 0, batch 2, rows \[\d+(, \d+)*\]\)"):
        training.train_loop(model, POINTS, _step_fn(model), _config(), callback=poison)


class Interrupt(Exception):
    pass


def test_resume_reproduces_the_uninterrupted_run(tmp_path):
    config = _config(steps=9, save_every=2)
    full_model, full = _train(config)

    def stop_at_5(step, row):
        if step == 5:
            raise Interrupt  # the last checkpoint (save_every=2) holds step 4: the resumed run redoes step 5

    with pytest.raises(Interrupt):
        _train(config, checkpoint_dir=tmp_path, callback=stop_at_5)
    assert checkpoints.find_checkpoint(tmp_path) == tmp_path / "last"
    assert len(checkpoints.load_metrics(tmp_path / "last" / checkpoints.METRICS_FILE)) == 4
    torch.manual_seed(999)  # a different random state and a different init: both come from the checkpoint
    resumed_model, resumed = _train(config, seed=7, checkpoint_dir=tmp_path)
    assert resumed == full
    for a, b in zip(full_model.state_dict().values(), resumed_model.state_dict().values()):
        assert torch.equal(a, b)
    # Running again finds the finished checkpoint: nothing to do, the same metrics.
    _, again = _train(config, checkpoint_dir=tmp_path)
    assert again == full


@pytest.mark.parametrize("damaged", [checkpoints.STATE_FILE, checkpoints.METRICS_FILE])
def test_a_corrupt_checkpoint_is_named_set_aside_and_the_run_starts_afresh(tmp_path, capsys, damaged):
    config = _config(steps=9, save_every=2, progress=False)
    full_model, full = _train(config)

    def stop_at_5(step, row):
        if step == 5:
            raise Interrupt

    with pytest.raises(Interrupt):
        _train(config, checkpoint_dir=tmp_path, callback=stop_at_5)
    path = tmp_path / "last" / damaged
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])  # a copy cut short
    capsys.readouterr()
    resumed_model, resumed = _train(config, checkpoint_dir=tmp_path)
    out = capsys.readouterr().out
    assert f"checkpoint {tmp_path / 'last'} cannot be read" in out and "training starts from step 0" in out
    assert (tmp_path / "last.corrupt" / damaged).is_file()  # kept for a look, never read again
    assert resumed == full  # from step 0, the same numbers as a run never interrupted
    for a, b in zip(full_model.state_dict().values(), resumed_model.state_dict().values()):
        assert torch.equal(a, b)


def test_resume_refuses_a_checkpoint_of_another_config(tmp_path):
    _train(_config(steps=3), checkpoint_dir=tmp_path)
    with pytest.raises(ValueError, match=r"different config \(lr\)"):
        _train(_config(steps=3, lr=0.01), checkpoint_dir=tmp_path)
    _train(_config(steps=3, log_every=2, progress=False), checkpoint_dir=tmp_path)  # harmless changes pass


def test_interrupted_save_leaves_the_previous_checkpoint(tmp_path):
    model = _model()
    optimizer = training.Optimizer(model, _config(lr=0.1), total_steps=5)
    rows = [{"step": k} for k in (1, 2, 3)]  # one a step
    checkpoints.save_checkpoint(tmp_path, model, optimizer, 3, rows)
    (tmp_path / "last.tmp").mkdir()  # a save that died before writing its state file
    assert checkpoints.find_checkpoint(tmp_path) == tmp_path / "last"
    step, metrics = checkpoints.load_checkpoint(tmp_path / "last", model, optimizer)
    assert step == 3 and metrics == rows


def test_checkpoint_restores_weights_optimizer_and_schedule(tmp_path):
    model = training.disable_dropout(_model())
    optimizer = training.Optimizer(model, _config(), total_steps=9)
    step = _step_fn(model)
    batches = training.iterate_batches(POINTS, 3)
    for _ in range(2):
        step(next(batches), optimizer)
        optimizer.schedule.step()
    checkpoints.save_checkpoint(tmp_path, model, optimizer, 2, [{"step": 1}, {"step": 2}])
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    other = training.disable_dropout(_model(seed=5))
    other_optimizer = training.Optimizer(other, _config(), total_steps=9)
    assert checkpoints.load_checkpoint(tmp_path / "last", other, other_optimizer) == (2, [{"step": 1}, {"step": 2}])
    assert all(torch.equal(saved[k], v) for k, v in other.state_dict().items())
    assert other_optimizer.lr == optimizer.lr == pytest.approx(0.05)  # warmup of 2 steps done
    assert other_optimizer.state_dict()["adamw"]["state"][0]["step"] == 2
    # One more step from either gives the same weights: the AdamW moments came back too.
    batch = next(batches)
    step(batch, optimizer)
    _step_fn(other)(batch, other_optimizer)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), other.state_dict().values()))


# --- a trainer's own step and state ---------------------------------------------------------------------------


def _adaptive_step(model, state):
    """A custom step whose loss weight adapts, as PPO's KL coefficient: the state changes the numbers."""
    loss_fn = _loss_fn(model)

    def step(batch, optimizer):
        optimizer.zero_grad()
        loss, metrics = loss_fn(batch.items)
        (state["coef"] * loss).backward()
        grad_norm = optimizer.step(batch)
        state["coef"] *= 1.5 if loss.item() > state["target"] else 0.5
        state["rows_seen"] += len(batch.items)
        return {"loss": loss.item(), "coef": state["coef"], "grad_norm": grad_norm, **metrics}

    return step


def _state() -> dict:
    return {"coef": 1.0, "target": 4.0, "rows_seen": 0}


def _train_custom(config, state, seed=0, **kwargs):
    model = _model(seed)
    return model, training.train_loop(model, POINTS, _adaptive_step(model, state), config, state=state, **kwargs)


def test_custom_step_state_is_checkpointed_and_restored(tmp_path):
    config = _config(steps=9, save_every=2, lr=0.02)
    full_state, snapshots = _state(), {}
    full_model, full = _train_custom(config, full_state,
                                     callback=lambda step, row: snapshots.update({step: dict(full_state)}))
    assert full_state["rows_seen"] == 10 + 10 + 3  # two epochs of 3 + 3 + 3 + 1 rows, then 3
    assert len({m["coef"] for m in full}) > 2  # the state moved

    def stop_at_5(step, row):
        if step == 5:
            raise Interrupt  # the checkpoint holds step 4

    with pytest.raises(Interrupt):
        _train_custom(config, _state(), callback=stop_at_5, checkpoint_dir=tmp_path)
    saved = torch.load(tmp_path / "last" / checkpoints.STATE_FILE, weights_only=False)
    assert saved["step"] == 4 and saved["state"] == snapshots[4]
    # A fresh state and another init: both come back from the checkpoint.
    resumed_state = _state()
    resumed_model, resumed = _train_custom(config, resumed_state, seed=7, checkpoint_dir=tmp_path)
    assert resumed == full and resumed_state == full_state
    for a, b in zip(full_model.state_dict().values(), resumed_model.state_dict().values()):
        assert torch.equal(a, b)
    # Without the state the resumed run starts from coef = 1 again, and its numbers differ.
    shutil.rmtree(tmp_path / "last")
    with pytest.raises(Interrupt):
        _train_custom(config, _state(), callback=stop_at_5, checkpoint_dir=tmp_path)
    model = _model(7)
    unrestored = training.train_loop(model, POINTS, _adaptive_step(model, _state()), config, checkpoint_dir=tmp_path)
    assert unrestored[:4] == full[:4] and unrestored[4:] != full[4:]


def test_result_settings_drops_exactly_the_cosmetic_fields():
    config = _config(log_every=3, save_every=5, progress=True)
    everything = dataclasses.asdict(config)
    settings = training.result_settings(config)
    assert set(everything) - set(settings) == {"log_every", "save_every", "progress"}
    assert settings == {k: v for k, v in everything.items() if k not in ("log_every", "save_every", "progress")}
    assert training.result_settings(dataclasses.replace(config, log_every=1, save_every=1, progress=False)) == settings
    assert training.result_settings(dataclasses.replace(config, adam_eps=1e-5)) != settings
    sft = SFTConfig(max_length=32)
    assert training.result_settings(sft)["max_length"] == 32  # a subclass keeps its own fields
    assert set(dataclasses.asdict(sft)) - set(training.result_settings(sft)) == {"log_every", "save_every", "progress"}


def test_adam_eps_reaches_adamw():
    optimizer = training.Optimizer(_model(), TrainConfig(adam_eps=1e-5), total_steps=3)
    assert [g["eps"] for g in optimizer.adamw.param_groups] == [1e-5, 1e-5]
    assert [g["eps"] for g in training.Optimizer(_model(), TrainConfig(), 3).adamw.param_groups] == [1e-8, 1e-8]
    # AdamW's first step moves each weight by lr · g / (|g| + ε) (m̂ = g, v̂ = g²): ε = 0.5 shows in it.
    model = _model()
    optimizer = training.Optimizer(model, TrainConfig(lr=0.1, adam_eps=0.5, grad_clip=None), total_steps=1)
    before = [p.detach().clone() for p in model.parameters()]
    grads = [torch.tensor([[3.0, -0.5]]), torch.tensor([1.0])]
    for p, g in zip(model.parameters(), grads):
        p.grad = g.clone()
    optimizer.step(training.Batch(0, 0, 0, [0], [None]))
    for p, b, g in zip(model.parameters(), before, grads):
        torch.testing.assert_close(p.detach(), b - 0.1 * g / (g.abs() + 0.5), rtol=0, atol=1e-7)
