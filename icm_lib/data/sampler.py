"""Training batches that depend only on ``(seed, step)``: what makes every trainer resumable."""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch.utils.data import Dataset

from ..runtime import mix_seed
from .transforms import random_crop


class CropSampler:
    """Batches of random crops that depend only on ``(seed, step)``.

    Decoded images are kept in a least-recently-used cache of ``cache_images`` entries: the
    embedded sets (a few hundred small scenes) stay in memory whole, while COCO (118k images on
    the ``paper`` profile) is read from disk as needed with bounded memory.

    Args:
        dataset: items ``(image (3, H, W), target)``; only images are used.
        crop: crop side.
        cache_images: how many decoded images to keep.
    """

    def __init__(
        self, dataset: Dataset, crop: int, batch_size: int, seed: int, cache_images: int = 512
    ):
        self.dataset, self.crop, self.batch_size, self.seed = dataset, crop, batch_size, seed
        self.cache_images = cache_images
        self._cache: OrderedDict[int, torch.Tensor] = OrderedDict()

    def _image(self, idx: int) -> torch.Tensor:
        if idx in self._cache:
            self._cache.move_to_end(idx)
        else:
            self._cache[idx] = self.dataset[idx][0]
            if len(self._cache) > self.cache_images:
                self._cache.popitem(last=False)
        return self._cache[idx]

    def batch(self, step: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(mix_seed(self.seed, step))
        idx = torch.randint(0, len(self.dataset), (self.batch_size,), generator=g).tolist()
        crops = []
        for i in idx:
            image = self._image(i)
            crop = random_crop(image, self.crop, g)[0]
            if bool(torch.rand((), generator=g) < 0.5):
                crop = crop.flip(-1)
            crops.append(crop)
        return torch.stack(crops)
