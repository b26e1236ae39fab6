"""TMDL, the multimodal transformer of LLNM-Net (Shen et al., Nat Commun 2025).

Per ultrasound view, the location map (CPDT), texture crop and margin band are
patch-embedded into 3n image tokens; the report's token embeddings plus one
token each for sex, age, echogenicity, shape and the nodule's position in the
gland form the text tokens. Both
streams pass through bidirectional multimodal blocks (each stream attends to
itself and to the other), are concatenated and run through ordinary
self-attention blocks, then mean-pooled into an LLNM logit and risk-stage
logits. Beside the transformer, :class:`RiskTerms` adds the inputs' own
additive terms to the LLNM logit (``config.risk_terms``; not in the paper: on
phantoms the transformer alone used the scalar inputs and the report's
descriptors no better than a logistic regression on the scalars, see
``models/demo_bundle/README.md``). A patient's views are scored independently
and their logits averaged.

Shapes in comments: B patients, V views, M = B*V, S image side, n patches per
image, T report tokens, N = 3n + T + 5 tokens, W width, H heads, D = W / H.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch
import torch.nn.functional as F
from torch import nn

from models.llnm.config import WITHHOLDABLE, TMDLConfig

TOKEN_GROUPS: tuple[str, ...] = (
    "location",
    "texture",
    "margin",
    "report",
    "sex",
    "age",
    "echogenicity",
    "shape",
    "position",
)
SCALAR_TOKENS = 5  # sex, age, echogenicity, shape, position
# Batch fields of an input group whose name is not its one field (WITHHOLDABLE).
_FIELDS: dict[str, tuple[str, ...]] = {"location": ("location", "position")}
LAYER_NORM_EPS = 1e-6


def token_groups(config: TMDLConfig) -> dict[str, slice]:
    """Which positions of the concatenated token sequence belong to each input group."""
    n, t = config.patches, config.text_tokens
    lengths = (n, n, n, t, 1, 1, 1, 1, 1)
    groups: dict[str, slice] = {}
    start = 0
    for name, length in zip(TOKEN_GROUPS, lengths, strict=True):
        groups[name] = slice(start, start + length)
        start += length
    return groups


@dataclass
class TMDLBatch:
    """One batch of patients, each with up to V views.

    Absent views are flagged in ``view_mask``; their inputs are ignored but must be
    finite (zeros, say), since NaNs would still reach the gradients.
    """

    location: torch.Tensor  # (B, V, 1, S, S) CPDT map x_l
    texture: torch.Tensor  # (B, V, 1, S, S) x_t
    margin: torch.Tensor  # (B, V, 1, S, S) x_m
    echogenicity: torch.Tensor  # (B, V) x_e, scaled to about [-1, 1]
    shape: torch.Tensor  # (B, V, shape_features) x_s
    position: torch.Tensor  # (B, V, >= position_features) the nodule's place; the first count
    view_mask: torch.Tensor  # (B, V) bool, True where the view exists
    text: torch.Tensor  # (B, T, text_width) report token embeddings
    text_present: torch.Tensor  # (B,) bool
    sex: torch.Tensor  # (B,) float: 1 female, -1 male, 0 unknown
    age: torch.Tensor  # (B,) float: years / 100, 0 unknown

    def to(self, device: torch.device | str) -> TMDLBatch:
        """The same batch with every tensor on ``device``."""
        return TMDLBatch(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})


@dataclass
class TMDLOutput:
    """Patient-level and per-view predictions."""

    logit: torch.Tensor  # (B,) patient LLNM logit = mean of the present views' logits
    stage_logits: torch.Tensor  # (B, stages) mean over present views
    view_logits: torch.Tensor  # (B, V), 0 where the view is absent (or dropped in training)
    view_embeddings: torch.Tensor  # (B, V, W): the pooled tokens the heads read, per view


def attend(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: torch.Tensor, dropout: float
) -> torch.Tensor:
    """Masked scaled dot-product attention over heads.

    ``q`` (M, H, Nq, D), ``k`` and ``v`` (M, H, Nk, D), ``key_mask`` (M, Nk) bool, True
    where a key may be attended to (every row needs at least one) -> (M, H, Nq, D).
    """
    mask = key_mask[:, None, None, :]  # (M, 1, 1, Nk)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(M, N, W) -> (M, H, N, W / H)."""
    m, n, w = x.shape
    return x.view(m, n, heads, w // heads).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(M, H, N, D) -> (M, N, H * D)."""
    m, h, n, d = x.shape
    return x.transpose(1, 2).reshape(m, n, h * d)


class PatchEmbedding(nn.Module):
    """One grey image -> n patch tokens with a strided convolution."""

    def __init__(self, width: int, patch_size: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, width, kernel_size=patch_size, stride=patch_size)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """(M, 1, S, S) -> (M, n, W)."""
        patches: torch.Tensor = self.conv(image)  # (M, W, S/p, S/p)
        return patches.flatten(2).transpose(1, 2)


class ScalarTokens(nn.Module):
    """Sex, age, echogenicity, shape and position -> five tokens with learned type embeddings."""

    def __init__(self, width: int, shape_features: int, position_features: int) -> None:
        super().__init__()
        self.sex = nn.Linear(1, width)
        self.age = nn.Linear(1, width)
        self.echogenicity = nn.Linear(1, width)
        self.shape = nn.Linear(shape_features, width)
        self.position = nn.Linear(position_features, width)
        self.types = nn.Parameter(torch.zeros(1, SCALAR_TOKENS, width))

    def forward(
        self,
        sex: torch.Tensor,
        age: torch.Tensor,
        echogenicity: torch.Tensor,
        shape: torch.Tensor,
        position: torch.Tensor,
    ) -> torch.Tensor:
        """(M,), (M,), (M,), (M, shape_features), (M, position_features) -> (M, 5, W)."""
        tokens = [
            self.sex(sex[:, None]),
            self.age(age[:, None]),
            self.echogenicity(echogenicity[:, None]),
            self.shape(shape),
            self.position(position),
        ]  # 5 x (M, W)
        return torch.stack(tokens, dim=1) + self.types


class RiskTerms(nn.Module):
    """Additive LLNM logit terms straight from the inputs, beside the transformer.

    A small MLP plus a linear term over the view's scalar inputs (sex, age,
    echogenicity, shape, position), and a bag of report tokens: every present
    report token gets a score from a small MLP, and the scores are summed, so
    each descriptor the report states ("microcalcifications", "ill-defined",
    "upper pole") adds its own share whatever the report's length. Withheld
    inputs are zeros, so they add what "unknown" adds.
    """

    def __init__(self, config: TMDLConfig) -> None:
        super().__init__()
        scalars = 3 + config.shape_features + config.position_features
        self.linear = nn.Linear(scalars, 1)
        self.scalars = nn.Sequential(nn.Linear(scalars, 32), nn.GELU(), nn.Linear(32, 1))
        self.report = nn.Sequential(nn.Linear(config.text_width, 64), nn.GELU(), nn.Linear(64, 1))

    def forward(
        self, scalars: torch.Tensor, report: torch.Tensor, report_mask: torch.Tensor
    ) -> torch.Tensor:
        """(B, V, F) scalar inputs, (B, T, text_width) report tokens, (B, T) bool -> (B, V).

        The report term is the patient's, the same for each of its views.
        """
        scalar_terms = self.linear(scalars) + self.scalars(scalars)  # (B, V, 1)
        token_scores = self.report(report).squeeze(-1)  # (B, T)
        report_term = torch.where(report_mask, token_scores, 0.0).sum(dim=1)  # (B,)
        logit: torch.Tensor = scalar_terms.squeeze(-1) + report_term[:, None]
        return logit


class MLP(nn.Sequential):
    """Linear - GELU - Dropout - Linear - Dropout."""

    def __init__(self, width: int, hidden: int, dropout: float) -> None:
        super().__init__(
            nn.Linear(width, hidden),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, width),
            nn.Dropout(dropout),
        )


