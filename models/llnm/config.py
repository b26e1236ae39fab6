"""Size and regularisation of the TMDL transformer (:class:`TMDLConfig`), stored as JSON."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

PRESETS: tuple[str, ...] = ("tiny", "base")
# Inputs an ablation may withhold: maps become zeros, the report absent, scalars zero.
# "location" is the CPDT map x_l together with the nodule's position in the gland.
WITHHOLDABLE: tuple[str, ...] = (
    "location", "texture", "margin", "report", "sex", "age", "echogenicity", "shape",
)  # fmt: skip


@dataclass(frozen=True)
class TMDLConfig:
    """Everything needed to rebuild a :class:`~models.llnm.tmdl.TMDL`.

    The defaults are the ``tiny`` preset (CPU tests, synthetic demos). ``base``
    is the paper's ViT-B/16-sized model: 4 bidirectional and 12 self-attention blocks,
    width 768, 12 heads, MLP 3072, 224 px inputs in 16 px patches, 768-wide report
    embeddings and IRENE's dropouts. ``tiny`` has one block of each kind: on phantoms
    of 2,000 patients its 4 + 12 blocks scored held-out patients worse.
    """

    size: str = "tiny"  # "tiny" | "base" | "custom" (informational)
    width: int = 64  # token width
    heads: int = 4
    bidirectional_blocks: int = 1  # tiny: 1 + 1 blocks (deeper stacks generalised worse)
    self_attention_blocks: int = 1
    mlp_ratio: float = 2.0  # MLP hidden = width * mlp_ratio
    image_size: int = 32  # x_l, x_t, x_m are each (1, image_size, image_size)
    patch_size: int = 8  # conv patch embedding kernel = stride
    text_tokens: int = 50
    text_width: int = 384  # hidden size of the text encoder (MiniLM: 384, BERT-base: 768)
    shape_features: int = 4  # x_s scalars
    position_features: int = 11  # the nodule's place in the gland (view_inputs.position_vector)
    embed_dropout: float = 0.1
    attention_dropout: float = 0.0
    mlp_dropout: float = 0.1
    text_dropout: float = 0.3  # training only: probability a sample's report is dropped
    view_dropout: float = 0.2  # training only: probability one of two present views is dropped
    input_dropout: float = 0.1  # training only: probability each other input is withheld
    stages: int = 3
    risk_terms: bool = True  # additive per-input terms beside the transformer (tmdl.RiskTerms)
    withheld: tuple[str, ...] = ()  # ablations: inputs the model never sees (WITHHOLDABLE)

    def __post_init__(self) -> None:
        positive = {
            "width": self.width,
            "heads": self.heads,
            "mlp_ratio": self.mlp_ratio,
            "image_size": self.image_size,
            "patch_size": self.patch_size,
            "text_tokens": self.text_tokens,
            "text_width": self.text_width,
            "shape_features": self.shape_features,
            "position_features": self.position_features,
            "stages": self.stages,
        }
        for name, value in positive.items():
            if value <= 0:
                raise ValueError(f"{name} must be positive, not {value}")
        for name, count in (
            ("bidirectional_blocks", self.bidirectional_blocks),
            ("self_attention_blocks", self.self_attention_blocks),
        ):
            if count < 0:
                raise ValueError(f"{name} must not be negative, not {count}")
        if self.width % self.heads:
            raise ValueError(f"width {self.width} is not divisible by heads {self.heads}")
        if self.image_size % self.patch_size:
            raise ValueError(
                f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}"
            )
        for name in (
            "embed_dropout",
            "attention_dropout",
            "mlp_dropout",
            "text_dropout",
            "view_dropout",
            "input_dropout",
        ):
            probability = getattr(self, name)
            if not 0.0 <= probability < 1.0:
                raise ValueError(f"{name} must lie in [0, 1), not {probability}")
        unknown = set(self.withheld) - set(WITHHOLDABLE)
        if unknown:
            raise ValueError(f"cannot withhold {sorted(unknown)}; inputs are {WITHHOLDABLE}")

    @property
    def patches(self) -> int:
        """Patch tokens per image input (n); the image stream holds 3n tokens."""
        return (self.image_size // self.patch_size) ** 2

    @property
    def mlp_hidden(self) -> int:
        """Hidden width of every transformer MLP."""
        return int(self.width * self.mlp_ratio)

    @classmethod
    def preset(
        cls,
        name: str,
        *,
        withheld: tuple[str, ...] = (),
        text_tokens: int | None = None,
        input_dropout: float | None = None,
    ) -> TMDLConfig:
        """The ``tiny`` (defaults) or ``base`` (paper-sized) configuration.

        ``withheld`` (ablations), ``text_tokens`` (report length; None keeps
        the paper's 50) and ``input_dropout`` (None keeps the default) apply to
        either preset.

        Raises
        ------
        ValueError
            If ``name`` is not a preset, or ``withheld`` names no input.
        """
        if name not in PRESETS:
            raise ValueError(f"preset must be one of {PRESETS}, not {name!r}")
        config = cls()
        if name == "base":
            config = replace(
                config,
                size="base",
                width=768,
                heads=12,
                bidirectional_blocks=4,
                self_attention_blocks=12,
                mlp_ratio=4.0,
                image_size=224,
                patch_size=16,
                text_width=768,
                embed_dropout=0.3,
                attention_dropout=0.2,
                mlp_dropout=0.3,
            )
        tokens = config.text_tokens if text_tokens is None else text_tokens
        dropout = config.input_dropout if input_dropout is None else input_dropout
        return replace(config, withheld=withheld, text_tokens=tokens, input_dropout=dropout)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        data = asdict(self)
        data["withheld"] = list(self.withheld)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TMDLConfig:
        """Rebuild from :meth:`to_dict` output (missing fields take their defaults).

        A config without ``risk_terms`` predates them and rebuilds without.

        Raises
        ------
        ValueError
            If a field is unknown or has an invalid value.
        """
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown TMDL config fields: {sorted(unknown)}")
        values = dict(data)
        if "withheld" in values:
            values["withheld"] = tuple(values["withheld"])
        values.setdefault("risk_terms", False)  # configs from before the risk terms
        return cls(**values)
