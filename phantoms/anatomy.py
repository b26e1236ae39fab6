"""Neck anatomy of the phantom: a 3-D thyroid lobe, its neighbours, and the two views.

Coordinates are millimetres. The lobe has its own frame: ``u`` lateral
(away from the trachea), ``v`` posterior (deeper), ``z`` caudal, origin at
the lobe's centre. A cross-section is a superellipse with different
semi-axes on each side,

    N(u, v) = (|u / a(u)|^p + |v / b(v)|^p)^(1/p)  <= s(z),

scaled along the lobe by the taper ``s(z) = (1 - |2 z / L|^q)^(1/q)``, so
both views are exact sections of one solid. The transverse view is the
plane ``z = z_nodule`` (patient's right on the image left, as radiologists
view it); the longitudinal view is the plane ``u = u_nodule`` (cranial on
the image left). Image coordinates are ``x`` from the image area's left
edge and ``y`` depth from the skin; pixel ``(i, j)`` has its centre at
``((j + 0.5) * spacing, (i + 0.5) * spacing)``.

The transverse view adds the isthmus (an annular band over the trachea),
the trachea (cartilage, air with reverberation and shadow), the carotid
artery, the jugular vein, the strap muscles, the sternocleidomastoid, the
longus colli and the prevertebral fascia; the longitudinal view the strap
and longus colli muscles and the prevertebral line.

The capsule is the boundary of the thyroid mask (gland, plus the nodule
where it bulges out). :meth:`Scene.capsule_distance_mm` measures the true
minimum nodule-capsule distance from densely sampled outlines, independent
of the pixel grid.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np
from numpy.typing import NDArray
from scipy.spatial import cKDTree

from phantoms.nodule import FloatArray, NoduleSpec, Outline
from phantoms.speckle import FloatImage, TissueMaps, smooth_noise

View = Literal["transverse", "longitudinal"]
BoolArray = NDArray[np.bool_]

# Mean backscatter intensities relative to thyroid parenchyma (1.0).
_FAT, _MUSCLE, _CONNECTIVE, _FLUID = 0.22, 0.045, 0.3, 0.002
_BASE_ATTENUATION = 0.012  # per mm after time-gain compensation
_HALO_RATIO = 0.05  # echo of a nodule's halo relative to normal thyroid tissue

_REGION_BANDS = {"upper": (0.12, 0.31), "middle": (0.37, 0.63), "lower": (0.69, 0.88)}
_SIDE_DIRECTIONS = {"anterior": -np.pi / 2, "posterior": np.pi / 2, "lateral": 0.0, "medial": np.pi}


@dataclass(frozen=True)
class Lobe:
    """One thyroid lobe as a solid (see the module docstring)."""

    a_lateral: float
    a_medial: float
    b_anterior: float
    b_posterior: float
    length: float
    p: float = 2.4
    q: float = 2.2

    def norm(self, u: FloatArray, v: FloatArray) -> FloatArray:
        """The superellipse norm ``N(u, v)``; the widest section is ``N <= 1``."""
        a = np.where(u >= 0, self.a_lateral, self.a_medial)
        b = np.where(v >= 0, self.b_posterior, self.b_anterior)
        return np.asarray((np.abs(u / a) ** self.p + np.abs(v / b) ** self.p) ** (1 / self.p))

    def taper(self, z: FloatArray) -> FloatArray:
        """Section scale ``s(z)``; zero beyond the poles."""
        t = np.minimum(np.abs(2 * z / self.length), 1.0)
        return np.asarray((1 - t**self.q) ** (1 / self.q))

    def section_outline(self, s: float, n: int = 4096) -> FloatArray:
        """Points (u, v) on the transverse section of scale ``s``, shape (n, 2)."""
        t = np.linspace(0, 2 * np.pi, n, endpoint=False)
        c, si = np.cos(t), np.sin(t)
        u = np.sign(c) * np.abs(c) ** (2 / self.p)
        v = np.sign(si) * np.abs(si) ** (2 / self.p)
        u *= np.where(u >= 0, self.a_lateral, self.a_medial) * s
        v *= np.where(v >= 0, self.b_posterior, self.b_anterior) * s
        return np.column_stack((u, v))

    def sagittal_outline(self, u: float) -> FloatArray:
        """Points (z, v) on the section ``u = const``, sampled along both z and v."""
        a = self.a_lateral if u >= 0 else self.a_medial
        z = np.linspace(-self.length / 2, self.length / 2, 4001)
        k = self.taper(z) ** self.p - abs(u / a) ** self.p
        z = z[k > 0]
        root = k[k > 0] ** (1 / self.p)
        along_z = np.concatenate(
            (
                np.column_stack((z, self.b_posterior * root)),
                np.column_stack((z, -self.b_anterior * root)),
            )
        )
        v = np.linspace(-self.b_anterior, self.b_posterior, 2001)
        n = self.norm(np.full_like(v, u), v)
        v = v[n < 1]
        half = self.length / 2 * (1 - n[n < 1] ** self.q) ** (1 / self.q)
        along_v = np.concatenate((np.column_stack((-half, v)), np.column_stack((half, v))))
        return np.concatenate((along_z, along_v))


@dataclass(frozen=True)
class Neck:
    """The sampled anatomy of one patient, in the transverse image's millimetres."""

    lobe: Lobe
    side: Literal["right", "left"]
    lateral_sign: int  # +1 when lateral is towards the image's right
    lobe_x: float  # lobe centre in the transverse image
    lobe_y: float  # lobe centre depth (both views)
    lobe_z_x: float  # lobe centre in the longitudinal image
    nodule_u: float
    nodule_v: float
    nodule_z: float
    trachea_radius: float
    isthmus_thickness: float
    carotid_radius: float
    width_mm: float
    depth_mm: float


