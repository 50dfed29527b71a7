"""What kind of grounding a GLIGEN checkpoint takes, and the facts that follow from it.

Torch-free: shared by the reference (gligen_ref), the exporter and the runtime.
"""

from __future__ import annotations

import enum


class Modality(str, enum.Enum):
    """The grounding input of a checkpoint (inpainting is a separate flag, see ModelConfig)."""

    TEXT_BOX = "text-box"
    TEXT_IMAGE_BOX = "text-image-box"
    KEYPOINT = "keypoint"
    HED = "hed"
    CANNY = "canny"
    DEPTH = "depth"
    NORMAL = "normal"
    SEM = "sem"

    @property
    def is_spatial(self) -> bool:
        """Spatially aligned condition maps (ConvNeXt tokenizer + downsampler + conv_in swap)."""
        return self in SPATIAL

    @property
    def is_box(self) -> bool:
        return self in (Modality.TEXT_BOX, Modality.TEXT_IMAGE_BOX)


SPATIAL = (Modality.HED, Modality.CANNY, Modality.DEPTH, Modality.NORMAL, Modality.SEM)

MAX_OBJECTS = 30  # box modalities: grounded objects per image (original and diffusers)
MAX_PERSONS = 8  # keypoint modality
NUM_KEYPOINTS = 17  # COCO keypoint order
KEYPOINT_NAMES = (
    "nose", "left eye", "right eye", "left ear", "right ear", "left shoulder", "right shoulder",
    "left elbow", "right elbow", "left wrist", "right wrist", "left hip", "right hip",
    "left knee", "right knee", "left ankle", "right ankle",
)  # fmt: skip
assert len(KEYPOINT_NAMES) == NUM_KEYPOINTS
SEM_CLASSES = 152  # ADE20K one-hot channels of the sem model

# Channels of the condition map fed to the spatial tokenizer / downsampler, and the downsampler's
# output channels (concatenated to the noisy latent before the GLIGEN conv_in).
CONDITION_CHANNELS = {
    Modality.HED: 3,
    Modality.CANNY: 3,
    Modality.DEPTH: 3,
    Modality.NORMAL: 3,
    Modality.SEM: SEM_CLASSES,
}
DOWNSAMPLER_OUT_CHANNELS = {
    Modality.HED: 1,
    Modality.CANNY: 8,
    Modality.DEPTH: 8,
    Modality.NORMAL: 8,
    Modality.SEM: 8,
}

# Default scheduled sampling per modality: the original repository's `alpha_type` [a, b, c]
# (gligen_inference.py); inpainting always uses [1, 0, 0].
DEFAULT_ALPHA_TYPE: dict[Modality, tuple[float, float, float]] = {
    Modality.TEXT_BOX: (0.3, 0.0, 0.7),
    Modality.TEXT_IMAGE_BOX: (1.0, 0.0, 0.0),
    Modality.KEYPOINT: (0.3, 0.0, 0.7),
    Modality.HED: (0.9, 0.0, 0.1),
    Modality.CANNY: (0.9, 0.0, 0.1),
    Modality.DEPTH: (0.7, 0.0, 0.3),
    Modality.NORMAL: (0.7, 0.0, 0.3),
    Modality.SEM: (0.7, 0.0, 0.3),
}
INPAINT_ALPHA_TYPE = (1.0, 0.0, 0.0)


def default_alpha_type(modality: Modality, inpaint: bool) -> tuple[float, float, float]:
    return INPAINT_ALPHA_TYPE if inpaint else DEFAULT_ALPHA_TYPE[modality]
