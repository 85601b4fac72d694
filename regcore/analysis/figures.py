"""The pictures people look at: training curves, weights, feature maps, embeddings,
saliency, occlusion sensitivity and decision-boundary planes.

Registered as the ``plots`` analysis. Test examples come from the analysis' own seed,
so every model of a comparison is pictured on the same images. Image-only plots
(feature maps, saliency, occlusion) are left out for vector data such as ``blobs``.
Decision-boundary planes reuse the ``boundary`` analysis' saved maps when it ran
first in the same spec, and draw a few planes of their own otherwise.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from regcore.analysis import plots
from regcore.analysis.base import Analysis, AnalysisContext, AnalysisResult, batched
from regcore.analysis.boundary import draw_planes, grid_coordinates, label_maps
from regcore.registries import ANALYSES
from regcore.registry import MAX_COUNT, MAX_FLOAT, MAX_SAMPLES, MAX_SEED, ComponentParams


class PlotsParams(ComponentParams):
    samples: int = Field(
        8, ge=1, le=MAX_SAMPLES, description="test images for saliency, occlusion, features"
    )
    embedding_samples: int = Field(
        300, ge=10, le=MAX_SAMPLES, description="points in the PCA / t-SNE plots"
    )
    tsne: bool = Field(True, description="also draw t-SNE (slower than PCA)")
    occlusion_patch: int = Field(
        4, ge=1, le=MAX_COUNT, description="side of the grey occluding square"
    )
    occlusion_stride: int = Field(2, ge=1, le=MAX_COUNT)
    boundary_half_width: float = Field(
        40.0, gt=0, le=MAX_FLOAT, description="planes drawn when none saved"
    )
    seed: int = Field(
        0, ge=0, le=MAX_SEED, description="picks the examples; shared by a comparison"
    )


@ANALYSES.register("plots")
class PlotsAnalysis(Analysis):
    """Training curves, weights, feature maps, PCA/t-SNE, saliency, occlusion, boundaries."""

    Params = PlotsParams
    params: PlotsParams

    def run(self, ctx: AnalysisContext) -> AnalysisResult:
        outdir = ctx.outdir / "plots"
        outdir.mkdir(parents=True, exist_ok=True)
        test = ctx.data.test
        generator = torch.Generator().manual_seed(self.params.seed)
        order = torch.randperm(len(test), generator=generator).to(test.x.device)
        x, y = test.x[order[: self.params.samples]], test.y[order[: self.params.samples]]
        is_image = len(ctx.data.info.input_shape) == 3

        paths = training_curves(
            ctx.history, outdir, best_epoch=ctx.best_epoch, restored=ctx.restored_best
        )
        paths.append(weight_distributions(ctx.model, outdir / "weights.png"))
        embedding_x = test.x[order[: self.params.embedding_samples]]
        embedding_y = test.y[order[: self.params.embedding_samples]]
        paths += embeddings(ctx.model, embedding_x, embedding_y, ctx, outdir, self.params.tsne)
        if is_image:
            paths += feature_maps(ctx.model, x[:1], outdir)
            paths.append(saliency(ctx.model, x, y, outdir / "saliency.png"))
            paths.append(
                occlusion(
                    ctx.model,
                    x,
                    y,
                    outdir / "occlusion.png",
                    self.params.occlusion_patch,
                    self.params.occlusion_stride,
                )
            )
        paths.append(self.boundary_planes(ctx, outdir / "boundary_planes.png"))
        return AnalysisResult({"plots/count": float(len(paths))}, paths)

    def boundary_planes(self, ctx: AnalysisContext, path: Path) -> Path:
        saved = ctx.outdir / "boundary" / "maps.npz"
        classes = ctx.data.info.num_classes
        if saved.exists():
            with np.load(saved) as maps:
                # the widest saved half-width shows the most of the boundary structure
                widths = [float(k.removeprefix("maps_w")) for k in maps.files if "maps_w" in k]
                width = max(widths)
                chosen = maps[f"maps_w{width:g}"][:8]
        else:
            planes = draw_planes(ctx.data.test, 4, self.params.seed)
            width = self.params.boundary_half_width
            coords = grid_coordinates(width, 101)
            chosen = label_maps(
                ctx.model, planes, coords, ctx.data.info.input_shape, device=ctx.device
            ).numpy()
        return plots.label_maps(
            chosen, width, path, title=f"decision boundaries (half-width {width:g})",
            classes=classes,
        )  # fmt: skip


# per-epoch history keys -> legend labels: "train/loss" is the whole objective (data loss
# plus every penalty) while "val/loss" is data loss only, so they are never shown unlabelled
LOSS_SERIES = {
    "train/loss": "train: total (data + penalties)",
    "train/data_loss": "train: data loss (cross-entropy)",
    "val/loss": "val: data loss (cross-entropy)",
}
ACCURACY_SERIES = {"train/accuracy": "train", "val/accuracy": "val"}


def training_curves(
    history: list[dict[str, float]], outdir: Path, *, best_epoch: int | None = None,
    restored: bool = True,
) -> list[Path]:  # fmt: skip
    """Loss and accuracy per epoch, train against validation; ``best_epoch`` (early
    stopping's) is marked, as the epoch whose weights the model holds when ``restored``."""
    if not history:
        return []
    epochs = [row["epoch"] for row in history]
    marks = []
    if best_epoch is not None:
        kept = "weights restored" if restored else "last weights kept"
        marks.append((float(best_epoch), f"best epoch {best_epoch} ({kept})"))
    paths = []
    for quantity, names in (("loss", LOSS_SERIES), ("accuracy", ACCURACY_SERIES)):
        series = {
            label: [row[key] for row in history]
            for key, label in names.items()
            if all(key in row for row in history)
        }
        paths.append(
            plots.curves(
                epochs,
                series,
                outdir / f"{quantity}_curves.png",
                title=f"{quantity} per epoch",
                xlabel="epoch",
                ylabel=quantity,
                marks=marks,
                log=quantity == "loss" and _spread(series) > 10,
            )
        )
    return paths


def _spread(series: dict[str, list[float]]) -> float:
    """max / min over every positive value: above ~10 a linear axis flattens the smaller
    curves (a penalty can make the total loss many times the data loss)."""
    values = [v for line in series.values() for v in line if v > 0]
    return max(values) / min(values) if values else 1.0


def weight_distributions(model: nn.Module, path: Path) -> Path:
    weights = {
        name: module.weight.detach().flatten().cpu().numpy()
        for name, module in model.named_modules()
        if isinstance(module, nn.Conv2d | nn.Linear)
    }
    return plots.histograms(weights, path, title="weight distribution per layer")


def penultimate_features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """(N, F) inputs of the last linear layer: the representation the classifier reads."""
    last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    captured: list[torch.Tensor] = []
    handle = last.register_forward_hook(lambda _m, inputs, _o: captured.append(inputs[0]))
    try:
        with torch.no_grad():
            for start, stop in batched(len(x), 500):
                model(x[start:stop])
    finally:
        handle.remove()
    return torch.cat(captured).flatten(1)


def embeddings(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: AnalysisContext,
    outdir: Path, tsne: bool,
) -> list[Path]:  # fmt: skip
    features = penultimate_features(model, x).double().cpu()  # (N, F)
    centred = features - features.mean(dim=0)
    _, _, v = torch.linalg.svd(centred, full_matrices=False)
    pca = (centred @ v[:2].T).numpy()  # (N, 2)
    labels, names = y.cpu().numpy(), ctx.data.info.class_names
    paths = [
        plots.scatter_by_class(
            pca, labels, names, outdir / "embedding_pca.png", title="PCA of penultimate layer"
        )
    ]
    if tsne:
        from sklearn.manifold import TSNE

        perplexity = min(30.0, (len(features) - 1) / 3)
        points = TSNE(perplexity=perplexity, random_state=0, init="pca").fit_transform(
            features.numpy()
        )
        paths.append(
            plots.scatter_by_class(
                points,
                labels,
                names,
                outdir / "embedding_tsne.png",
                title="t-SNE of penultimate layer",
            )
        )
    return paths


def feature_maps(model: nn.Module, x: torch.Tensor, outdir: Path) -> list[Path]:
    """Activations of the first two convolutional layers for one image."""
    convs = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)][:2]
    captured: dict[str, torch.Tensor] = {}
    handles = [
        conv.register_forward_hook(
            lambda _m, _i, output, name=name: captured.update({name: output})
        )
        for name, conv in convs
    ]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    paths = []
    for name, _ in convs:
        maps = captured[name][0, :16].cpu().numpy()  # (channels <= 16, H, W)
        path = outdir / f"feature_maps_{name.replace('.', '_')}.png"
        title = f"feature maps of {name}"
        paths.append(plots.image_grid(maps, path, title=title, cmap="viridis"))
    return paths


