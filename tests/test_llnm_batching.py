"""LLNM-Net explanations of several jobs' patients in one pass (models.llnm.batched)."""

from __future__ import annotations

import threading

import pytest
import torch

from models.llnm.batched import explain_patients, pad_views, stack_patients
from models.llnm.config import TMDLConfig
from models.llnm.explain import Explanation, explain
from models.llnm.tmdl import TMDL, TMDLBatch
from pipeline.batching import MicroBatcher

CONFIG = TMDLConfig(width=32, heads=4, bidirectional_blocks=1, self_attention_blocks=2,
                    image_size=16, patch_size=4, text_tokens=6, text_width=8)  # fmt: skip
CPU = torch.device("cpu")


def patient(seed: int, views: int, report: bool = True, sex: float = 1.0) -> TMDLBatch:
    """One patient of random inputs with ``views`` views, as the infer stage builds it."""
    generator = torch.Generator().manual_seed(seed)
    s = CONFIG.image_size

    def maps() -> torch.Tensor:
        return torch.rand(1, views, 1, s, s, generator=generator)

    return TMDLBatch(
        location=maps(), texture=maps(), margin=maps(),
        echogenicity=torch.rand(1, views, generator=generator),
        shape=torch.rand(1, views, CONFIG.shape_features, generator=generator),
        position=torch.rand(1, views, CONFIG.position_features, generator=generator),
        view_mask=torch.ones(1, views, dtype=torch.bool),
        text=torch.rand(1, CONFIG.text_tokens, CONFIG.text_width, generator=generator),
        text_present=torch.tensor([report]), sex=torch.tensor([sex]), age=torch.tensor([0.4]),
    )  # fmt: skip


PATIENTS = (patient(1, 2), patient(2, 1, report=False), patient(3, 2, sex=0.0), patient(4, 1))


@pytest.fixture(scope="module")
def model() -> TMDL:
    torch.manual_seed(0)
    return TMDL(CONFIG).eval()


def assert_same(batched: Explanation, alone: Explanation, exact: bool) -> None:
    tolerance = 0.0 if exact else 1e-5
    for name in ("logit", "stage_logits", "baseline_logit"):
        assert getattr(batched, name).dtype == getattr(alone, name).dtype
        torch.testing.assert_close(
            getattr(batched, name), getattr(alone, name), rtol=tolerance, atol=tolerance
        )
    assert batched.heatmaps.keys() == alone.heatmaps.keys()
    for key, heat in alone.heatmaps.items():
        torch.testing.assert_close(batched.heatmaps[key], heat, rtol=tolerance, atol=tolerance)
    pairs = (
        (batched.shapley, alone.shapley, 1e-5),
        (batched.contributions, alone.contributions, 1e-3),
    )
    for got, want, within in pairs:
        assert len(got) == len(want) == 1 and list(got[0]) == list(want[0])
        assert got == want if exact else got[0] == pytest.approx(want[0], abs=within)


@pytest.mark.parametrize("index", range(len(PATIENTS)))
def test_a_lone_patient_is_explained_bit_for_bit_as_unbatched(model: TMDL, index: int) -> None:
    (batched,) = explain_patients(model, [PATIENTS[index]], CPU)
    assert_same(batched, explain(model, PATIENTS[index]), exact=True)


def test_patients_explained_together_get_their_results_alone(model: TMDL) -> None:
    together = explain_patients(model, PATIENTS, CPU)
    assert len(together) == len(PATIENTS)
    for batched, alone in zip(together, PATIENTS, strict=True):
        assert batched.heatmaps["combined"].shape[:2] == alone.view_mask.shape
        assert_same(batched, explain(model, alone), exact=False)
    assert together[1].contributions[0]["report"] == 0.0  # no report: no player
    assert together[2].shapley[0]["sex"] == 0.0  # unknown sex


def test_padded_views_are_absent_zeros() -> None:
    padded = pad_views(PATIENTS[1], 3)
    assert padded.view_mask.tolist() == [[True, False, False]]
    assert padded.texture.shape == (1, 3, 1, CONFIG.image_size, CONFIG.image_size)
    assert not padded.texture[:, 1:].any() and not padded.shape[:, 1:].any()
    assert torch.equal(padded.texture[:, :1], PATIENTS[1].texture)
    assert torch.equal(padded.text, PATIENTS[1].text)
    assert pad_views(PATIENTS[0], 2) is PATIENTS[0]
    with pytest.raises(ValueError, match="cannot pad"):
        pad_views(PATIENTS[0], 1)
    stacked = stack_patients(PATIENTS)
    assert stacked.view_mask.tolist() == [[True, True], [True, False], [True, True], [True, False]]


def test_only_one_patient_batches_are_taken(model: TMDL) -> None:
    with pytest.raises(ValueError, match="exactly one patient"):
        explain_patients(model, [stack_patients(PATIENTS[:2])], CPU)


def test_concurrent_jobs_share_passes_and_get_their_own_results(model: TMDL) -> None:
    batcher = MicroBatcher[TMDLBatch, Explanation](
        lambda batches: explain_patients(model, batches, CPU), max_items=8, name="test-llnm"
    )
    results: dict[int, Explanation] = {}

    def job(index: int) -> None:
        (results[index],) = batcher([PATIENTS[index]])

    threads = [threading.Thread(target=job, args=(i,)) for i in range(len(PATIENTS))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert batcher.stats.calls == len(PATIENTS) and batcher.stats.items == len(PATIENTS)
    for index, alone in enumerate(PATIENTS):
        assert_same(results[index], explain(model, alone), exact=False)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda_bf16_results_stay_near_the_cpu_ones(model: TMDL) -> None:
    cuda = torch.device("cuda")
    gpu_model = TMDL(CONFIG).eval()
    gpu_model.load_state_dict(model.state_dict())
    together = explain_patients(gpu_model.to(cuda), PATIENTS, cuda)
    for batched, alone in zip(together, PATIENTS, strict=True):
        cpu = explain(model, alone)
        assert batched.logit.dtype == torch.float32
        torch.testing.assert_close(batched.logit.cpu(), cpu.logit, rtol=0.05, atol=0.05)
        assert batched.heatmaps["combined"].shape == cpu.heatmaps["combined"].shape
