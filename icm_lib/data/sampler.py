"""Training batches that depend only on ``(seed, step)``: what makes every trainer resumable."""
from __future__ import annotations

import torch
from torch.utils.data import Dataset

from .transforms import random_crop


class CropSampler:
    """Batches of random crops that depend only on ``(seed, step)``.

    Args:
        dataset: items ``(image (3, H, W), target)``; only images are used.
        crop: crop side.
    """

    def __init__(self, dataset: Dataset, crop: int, batch_size: int, seed: int):
        self.dataset, self.crop, self.batch_size, self.seed = dataset, crop, batch_size, seed
        self._cache: dict[int, torch.Tensor] = {}

    def _image(self, idx: int) -> torch.Tensor:
        if idx not in self._cache:
            self._cache[idx] = self.dataset[idx][0]
        return self._cache[idx]

    def batch(self, step: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        idx = torch.randint(0, len(self.dataset), (self.batch_size,), generator=g).tolist()
        crops = []
        for i in idx:
            image = self._image(i)
            crop = random_crop(image, self.crop, g)[0]
            if bool(torch.rand((), generator=g) < 0.5):
                crop = crop.flip(-1)
            crops.append(crop)
        return torch.stack(crops)
