"""icm_lib: image coding for machines over CompressAI and the recognition libraries (torchvision,
segmentation_models_pytorch, detectron2, MMSegmentation)."""

from .errors import (
    BackendUnavailableError,
    BDRateError,
    BitstreamError,
    CheckpointError,
    ConfigError,
    DatasetError,
    ICMError,
    ImageError,
    WeightsUnavailableError,
)
from .profiles import Profile, get_profile

__version__ = "0.1.0"
__all__ = [
    "ICMError",
    "BitstreamError",
    "ImageError",
    "DatasetError",
    "WeightsUnavailableError",
    "CheckpointError",
    "BDRateError",
    "BackendUnavailableError",
    "ConfigError",
    "Profile",
    "get_profile",
]
