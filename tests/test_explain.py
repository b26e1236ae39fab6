"""Explanations of LLNM-Net predictions: Shapley contributions of the inputs and Grad-CAM++ maps."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from models.llnm.config import WITHHOLDABLE, TMDLConfig
from models.llnm.explain import CONTRIBUTION_GROUPS, IMAGE_INPUTS, explain
from models.llnm.shapley import GROUPS, deletion_curves, shapley_values
from models.llnm.tmdl import TMDL, TMDLBatch, withhold

CONFIG = TMDLConfig(width=32, heads=4, bidirectional_blocks=1, self_attention_blocks=2,
                    image_size=16, patch_size=4, text_tokens=6, text_width=8)  # fmt: skip
CHOSEN = ("echogenicity", "sex")  # the only inputs the toy task's label depends on


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


def toy_task(patients: int, seed: int) -> tuple[TMDLBatch, torch.Tensor]:
    """One view of random inputs and soft labels of log-odds 2 (sign(echogenicity) + sex)."""
    generator = torch.Generator().manual_seed(seed)
    s = CONFIG.image_size

    def uniform(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=generator) * 2 - 1

    sign = torch.randint(0, 2, (patients, 1), generator=generator).float() * 2 - 1
    echogenicity = sign * (0.3 + 0.7 * torch.rand(patients, 1, generator=generator))
    sex = torch.randint(0, 2, (patients,), generator=generator).float() * 2 - 1
    inputs = TMDLBatch(
        location=torch.rand(patients, 1, 1, s, s, generator=generator),
        texture=torch.rand(patients, 1, 1, s, s, generator=generator),
        margin=torch.rand(patients, 1, 1, s, s, generator=generator),
        echogenicity=echogenicity,
        shape=uniform(patients, 1, CONFIG.shape_features),
        position=torch.rand(patients, 1, CONFIG.position_features, generator=generator),
        view_mask=torch.ones(patients, 1, dtype=torch.bool),
        text=uniform(patients, CONFIG.text_tokens, CONFIG.text_width),
        text_present=torch.ones(patients, dtype=torch.bool),
        sex=sex,
        age=torch.rand(patients, generator=generator),
    )
    return inputs, torch.sigmoid(2 * (sign[:, 0] + sex))


@pytest.fixture(scope="module")
def model() -> TMDL:
    torch.manual_seed(0)
    return TMDL(CONFIG).eval()


@pytest.fixture(scope="module")
def toy_model() -> TMDL:
    """A small TMDL trained for a few seconds on fresh :func:`toy_task` batches.

    Each step withholds every input with probability 0.2, so the model learns what
    "input unavailable" means: the baseline the Shapley values measure against.
    """
    torch.manual_seed(0)
    trained = TMDL(replace(CONFIG, text_dropout=0.0, view_dropout=0.0)).train()
    optimiser = torch.optim.AdamW(trained.parameters(), lr=5e-3)
    generator = torch.Generator().manual_seed(0)
    for step in range(200):
        inputs, labels = toy_task(64, seed=100 + step)
        dropped = torch.rand(len(GROUPS), generator=generator) < 0.2
        inputs = withhold(inputs, tuple(n for n, d in zip(GROUPS, dropped, strict=True) if d))
        loss = torch.nn.functional.binary_cross_entropy_with_logits(trained(inputs).logit, labels)
        optimiser.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        optimiser.step()
    return trained.eval()


def test_the_groups_are_the_withholdable_inputs() -> None:
    assert set(CONTRIBUTION_GROUPS) == set(WITHHOLDABLE) == set(GROUPS)


def test_contributions_sum_to_100_and_heatmaps_lie_in_0_1(model: TMDL) -> None:
    inputs = batch()
    result = explain(model, inputs)
    with torch.inference_mode():
        plain = model(inputs)
    torch.testing.assert_close(result.logit, plain.logit)
    assert len(result.contributions) == len(result.shapley) == 3
    for shares, phi in zip(result.contributions, result.shapley, strict=True):
        assert list(shares) == list(phi) == list(CONTRIBUTION_GROUPS)
        assert sum(shares.values()) == pytest.approx(100.0, abs=1e-6)
        assert min(shares.values()) >= 0.0
        total = sum(abs(value) for value in phi.values())
        for name in CONTRIBUTION_GROUPS:
            assert shares[name] == pytest.approx(100.0 * abs(phi[name]) / total)
    for name in (*IMAGE_INPUTS, "combined"):
        maps = result.heatmaps[name]
        assert maps.shape == (3, 2, CONFIG.image_size, CONFIG.image_size)
        assert float(maps.min()) >= 0.0 and float(maps.max()) <= 1.0 + 1e-6
    present = inputs.view_mask
    assert (result.heatmaps["combined"][present].flatten(1).amax(dim=1) > 0.99).all()
    assert all(p.grad is None for p in model.parameters())  # nothing left behind
    assert not model.training


def test_shapley_values_add_up_to_the_logit_minus_the_baseline(model: TMDL) -> None:
    inputs = batch()
    result = explain(model, inputs, chunk_rows=7)
    with torch.inference_mode():
        full = model(inputs).logit.double()
        baseline = model(withhold(inputs, WITHHOLDABLE)).logit.double()
    phi = torch.tensor([sum(row.values()) for row in result.shapley], dtype=torch.float64)
    torch.testing.assert_close(phi, full - baseline, atol=1e-5, rtol=0)
    torch.testing.assert_close(result.baseline_logit.double(), baseline, atol=1e-5, rtol=0)
    assert phi.abs().min() > 1e-4  # the inputs do move this model's logit


def test_chunking_does_not_change_the_values(model: TMDL) -> None:
    inputs = batch()
    one = shapley_values(model, inputs, chunk_rows=1000)
    other = shapley_values(model, inputs, chunk_rows=5)
    torch.testing.assert_close(one.phi, other.phi, atol=1e-6, rtol=0)


def test_inputs_the_patient_lacks_contribute_nothing(model: TMDL) -> None:
    result = explain(model, batch(text=False))
    assert all(shares["report"] == 0.0 for shares in result.contributions)
    assert all(phi["report"] == 0.0 for phi in result.shapley)
    assert result.contributions[2]["sex"] == 0.0  # patient 2's sex is unknown (0)
    assert result.contributions[0]["sex"] > 0.0
    assert all(
        sum(shares.values()) == pytest.approx(100.0, abs=1e-6) for shares in result.contributions
    )


def test_an_input_the_model_withholds_gets_exactly_0_percent(model: TMDL) -> None:
    seeing = explain(model, batch())
    blind = TMDL(replace(CONFIG, withheld=("report", "texture"))).eval()
    blind.load_state_dict(model.state_dict())  # the same weights, two inputs withheld
    result = explain(blind, batch())
    for before, after in zip(seeing.contributions, result.contributions, strict=True):
        assert before["report"] > 0.0 and before["texture"] > 0.0
        assert after["report"] == 0.0 and after["texture"] == 0.0
        assert sum(after.values()) == pytest.approx(100.0, abs=1e-6)


def test_the_inputs_a_trained_model_uses_rank_first(toy_model: TMDL) -> None:
    inputs, _ = toy_task(24, seed=2)
    values = shapley_values(toy_model, inputs)
    chosen = [GROUPS.index(name) for name in CHOSEN]
    top = values.phi.abs().topk(len(CHOSEN), dim=1).indices
    hits = [set(row) == set(chosen) for row in top.tolist()]
    assert sum(hits) >= 0.75 * len(hits), values.percent().mean(dim=0)
    mean = values.percent().mean(dim=0)
    assert set(mean.topk(len(CHOSEN)).indices.tolist()) == set(chosen)
    assert float(mean[chosen].sum()) > 60.0, mean  # token counts would give them < 4 %


def test_deleting_the_attributed_inputs_first_moves_the_logit_most(toy_model: TMDL) -> None:
    inputs, _ = toy_task(24, seed=3)
    values = shapley_values(toy_model, inputs)
    attributed, reverse = deletion_curves(toy_model, inputs, values)
    assert attributed.shape == reverse.shape == (24, len(GROUPS) + 1)
    torch.testing.assert_close(attributed[:, -1], reverse[:, -1])  # all withheld: the same
    wins = attributed[:, 1:].mean(dim=1) > reverse[:, 1:].mean(dim=1)
    assert float(wins.float().mean()) >= 0.9, (attributed.mean(dim=0), reverse.mean(dim=0))
