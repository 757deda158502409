"""Datasets and joint image+mask transforms."""

from .camvid import CAMVID_CLASSES, CamVid
from .folder import SegmentationFolder
from .isbi import ISBI2012
from .shapes import Shapes
from .transforms import (
           AugmentConfig,
           ElasticDeformation,
           JointTransform,
           evaluation_transform,
           training_transform,
)

__all__ = ["CAMVID_CLASSES", "CamVid", "SegmentationFolder", "ISBI2012", "Shapes", "AugmentConfig",
           "ElasticDeformation", "JointTransform", "evaluation_transform", "training_transform"]
