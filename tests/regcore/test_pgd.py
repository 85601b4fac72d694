"""FGSM and PGD against the sanity checks every attack must pass: the budget and [0, 1]
are respected, eps = 0 is the clean accuracy, robust accuracy falls with eps, PGD beats
FGSM, eps = 1 Linf breaks everything, FGSM is exact on a linear model, a per-sample eps
(several budgets in one batched pass) gives exactly the separate runs, and an attack
leaves the model's gradients, its train/eval mode and torch's generator alone."""

from __future__ import annotations

from functools import lru_cache

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from regcore.attacks.base import distances
from regcore.attacks.pgd import fgsm, pgd
from regcore.data import DataSplits, load_dataset
from regcore.data.base import Split
from regcore.spec import ExperimentSpec
from regcore.train import evaluate, train


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return (model(x).argmax(dim=1) == y).double().mean().item()


@lru_cache(maxsize=2)
def train_digits_mlp(seed: int = 0) -> tuple[nn.Module, DataSplits]:
    """An MLP on 8x8 digits (about 98% test accuracy, in well under a second) and its data.

    Cached: the attack test modules share it; none of them changes the model.
    """
    spec = ExperimentSpec.model_validate(
        {
            "dataset": {"name": "digits", "size": 8, "val_fraction": 0.0},
            "model": {"name": "mlp", "hidden": [64]},
            "training": {"epochs": 15, "batch_size": 64, "lr": 0.05, "seed": seed, "device": "cpu"},
        }
    )
    data = load_dataset(spec.dataset, spec.training.seed)
    model = train(spec, data).model.eval()
    assert evaluate(model, data.test)[1] > 0.95
    return model, data


@pytest.fixture(scope="module")
def trained() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """The digits MLP and its test set (359 images)."""
    model, data = train_digits_mlp()
    return model, data.test.x, data.test.y


# --------------------------------------------------------------------------- the budget


EPSILONS = {"linf": [0.01, 0.1, 0.3, 1.0], "l2": [0.1, 0.5, 2.0, 8.0]}


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize(("random_start", "restarts"), [(False, 1), (True, 1), (True, 3)])
def test_examples_stay_in_the_eps_ball_and_in_the_unit_box(
    trained: tuple[nn.Module, torch.Tensor, torch.Tensor],
    norm: str,
    random_start: bool,
    restarts: int,
) -> None:
    model, x, y = trained
    x, y = x[:100], y[:100]
    torch.manual_seed(0)
    for eps in EPSILONS[norm]:
        x_adv = pgd(
            model, x, y, eps=eps, norm=norm, steps=5, random_start=random_start, restarts=restarts
        )  # fmt: skip
        assert x_adv.shape == x.shape and not x_adv.requires_grad
        assert distances(x_adv, x, norm).max().item() <= eps + 1e-6
        assert x_adv.min().item() >= 0.0 and x_adv.max().item() <= 1.0
        assert distances(x_adv, x, norm).max().item() > 0.5 * eps  # it did move
    for eps in EPSILONS["linf"]:
        x_adv = fgsm(model, x, y, eps)
        assert distances(x_adv, x, "linf").max().item() <= eps + 1e-6
        assert x_adv.min().item() >= 0.0 and x_adv.max().item() <= 1.0


def test_eps_zero_is_the_clean_input(trained: tuple[nn.Module, torch.Tensor, torch.Tensor]) -> None:
    model, x, y = trained
    clean = accuracy(model, x, y)
    assert clean == pytest.approx(evaluate(model, Split(x, y))[1], abs=1e-12)
    for norm in ("linf", "l2"):
        for random_start in (False, True):
            x_adv = pgd(model, x, y, eps=0.0, norm=norm, random_start=random_start)
            assert torch.equal(x_adv, x)
            assert accuracy(model, x_adv, y) == clean
    assert torch.equal(fgsm(model, x, y, 0.0), x)


# --------------------------------------------------------------------------- per-sample eps


