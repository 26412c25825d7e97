"""GNA kernels in the CuTe DSL: generalized neighborhood attention for 1D/2D/3D token grids.

Public API: :func:`attention` (and ``torch.ops.gna_cute.attention``), the NATTEN-compatible
:func:`na1d` / :func:`na2d` / :func:`na3d`, and the backend chain in :mod:`gna_cute.backends`.
"""

from .api import attention
from .backends import BACKEND_NAMES, AttentionArgs
from .natten_api import na1d, na2d, na3d
from .params import GNAParams

__all__ = ["attention", "na1d", "na2d", "na3d", "GNAParams", "AttentionArgs", "BACKEND_NAMES"]
