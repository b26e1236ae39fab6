"""Explanations of LLNM-Net predictions: attention rollout contributions and Grad-CAM++ maps."""

from __future__ import annotations

import pytest
import torch

from models.llnm.config import TMDLConfig
from models.llnm.explain import CONTRIBUTION_GROUPS, IMAGE_INPUTS, explain, rollout
from models.llnm.tmdl import TMDL, TMDLBatch

CONFIG = TMDLConfig(width=32, heads=4, bidirectional_blocks=1, self_attention_blocks=2,
                    image_size=16, patch_size=4, text_tokens=6, text_width=8)  # fmt: skip


def batch(b: int = 3, text: bool = True) -> TMDLBatch:
    generator = torch.Generator().manual_seed(0)
    s, v = CONFIG.image_size, 2

    def maps() -> torch.Tensor:
        return torch.rand(b, v, 1, s, s, generator=generator)

    return TMDLBatch(
        location=maps(), texture=maps(), margin=maps(),
        echogenicity=torch.rand(b, v, generator=generator),
        shape=torch.rand(b, v, CONFIG.shape_features, generator=generator),
        position=torch.rand(b, v, CONFIG.position_features, generator=generator),
        view_mask=torch.tensor([[True, True], [True, False], [False, True]])[:b],
        text=torch.rand(b, CONFIG.text_tokens, CONFIG.text_width, generator=generator),
        text_present=torch.full((b,), text),
        sex=torch.tensor([1.0, -1.0, 0.0])[:b], age=torch.tensor([0.3, 0.5, 0.7])[:b],
    )  # fmt: skip


@pytest.fixture(scope="module")
def model() -> TMDL:
    torch.manual_seed(0)
    return TMDL(CONFIG).eval()


def test_rollout_of_identity_attention_is_uniform_over_valid_tokens() -> None:
    n = 5
    key_mask = torch.tensor([[True, True, True, False, True]])
    eye = torch.eye(n)[None, None]  # (1, 1, N, N)
    relevance = rollout([eye, eye], key_mask)
    torch.testing.assert_close(relevance, torch.tensor([[0.25, 0.25, 0.25, 0.0, 0.25]]))


def test_contributions_sum_to_100_and_heatmaps_lie_in_0_1(model: TMDL) -> None:
    inputs = batch()
    result = explain(model, inputs)
    with torch.inference_mode():
        plain = model(inputs)
    torch.testing.assert_close(result.logit, plain.logit)
    assert len(result.contributions) == 3
    for shares in result.contributions:
        assert list(shares) == list(CONTRIBUTION_GROUPS)
        assert sum(shares.values()) == pytest.approx(100.0, abs=1e-3)
        assert min(shares.values()) >= 0.0
    for name in (*IMAGE_INPUTS, "combined"):
        maps = result.heatmaps[name]
        assert maps.shape == (3, 2, CONFIG.image_size, CONFIG.image_size)
        assert float(maps.min()) >= 0.0 and float(maps.max()) <= 1.0 + 1e-6
    present = inputs.view_mask
    assert (result.heatmaps["combined"][present].flatten(1).amax(dim=1) > 0.99).all()
    assert all(p.grad is None for p in model.parameters())  # nothing left behind
    assert not model.training


def test_a_missing_report_contributes_nothing(model: TMDL) -> None:
    result = explain(model, batch(text=False))
    assert all(shares["report"] == 0.0 for shares in result.contributions)
    assert all(
        sum(shares.values()) == pytest.approx(100.0, abs=1e-3) for shares in result.contributions
    )
