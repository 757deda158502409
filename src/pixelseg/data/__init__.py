"""Datasets of every task, joint image+mask transforms, and the one builder: :func:`build_data`."""

from .build import DataBundle, DatasetInfo, build_data, build_eval_dataset, task_of_dataset
from .camvid import CAMVID_CLASSES, CamVid
from .config import AugmentConfig, DataConfig
from .folder import SegmentationFolder
from .instances import CocoInstances, InstanceMaskFolder, SyntheticInstances, collate_detection
from .isbi import ISBI2012
from .shapes import Shapes
from .transforms import ElasticDeformation, JointTransform, evaluation_transform, training_transform

__all__ = ["DataBundle", "DatasetInfo", "build_data", "build_eval_dataset", "task_of_dataset", "CAMVID_CLASSES",
           "CamVid", "AugmentConfig", "DataConfig", "SegmentationFolder", "CocoInstances", "InstanceMaskFolder",
           "SyntheticInstances", "collate_detection", "ISBI2012", "Shapes", "ElasticDeformation",
           "JointTransform", "evaluation_transform", "training_transform"]
