"""The ATTACKS registry: a contract every entry meets (docstring, default params, budget,
[0, 1], eps = 0, per-sample eps, no side effects), our PGD against foolbox's LinfPGD and
L2PGD on the same model and examples, and the AutoAttack wrapper."""

from __future__ import annotations

import warnings

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from regcore.attacks.base import Attack, distances
from regcore.attacks.pgd import pgd
from regcore.catalog import CATALOG
from regcore.registries import ATTACKS
from regcore.registry import Entry
from tests.regcore.test_pgd import accuracy, train_digits_mlp

with warnings.catch_warnings():  # foolbox imports the deprecated scipy.ndimage.filters
    warnings.simplefilter("ignore", DeprecationWarning)
    import foolbox


@pytest.fixture(scope="module")
def trained() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    model, data = train_digits_mlp()
    return model, data.test.x, data.test.y


def tiny_model() -> nn.Module:
    """Four classes, so every AutoAttack attack (APGD-T needs four) can run."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.Tanh(), nn.Linear(8, 4)).eval()


def norms_of(entry: Entry) -> list[str]:
    """The norms an entry's params accept."""
    return [norm for norm in ("linf", "l2") if _accepts(entry, norm)]


def _accepts(entry: Entry, norm: str) -> bool:
    try:
        entry.params.model_validate({"norm": norm})
    except ValidationError:
        return False
    return True


# --------------------------------------------------------------------------- the contract


def test_the_registry_holds_the_attacks_and_the_catalog_lists_them() -> None:
    assert {"fgsm", "pgd", "autoattack"} <= set(ATTACKS.names())
    assert CATALOG["attacks"] is ATTACKS


# Cheaper params where the defaults take seconds on examples that survive (AutoAttack's
# standard version: 100-step APGD-T, FAB-T, 5000-query Square).
CHEAP: dict[str, dict[str, object]] = {"autoattack": {"version": "custom", "attacks": ["apgd-ce"]}}


@pytest.mark.parametrize("entry", list(ATTACKS), ids=lambda entry: entry.name)
def test_every_attack_meets_the_contract(entry: Entry) -> None:
    assert entry.summary, f"attack {entry.name} needs a docstring"
    assert entry.params().norm == "linf"  # defaults validate; every attack has a norm
    assert norms_of(entry)
    model = tiny_model()
    x = torch.rand(12, 1, 4, 4)
    y = model(x).argmax(dim=1)  # all correct: something to attack
    for norm in norms_of(entry):
        defaults = ATTACKS.build(entry.name, {"norm": norm})
        attack = ATTACKS.build(entry.name, {"norm": norm, **CHEAP.get(entry.name, {})})
        assert isinstance(attack, Attack) and attack.norm == norm
        scale = 1.0 if norm == "linf" else 4.0  # sqrt(16) pixels
        for eps in (0.05 * scale, torch.tensor([0.0, 0.02, 0.05, 0.3] * 3) * scale):
            budget = torch.as_tensor(eps).expand(12)
            state = torch.get_rng_state()
            x_adv = attack(model, x, y, eps, generator=torch.Generator().manual_seed(0))
            assert torch.equal(torch.get_rng_state(), state)  # torch's generator left alone
            assert x_adv.shape == x.shape and x_adv.dtype == x.dtype and not x_adv.requires_grad
            assert bool((distances(x_adv, x, norm) <= budget + 1e-6).all()), entry.name
            assert x_adv.min().item() >= 0.0 and x_adv.max().item() <= 1.0
            assert torch.equal(x_adv[budget == 0], x[budget == 0])
        x_adv = defaults(model, x, y, 0.3 * scale)  # large: the defaults' first attack suffices
        assert distances(x_adv, x, norm).max().item() <= 0.3 * scale + 1e-6
        assert accuracy(model, x_adv, y) < 0.5  # it attacks
        assert torch.equal(attack(model, x, y, 0.0), x)
        assert all(p.grad is None and p.requires_grad for p in model.parameters())
        assert not any(m.training for m in model.modules())


def test_every_attack_restores_the_models_mode() -> None:
    model = tiny_model().train()
    x = torch.rand(4, 1, 4, 4)
    for entry in ATTACKS:
        ATTACKS.build(entry.name, CHEAP.get(entry.name))(model, x, model(x).argmax(dim=1), 0.1)
        assert all(m.training for m in model.modules()), entry.name


# --------------------------------------------------------------------------- foolbox