def repeated(x: torch.Tensor, y: torch.Tensor, epsilons: list[float]) -> tuple[torch.Tensor, ...]:
    """The examples once per eps, and the (E * B,) eps of each row: eps-major order."""
    budget = torch.tensor(epsilons).repeat_interleave(len(x))  # (E * B,)
    return x.repeat(len(epsilons), 1, 1, 1), y.repeat(len(epsilons)), budget


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize(("random_start", "restarts"), [(False, 1), (True, 1), (True, 2)])
def test_per_sample_eps_keeps_each_example_in_its_own_ball(
    trained: tuple[nn.Module, torch.Tensor, torch.Tensor],
    norm: str,
    random_start: bool,
    restarts: int,
) -> None:
    model, x, y = trained
    xs, ys, budget = repeated(x[:60], y[:60], [0.0, *EPSILONS[norm]])
    generator = torch.Generator().manual_seed(0)
    x_adv = pgd(
        model, xs, ys, eps=budget, norm=norm, steps=5, random_start=random_start,
        restarts=restarts, generator=generator,
    )  # fmt: skip
    moved = distances(x_adv, xs, norm)  # (E * B,)
    assert bool((moved <= budget + 1e-6).all())
    assert x_adv.min().item() >= 0.0 and x_adv.max().item() <= 1.0
    assert torch.equal(x_adv[:60], x[:60])  # eps = 0 rows are x itself, even with a random start
    assert bool((moved[60:] > 0).all())
    if norm == "linf":
        x_fgsm = fgsm(model, xs, ys, budget)
        assert bool((distances(x_fgsm, xs, "linf") <= budget + 1e-6).all())
        assert x_fgsm.min().item() >= 0.0 and x_fgsm.max().item() <= 1.0
        assert torch.equal(x_fgsm[:60], x[:60])


@pytest.mark.parametrize(
    ("norm", "epsilons"), [("linf", [0.05, 0.1, 0.2, 0.3]), ("l2", [0.25, 0.5, 1.0, 2.0])]
)
@pytest.mark.parametrize("alpha", [None, 0.02])
def test_one_batched_pass_over_several_eps_equals_the_separate_runs(
    trained: tuple[nn.Module, torch.Tensor, torch.Tensor],
    norm: str,
    epsilons: list[float],
    alpha: float | None,
) -> None:
    """Without a random start, exactly: alpha's default 2.5 * eps / steps is per sample."""
    model, x, y = trained
    xs, ys, budget = repeated(x, y, epsilons)
    batched = pgd(
        model, xs, ys, eps=budget, norm=norm, steps=7, alpha=alpha, random_start=False
    ).view(len(epsilons), *x.shape)
    for i, eps in enumerate(epsilons):
        alone = pgd(model, x, y, eps=eps, norm=norm, steps=7, alpha=alpha, random_start=False)
        assert torch.equal(batched[i], alone), (norm, eps)
    if norm == "linf":
        batched = fgsm(model, xs, ys, budget).view(len(epsilons), *x.shape)
        for i, eps in enumerate(epsilons):
            assert torch.equal(batched[i], fgsm(model, x, y, eps))


def test_a_scalar_tensor_eps_and_a_float_are_the_same(
    trained: tuple[nn.Module, torch.Tensor, torch.Tensor],
) -> None:
    model, x, y = trained
    as_float = pgd(model, x, y, eps=0.1, random_start=False)
    assert torch.equal(pgd(model, x, y, eps=torch.tensor(0.1), random_start=False), as_float)
    assert torch.equal(
        pgd(model, x, y, eps=torch.full((len(x),), 0.1), random_start=False), as_float
    )


def test_bad_per_sample_eps_is_refused() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    x, y = torch.rand(3, 1, 4, 4), torch.tensor([0, 1, 2])
    nan = float("nan")
    wrong_shape, negative, not_a_number = [0.1, 0.2], [0.1, -0.1, 0.2], [0.1, nan, 0.1]
    for eps in (*(torch.tensor(v) for v in (wrong_shape, negative, not_a_number)), nan):
        with pytest.raises(ValueError, match="eps"):
            pgd(model, x, y, eps=eps)
        with pytest.raises(ValueError, match="eps"):
            fgsm(model, x, y, eps)


