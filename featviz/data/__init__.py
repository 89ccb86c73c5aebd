"""Labelled image data sets held in memory: a folder of class folders, and the offline demo task.

    from featviz.data import demo_dataset, load_class_folder
    data = demo_dataset(per_class=24, size=128, seed=0)          # shapes on textures, 6 classes
    data = load_class_folder("photos/", model.preprocess, 224)   # photos/<class>/*.jpg

Used by the transfer report (linear probes) and by fine-tuning (``featviz.training``).
"""
from .folders import Dataset, check_memory, load_class_folder
from .shapes import SHAPES, demo_dataset, demo_shapes

__all__ = ["Dataset", "load_class_folder", "check_memory", "demo_dataset", "demo_shapes", "SHAPES"]
