"""One exception type for every bad input at the library's boundary.

Everything a user can get wrong -- a corrupt bitstream, an odd image, a missing dataset, a request
for pretrained weights without internet -- raises :class:`ICMError` (or a subclass of it) with a
message that says what to do. Catch ``ICMError`` to handle them all.
"""


class ICMError(Exception):
    """Base class: bad input or environment; the message says how to fix it."""


class BitstreamError(ICMError):
    """A bitstream is truncated, corrupt, or written by another codec / format version."""


class ConfigError(ICMError, ValueError):
    """A setting or argument is invalid (an unknown profile, codec or preset, a batch that does
    not split into the processes' shards); the message names the setting and what it takes. A
    :class:`ValueError` too, as any bad argument to a function is."""


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


class FileWriteError(ICMError):
    """A file could not be written (a full disk, a quota, permissions, a failing device); the
    message names the file, the bytes it needed and the space left. The previous version of the
    file, if any, is intact (every project file is written through a temporary file)."""


class DiskFullError(FileWriteError):
    """The disk or the user's quota is full (``ENOSPC`` / ``EDQUOT``)."""


class NotCachedError(ICMError):
    """Something would have to be trained where only the cache may be read
    (:func:`icm_lib.runtime.cached_only`); the message names it and the command that trains it."""


class RunLockedError(ICMError):
    """Another process holds the writer lock of a run key (or a cache file) past the wait
    allowed; the message names the holder (pid, host, since when) and the lock file."""


class LaunchError(ICMError):
    """A launcher cannot run (submitit or SLURM missing, a bad option, a refused submission), or
    runs of a study failed; the message names each failed run's log and what to do (``report``:
    the :class:`~icm_lib.launch.LaunchReport` of the failed runs' study, where there is one)."""

    report = None
