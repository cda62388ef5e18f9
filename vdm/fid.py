"""Inception-v3 features, FID and KID: the public `vdm.fid` (its home is `vdm.evaluation.fid`).

A documented facade of the core contract (DESIGN.md); code inside vdm/ imports `vdm.evaluation.fid`.
"""

from vdm.evaluation.feature_metrics import (  # noqa: F401
    fid_from_features,
    frechet_distance,
    frechet_distance_of_samples,
    gaussian_stats,
    kid_from_features,
)
from vdm.evaluation.fid import (  # noqa: F401
    DEFAULT_BATCH,
    KID_FEATURES,
    RESIZE_MODES,
    Inception,
    compare,
    inception_features,
    load_inception,
    load_source,
    parse_split,
    reference_stats,
    score_samples,
)
