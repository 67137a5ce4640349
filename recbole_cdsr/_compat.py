"""Every patch RecBole 1.2.1 needs on today's stack, in one place, idempotent.

Imported by ``recbole_cdsr/__init__.py`` before anything imports recbole.
"""

# torch >= 2.6 loads with weights_only=True, and RecBole 1.2.1 checkpoints pickle the
# Config (RecBole #2212). We do NOT change torch's default for the process: our
# checkpoints store the Config as plain data and CDSRTrainer / load_data_and_model load
# them with weights_only=True and an explicit allow-list (recbole_cdsr.config).

import numpy as np

# numpy 2 removed aliases that ray 2.6.3 (np.bool8) and RecBole's
# Config.compatibility_settings (np.float_, np.complex_, np.unicode_) use.
# No-ops on numpy < 2 (the CPU pins); needed on the GPU machine's numpy 2.x.
if "bool8" not in np.__dict__:
    np.bool8 = np.bool_
for _old, _new in {"float_": np.float64, "complex_": np.complex128, "unicode_": np.str_}.items():
    if _old not in np.__dict__:
        setattr(np, _old, _new)

import scipy.sparse as _sp  # noqa: E402

# scipy >= 1.13 removed dok_matrix._update, used by RecBole's LightGCN family
# (RecBole #2034, #2090). LightGCN builds pseudo-sequences for I2VAE.
if not hasattr(_sp.dok_matrix, "_update"):
    _sp.dok_matrix._update = lambda self, data: self._dict.update(data)


def import_recbole_sequential_models() -> None:
    """Imports RecBole's sequential models with autograd anomaly detection left off.

    recbole 1.2.1 ``sequential_recommender/sine.py`` calls
    ``torch.autograd.set_detect_anomaly(True)`` at import, so importing any RecBole
    sequential model (SASRec, GRU4Rec, ...) slows every backward pass of the process
    with per-op NaN checks. Called by ``recbole_cdsr.utils.get_model``.
    """
    import torch

    import recbole.model.sequential_recommender  # noqa: F401

    torch.autograd.set_detect_anomaly(False)


# Fused elementwise layers (issue 13). On the CPU a RecBole 1.2.1 SASRec step spends
# most of its op time in two elementwise layers (torch.profiler; docs/results.md):
# FeedForward.gelu, written as x * 0.5 * (1 + erf(x / sqrt 2)) in Python (five ops
# and their backward), and nn.Dropout, whose CPU mask is drawn by bernoulli_. The
# replacements compute the same functions: torch's erf GELU (F.gelu, approximate
# "none"), and a dropout that keeps each element with probability 1 - p (a uniform
# draw >= p) and scales kept ones by 1 / (1 - p), as torch's does; only the random
# stream differs. tests/test_speed_exact.py checks both. Importing recbole_cdsr changes
# nothing in torch: ``quick_start.build`` (every run, tuning trial and reload) installs
# them when the config's ``fused_layers`` is True (default); use_fused_layers(False)
# removes them.
import torch  # noqa: E402
from recbole.model import layers as _recbole_layers  # noqa: E402

_STOCK = {
    "gelu": _recbole_layers.FeedForward.gelu,
    "dropout": torch.nn.Dropout.forward,
}


def _fused_gelu(self, x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.gelu(x)


def _uniform_mask_dropout(self, input: torch.Tensor) -> torch.Tensor:
    if not self.training or not 0.0 < self.p < 1.0 or input.device.type != "cpu":
        return _STOCK["dropout"](self, input)
    keep = torch.rand_like(input).ge_(self.p).mul_(1.0 / (1.0 - self.p))
    return input.mul_(keep) if self.inplace else input * keep


def use_fused_layers(enabled: bool = True) -> None:
    """Installs (or removes) the fused GELU and dropout process-wide.

    RecBole binds ``FeedForward.gelu`` when a layer is built, so a model built while
    the patch is on keeps the fused GELU; dropout is looked up at every call. Only CPU
    tensors in training mode take the new dropout (CUDA already fuses its own).
    """
    _recbole_layers.FeedForward.gelu = _fused_gelu if enabled else _STOCK["gelu"]
    torch.nn.Dropout.forward = _uniform_mask_dropout if enabled else _STOCK["dropout"]

