"""analysis.feature_figures: the PNG grid of the feature images."""

import io

import numpy as np
import pytest

from analysis import feature_figures, features
from helpers import PNG_SIGNATURE


def fake_result(n, shape, steps=3):
    rng = np.random.default_rng(3)
    images = lambda *lead: rng.uniform(size=(*lead, *shape)).astype(np.float32)
    cosines = lambda *lead: rng.uniform(-1, 1, (*lead, steps + 1))
    best_steps = lambda *lead: rng.integers(0, steps + 1, lead)
    return features.FeatureImages(
        pos_images=images(n),
        neg_images=images(n),
        w_image=images(),
        best_pos_images=images(n),
        best_neg_images=images(n),
        best_w_image=images(),
        pos_cosines=cosines(n),
        neg_cosines=cosines(n),
        w_cosines=cosines(),
        best_pos_cosines=cosines(n)[:, 0],
        best_neg_cosines=cosines(n)[:, 0],
        best_w_cosine=0.5,
        best_pos_steps=best_steps(n),
        best_neg_steps=best_steps(n),
        best_w_step=1,
        start="grey",
        start_image=images(),
        zero_gradient_fractions={
            "pos": np.zeros(n),
            "neg": np.zeros(n),
            "w": 0.0,
        },
        eigenvalues=np.linspace(5, 1, 8),
        eigenvectors=np.zeros((8, n)),
        w=np.zeros(8),
        jitter=1e-6,
        feature_sq_norms=np.zeros(n + 1),
    )


@pytest.mark.parametrize("n,shape", [(1, (5, 5, 1)), (3, (4, 4, 3))])
def test_grid_is_a_readable_png(n, shape):
    import matplotlib.image

    png = feature_figures.grid_png(fake_result(n, shape), title="class 0")
    assert png.startswith(PNG_SIGNATURE)
    pixels = matplotlib.image.imread(io.BytesIO(png), format="png")
    assert pixels.ndim == 3 and pixels.shape[0] > 100 and pixels.shape[1] > 100
