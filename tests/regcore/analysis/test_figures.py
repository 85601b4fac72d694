"""Every plot is produced as a non-empty PNG for a LeNet trained on digits."""

from __future__ import annotations

from pathlib import Path

import torch

from regcore.analysis.base import AnalysisContext
from regcore.analysis.boundary import BoundaryAnalysis, BoundaryParams
from regcore.analysis.figures import PlotsAnalysis, PlotsParams, occlusion_map
from regcore.data import load_dataset
from regcore.spec import ExperimentSpec
from regcore.train import train

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

EXPECTED = {
    "loss_curves.png",
    "accuracy_curves.png",
    "weights.png",
    "embedding_pca.png",
    "embedding_tsne.png",
    "feature_maps_conv1.png",
    "feature_maps_conv2.png",
    "saliency.png",
    "occlusion.png",
    "boundary_planes.png",
}


def test_every_plot_for_lenet_on_digits(tmp_path: Path) -> None:
    spec = ExperimentSpec.model_validate(
        {
            "dataset": {"name": "digits", "train_size": 300, "test_size": 120},
            "model": {"name": "lenet"},
            "training": {"epochs": 2, "batch_size": 32, "lr": 0.05, "device": "cpu"},
        }
    )
    data = load_dataset(spec.dataset, 0)
    result = train(spec, data)
    ctx = AnalysisContext(result.model.eval(), data, torch.device("cpu"), tmp_path, result.history)
    plotted = PlotsAnalysis(PlotsParams(embedding_samples=100)).run(ctx)
    assert {path.name for path in plotted.artifacts} == EXPECTED
    for path in plotted.artifacts:
        assert path.read_bytes()[:8] == PNG_MAGIC and path.stat().st_size > 1000

    # with the boundary analysis run first, its saved planes are the ones drawn
    BoundaryAnalysis(BoundaryParams(planes=3, resolution=21, half_width=[1.5])).run(ctx)
    again = PlotsAnalysis(PlotsParams(embedding_samples=100, tsne=False)).run(ctx)
    assert "embedding_tsne.png" not in {path.name for path in again.artifacts}


def test_occlusion_map_measures_the_drop_in_probability() -> None:
    class CentrePixel(torch.nn.Module):
        """Class 1 when the centre pixel is bright: only occluding the centre matters."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            centre = x[:, 0, 2, 2]
            return torch.stack([torch.zeros_like(centre), 20 * (centre - 0.75)], dim=1)

    image = torch.zeros(1, 5, 5)
    image[0, 2, 2] = 1.0
    drop = occlusion_map(CentrePixel(), image, label=1, patch=1, stride=1)
    assert drop.shape == (5, 5)
    assert drop[2, 2] > 0.9 and drop.abs().sum() - drop[2, 2] < 1e-6
