"""Training batches that depend only on ``(seed, step)``: what makes every trainer resumable."""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch.utils.data import Dataset

from ..runtime import mix_seed
from .transforms import random_crop

#: how many dataset items a trainer keeps in memory by default (:class:`CachedItems`)
KEEP_ITEMS = 512
#: and how many bytes of them at most: the embedded sets fit whole (a few hundred scenes of
#: ~1 MB), while 512 COCO images as float tensors (~4 MB each) would take ~2 GB per trainer
KEEP_BYTES = 1 << 30


def nbytes(item) -> int:
    """The bytes an item's tensors, arrays and PIL images hold (an image, a target dict, tuples
    of them; a view counts its own elements, anything else 0); what :class:`CachedItems`
    counts against its byte bound."""
    if isinstance(item, torch.Tensor):
        return item.element_size() * item.nelement()
    if hasattr(item, "nbytes") and isinstance(item.nbytes, int):  # NumPy arrays
        return item.nbytes
    if hasattr(item, "getbands") and hasattr(item, "size"):  # a PIL image
        return item.size[0] * item.size[1] * len(item.getbands())
    if isinstance(item, dict):
        return sum(nbytes(v) for v in item.values())
    if isinstance(item, (list, tuple)):
        return sum(nbytes(v) for v in item)
    return 0


class CachedItems(Dataset):
    """``dataset``'s items, each read (decoded, resized) once and then served from memory.

    A least-recently-used cache of at most ``capacity`` items and ``max_bytes`` bytes of their
    tensors: the embedded sets (a few hundred small scenes) stay in memory whole, while COCO
    (118k images on the ``paper`` profile) is read from disk as needed with bounded memory. An
    item is the very object ``dataset`` returned, so whoever crops or flips it must not write
    into it (slicing and ``flip`` copy or view). Which items are held never changes what is
    served.

    Args:
        dataset: any map-style dataset.
        capacity: how many items to keep (0: read every time).
        max_bytes: how many bytes of items to keep (:func:`nbytes`); an item larger than that
            is served without being kept.
    """

    def __init__(self, dataset: Dataset, capacity: int = KEEP_ITEMS, max_bytes: int = KEEP_BYTES):
        self.dataset, self.capacity, self.max_bytes = dataset, capacity, max_bytes
        self._cache: OrderedDict[int, tuple[object, int]] = OrderedDict()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self.dataset)

    @property
    def held(self) -> int:
        """How many items are in memory now."""
        return len(self._cache)

    @property
    def held_bytes(self) -> int:
        """How many bytes of items are in memory now."""
        return self._bytes

    def __getitem__(self, idx: int):
        if idx in self._cache:
            self._cache.move_to_end(idx)
            return self._cache[idx][0]
        item = self.dataset[idx]
        size = nbytes(item)
        if self.capacity > 0 and size <= self.max_bytes:
            self._cache[idx] = (item, size)
            self._bytes += size
            while len(self._cache) > self.capacity or self._bytes > self.max_bytes:
                self._bytes -= self._cache.popitem(last=False)[1][1]
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