def _place_nodule(
    lobe: Lobe, spec: NoduleSpec, rng: np.random.Generator
) -> tuple[float, float, float]:
    low, high = _REGION_BANDS[spec.region]
    z = (rng.uniform(low, high) - 0.5) * lobe.length
    s = float(lobe.taper(np.array(z)))
    angle = _SIDE_DIRECTIONS[spec.capsule_side] + rng.uniform(-0.4, 0.4)
    du, dv = np.cos(angle), np.sin(angle)
    to_capsule = s / float(lobe.norm(np.array(du), np.array(dv)))
    extent = 1.0 / np.hypot(du / (spec.width_mm / 2), dv / (spec.depth_mm / 2))
    t = max(to_capsule - spec.target_capsule_mm - extent, 0.0)
    return float(t * du), float(t * dv), float(z)


def sample_neck(
    rng: np.random.Generator, spec: NoduleSpec, *, width_mm: float, depth_mm: float
) -> Neck:
    """Draw the anatomy around ``spec`` and place both views' fields of view on it."""
    scale = max(1.0, (spec.width_mm + 4) / 16.0, (spec.depth_mm + 4) / 14.0)
    lobe = Lobe(
        a_lateral=rng.uniform(7.5, 9.5) * scale,
        a_medial=rng.uniform(6.0, 8.0) * scale,
        b_anterior=rng.uniform(6.0, 7.5) * scale,
        b_posterior=rng.uniform(6.5, 8.5) * scale,
        length=rng.uniform(40.0, 50.0) * max(1.0, (spec.length_mm + 6) / 22.0),
        p=rng.uniform(2.1, 2.7),
    )
    lateral_sign = -1 if spec.lobe == "right" else 1
    u, v, z = _place_nodule(lobe, spec, rng)
    lobe_y = rng.uniform(7.0, 10.0) + lobe.b_anterior
    # Keep the nodule and the capsule near it inside both fields of view.
    half_w = spec.width_mm * 0.65 + 5.0
    lobe_x = width_mm / 2 + lateral_sign * rng.uniform(0.0, 3.0)
    nodule_x = float(np.clip(lobe_x + lateral_sign * u, half_w, width_mm - half_w))
    half_l = spec.length_mm * 0.65 + 8.0
    lobe_z_x = width_mm / 2 + rng.uniform(-3.0, 3.0)
    nodule_z_x = float(np.clip(lobe_z_x + z, half_l, width_mm - half_l))
    return Neck(
        lobe=lobe,
        side="right" if spec.lobe == "right" else "left",
        lateral_sign=lateral_sign,
        lobe_x=nodule_x - lateral_sign * u,
        lobe_y=lobe_y,
        lobe_z_x=nodule_z_x - z,
        nodule_u=u,
        nodule_v=v,
        nodule_z=z,
        trachea_radius=rng.uniform(8.0, 10.0),
        isthmus_thickness=rng.uniform(2.0, 4.0),
        carotid_radius=rng.uniform(2.8, 3.8),
        width_mm=width_mm,
        depth_mm=depth_mm,
    )


def _ellipse(x: FloatArray, y: FloatArray, cx: float, cy: float, ax: float, ay: float) -> BoolArray:
    return np.asarray(((x - cx) / ax) ** 2 + ((y - cy) / ay) ** 2 <= 1.0)