# --------------------------------------------------------------------------- strength


@pytest.mark.parametrize(
    ("norm", "epsilons"),
    [("linf", [0.0, 0.05, 0.1, 0.2, 0.3]), ("l2", [0.0, 0.25, 0.5, 1.0, 2.0])],
)
def test_robust_accuracy_does_not_increase_with_eps(
    trained: tuple[nn.Module, torch.Tensor, torch.Tensor], norm: str, epsilons: list[float]
) -> None:
    model, x, y = trained
    torch.manual_seed(0)
    accuracies = [accuracy(model, pgd(model, x, y, eps=eps, norm=norm), y) for eps in epsilons]
    assert accuracies[0] == accuracy(model, x, y)
    assert accuracies == sorted(accuracies, reverse=True), accuracies
    assert accuracies[-1] < accuracies[0] - 0.5  # the largest budget does real damage


def test_pgd_is_at_least_as_strong_as_fgsm(
    trained: tuple[nn.Module, torch.Tensor, torch.Tensor],
) -> None:
    model, x, y = trained
    torch.manual_seed(0)
    for eps in (0.05, 0.1, 0.2):
        fgsm_accuracy = accuracy(model, fgsm(model, x, y, eps), y)
        pgd_accuracy = accuracy(model, pgd(model, x, y, eps=eps), y)
        assert pgd_accuracy <= fgsm_accuracy, (eps, pgd_accuracy, fgsm_accuracy)
        assert fgsm_accuracy < accuracy(model, x, y)


def test_linf_eps_one_breaks_the_model(
    trained: tuple[nn.Module, torch.Tensor, torch.Tensor],
) -> None:
    model, x, y = trained
    torch.manual_seed(0)
    assert accuracy(model, pgd(model, x, y, eps=1.0), y) < 0.05


def test_restarts_keep_the_first_success_or_the_highest_loss(
    trained: tuple[nn.Module, torch.Tensor, torch.Tensor],
) -> None:
    """The first restart draws the same random start as a single run with the same seed,
    so with restarts no sample is better off than in that single run."""
    model, x, y = trained
    kwargs = {"eps": 0.08, "steps": 3}
    torch.manual_seed(11)
    single = pgd(model, x, y, **kwargs)
    torch.manual_seed(11)
    several = pgd(model, x, y, restarts=4, **kwargs)
    with torch.no_grad():
        fooled_single = model(single).argmax(dim=1) != y
        fooled_several = model(several).argmax(dim=1) != y
        loss_single = F.cross_entropy(model(single), y, reduction="none")
        loss_several = F.cross_entropy(model(several), y, reduction="none")
    assert bool((fooled_several | ~fooled_single).all())  # every single-run success is kept
    kept = fooled_single  # a kept success is the very same example
    assert torch.equal(several[kept], single[kept])
    unfooled = ~fooled_several
    assert bool((loss_several[unfooled] >= loss_single[unfooled] - 1e-6).all())
    assert int(fooled_several.sum()) > int(fooled_single.sum())  # the extra restarts found more


# --------------------------------------------------------------------------- exactness


