"""torchvision's counterparts: `from avalon.vision import ops` where a program has
`from torchvision import ops` (box operations, NMS, RoI pooling, detection losses and the small
layers detection and segmentation models are built from). See avalon/vision/ops.py."""
from __future__ import annotations

from . import ops

__all__ = ["ops"]