@dataclass(frozen=True)
class Scene:
    """One view of the neck: gland, nodule, and the tissue maps to image them."""

    view: View
    neck: Neck
    spec: NoduleSpec
    outline: Outline

    # --- geometry -------------------------------------------------------------

    def _lobe_uv(self, x: FloatArray, y: FloatArray) -> tuple[FloatArray, FloatArray]:
        n = self.neck
        return (x - n.lobe_x) * n.lateral_sign, y - n.lobe_y

    def _trachea_centre(self) -> tuple[float, float]:
        n = self.neck
        x = n.lobe_x - n.lateral_sign * (n.lobe.a_medial * self._slice_scale() + n.trachea_radius)
        return x - n.lateral_sign * 0.5, n.lobe_y + 4.0

    def _slice_scale(self) -> float:
        return float(self.neck.lobe.taper(np.array(self.neck.nodule_z)))

    def _isthmus(self, x: FloatArray, y: FloatArray) -> BoolArray:
        n = self.neck
        tx, ty = self._trachea_centre()
        r = np.hypot(x - tx, y - ty)
        phi = np.arctan2(x - tx, ty - y)  # 0 straight up
        inner = n.trachea_radius + 0.8
        return np.asarray(
            (r >= inner) & (r <= inner + n.isthmus_thickness) & (np.abs(phi) <= np.radians(80))
        )

    def gland(self, x: FloatArray, y: FloatArray) -> BoolArray:
        """Thyroid tissue (without the nodule) at points (mm)."""
        n = self.neck
        if self.view == "transverse":
            u, v = self._lobe_uv(x, y)
            return np.asarray(n.lobe.norm(u, v) <= self._slice_scale()) | self._isthmus(x, y)
        z = x - n.lobe_z_x
        inside = n.lobe.norm(np.full_like(z, n.nodule_u), y - n.lobe_y) <= n.lobe.taper(z)
        return np.asarray(inside & (np.abs(z) < n.lobe.length / 2))

    def _gland_outline(self) -> FloatArray:
        n = self.neck
        if self.view == "longitudinal":
            zv = n.lobe.sagittal_outline(n.nodule_u)
            return np.column_stack((zv[:, 0] + n.lobe_z_x, zv[:, 1] + n.lobe_y))
        uv = n.lobe.section_outline(self._slice_scale())
        lobe = np.column_stack((n.lobe_x + n.lateral_sign * uv[:, 0], n.lobe_y + uv[:, 1]))
        tx, ty = self._trachea_centre()
        phi = np.radians(np.linspace(-80, 80, 2001))
        inner = n.trachea_radius + 0.8
        arcs = [
            np.column_stack((tx + r * np.sin(phi), ty - r * np.cos(phi)))
            for r in (inner, inner + n.isthmus_thickness)
        ]
        radial = np.linspace(inner, inner + n.isthmus_thickness, 200)
        ends = [
            np.column_stack((tx + radial * np.sin(e), ty - radial * np.cos(e)))
            for e in np.radians((-80.0, 80.0))
        ]
        isthmus = np.concatenate([*arcs, *ends])
        # The capsule is the boundary of the union: drop points inside the other part.
        u, v = self._lobe_uv(isthmus[:, 0], isthmus[:, 1])
        isthmus = isthmus[n.lobe.norm(u, v) > self._slice_scale() + 1e-9]
        lobe = lobe[~self._isthmus_strict(lobe[:, 0], lobe[:, 1])]
        return np.concatenate((lobe, isthmus))

    def _isthmus_strict(self, x: FloatArray, y: FloatArray) -> BoolArray:
        n = self.neck
        tx, ty = self._trachea_centre()
        r = np.hypot(x - tx, y - ty)
        phi = np.arctan2(x - tx, ty - y)
        inner = n.trachea_radius + 0.8
        eps = 1e-9
        return np.asarray(
            (r > inner + eps)
            & (r < inner + n.isthmus_thickness - eps)
            & (np.abs(phi) < np.radians(80) - eps)
        )

    def capsule_distance_mm(self) -> float:
        """True minimum distance from the nodule to the capsule (0 where it bulges out)."""
        nodule = self.outline.boundary()
        if not bool(self.gland(nodule[:, 0], nodule[:, 1]).all()):
            return 0.0
        distances, _ = cKDTree(self._gland_outline()).query(nodule)
        return float(np.min(distances))

    def masks(self, shape: tuple[int, int], spacing: float) -> tuple[BoolArray, BoolArray]:
        """Nodule and thyroid masks on the image area's pixel grid."""
        x, y = _grid(shape, spacing)
        nodule = self.outline.contains(x, y)
        return nodule, self.gland(x, y) | nodule

    # --- tissue -----------------------------------------------------------------

    def tissue(
        self, shape: tuple[int, int], spacing: float, rng: np.random.Generator
    ) -> tuple[TissueMaps, BoolArray, BoolArray]:
        """Tissue maps of the view, and its nodule and thyroid masks."""
        x, y = _grid(shape, spacing)
        n = self.neck
        echo = np.full(shape, _CONNECTIVE, dtype=np.float32)
        att = np.full(shape, _BASE_ATTENUATION, dtype=np.float32)
        artefact = np.zeros(shape, dtype=np.float32)
        streaks = smooth_noise(rng, shape, (40.0 / spacing, 1.2 / spacing))
        echo *= np.exp(0.35 * streaks)
        fat = y < 2.5 + 0.4 * streaks
        echo[fat] = _FAT * np.exp(0.5 * streaks[fat])
        echo[y < 0.5] = 3.0
        fascia = np.abs(y - (2.7 + 0.3 * streaks)) < 0.12
        echo[fascia] = 2.0
        fibres = self._muscles(x, y, rng, spacing)
        muscle = fibres > 0
        echo[muscle] = fibres[muscle]
        if self.view == "transverse":
            self._transverse_structures(x, y, echo, att, artefact)
        else:
            self._deep_line(x, y, echo, att, n.lobe_y + n.lobe.b_posterior + 9.0)
        nodule, thyroid = self.masks(shape, spacing)
        texture = smooth_noise(rng, shape, (1.5 / spacing, 1.5 / spacing))
        echo[thyroid] = np.exp(0.12 * texture[thyroid])
        width = 2 * max(1, round(0.15 / spacing)) + 1
        ring = cv2.dilate(thyroid.astype(np.uint8), np.ones((width, width), np.uint8)).astype(bool)
        capsule = ring & ~thyroid
        echo[capsule] = 3.5
        self._paint_nodule(nodule, x, y, echo, att, rng, spacing)
        maps = TissueMaps(echo=echo, attenuation=att, artefact=artefact)
        return maps, nodule, thyroid

    def _muscles(
        self, x: FloatArray, y: FloatArray, rng: np.random.Generator, spacing: float
    ) -> FloatImage:
        n = self.neck
        top = n.lobe_y - n.lobe.b_anterior
        bottom = n.lobe_y + n.lobe.b_posterior
        if self.view == "transverse":
            s = n.lateral_sign
            strap = _ellipse(x, y, n.lobe_x - s * 2, top - 1.9, 16.0, 1.6)
            scm = _ellipse(x, y, n.lobe_x + s * (n.lobe.a_lateral + 5), top - 2.6, 12.0, 2.9)
            longus = _ellipse(x, y, n.lobe_x - s * 4, bottom + 4.5, 6.5, 3.2)
            region = strap | scm | longus
            grain = smooth_noise(rng, x.shape, (0.6 / spacing, 0.6 / spacing))
        else:
            strap = (y > top - 3.4) & (y < top - 0.8)
            longus = (y > bottom + 1.5) & (y < bottom + 7.0)
            region = strap | longus
            grain = smooth_noise(rng, x.shape, (8.0 / spacing, 0.35 / spacing))
        out = np.zeros(x.shape, dtype=np.float32)
        out[region] = _MUSCLE * np.exp(0.45 * grain[region])
        return out

    def _transverse_structures(
        self, x: FloatArray, y: FloatArray, echo: FloatImage, att: FloatImage, art: FloatImage
    ) -> None:
        n = self.neck
        s = n.lateral_sign
        # Carotid artery (posterolateral) and jugular vein (anterolateral to it).
        cx = n.lobe_x + s * (n.lobe.a_lateral * self._slice_scale() + n.carotid_radius + 0.8)
        cy = n.lobe_y + n.lobe.b_posterior * 0.4
        r = np.hypot(x - cx, y - cy)
        wall = (r <= n.carotid_radius + 0.45) & (r > n.carotid_radius)
        echo[wall] = 1.8
        lumen = r <= n.carotid_radius
        echo[lumen] = _FLUID
        att[lumen] = -0.03
        jugular = _ellipse(x, y, cx + s * 3.5, cy - n.carotid_radius - 2.0, 4.5, 1.8)
        echo[jugular] = _FLUID * 2
        att[jugular] = -0.02
        # Trachea: hypoechoic cartilage, bright air interface, shadow and reverberation.
        tx, ty = self._trachea_centre()
        rt = np.hypot(x - tx, y - ty)
        cartilage = (rt <= n.trachea_radius) & (rt > n.trachea_radius - 1.5)
        echo[cartilage] = 0.06
        air = rt <= n.trachea_radius - 1.5
        interface = air & (rt > n.trachea_radius - 1.9) & (y < ty)
        echo[air] = 0.0
        echo[interface] = 30.0
        att[air & ~interface] = 4.0
        for k in range(1, 4):
            band = air & (np.abs(rt - (n.trachea_radius - 1.7 - 2.2 * k)) < 0.18) & (y < ty)
            art[band] = 0.5 * 0.45**k
        below_trachea = (np.abs(x - tx) < n.trachea_radius - 1.5) & (y > ty)
        att[below_trachea] = np.maximum(att[below_trachea], 0.5)
        self._deep_line(x, y, echo, att, n.lobe_y + n.lobe.b_posterior + 10.0)

    @staticmethod
    def _deep_line(
        x: FloatArray, y: FloatArray, echo: FloatImage, att: FloatImage, depth: float
    ) -> None:
        """Prevertebral fascia: a bright line with bone shadow beneath."""
        wobble = 0.6 * np.sin(x / 9.0)
        line = np.abs(y - depth - wobble) < 0.3
        echo[line] = 6.0
        att[y > depth + wobble + 0.3] = 0.6

    def _paint_nodule(
        self,
        nodule: BoolArray,
        x: FloatArray,
        y: FloatArray,
        echo: FloatImage,
        att: FloatImage,
        rng: np.random.Generator,
        spacing: float,
    ) -> None:
        spec = self.spec
        sigma = max(spec.margin_blur_mm / spacing, 0.3)
        soft = cv2.GaussianBlur(nodule.astype(np.float32), (0, 0), sigma)
        inner = smooth_noise(rng, nodule.shape, (0.8 / spacing, 0.8 / spacing))
        log_level = np.float32(np.log(spec.echo_ratio)) + 0.25 * inner
        if spec.halo_mm > 0:
            width = max(round(spec.halo_mm / spacing), 1)
            kernel = np.ones((2 * width + 1, 2 * width + 1), np.uint8)
            core = cv2.erode(nodule.astype(np.uint8), kernel).astype(bool)
            log_level = np.where(nodule & ~core, np.float32(np.log(_HALO_RATIO)), log_level)
        # Blend in the log domain so a dark nodule stays dark up to its edge.
        echo[:] = np.exp(np.log(np.maximum(echo, 1e-4)) * (1 - soft) + log_level * soft)
        att[nodule] = _BASE_ATTENUATION * 1.5
        rows, cols = np.nonzero(nodule)
        if rows.size == 0 or spec.calcification == "none":
            return
        if spec.calcification == "micro":
            count = int(rng.integers(4, 14))
            picks = rng.choice(rows.size, size=min(count, rows.size), replace=False)
            for i in picks:
                echo[rows[i], cols[i]] = 60.0
                if cols[i] + 1 < echo.shape[1]:
                    echo[rows[i], cols[i] + 1] = 35.0
            return
        for i in rng.choice(rows.size, size=min(int(rng.integers(1, 3)), rows.size)):
            radius = rng.uniform(0.6, 1.4)
            blob = np.hypot(x - x[rows[i], cols[i]], y - y[rows[i], cols[i]]) <= radius
            blob &= nodule
            echo[blob] = 40.0
            att[blob] = 6.0