class Attention(nn.Module):
    """Multi-head self-attention with key padding."""

    def __init__(self, width: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.proj_drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        """(M, N, W), (M, N) bool -> (M, N, W)."""
        q, k, v = (split_heads(t, self.heads) for t in self.qkv(x).chunk(3, dim=-1))
        dropout = self.dropout if self.training else 0.0
        out = attend(q, k, v, key_mask, dropout)
        projected: torch.Tensor = self.proj_drop(self.proj(merge_heads(out)))
        return projected


class Block(nn.Module):
    """Pre-LayerNorm transformer block: x + Attn(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, config: TMDLConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(config.width, eps=LAYER_NORM_EPS)
        self.attention = Attention(config.width, config.heads, config.attention_dropout)
        self.norm2 = nn.LayerNorm(config.width, eps=LAYER_NORM_EPS)
        self.mlp = MLP(config.width, config.mlp_hidden, config.mlp_dropout)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        """(M, N, W), (M, N) bool -> (M, N, W)."""
        x = x + self.attention(self.norm1(x), key_mask)
        x = x + self.mlp(self.norm2(x))
        return x


class BidirectionalBlock(nn.Module):
    """Bidirectional multimodal attention: each stream attends to itself and to the other.

    Image tokens become the mean of (image queries over image keys/values) and (image
    queries over text keys/values), text tokens likewise; each stream has its own
    LayerNorms, Q/K/V projections and MLP, the output projection is shared (IRENE).
    """

    def __init__(self, config: TMDLConfig) -> None:
        super().__init__()
        width, hidden = config.width, config.mlp_hidden
        self.heads = config.heads
        self.dropout = config.attention_dropout
        self.norm_image = nn.LayerNorm(width, eps=LAYER_NORM_EPS)
        self.norm_text = nn.LayerNorm(width, eps=LAYER_NORM_EPS)
        self.qkv_image = nn.Linear(width, 3 * width)
        self.qkv_text = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.proj_drop = nn.Dropout(config.attention_dropout)
        self.mlp_norm_image = nn.LayerNorm(width, eps=LAYER_NORM_EPS)
        self.mlp_norm_text = nn.LayerNorm(width, eps=LAYER_NORM_EPS)
        self.mlp_image = MLP(width, hidden, config.mlp_dropout)
        self.mlp_text = MLP(width, hidden, config.mlp_dropout)

    def forward(
        self,
        image: torch.Tensor,
        text: torch.Tensor,
        image_mask: torch.Tensor,
        text_mask: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(M, 3n, W), (M, T+5, W) and their (M, .) bool key masks -> updated streams."""
        qi, ki, vi = (
            split_heads(t, self.heads)
            for t in self.qkv_image(self.norm_image(image)).chunk(3, dim=-1)
        )  # (M, H, 3n, D)
        qt, kt, vt = (
            split_heads(t, self.heads) for t in self.qkv_text(self.norm_text(text)).chunk(3, dim=-1)
        )  # (M, H, T+5, D)
        p = self.dropout if self.training else 0.0
        image_out = (attend(qi, ki, vi, image_mask, p) + attend(qi, kt, vt, text_mask, p)) / 2
        text_out = (attend(qt, kt, vt, text_mask, p) + attend(qt, ki, vi, image_mask, p)) / 2
        image = image + self.proj_drop(self.proj(merge_heads(image_out)))
        text = text + self.proj_drop(self.proj(merge_heads(text_out)))
        image = image + self.mlp_image(self.mlp_norm_image(image))
        text = text + self.mlp_text(self.mlp_norm_text(text))
        return image, text


class TMDL(nn.Module):
    """The LLNM-Net transformer: per-view multimodal tokens -> patient LLNM and stage logits.

    In training mode it applies modality dropout: each sample's report is dropped
    with probability ``text_dropout``, each of its other inputs (the groups of
    ``WITHHOLDABLE``) is withheld with probability ``input_dropout`` — so "input
    unavailable", the baseline of the Shapley contributions, is a state the model
    knows — and where at least two views are present one of them is dropped with
    probability ``view_dropout``. A patient without any view gets logit 0.
    """

    def __init__(self, config: TMDLConfig) -> None:
        super().__init__()
        self.config = config
        width, n = config.width, config.patches
        self.location = PatchEmbedding(width, config.patch_size)
        self.texture = PatchEmbedding(width, config.patch_size)
        self.margin = PatchEmbedding(width, config.patch_size)
        self.image_positions = nn.Parameter(torch.zeros(1, 3 * n, width))
        self.report = nn.Linear(config.text_width, width)
        self.report_positions = nn.Parameter(torch.zeros(1, config.text_tokens, width))
        self.scalars = ScalarTokens(width, config.shape_features, config.position_features)
        self.embed_drop = nn.Dropout(config.embed_dropout)
        self.bidirectional = nn.ModuleList(
            BidirectionalBlock(config) for _ in range(config.bidirectional_blocks)
        )
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.self_attention_blocks))
        self.norm = nn.LayerNorm(width, eps=LAYER_NORM_EPS)
        self.head = nn.Sequential(
            nn.Linear(width, width),
            nn.GELU(),
            nn.Dropout(config.mlp_dropout),
            nn.Linear(width, 1),
        )
        self.stage_head = nn.Linear(width, config.stages)
        self.risk_terms = RiskTerms(config) if config.risk_terms else None
        self.apply(_init_weights)
        for positions in (self.image_positions, self.report_positions, self.scalars.types):
            nn.init.trunc_normal_(positions, std=0.02)

    def forward(self, batch: TMDLBatch) -> TMDLOutput:
        """Score every view, then average the present views' logits per patient.

        The position vector only grows at its end (``view_inputs``), so a model built
        for fewer position features reads the first ``config.position_features``.
        """
        features = self.config.position_features
        if batch.position.shape[-1] > features:
            batch = replace(batch, position=batch.position[..., :features])
        self._check(batch)
        batch = withhold(batch, self.config.withheld)
        b, v = batch.view_mask.shape
        view_mask, text_present = batch.view_mask, batch.text_present
        if self.training:
            batch = self._input_dropout(batch)
            view_mask, text_present = self._modality_dropout(view_mask, text_present)

        # Image stream: (M, 3n, W), every token valid.
        image = torch.cat(
            [
                self.location(batch.location.flatten(0, 1)),
                self.texture(batch.texture.flatten(0, 1)),
                self.margin(batch.margin.flatten(0, 1)),
            ],
            dim=1,
        )
        image = self.embed_drop(image + self.image_positions)
        image_mask = torch.ones(image.shape[:2], dtype=torch.bool, device=image.device)

        # Text stream: report (T), then the five scalar tokens -> (M, T+5, W).
        patient_report_mask = text_present[:, None] & batch.text.ne(0).any(dim=-1)  # (B, T)
        report = self.report(batch.text) + self.report_positions  # (B, T, W)
        report, report_mask = _per_view(report, v), _per_view(patient_report_mask, v)  # (M, T, .)
        sex, age = _per_view(batch.sex, v), _per_view(batch.age, v)  # (M,)
        echogenicity, shape, position = (
            x.flatten(0, 1) for x in (batch.echogenicity, batch.shape, batch.position)
        )  # (M,), (M, shape_features), (M, position_features)
        scalars = self.scalars(sex, age, echogenicity, shape, position)  # (M, 5, W)
        text = self.embed_drop(torch.cat([report, scalars], dim=1))  # (M, T+5, W)
        text_mask = torch.cat([report_mask, report_mask.new_ones(b * v, SCALAR_TOKENS)], dim=1)

        for bidirectional in self.bidirectional:
            image, text = bidirectional(image, text, image_mask, text_mask)

        tokens = torch.cat([image, text], dim=1)  # (M, N, W)
        key_mask = torch.cat([image_mask, text_mask], dim=1)  # (M, N)
        for block in self.blocks:
            tokens = block(tokens, key_mask)

        # Masked mean over valid tokens -> (M, W), then per-view logits.
        weights = key_mask.unsqueeze(-1).to(tokens.dtype)  # (M, N, 1)
        tokens = self.norm(tokens)
        pooled = (tokens * weights).sum(dim=1) / weights.sum(dim=1)
        view_logits = self.head(pooled).view(b, v)  # (B, V)
        if self.risk_terms is not None:
            view_scalars = torch.cat(
                [sex[:, None], age[:, None], echogenicity[:, None], shape, position], dim=1
            ).view(b, v, -1)  # (B, V, 3 + shape_features + position_features)
            view_logits = view_logits + self.risk_terms(
                view_scalars, batch.text, patient_report_mask
            )
        view_stages = self.stage_head(pooled).view(b, v, -1)  # (B, V, stages)

        # Mean over present views; absent views contribute nothing (not even NaNs).
        count = view_mask.sum(dim=1).clamp(min=1).to(view_logits.dtype)  # (B,)
        view_logits = torch.where(view_mask, view_logits, 0.0)
        view_stages = torch.where(view_mask.unsqueeze(-1), view_stages, 0.0)
        return TMDLOutput(
            logit=view_logits.sum(dim=1) / count,
            stage_logits=view_stages.sum(dim=1) / count[:, None],
            view_logits=view_logits,
            view_embeddings=pooled.view(b, v, -1),
        )

    def _input_dropout(self, batch: TMDLBatch) -> TMDLBatch:
        """Per patient, withhold each input but the report with probability ``input_dropout``."""
        if self.config.input_dropout == 0.0:
            return batch
        values = {f.name: getattr(batch, f.name) for f in fields(batch)}
        b = batch.view_mask.shape[0]
        for name in WITHHOLDABLE:
            if name == "report":
                continue
            keep = torch.rand(b, device=batch.view_mask.device) >= self.config.input_dropout
            for field in _FIELDS.get(name, (name,)):
                value = values[field]
                values[field] = value * keep.view(b, *[1] * (value.dim() - 1)).to(value.dtype)
        return TMDLBatch(**values)

    def _modality_dropout(
        self, view_mask: torch.Tensor, text_present: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Randomly drop reports and, of patients with two or more views, one present view."""
        device = view_mask.device
        b, v = view_mask.shape
        text_present = text_present & (torch.rand(b, device=device) >= self.config.text_dropout)
        # A uniformly random present view per patient: argmax of noise over present views.
        noise = torch.rand(b, v, device=device).masked_fill(~view_mask, -1.0)
        chosen = F.one_hot(noise.argmax(dim=1), v).bool()  # (B, V)
        drop = (view_mask.sum(dim=1) >= 2) & (
            torch.rand(b, device=device) < self.config.view_dropout
        )
        return view_mask & ~(chosen & drop[:, None]), text_present

    def _check(self, batch: TMDLBatch) -> None:
        """Raise ValueError if the batch does not fit this configuration."""
        c = self.config
        b, v = batch.view_mask.shape
        expected = {
            "location": (b, v, 1, c.image_size, c.image_size),
            "texture": (b, v, 1, c.image_size, c.image_size),
            "margin": (b, v, 1, c.image_size, c.image_size),
            "echogenicity": (b, v),
            "shape": (b, v, c.shape_features),
            "position": (b, v, c.position_features),
            "text": (b, c.text_tokens, c.text_width),
            "text_present": (b,),
            "sex": (b,),
            "age": (b,),
        }
        for name, shape in expected.items():
            actual = tuple(getattr(batch, name).shape)
            if actual != shape:
                raise ValueError(f"batch.{name} has shape {actual}, expected {shape}")


def withhold(batch: TMDLBatch, names: tuple[str, ...]) -> TMDLBatch:
    """``batch`` with the named inputs carrying no information (ablations).

    Maps and scalars become zeros (a withheld location takes the position in the
    gland with it); a withheld report is absent for every patient.
    """
    if not names:
        return batch
    values = {f.name: getattr(batch, f.name) for f in fields(batch)}
    for name in names:
        if name == "report":
            values["text_present"] = torch.zeros_like(batch.text_present)
            continue
        for field in _FIELDS.get(name, (name,)):
            values[field] = torch.zeros_like(values[field])
    return TMDLBatch(**values)


def _per_view(x: torch.Tensor, views: int) -> torch.Tensor:
    """Repeat per-patient values for each view: (B, ...) -> (B * V, ...)."""
    return x.repeat_interleave(views, dim=0)


def _init_weights(module: nn.Module) -> None:
    """ViT-style initialisation of linear layers (LayerNorm and conv keep torch defaults)."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
