"""One exception type for every bad input at the library's boundary.

Everything a user can get wrong -- a corrupt bitstream, an odd image, a missing dataset, a request
for pretrained weights without internet -- raises :class:`ICMError` (or a subclass of it) with a
message that says what to do. Catch ``ICMError`` to handle them all.
"""


class ICMError(Exception):
    """Base class: bad input or environment; the message says how to fix it."""


class BitstreamError(ICMError):
    """A bitstream is truncated, corrupt, or written by another codec / format version."""


class ImageError(ICMError):
    """An image cannot be read or converted to RGB in [0, 1]."""


class DatasetError(ICMError):
    """A dataset path is missing or does not have the expected layout."""


class WeightsUnavailableError(ICMError):
    """Pretrained weights cannot be downloaded (offline) and no local checkpoint was given."""


class BackendUnavailableError(ICMError):
    """An optional recognition library (detectron2, MMSegmentation) is not installed."""


class CheckpointError(ICMError):
    """A checkpoint or cache file is missing, truncated or incompatible."""


class BDRateError(ICMError):
    """Two R-D curves cannot be compared (too few points, no overlap, not monotonic)."""


class DamagedFileError(ICMError):
    """A file the project wrote (JSON results, logs, metadata) is cut, corrupt, or of an older
    schema; the message names the file and how to regenerate it."""
