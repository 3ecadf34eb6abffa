"""Training batches that depend only on ``(seed, step)``: what makes every trainer resumable."""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch.utils.data import Dataset

from ..runtime import mix_seed
from .transforms import random_crop

#: how many dataset items a trainer keeps in memory by default (:class:`CachedItems`)
KEEP_ITEMS = 512


class CachedItems(Dataset):
    """``dataset``'s items, each read (decoded, resized) once and then served from memory.

    A least-recently-used cache of ``capacity`` items: the embedded sets (a few hundred small
    scenes) stay in memory whole, while COCO (118k images on the ``paper`` profile) is read from
    disk as needed with bounded memory. An item is the very object ``dataset`` returned, so
    whoever crops or flips it must not write into it (slicing and ``flip`` copy or view).

    Args:
        dataset: any map-style dataset.
        capacity: how many items to keep (0: read every time).
    """

    def __init__(self, dataset: Dataset, capacity: int = KEEP_ITEMS):
        self.dataset, self.capacity = dataset, capacity
        self._cache: OrderedDict[int, object] = OrderedDict()

    def __len__(self) -> int:
        return len(self.dataset)

    @property
    def held(self) -> int:
        """How many items are in memory now."""
        return len(self._cache)

    def __getitem__(self, idx: int):
        if idx in self._cache:
            self._cache.move_to_end(idx)
            return self._cache[idx]
        item = self.dataset[idx]
        if self.capacity > 0:
            self._cache[idx] = item
            if len(self._cache) > self.capacity:
                self._cache.popitem(last=False)
        return item


class CropSampler:
    """Batches of random crops that depend only on ``(seed, step)``.

    Decoded images are kept in memory (:class:`CachedItems`, ``cache_images`` of them).

    Args:
        dataset: items ``(image (3, H, W), target)``; only images are used.
        crop: crop side.
        cache_images: how many decoded images to keep.
    """

    def __init__(
        self,
        dataset: Dataset,
        crop: int,
        batch_size: int,
        seed: int,
        cache_images: int = KEEP_ITEMS,
    ):
        self.dataset, self.crop, self.batch_size, self.seed = dataset, crop, batch_size, seed
        self.items = CachedItems(dataset, cache_images)

    def batch(self, step: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(mix_seed(self.seed, step))
        idx = torch.randint(0, len(self.dataset), (self.batch_size,), generator=g).tolist()
        crops = []
        for i in idx:
            image = self.items[i][0]
            crop = random_crop(image, self.crop, g)[0]
            if bool(torch.rand((), generator=g) < 0.5):
                crop = crop.flip(-1)
            crops.append(crop)
        return torch.stack(crops)
