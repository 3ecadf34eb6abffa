"""icm_lib: image coding for machines over CompressAI, torchvision and segmentation_models_pytorch."""

from .errors import (
    BDRateError,
    BitstreamError,
    CheckpointError,
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
    "Profile",
    "get_profile",
]
