"""Estimator bundles on disk: one ``.pt`` file of weights and a JSON-able manifest.

A bundle is read with ``torch.load(weights_only=True)``: only tensors and plain containers are
unpickled, so a bundle from someone else cannot run code (:func:`read_bundle`). Its manifest
records what the estimator was trained on (model file hash, prior, protocol, observation scheme,
recording model, viability rules) and is checked when the estimator is loaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .._util import package_version
from ..data import Dataset
from ..prior import Prior
from .config import TrainingConfig
from .loop import load_checkpoint, save_atomic

#: Version of the estimator file layout; a file of another format is refused. Format 3 holds a
#: list of flows (``flows.<k>.*``); format 2 (one flow, ``flow.*``) is read and upgraded.
BUNDLE_FORMAT = 3
READABLE_FORMATS = (2, 3)


def read_bundle(file: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The weights and manifest of a bundle file, refused if it is not one of this format.

    Raises
    ------
    ValueError
        A file whose pickle would run code, a damaged file, or a bundle of another format.
    """
    data = load_checkpoint(
        file,
        cure="copy or download it again (reinstall sbi-twins if it is a bundled estimator), or "
        "retrain it with `sbi-twins train DATASET --out DIR` (which writes DIR/estimator.pt)",
    )
    manifest = data.get("manifest") if isinstance(data, dict) else None
    found = manifest.get("format") if isinstance(manifest, dict) else None
    if found not in READABLE_FORMATS or not isinstance(data.get("state_dict"), dict):
        made_by = manifest.get("versions", {}).get("sbi_twins", "?") if found else "?"
        readable = " and ".join(map(str, READABLE_FORMATS))
        raise ValueError(
            f"{file} is an estimator of format {found!r} (sbi-twins {made_by}); this sbi-twins "
            f"{package_version()} reads formats {readable}. Retrain it with `sbi-twins train`."
        )
    state = data["state_dict"]
    if found == 2:  # one flow, stored as `flow.*`: the first (only) flow of the list
        state = {_upgrade_key(key): value for key, value in state.items()}
    return state, manifest


def _upgrade_key(key: str) -> str:
    return "flows.0." + key.removeprefix("flow.") if key.startswith("flow.") else key


def write_bundle(file: Path, state_dict: dict[str, torch.Tensor], manifest: dict) -> None:
    """Write a bundle atomically (weights and manifest)."""
    save_atomic(file, {"state_dict": state_dict, "manifest": manifest})


def dataset_prior(ds: Dataset) -> Prior:
    """The prior a dataset was drawn from, rebuilt from its manifest (checked by hash)."""
    try:
        return Prior.from_dict(ds.manifest["prior"])
    except ValueError as e:
        raise ValueError(f"dataset {ds.directory}: {e}") from None


def bundle_manifest(
    ds: Dataset, prior: Prior, config: TrainingConfig, stages: dict, cells: tuple[int, int]
) -> dict[str, Any]:
    """The manifest of an estimator bundle: what made its training set (copied from the
    dataset's manifest), the training settings and results, and the versions.

    ``cells`` is the number of training and of validation cells.
    """
    m = ds.manifest
    return {
        "format": BUNDLE_FORMAT,
        "kind": "npe",
        "model": m["model"],
        "prior": m["prior"],
        "protocol": m["protocol"],
        "observation": m["observation"],
        "recording": m["recording"],
        "parameter_names": list(prior.names),
        "training_set": {
            "directory": str(ds.directory),
            "cells": sum(cells),
            "validation_cells": cells[1],
            "viability": m["viability"],
            "seed": m["seed"],
            "versions": m["versions"],
        },
        "training": config.to_dict(),
        "validation": {
            "best_loss": stages["flow"]["best_validation_loss"],
            "epochs": stages["flow"]["epochs"],
            "flow_best_losses": [
                stage["best_validation_loss"] for name, stage in stages.items() if name != "summary"
            ],
            "summary_best_loss": stages["summary"]["best_validation_loss"],
            "summary_epochs": stages["summary"]["epochs"],
        },
        "versions": {
            "sbi_twins": package_version(),
            "torch": str(torch.__version__),
            "sbi": _sbi_version(),
        },
    }


def _sbi_version() -> str:
    import sbi

    return sbi.__version__