def _grid(shape: tuple[int, int], spacing: float) -> tuple[FloatArray, FloatArray]:
    h, w = shape
    x = (np.arange(w, dtype=np.float64) + 0.5) * spacing
    y = (np.arange(h, dtype=np.float64) + 0.5) * spacing
    return np.broadcast_to(x[None, :], shape), np.broadcast_to(y[:, None], shape)


def nodule_outline(view: View, neck: Neck, spec: NoduleSpec) -> Outline:
    """The nodule's outline in one view's image millimetres."""
    cy = neck.lobe_y + neck.nodule_v
    if view == "transverse":
        return Outline(
            cx=neck.lobe_x + neck.lateral_sign * neck.nodule_u,
            cy=cy,
            ax=spec.width_mm / 2,
            ay=spec.depth_mm / 2,
            harmonics=spec.transverse_outline,
        )
    return Outline(
        cx=neck.lobe_z_x + neck.nodule_z,
        cy=cy,
        ax=spec.length_mm / 2,
        ay=spec.depth_mm / 2,
        harmonics=spec.longitudinal_outline,
    )


def scenes(neck: Neck, spec: NoduleSpec) -> tuple[Scene, Scene]:
    """The transverse and longitudinal views of the nodule."""
    return (
        Scene("transverse", neck, spec, nodule_outline("transverse", neck, spec)),
        Scene("longitudinal", neck, spec, nodule_outline("longitudinal", neck, spec)),
    )
