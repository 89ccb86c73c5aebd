"""``collect``: the front door of the dataset-examples pass.

It makes the ``ExamplesPlan`` (every check of the arguments, once) and hands it
to the local runner (``stream.run_pass``) or, with a distributed engine, to the
sharded runner (``sharded.run_sharded``).
"""
from __future__ import annotations

from .plan import ExamplesPlan, PassOptions
from .store import ExampleStore


def collect(model, data=None, layers=None, k: int = 10, *, bottom: int | None = None, store=None,
            batch_size: int | None = None, size: int | None = None, shard=None, overwrite: bool = False,
            engine=None, options: PassOptions | None = None) -> ExampleStore:
    """Dataset examples of every unit of ``layers`` over the photos under ``data``.

    model: a ModelOrganism or a model name. data: a folder (searched
    recursively for photos, see ``featviz.examples.EXTENSIONS``); None uses the
    scikit-image demo photos. layers: names (list or 'a,b'); None picks the
    model's default layers. k: top-k (by mean and by max); bottom: bottom-k by
    mean (default k).
    store: the store folder (default: a new temporary folder). If it holds an
    unfinished store made with the same settings, the run continues from its
    last checkpoint; a complete one is returned as is; one made with other
    settings is refused unless ``overwrite``.
    batch_size: fixed batch size (default 32, or the store's when continuing).
    size: input size (default the model's). shard: 'I/N' covers batches I,
    I+N, I+2N... of the whole folder (batches of ``batch_size`` files in
    sorted order); ``merge`` the N stores for the store of the whole.
    engine: a distributed engine (``featviz.engine.get_engine("ray")``) splits
    the folder into one shard per worker, runs them there and merges them here;
    the store equals this process's, exactly.
    options: ``PassOptions`` (decoding threads, checkpoint interval, progress bar, log).
    Returns the (complete) ``ExampleStore``.
    """
    from ..models import load

    model = load(model)
    plan = ExamplesPlan.create(model, data, layers, k, bottom=bottom, store=store, batch_size=batch_size,
                               size=size, shard=shard, overwrite=overwrite)
    options = options or PassOptions()
    if getattr(engine, "distributed", False):
        from .sharded import run_sharded

        return run_sharded(engine, model, plan, options)
    from .stream import run_pass

    return run_pass(model, plan, options)
