"""The one setup every notebook runs after its ``parameters`` cell."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from .profiles import Profile, get_profile, parse_overrides
from .runtime import atomic_write_json, env_path, get_device, seed_everything


@dataclass
class Setup:
    profile: Profile
    device: torch.device
    data_dir: Path
    output_dir: Path
    cache_dir: Path
    seed: int

    def record(self, metrics: dict, name: str = "metrics.json") -> Path:
        """Write the notebook's key numbers (what its tests assert on) to ``output_dir``."""
        payload = {
            "profile": self.profile.name,
            "seed": self.seed,
            "device": str(self.device),
            **metrics,
        }
        return atomic_write_json(self.output_dir / name, payload)


def setup(
    profile: str, seed: int, data_dir: str, output_dir: str, device: str = "", **overrides
) -> Setup:
    """Seed, choose the device, resolve paths (``ICM_DATA_DIR`` / ``ICM_OUTPUT_DIR`` override the
    parameters, ``ICM_PROFILE`` the profile and ``ICM_OVERRIDES`` its fields, e.g.
    ``recognition__det_backend=detectron2``: how a notebook opened in JupyterLab or run by
    ``make tutorial`` is pointed at other data or models without editing it), load the
    profile."""
    overrides = {**parse_overrides(os.environ.get("ICM_OVERRIDES", "")), **overrides}
    prof = get_profile(os.environ.get("ICM_PROFILE") or profile, **overrides)
    data = env_path("ICM_DATA_DIR", data_dir)
    out = env_path("ICM_OUTPUT_DIR", output_dir)
    out.mkdir(parents=True, exist_ok=True)
    data.mkdir(parents=True, exist_ok=True)
    seed_everything(seed)
    return Setup(prof, get_device(device or None), data, out, data / "cache", seed)
