"""Grey-level and speckle statistics (imaging.texture) on rendered B-mode images."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from imaging.texture import TEXTURE_WIDTH, texture_statistics
from phantoms.speckle import TissueMaps, render_bmode

SHAPE = (160, 200)
SPACING_MM = 0.1


def _bmode(speckle_scale: float = 1.0, gain_db: float = 0.0) -> NDArray[np.uint8]:
    maps = TissueMaps(
        echo=np.ones(SHAPE, dtype=np.float32),
        attenuation=np.zeros(SHAPE, dtype=np.float32),
        artefact=np.zeros(SHAPE, dtype=np.float32),
    )
    return render_bmode(
        maps,
        spacing_mm=SPACING_MM,
        rng=np.random.default_rng(4),
        dynamic_range_db=60.0,
        gain_db=gain_db,
        speckle_scale=speckle_scale,
    )


def test_coarser_speckle_correlates_over_longer_lags() -> None:
    fine, coarse = texture_statistics(_bmode(1.0)), texture_statistics(_bmode(2.5))
    assert fine.shape == (TEXTURE_WIDTH,) and fine.dtype == np.float32
    across, down = slice(0, 3), slice(3, 6)
    assert np.all(coarse[across] > fine[across] + 0.05)
    assert np.all(coarse[down] > fine[down] + 0.05)
    assert fine[0] > fine[1] > fine[2]  # correlation falls with the lag
    assert coarse[6] < fine[6]  # less fine detail


def test_noise_gain_and_saturation_move_their_own_statistics() -> None:
    image = _bmode()
    base = texture_statistics(image)
    rng = np.random.default_rng(5)
    noisy = np.clip(image + rng.normal(0.0, 60.0, image.shape), 0, 255).astype(np.uint8)
    assert texture_statistics(noisy)[6] > base[6] + 1.0  # Laplacian energy
    assert texture_statistics(noisy)[0] < base[0] - 0.2  # grain gone
    louder = texture_statistics(_bmode(gain_db=25.0))
    assert np.all(louder[7:12] >= base[7:12]) and louder[9] > base[9] + 0.2  # median up
    assert louder[13] > base[13]  # more saturated pixels
    black = np.zeros_like(image)
    assert texture_statistics(black)[14] == 1.0 and np.all(np.isfinite(texture_statistics(black)))


def test_colour_is_read_as_grey_and_tiny_images_still_give_numbers() -> None:
    image = _bmode()
    colour = np.repeat(image[:, :, None], 3, axis=2)
    np.testing.assert_allclose(texture_statistics(colour), texture_statistics(image))
    tiny = texture_statistics(image[:3, :3])
    assert tiny.shape == (TEXTURE_WIDTH,) and np.all(np.isfinite(tiny))
    assert tiny[2] == 0.0  # no lag of 4 inside 3 pixels