def to_display(x: torch.Tensor) -> np.ndarray:
    """(N, C, H, W) in [0, 1] -> (N, H, W) grey or (N, H, W, 3) colour."""
    images = x.detach().cpu()
    return images[:, 0].numpy() if images.shape[1] == 1 else images.permute(0, 2, 3, 1).numpy()


def saliency(model: nn.Module, x: torch.Tensor, y: torch.Tensor, path: Path) -> Path:
    """|d logit_y / d x|, maximum over channels, beside each image."""
    inputs = x.clone().requires_grad_(True)
    logits = model(inputs)  # (N, C)
    (grad,) = torch.autograd.grad(logits.gather(1, y[:, None]).sum(), inputs)
    maps = grad.abs().amax(dim=1).cpu().numpy()  # (N, H, W)
    images = to_display(x)
    panels = [panel for pair in zip(images, maps, strict=True) for panel in pair]
    labels = [text for k in range(len(x)) for text in (f"label {int(y[k])}", "saliency")]
    return plots.image_grid(
        panels, path, title="saliency |∇x logit_y|", labels=labels,
        columns=8,
    )  # fmt: skip


@torch.no_grad()
def occlusion_map(
    model: nn.Module, image: torch.Tensor, label: int, patch: int, stride: int
) -> torch.Tensor:
    """(h, w) drop in the true class' probability when a grey square covers each position."""
    _, height, width = image.shape
    rows = list(range(0, max(height - patch, 0) + 1, stride))
    cols = list(range(0, max(width - patch, 0) + 1, stride))
    occluded = image.expand(len(rows) * len(cols), *image.shape).clone()  # (h*w, C, H, W)
    for k, (r, c) in enumerate((r, c) for r in rows for c in cols):
        occluded[k, :, r : r + patch, c : c + patch] = 0.5
    base = F.softmax(model(image[None]), dim=1)[0, label]
    probabilities = F.softmax(model(occluded), dim=1)[:, label]
    return (base - probabilities).view(len(rows), len(cols)).cpu()


def occlusion(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, path: Path, patch: int, stride: int
) -> Path:
    maps = [
        occlusion_map(model, image, int(label), patch, stride)
        for image, label in zip(x, y, strict=True)
    ]
    images = to_display(x)
    panels = [panel for k in range(len(x)) for panel in (images[k], maps[k].numpy())]
    labels = [text for k in range(len(x)) for text in (f"label {int(y[k])}", "occlusion")]
    return plots.image_grid(
        panels, path,
        title=f"occlusion sensitivity (drop in p_y, {patch}px square)", labels=labels,
        columns=8, diverging=[k % 2 == 1 for k in range(len(panels))],
        colorbar="drop in p_y when occluded",
    )  # fmt: skip
