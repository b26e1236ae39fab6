"""TMDL configuration, the local report text encoder and the TMDL transformer (CPU, small)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from models.llnm.config import TMDLConfig
from models.llnm.text import DEFAULT_TEXT_ENCODER, TextEncoder
from models.llnm.tmdl import TMDL, TOKEN_GROUPS, TMDLBatch, token_groups

ROOT = Path(__file__).resolve().parents[1]
TINY = TMDLConfig.preset("tiny")
# A smaller-than-tiny model for the tests that run many forward passes.
MINI = replace(
    TINY,
    size="custom",
    width=32,
    heads=2,
    bidirectional_blocks=1,
    self_attention_blocks=1,
    text_tokens=8,
    text_width=16,
    embed_dropout=0.0,
    mlp_dropout=0.0,
)
REPORT = (
    "Hypoechoic solid nodule in the upper pole of the right lobe, taller than wide, "
    "0.2 cm from the capsule."
)


def make_batch(config: TMDLConfig, patients: int = 2, views: int = 2, seed: int = 0) -> TMDLBatch:
    """Random inputs of the right shapes, every view and report present."""
    generator = torch.Generator().manual_seed(seed)
    s, t = config.image_size, config.text_tokens

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator)

    return TMDLBatch(
        location=torch.rand(patients, views, 1, s, s, generator=generator),
        texture=randn(patients, views, 1, s, s),
        margin=randn(patients, views, 1, s, s),
        echogenicity=randn(patients, views).clamp(-1, 1),
        shape=randn(patients, views, config.shape_features),
        position=torch.rand(patients, views, config.position_features, generator=generator),
        view_mask=torch.ones(patients, views, dtype=torch.bool),
        text=randn(patients, t, config.text_width),
        text_present=torch.ones(patients, dtype=torch.bool),
        sex=torch.ones(patients),
        age=torch.full((patients,), 0.45),
    )


@pytest.fixture(scope="module")
def tiny() -> TMDL:
    torch.manual_seed(0)
    return TMDL(TINY).eval()


@pytest.fixture(scope="module")
def mini() -> TMDL:
    torch.manual_seed(0)
    return TMDL(MINI).eval()


@pytest.fixture(scope="module")
def encoder() -> TextEncoder:
    return TextEncoder()


# --- configuration -----------------------------------------------------------------------------


def test_presets_and_round_trip() -> None:
    assert TMDLConfig.preset("tiny") == TMDLConfig()
    base = TMDLConfig.preset("base")
    assert (base.width, base.heads, base.mlp_hidden, base.patches) == (768, 12, 3072, 196)
    assert (base.embed_dropout, base.attention_dropout, base.mlp_dropout) == (0.3, 0.2, 0.3)
    assert base.text_width == 768 and base.size == "base"
    for config in (TINY, base, MINI):
        assert TMDLConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert TMDLConfig.preset("base", input_dropout=0.3).input_dropout == 0.3
    assert TMDLConfig.preset("tiny", input_dropout=None).input_dropout == TINY.input_dropout
    with pytest.raises(ValueError, match="input_dropout"):
        TMDLConfig.preset("tiny", input_dropout=1.0)


@pytest.mark.parametrize(
    "bad",
    [
        {"width": 65},  # not divisible by 4 heads
        {"image_size": 30},  # not a multiple of the 8 px patches
        {"width": 0},
        {"text_tokens": -1},
        {"self_attention_blocks": -1},
        {"mlp_dropout": 1.0},
        {"view_dropout": -0.1},
    ],
)
def test_invalid_config_raises(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        TMDLConfig.from_dict({**TINY.to_dict(), **bad})


def test_unknown_field_and_preset_raise() -> None:
    with pytest.raises(ValueError, match="unknown"):
        TMDLConfig.from_dict({"width": 64, "depth": 3})
    with pytest.raises(ValueError, match="preset"):
        TMDLConfig.preset("huge")


# --- text encoder ------------------------------------------------------------------------------


def test_text_encoder_tokens_and_presence(encoder: TextEncoder) -> None:
    assert encoder.width == 384 and encoder.folder == DEFAULT_TEXT_ENCODER
    long_report = " ".join([REPORT] * 5)
    tokens, present = encoder.encode([REPORT, None, "", "   ", long_report])
    assert tokens.shape == (5, 50, 384) and tokens.dtype == torch.float32
    assert present.tolist() == [True, False, False, False, True]
    assert not tokens[1:4].any()
    used = len(encoder.tokenizer(REPORT)["input_ids"])  # with [CLS] and [SEP]
    assert 10 < used < 50
    rows_used = tokens[0].ne(0).any(dim=-1)
    assert rows_used[:used].all() and not rows_used[used:].any()
    assert tokens[4].ne(0).any(dim=-1).all()  # truncated to the first 50 tokens
    # An ordinary tensor: usable as the input of a model being trained.
    torch.nn.Linear(384, 1)(tokens).sum().backward()


def test_text_encoder_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"config\.json"):
        TextEncoder(tmp_path)


def test_text_encoder_without_network(tmp_path: Path) -> None:
    unshare = ["unshare", "--net", "--map-root-user"]
    try:
        probe = subprocess.run([*unshare, "true"], capture_output=True, timeout=10)
    except (FileNotFoundError, subprocess.TimeoutExpired):
        pytest.skip("unshare is not available")
    if probe.returncode:
        pytest.skip("cannot create a network namespace here")
    # No offline switches from outside and an empty cache: the module must manage alone.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_"))}
    env["HF_HOME"] = str(tmp_path / "hf")
    code = (
        "from models.llnm.text import TextEncoder\n"
        "tokens, present = TextEncoder().encode(['Nodule near the capsule.', None])\n"
        "print(tuple(tokens.shape), present.tolist())\n"
    )
    result = subprocess.run(
        [*unshare, sys.executable, "-c", code],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "(2, 50, 384) [True, False]"


# --- TMDL --------------------------------------------------------------------------------------


def test_token_groups_cover_sequence_once() -> None:
    groups = token_groups(TINY)
    assert tuple(groups) == TOKEN_GROUPS
    n = 3 * TINY.patches + TINY.text_tokens + 5
    positions = [i for group in groups.values() for i in range(n)[group]]
    assert sorted(positions) == list(range(n)) and len(positions) == n
    assert groups["report"] == slice(3 * TINY.patches, 3 * TINY.patches + TINY.text_tokens)
    assert groups["shape"] == slice(n - 2, n - 1)
    assert groups["position"] == slice(n - 1, n)


@pytest.mark.parametrize("views", [1, 2])
def test_forward_shapes(tiny: TMDL, views: int) -> None:
    with torch.no_grad():
        out = tiny(make_batch(TINY, patients=3, views=views))
    assert out.logit.shape == (3,) and out.view_logits.shape == (3, views)
    assert out.stage_logits.shape == (3, TINY.stages)
    torch.testing.assert_close(out.logit, out.view_logits.mean(dim=1))


def test_masked_view_is_ignored(mini: TMDL) -> None:
    batch = make_batch(MINI)
    batch.view_mask[0, 1] = False
    with torch.no_grad():
        before = mini(batch)
        for image in (batch.location, batch.texture, batch.margin):
            image[0, 1] = torch.rand_like(image[0, 1]) * 5
        batch.echogenicity[0, 1] = -1.0
        after = mini(batch)
        single = mini(
            TMDLBatch(
                location=batch.location[:1, :1],
                texture=batch.texture[:1, :1],
                margin=batch.margin[:1, :1],
                echogenicity=batch.echogenicity[:1, :1],
                shape=batch.shape[:1, :1],
                position=batch.position[:1, :1],
                view_mask=batch.view_mask[:1, :1],
                text=batch.text[:1],
                text_present=batch.text_present[:1],
                sex=batch.sex[:1],
                age=batch.age[:1],
            )
        )
    torch.testing.assert_close(after.logit, before.logit)
    torch.testing.assert_close(after.stage_logits, before.stage_logits)
    assert after.view_logits[0, 1] == 0
    torch.testing.assert_close(after.logit[0], after.view_logits[0, 0])
    torch.testing.assert_close(single.logit, before.logit[:1])


def test_missing_text_is_masked(mini: TMDL) -> None:
    batch = make_batch(MINI)
    batch.text_present[0] = False
    with torch.no_grad():
        before = mini(batch)
        batch.text[0] = torch.randn_like(batch.text[0]) * 3
        after = mini(batch)
        batch.text[1, :5] += 1.0  # the report of a sample with text does matter
        changed = mini(batch)
    torch.testing.assert_close(after.logit, before.logit)
    torch.testing.assert_close(after.stage_logits, before.stage_logits)
    assert not torch.allclose(changed.logit[1], before.logit[1])


def test_modality_dropout_is_seeded() -> None:
    config = replace(MINI, view_dropout=0.99, text_dropout=0.5)
    torch.manual_seed(0)
    model = TMDL(config).train()
    batch = make_batch(config, patients=6)
    torch.manual_seed(1)
    first = model(batch)
    torch.manual_seed(1)
    second = model(batch)
    torch.testing.assert_close(first.logit, second.logit)
    assert first.view_logits.ne(0).sum(dim=1).tolist() == [1] * 6  # one view dropped each
    single = make_batch(config, patients=6, views=1)
    assert model(single).view_logits.ne(0).all()  # a lone view is never dropped


def test_training_lowers_loss() -> None:
    torch.manual_seed(0)
    model = TMDL(replace(MINI, text_dropout=0.0, view_dropout=0.0))
    batch = make_batch(MINI, patients=16)
    level = torch.rand(16)
    batch.location = (level[:, None, None, None, None] + 0.1 * batch.location).expand_as(
        batch.location
    )
    labels = (level > 0.5).float()
    optimiser = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    losses = []
    for _ in range(25):
        loss = loss_fn(model(batch).logit, labels)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert losses[-1] < 0.6 * losses[0], losses


def test_bf16_autocast(tiny: TMDL) -> None:
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = tiny(make_batch(TINY))
    assert out.logit.dtype == torch.bfloat16
    assert out.logit.isfinite().all() and out.stage_logits.isfinite().all()


def test_bad_batch_shape_raises(tiny: TMDL) -> None:
    batch = make_batch(TINY)
    batch.text = batch.text[:, :10]
    with pytest.raises(ValueError, match=r"batch\.text "):
        tiny(batch)


def test_base_preset_size() -> None:
    model = TMDL(TMDLConfig.preset("base"))
    parameters = sum(p.numel() for p in model.parameters())
    print(f"TMDL base: {parameters / 1e6:.1f} M parameters")
    # 12 self-attention blocks of 7.1 M, 4 bidirectional blocks of 13.6 M, embeddings and heads.
    assert 138e6 < parameters < 144e6


# --- ablations: withheld inputs ----------------------------------------------------------------


def test_withheld_inputs_round_trip_and_are_checked() -> None:
    config = replace(MINI, withheld=("location", "report"))
    data = json.loads(json.dumps(config.to_dict()))
    assert data["withheld"] == ["location", "report"]
    assert TMDLConfig.from_dict(data) == config
    with pytest.raises(ValueError, match="cannot withhold"):
        replace(MINI, withheld=("pixels",))


def test_withheld_inputs_do_not_reach_the_model() -> None:
    torch.manual_seed(0)
    model = TMDL(replace(MINI, withheld=("location", "report", "age"))).eval()
    batch = make_batch(MINI)
    other = make_batch(MINI, seed=5)
    changed = replace(batch, location=other.location, text=other.text, age=other.age + 0.3)
    with torch.inference_mode():
        torch.testing.assert_close(model(batch).logit, model(changed).logit)
        moved = replace(batch, texture=other.texture)
        assert not torch.allclose(model(batch).logit, model(moved).logit)


def test_input_dropout_withholds_each_input_per_patient_at_its_rate() -> None:
    model = TMDL(replace(MINI, input_dropout=0.5)).train()
    batch = make_batch(MINI, patients=400)
    torch.manual_seed(0)
    dropped = model._input_dropout(batch)
    for name in ("sex", "age", "echogenicity", "texture", "location", "position"):
        gone = (getattr(dropped, name).reshape(400, -1) == 0).all(dim=1).float().mean()
        assert 0.4 < float(gone) < 0.6, name
    located = dropped.location.flatten(1).any(dim=1)
    assert torch.equal(located, dropped.position.flatten(1).any(dim=1))  # withheld together
    assert torch.equal(dropped.text, batch.text)  # the report has its own text_dropout
    with torch.no_grad():
        model.eval()
        torch.testing.assert_close(model(batch).logit, model(batch).logit)


# --- risk terms beside the transformer ---------------------------------------------------------


def _silenced(config: TMDLConfig) -> TMDL:
    """A model whose transformer head outputs 0: only the risk terms (if any) remain."""
    torch.manual_seed(0)
    model = TMDL(config).eval()
    last = model.head[-1]
    assert isinstance(last, torch.nn.Linear)
    torch.nn.init.zeros_(last.weight)
    torch.nn.init.zeros_(last.bias)
    return model


def test_risk_terms_add_one_score_per_report_token() -> None:
    model = _silenced(MINI)
    assert model.risk_terms is not None
    batch = make_batch(MINI, patients=1, views=1)
    batch.text[0, 3:] = 0.0  # a report of three tokens
    with torch.inference_mode():
        full = model(batch).logit
        scores = model.risk_terms.report(batch.text[0, :3]).squeeze(-1)
        shorter = replace(batch, text=batch.text.clone())
        shorter.text[0, 2] = 0.0
        dropped = model(shorter).logit
        silent = model(replace(batch, text_present=torch.zeros(1, dtype=torch.bool))).logit
    torch.testing.assert_close(full - dropped, scores[2:3])
    torch.testing.assert_close(full - silent, scores.sum().view(1))


@pytest.mark.parametrize("name", ["age", "sex", "echogenicity", "shape", "position"])
def test_the_risk_terms_read_every_scalar_input(name: str) -> None:
    batch = make_batch(MINI, patients=1, views=1)
    changed = replace(batch, **{name: getattr(batch, name) + 0.5})
    with torch.inference_mode():
        terms, transformer_only = _silenced(MINI), _silenced(replace(MINI, risk_terms=False))
        assert float(transformer_only(changed).logit) == float(transformer_only(batch).logit) == 0
        assert not torch.allclose(terms(changed).logit, terms(batch).logit)


def test_a_config_from_before_the_risk_terms_rebuilds_without_them() -> None:
    old = {k: v for k, v in MINI.to_dict().items() if k != "risk_terms"}
    config = TMDLConfig.from_dict(old)
    assert config.risk_terms is False and MINI.risk_terms is True
    model = TMDL(config)
    assert model.risk_terms is None
    assert not any(name.startswith("risk_terms.") for name in model.state_dict())
    model.load_state_dict(TMDL(replace(MINI, risk_terms=False)).state_dict())


def test_a_model_built_for_fewer_position_features_reads_the_first_ones() -> None:
    """Bundles before the study's capsule distance have 10; the vector grew at its end."""
    old = replace(MINI, position_features=10)
    torch.manual_seed(0)
    model = TMDL(old).eval()
    batch = make_batch(MINI)  # 11 position features, as view_inputs writes them now
    assert batch.position.shape[-1] == 11
    first = replace(batch, position=batch.position[..., :10])
    later = replace(batch, position=torch.cat([first.position, -batch.position[..., 10:]], -1))
    with torch.no_grad():
        expected = model(first).logit
        torch.testing.assert_close(model(batch).logit, expected, rtol=0, atol=0)
        torch.testing.assert_close(model(later).logit, expected, rtol=0, atol=0)
