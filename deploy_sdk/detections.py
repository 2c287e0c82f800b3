"""`Detections`: the result of one image, in the original image's pixel coordinates."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

import numpy as np

__all__ = ["Detections"]


@dataclass
class Detections:
    """Instances found in one image, sorted by descending score.

    - ``boxes``: [N, 4] float32, x1 y1 x2 y2 in original image pixels
    - ``scores``: [N] float32 in 0..1
    - ``labels``: [N] int64, the checkpoint's class ids (0 is the background and never appears)
    - ``masks``: [N, H, W] bool pasted to the full image (the default), or ``None`` when masks were not asked for
    - ``class_names``: the model's names, indexed by label id
    - ``image_size``: (height, width) of the original image
    """

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    masks: Optional[np.ndarray]
    class_names: List[str] = field(default_factory=list)
    image_size: tuple = (0, 0)

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    @property
    def names(self) -> List[str]:
        """Class name of each detection."""
        return [self.class_names[i] if 0 <= i < len(self.class_names) else f"class_{i}" for i in self.labels.tolist()]
