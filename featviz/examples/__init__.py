"""Dataset examples: where a unit fires on real photos.

    from featviz.examples import PassOptions, collect
    store = collect("efficientnet_lite0", "photos/", ["blocks.8", "head"], k=10, store="ex",
                    options=PassOptions(progress=True))
    store.top("blocks.8", 12)              # top 10 images by mean activation
    store.top("blocks.8", 12, by="max")    # top 10 by max activation, with position and crop
    store.bottom("blocks.8", 12)           # bottom 10 by mean activation

One streaming pass over the photos (memory grows with units x k, not with the
number of images), an SQLite index plus crop files, checkpointed and
resumable, and ``merge`` of the stores of shards into the store of the whole.
Receptive fields are measured empirically from input gradients (see
``featviz.examples.receptive``).
"""
from .files import EXTENSIONS, demo_dir, list_images, read_photo
from .passes import collect
from .plan import ExamplesPlan, PassOptions
from .stream import letterbox, run_pass
from .receptive import ReceptiveField, receptive_field
from .sheet import unit_sheet
from .store import Example, ExampleStore, merge, open_store

__all__ = ["collect", "merge", "open_store", "ExampleStore", "Example", "demo_dir", "list_images", "read_photo",
           "receptive_field", "ReceptiveField", "unit_sheet", "EXTENSIONS", "letterbox", "ExamplesPlan", "PassOptions", "run_pass"]
