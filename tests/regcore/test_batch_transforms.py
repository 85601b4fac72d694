"""Batch transforms and training options: mixup, cutout, augment, grad_clip."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from regcore.data.base import DataInfo
from regcore.regularizers.augment import shift_and_flip
from regcore.regularizers.cutout import apply_cutout, cutout_mask
from regcore.spec import ExperimentSpec, RegularizerSpec
from regcore.train import train
from tests.regcore.test_regularizers import TINY_INFO, batch, context, make, tiny_model

VECTOR_INFO = DataInfo((16,), 3, (0.5,), (0.25,), ("a", "b", "c"))


# --------------------------------------------------------------------------- mixup


def test_mixup_mixes_inputs_and_its_loss_is_the_convex_combination() -> None:
    model = tiny_model()
    x, y = batch()
    reg = make("mixup", alpha=0.4)
    torch.manual_seed(3)
    mixed, targets = reg.transform_batch(x, y)
    lam, perm = reg.last_lam, reg.last_perm
    assert lam is not None and perm is not None and 0 < lam < 1
    assert sorted(perm.tolist()) == list(range(5)) and perm.tolist() != list(range(5))
    assert torch.equal(targets, y)
    assert torch.equal(mixed, lam * x + (1 - lam) * x[perm])

    ctx = context(model, mixed, targets)
    term = reg.penalty(ctx)
    direct = lam * F.cross_entropy(ctx.logits, y) + (1 - lam) * F.cross_entropy(ctx.logits, y[perm])
    assert (ctx.data_loss + term).item() == pytest.approx(direct.item(), rel=1e-12)
    assert term.item() != 0

    # the gradient reaches the weights and is the mixup loss's own
    grads = torch.autograd.grad(ctx.data_loss + term, list(model.parameters()), retain_graph=True)
    direct_grads = torch.autograd.grad(direct, list(model.parameters()))
    for grad, direct_grad in zip(grads, direct_grads, strict=True):
        assert grad.abs().sum() > 0
        torch.testing.assert_close(grad, direct_grad, rtol=1e-10, atol=1e-12)


def test_mixup_is_deterministic_under_a_seed() -> None:
    x, y = batch()
    runs = []
    for seed in (11, 11, 12):
        reg = make("mixup")
        torch.manual_seed(seed)
        mixed, _ = reg.transform_batch(x, y)
        runs.append((reg.last_lam, reg.last_perm.tolist(), mixed))
    assert runs[0][:2] == runs[1][:2] and torch.equal(runs[0][2], runs[1][2])
    assert runs[0][0] != runs[2][0]


@pytest.mark.parametrize("alpha", [0.2, 1.0])
def test_mixup_lam_follows_beta_alpha_alpha(alpha: float) -> None:
    reg = make("mixup", alpha=alpha)
    x, y = torch.rand(2, 3), torch.tensor([0, 1])
    torch.manual_seed(0)
    draws = []
    for _ in range(3000):
        reg.transform_batch(x, y)
        draws.append(reg.last_lam)
    lam = torch.tensor(draws, dtype=torch.float64)
    assert lam.min() >= 0 and lam.max() <= 1
    assert lam.mean().item() == pytest.approx(0.5, abs=0.03)
    # Var Beta(a, a) = 1 / (4 (2a + 1)): 0.179 for a = 0.2 (U-shaped), 1/12 for a = 1
    assert lam.var().item() == pytest.approx(1 / (4 * (2 * alpha + 1)), rel=0.1)


def test_mixup_penalty_needs_a_transformed_batch() -> None:
    model = tiny_model()
    with pytest.raises(RuntimeError, match="transform_batch"):
        make("mixup").penalty(context(model, *batch()))


# --------------------------------------------------------------------------- cutout


def mask_by_hand(centre: tuple[int, int], size: int, side: int) -> torch.Tensor:
    mask = torch.zeros(side, side, dtype=torch.bool)
    for i, j in itertools.product(range(side), repeat=2):
        top, left = centre[0] - size // 2, centre[1] - size // 2
        mask[i, j] = top <= i < top + size and left <= j < left + size
    return mask


def test_cutout_mask_is_the_square_around_the_centre_clipped_at_borders() -> None:
    centres = torch.tensor([[3, 4], [0, 0], [7, 7], [5, 1]])
    mask = cutout_mask(centres, size=4, height=8, width=8)  # (4, 8, 8)
    for b, centre in enumerate(centres.tolist()):
        assert torch.equal(mask[b], mask_by_hand(tuple(centre), 4, 8))
    # inside: rows/cols 1..4 x 2..5; top-left corner: 2x2; bottom-right corner: 3x3
    assert mask.sum(dim=(1, 2)).tolist() == [16, 4, 9, 12]
    assert mask[0, 1:5, 2:6].all()


def test_apply_cutout_fills_only_the_square() -> None:
    x = torch.rand(4, 3, 8, 8) + 0.1  # no pixel is 0 before the cut
    centres = torch.tensor([[3, 4], [0, 0], [7, 7], [5, 1]])
    active = torch.tensor([True, True, False, True])
    out = apply_cutout(x, centres, 4, 0.0, active)
    mask = cutout_mask(centres, 4, 8, 8)[:, None].expand_as(x) & active[:, None, None, None]
    assert (out[mask] == 0).all()
    assert torch.equal(out[~mask], x[~mask])
    assert torch.equal(out[2], x[2])  # inactive sample untouched

    means = torch.tensor([0.2, 0.4, 0.6])
    out = apply_cutout(x, centres, 4, means)
    for channel in range(3):
        assert (out[0, channel][mask_by_hand((3, 4), 4, 8)] == means[channel]).all()


def test_cutout_transform_cuts_one_square_per_sample_partial_at_borders() -> None:
    x = torch.ones(300, 2, 8, 8)
    y = torch.zeros(300, dtype=torch.long)
    torch.manual_seed(0)
    out, same_y = make("cutout", size=3, fill=0.0).transform_batch(x, y)
    assert same_y is y and out.shape == x.shape
    assert torch.equal(out[:, 0], out[:, 1])  # one square, through every channel
    cut = (out[:, 0] == 0).sum(dim=(1, 2))  # (B,)
    # 3x3 inside; 2x3 / 3x2 on an edge; 2x2 at a corner (size 3: rows c-1 .. c+1)
    assert set(cut.tolist()) == {4, 6, 9}
    assert (cut == 9).float().mean().item() == pytest.approx(36 / 64, abs=0.1)


def test_cutout_probability() -> None:
    x, y = torch.ones(400, 1, 6, 6), torch.zeros(400, dtype=torch.long)
    torch.manual_seed(0)
    unchanged, _ = make("cutout", probability=0.0, fill=0.0).transform_batch(x, y)
    assert torch.equal(unchanged, x)
    out, _ = make("cutout", size=2, probability=0.3, fill=0.0).transform_batch(x, y)
    cut = (out == 0).flatten(1).any(dim=1).float()
    assert cut.mean().item() == pytest.approx(0.3, abs=0.07)


def test_cutout_fill_mean_uses_the_dataset_means() -> None:
    reg = make("cutout", size=2, fill="mean")
    assert RegularizerSpec.model_validate({"name": "cutout", "fill": "mean"}).params.fill == "mean"
    reg.setup(tiny_model(), DataInfo((2, 4, 4), 3, (0.25, 0.75), (1.0, 1.0), ("a", "b", "c")))
    x = torch.ones(10, 2, 4, 4)
    out, _ = reg.transform_batch(x, torch.zeros(10, dtype=torch.long))
    assert set(out[:, 0].unique().tolist()) == {0.25, 1.0}
    assert set(out[:, 1].unique().tolist()) == {0.75, 1.0}


@pytest.mark.parametrize("name", ["cutout", "augment"])
def test_image_transforms_reject_non_images(name: str) -> None:
    reg = make(name)
    with pytest.raises(ValueError, match=r"image batches \(B, C, H, W\)"):
        reg.transform_batch(torch.rand(5, 16), torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="image inputs"):
        reg.setup(tiny_model(), VECTOR_INFO)
    reg.setup(tiny_model(), TINY_INFO)  # images are fine


# --------------------------------------------------------------------------- augment


def shifted_by_hand(x: torch.Tensor, dy: int, dx: int, flip: bool, padding: int) -> torch.Tensor:
    """Crop of the zero-padded images at offset (dy, dx), then maybe a horizontal flip."""
    height, width = x.shape[-2:]
    padded = F.pad(x, (padding,) * 4)
    crop = padded[..., padding + dy : padding + dy + height, padding + dx : padding + dx + width]
    return crop.flip(-1) if flip else crop


def test_shift_and_flip_matches_the_definition() -> None:
    x = torch.rand(4, 2, 5, 6)
    shifts = torch.tensor([[0, 0], [-2, 1], [2, -2], [1, 2]])
    flips = torch.tensor([False, True, False, True])
    out = shift_and_flip(x, shifts, flips, padding=2)
    for b in range(4):
        dy, dx = shifts[b].tolist()
        expected = shifted_by_hand(x[b], dy, dx, bool(flips[b]), padding=2)
        assert torch.equal(out[b], expected)
    assert torch.equal(out[0], x[0])
    # sample 1 (dy=-2, dx=1, flipped): content moved down 2 and left 1, then mirrored
    assert torch.equal(out[1, :, 2:, :].flip(-1)[:, :, :5], x[1, :, :-2, 1:])
    assert (out[1, :, :2] == 0).all() and (out[1, :, :, 0] == 0).all()


def test_augment_outputs_shifted_and_flipped_copies_with_varied_offsets() -> None:
    padding, batch_size = 4, 64
    x = torch.rand(batch_size, 3, 8, 8) + 0.1  # nonzero, so the padding shows the shift
    y = torch.arange(batch_size)
    torch.manual_seed(0)
    out, same_y = make("augment").transform_batch(x, y)
    assert out.shape == x.shape and same_y is y

    found: list[list[tuple[int, int, bool]]] = [[] for _ in range(batch_size)]
    shifts = range(-padding, padding + 1)
    for dy, dx, flip in itertools.product(shifts, shifts, (False, True)):
        candidate = shifted_by_hand(x, dy, dx, flip, padding)  # (B, C, H, W)
        for b in (out == candidate).flatten(1).all(dim=1).nonzero().flatten().tolist():
            found[b].append((dy, dx, flip))
    assert all(len(matches) == 1 for matches in found)  # each is exactly one such copy
    offsets = [matches[0][:2] for matches in found]
    flips = [matches[0][2] for matches in found]
    assert len(set(offsets)) >= 25  # 81 possible; about 44 distinct expected among 64
    assert 16 <= sum(flips) <= 48
    assert {dy for dy, _ in offsets} == set(shifts)


def test_augment_without_padding_or_flip_is_the_identity() -> None:
    x, y = batch()
    out, _ = make("augment", padding=0, flip=False).transform_batch(x, y)
    assert torch.equal(out, x)
    none = torch.zeros(5, 2, dtype=torch.long)
    assert torch.equal(shift_and_flip(x, none, torch.zeros(5, dtype=torch.bool), 0), x)
    torch.manual_seed(1)
    flipped, _ = make("augment", padding=0).transform_batch(x, y)
    mirrored = [torch.equal(a, b.flip(-1)) for a, b in zip(flipped, x, strict=True)]
    kept = [torch.equal(a, b) for a, b in zip(flipped, x, strict=True)]
    assert all(m != k for m, k in zip(mirrored, kept, strict=True))  # one or the other
    assert 0 < sum(mirrored) < 5


# --------------------------------------------------------------------------- grad_clip


def gradients_of_a_big_loss(scale: float) -> tuple[torch.nn.Module, list[torch.Tensor]]:
    model = tiny_model()
    ctx = context(model, *batch())
    (scale * ctx.data_loss).backward()
    return model, [p.grad.clone() for p in model.parameters()]


def flat(tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.flatten() for t in tensors])


def test_grad_clip_norm_caps_the_global_norm_and_keeps_the_direction() -> None:
    model, before = gradients_of_a_big_loss(100.0)
    assert flat(before).norm() > 1.0
    reg = make("grad_clip", max_norm=0.5)
    reg.before_step(model, torch.optim.SGD(model.parameters(), lr=0.1))
    after = flat([p.grad for p in model.parameters()])
    assert after.norm().item() <= 0.5 + 1e-6
    assert after.norm().item() == pytest.approx(0.5, rel=1e-5)
    assert reg.last_norm.item() == pytest.approx(flat(before).norm().item())
    torch.testing.assert_close(after, flat(before) * (after.norm() / flat(before).norm()))


def test_grad_clip_leaves_small_gradients_alone() -> None:
    model, before = gradients_of_a_big_loss(1.0)
    assert flat(before).norm() < 100.0
    make("grad_clip", max_norm=100.0).before_step(model, torch.optim.SGD(model.parameters(), 0.1))
    for parameter, grad in zip(model.parameters(), before, strict=True):
        assert torch.equal(parameter.grad, grad)


def test_grad_clip_inf_norm_caps_the_largest_entry() -> None:
    model, before = gradients_of_a_big_loss(100.0)
    reg = make("grad_clip", max_norm=0.1, norm_type="inf")
    reg.before_step(model, torch.optim.SGD(model.parameters(), lr=0.1))
    after = flat([p.grad for p in model.parameters()])
    assert after.abs().max().item() == pytest.approx(0.1, rel=1e-5)
    torch.testing.assert_close(after, flat(before) * (after.norm() / flat(before).norm()))


def test_grad_clip_value_mode_clamps_each_entry() -> None:
    model, before = gradients_of_a_big_loss(10.0)
    all_before = flat(before).abs()
    threshold = all_before.median().item()  # about half the entries get clamped
    assert (all_before > threshold).any() and (all_before < threshold).any()
    reg = make("grad_clip", mode="value", max_value=threshold)
    reg.before_step(model, torch.optim.SGD(model.parameters(), lr=0.1))
    for parameter, grad in zip(model.parameters(), before, strict=True):
        assert torch.equal(parameter.grad, grad.clamp(-threshold, threshold))


# --------------------------------------------------------------------------- in the loop


def test_all_four_train_together_on_digits() -> None:
    spec = ExperimentSpec.model_validate(
        {
            "dataset": {"name": "digits", "size": 28, "train_size": 300, "test_size": 100},
            "model": {"name": "lenet"},
            "regularizers": [
                {"name": "augment", "padding": 2, "flip": False},  # flips change digits
                {"name": "cutout", "size": 8},
                {"name": "mixup", "alpha": 0.2},
                {"name": "grad_clip", "max_norm": 1.0},
            ],
            "training": {"epochs": 2, "batch_size": 32, "lr": 0.05, "seed": 3, "device": "cpu"},
        }
    )
    result = train(spec)
    assert result.epochs_run == 2
    for row in result.history:
        assert row["reg/mixup"] != 0
        assert row["train/loss"] == pytest.approx(
            row["train/data_loss"] + row["reg/mixup"], rel=1e-5
        )
        assert not {"reg/augment", "reg/cutout", "reg/grad_clip"} & set(row)
        assert all(torch.isfinite(torch.tensor(value)) for value in row.values())