@pytest.mark.parametrize(
    ("norm", "foolbox_attack", "epsilons"),
    [
        ("linf", foolbox.attacks.LinfPGD, [0.05, 0.1, 0.2]),
        ("l2", foolbox.attacks.L2PGD, [0.25, 0.5, 1.0]),
    ],
)
def test_our_pgd_agrees_with_foolbox(
    trained: tuple[nn.Module, torch.Tensor, torch.Tensor],
    norm: str,
    foolbox_attack: type,
    epsilons: list[float],
) -> None:
    """Same model, examples, steps and absolute step size, no random start: the same
    algorithm, so the robust accuracies agree to within 2 percentage points (measured:
    equal)."""
    model, x, y = trained
    fmodel = foolbox.PyTorchModel(model, bounds=(0, 1))
    steps = 20
    for eps in epsilons:
        alpha = 2.5 * eps / steps
        ours = pgd(model, x, y, eps=eps, norm=norm, steps=steps, alpha=alpha, random_start=False)
        attack = foolbox_attack(abs_stepsize=alpha, steps=steps, random_start=False)
        _, (theirs,), (success,) = attack(fmodel, x, y, epsilons=[eps])
        for x_adv in (ours, theirs):
            assert distances(x_adv, x, norm).max().item() <= eps + 1e-6
            assert x_adv.min().item() >= 0.0 and x_adv.max().item() <= 1.0
        ours_accuracy, theirs_accuracy = accuracy(model, ours, y), accuracy(model, theirs, y)
        assert theirs_accuracy == pytest.approx(1 - success.double().mean().item())
        assert abs(ours_accuracy - theirs_accuracy) <= 0.02, (eps, ours_accuracy, theirs_accuracy)
        assert ours_accuracy < accuracy(model, x, y)  # a real attack at every eps


# --------------------------------------------------------------------------- AutoAttack


@pytest.mark.parametrize(("norm", "eps"), [("linf", 0.1), ("l2", 0.5)])
def test_autoattack_stays_in_the_ball_and_is_at_least_as_strong_as_pgd(
    trained: tuple[nn.Module, torch.Tensor, torch.Tensor], norm: str, eps: float
) -> None:
    model, x, y = trained
    x, y = x[:20], y[:20]
    attack = ATTACKS.build(
        "autoattack", {"norm": norm, "version": "custom", "attacks": ["apgd-ce"]}
    )
    x_adv = attack(model, x, y, eps)
    assert distances(x_adv, x, norm).max().item() <= eps + 1e-6
    assert x_adv.min().item() >= 0.0 and x_adv.max().item() <= 1.0
    pgd_accuracy = accuracy(model, pgd(model, x, y, eps=eps, norm=norm, steps=20), y)
    assert accuracy(model, x_adv, y) <= pgd_accuracy + 0.05 + 1e-9  # one example of 20
    assert accuracy(model, x_adv, y) < accuracy(model, x, y)
    assert torch.equal(attack(model, x, y, eps), x_adv)  # seeded: the same every time


def test_autoattack_params_are_checked() -> None:
    entry = ATTACKS.get("autoattack")
    assert entry.params().version == "standard"
    with pytest.raises(ValidationError, match="needs an `attacks` list"):
        entry.params(version="custom")
    with pytest.raises(ValidationError, match="is for version 'custom'"):
        entry.params(attacks=["apgd-ce"])
    with pytest.raises(ValidationError):
        entry.params(version="custom", attacks=["pgd"])


def test_autoattack_skips_what_pyautoattack_cannot_run() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3)).eval()  # three classes: no APGD-T
    x = torch.rand(6, 1, 4, 4)
    y = model(x).argmax(dim=1)
    x_adv = ATTACKS.build("autoattack", {"version": "custom", "attacks": ["apgd-t", "apgd-ce"]})(
        model, x, y, 0.2
    )
    assert distances(x_adv, x, "linf").max().item() <= 0.2 + 1e-6
    only_dlr_t = ATTACKS.build("autoattack", {"version": "custom", "attacks": ["apgd-t"]})
    with pytest.raises(ValueError, match="3 classes"):
        only_dlr_t(model, x, y, 0.2)
    square = ATTACKS.build("autoattack", {"norm": "l2", "version": "custom", "attacks": ["square"]})
    with pytest.raises(ValueError, match=r"\(1, 4, 4\)"):  # L2 Square needs 5 x 5 pixels
        square(model, x, y, 0.5)
