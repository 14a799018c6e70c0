"""Every compatibility shim that RecBole 1.2.1 needs on today's numpy, torch and setuptools.

This module is the only place the plugin patches anything outside itself. ``apply()`` runs when
``recbole_navigen`` is imported; each shim is idempotent, does nothing on a stack that no longer needs
it, and carries one comment saying why it exists.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import sys
import types
import warnings

import numpy as np
import torch

def _numpy_aliases() -> None:
    # numpy 2 removed the aliases np.float_, np.complex_, np.unicode_ (read by RecBole's
    # Config.compatibility_settings) and np.bool8 (read by ray.tune, imported by recbole.quick_start).
    aliases = {"float_": np.float64, "complex_": np.complex128, "unicode_": np.str_, "bool8": np.bool_}
    for name, value in aliases.items():
        if name not in np.__dict__:
            setattr(np, name, value)


def _pkg_resources() -> None:
    # setuptools >= 81 no longer ships pkg_resources, which ray 2.6.3 (imported by recbole.quick_start
    # for hyper-parameter tuning) imports for version look-ups; a small module over importlib.metadata
    # and `packaging` provides exactly what ray calls.
    try:
        importlib.import_module("pkg_resources")
        return
    except ImportError:
        pass
    import packaging
    import packaging.version

    class _Distribution:
        def __init__(self, name: str) -> None:
            self.project_name = name
            self.version = importlib.metadata.version(name)

    def get_distribution(name: str) -> _Distribution:
        try:
            return _Distribution(name)
        except importlib.metadata.PackageNotFoundError as error:
            raise DistributionNotFound(name) from error

    class DistributionNotFound(Exception):
        pass

    module = types.ModuleType("pkg_resources", "Provided by recbole_navigen.compat over importlib.metadata.")
    module.DistributionNotFound = DistributionNotFound
    module.get_distribution = get_distribution
    module.require = lambda name: [get_distribution(name)]
    module.packaging = packaging
    vendor = types.ModuleType("pkg_resources._vendor")
    vendor.packaging = packaging
    module._vendor = vendor
    sys.modules.update(
        {
            "pkg_resources": module,
            "pkg_resources._vendor": vendor,
            "pkg_resources._vendor.packaging": packaging,
            "pkg_resources._vendor.packaging.version": packaging.version,
        }
    )


def _recbole_loads_own_checkpoints() -> None:
    # torch >= 2.6 loads with weights_only=True by default, but RecBole's checkpoints pickle the whole
    # Config with protocol 4, which the weights-only unpickler cannot read, so
    # Trainer.evaluate(load_best_model=True), resume_checkpoint and load_data_and_model all failed.
    # Calls made from RecBole's own modules without an explicit weights_only load as they did on the
    # torch RecBole was written for; every other caller keeps torch's safe default.
    if getattr(torch.load, "_recbole_navigen_shim", False):
        return
    torch_load = torch.load

    @functools.wraps(torch_load)
    def load(*args, **kwargs):
        caller = sys._getframe(1).f_globals.get("__name__", "")
        if "weights_only" not in kwargs and caller.startswith("recbole."):
            kwargs["weights_only"] = False
        return torch_load(*args, **kwargs)

    load._recbole_navigen_shim = True
    torch.load = load


def _sine_anomaly_mode() -> None:
    # recbole/model/sequential_recommender/sine.py calls torch.autograd.set_detect_anomaly(True) at import,
    # and RecBole's get_model imports every sequential model, so every run trained 1.5-2x slower. Import
    # it once here and restore whatever anomaly mode the user had before.
    was_enabled = torch.is_anomaly_enabled()
    importlib.import_module("recbole.model.sequential_recommender")
    torch.autograd.set_detect_anomaly(was_enabled)


def _quiet_recbole_future_warnings() -> None:
    # RecBole 1.2.1 calls pandas' chained fillna(inplace=True) and torch.cuda.amp.GradScaler, which
    # today's pandas 2.x (pinned <3, where the calls still work) and torch warn about on every run.
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"recbole\.")


def apply() -> None:
    """Apply every shim; each is idempotent."""
    _numpy_aliases()
    _pkg_resources()
    _sine_anomaly_mode()
    _recbole_loads_own_checkpoints()
    _quiet_recbole_future_warnings()