def test_fgsm_on_a_linear_model_lowers_the_margin_by_eps_times_the_l1_distance() -> None:
    """f(x) = Wx + b with two classes: sign(grad_x CE) = -sign(w_y - w_k), so the margin
    z_y - z_k drops by exactly eps * ||w_y - w_k||_1 (x mid-range: no clamping)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 2)).double()
    x = torch.full((6, 1, 4, 4), 0.5, dtype=torch.float64) + 0.1 * (
        torch.rand(6, 1, 4, 4, dtype=torch.float64) - 0.5
    )
    y = torch.tensor([0, 1, 0, 1, 1, 0])
    eps = 0.02
    x_adv = fgsm(model, x, y, eps)
    assert x_adv.min().item() > 0.0 and x_adv.max().item() < 1.0  # no clamping happened
    weight = model[1].weight.detach()  # (2, 16)
    sign = 1 - 2 * y.double()  # +1 for y = 0, -1 for y = 1: margin = sign * (z_0 - z_1)
    with torch.no_grad():
        margin = sign * (model(x)[:, 0] - model(x)[:, 1])
        margin_adv = sign * (model(x_adv)[:, 0] - model(x_adv)[:, 1])
    expected_drop = eps * (weight[0] - weight[1]).abs().sum()
    torch.testing.assert_close(margin - margin_adv, expected_drop.expand(6), rtol=1e-10, atol=0)


def test_l2_step_is_safe_for_a_zero_gradient() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    with torch.no_grad():
        model[1].weight.zero_()  # the loss does not depend on x: grad_x = 0
    x, y = torch.rand(4, 1, 4, 4), torch.tensor([0, 1, 2, 0])
    x_adv = pgd(model, x, y, eps=0.5, norm="l2", random_start=False)
    assert torch.equal(x_adv, x)


def test_bad_arguments_are_refused() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    x, y = torch.rand(2, 1, 4, 4), torch.tensor([0, 1])
    for kwargs in ({"eps": -0.1}, {"eps": 0.1, "steps": 0}, {"eps": 0.1, "norm": "l1"}):
        with pytest.raises(ValueError):
            pgd(model, x, y, **kwargs)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- side effects


class ModeProbe(nn.Module):
    """Records whether each forward pass ran in training mode."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(self.training)
        return x


def test_a_generator_draws_the_random_start_and_leaves_torchs_generator_alone(
    trained: tuple[nn.Module, torch.Tensor, torch.Tensor],
) -> None:
    model, x, y = trained
    for norm, eps in (("linf", 0.1), ("l2", 0.5)):
        state = torch.get_rng_state()
        first = pgd(
            model, x, y, eps=eps, norm=norm, restarts=2, generator=torch.Generator().manual_seed(5)
        )
        torch.manual_seed(123)  # another global state changes nothing
        again = pgd(
            model, x, y, eps=eps, norm=norm, restarts=2, generator=torch.Generator().manual_seed(5)
        )
        torch.set_rng_state(state)
        assert torch.equal(first, again)
        other = pgd(model, x, y, eps=eps, norm=norm, generator=torch.Generator().manual_seed(6))
        assert not torch.equal(first, other)
        assert torch.equal(torch.get_rng_state(), state)  # the generator, not the global one


def test_attacks_run_in_eval_mode_restore_modes_and_leave_grads_alone() -> None:
    torch.manual_seed(0)
    probe = ModeProbe()
    model = nn.Sequential(
        nn.Flatten(), nn.Linear(16, 8), nn.Dropout(0.5), nn.BatchNorm1d(8), probe, nn.ReLU(),
        nn.Linear(8, 3),
    )  # fmt: skip
    x, y = torch.rand(10, 1, 4, 4), torch.randint(0, 3, (10,))
    for training in (True, False):
        model.train(training)
        model[3].eval()  # a submodule deliberately in another mode keeps it
        running_mean = model[3].running_mean.clone()
        probe.seen.clear()
        a = pgd(model, x, y, eps=0.1, random_start=False)
        b = pgd(model, x, y, eps=0.1, random_start=False)
        fgsm(model, x, y, 0.1)
        pgd(model, x, y, eps=0.5, norm="l2", restarts=2)
        assert probe.seen and not any(probe.seen)  # every attack forward was in eval mode
        assert torch.equal(a, b)  # no dropout noise during the attack
        expected_modes = [training] * 8
        expected_modes[4] = False  # the batch norm
        assert [m.training for m in model.modules()] == expected_modes
        assert torch.equal(model[3].running_mean, running_mean)  # no statistics updated
        assert all(p.grad is None for p in model.parameters())
    with torch.no_grad():  # an attack needs its gradients even inside no_grad
        x_adv = pgd(model, x, y, eps=0.1, random_start=False)
    assert not torch.equal(x_adv, x)
