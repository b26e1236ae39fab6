"""Per-view nodule features of LLNM-Net from a crop, a nodule mask and a thyroid mask.

``extract_view(image, nodule_mask, thyroid_mask, mm_per_pixel, view=...)``
gives a :class:`ViewFeatures`; ``summarize`` its JSON scalars. Masks come at
the crop's resolution (no segmentation model here).

Nodules and the index rule
    Nodules are the 8-connected components of the nodule mask. The index
    nodule is the largest (pixel count); ties go to the one nearest the
    capsule, then to the first in raster order. The others are listed with
    area, centroid and capsule distance. An empty mask is "no nodule found".
Units
    Calibrated crops (``mm_per_pixel`` = (x, y)) give distances in mm with the
    anisotropic spacing honoured; uncalibrated ones give them in pixels and
    ``calibrated=False``. Shapes come in pixels always and in mm when calibrated.
Location (CPDT) and capsule distance
    The gland is thyroid or nodule with holes filled; the capsule is its
    boundary, the cracks between a gland pixel and a non-gland 4-neighbour,
    each at its midpoint (half a pixel from both centres); the crop's edge is
    not capsule. ``d_i`` is the distance from pixel i's centre to the nearest
    capsule crack; C is the gland pixel (in the gland component holding the
    nodule) with the largest ``d``, ``d_max`` its ``d``; ``phi_i = 1 - d_i /
    d_max`` on the index nodule, 0 elsewhere (float32, crop resolution). The
    nodule-capsule distance is the minimum of ``d`` over the nodule's own
    boundary cracks (0 when one is a capsule crack: the nodule touches or
    crosses the capsule). An empty thyroid mask, a nodule not touching the
    thyroid, or a gland with no boundary in the crop make location
    :class:`Unavailable` with the reason.

Texture, margin, echogenicity: :mod:`imaging.features.intensity`. Shape:
:mod:`imaging.features.shape`. Lobe and third: :mod:`imaging.features.position`.
"""

from imaging.features.extract import (
    Location,
    NoduleFeatures,
    OtherNodule,
    View,
    ViewFeatures,
    extract_view,
    summarize,
)
from imaging.features.geometry import Unavailable
from imaging.features.intensity import Echogenicity
from imaging.features.shape import Dimensions

__all__ = [
    "Dimensions",
    "Echogenicity",
    "Location",
    "NoduleFeatures",
    "OtherNodule",
    "Unavailable",
    "View",
    "ViewFeatures",
    "extract_view",
    "summarize",
]
