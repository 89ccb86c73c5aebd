"""Engines without Ray: the local engine, engine selection and the errors around it."""
import sys

import pytest
import torch

from featviz.engine import Job, LocalEngine, get_engine
from featviz.errors import FeatvizError


def _scaled(model, factor):
    return model.device.type, factor * 2


def test_local_engine_runs_jobs_in_order_with_the_model(tiny):
    jobs = [Job(_scaled, (i,)) for i in range(5)]
    done = list(LocalEngine().run(tiny, jobs))
    assert [d.index for d in done] == list(range(5))
    assert [d.result for d in done] == [("cpu", 2 * i) for i in range(5)]
    assert all(d.seconds >= 0 for d in done)


def test_engine_names_and_their_errors(monkeypatch):
    assert get_engine("local").name == "local"
    assert get_engine(None).name == "local"
    with pytest.raises(FeatvizError, match="unknown engine 'spark'.*local, ray"):
        get_engine("spark")
    with pytest.raises(FeatvizError, match="--address is for --engine ray"):
        get_engine("local", address="auto")
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    with pytest.raises(FeatvizError, match=r"pip install 'featviz\[ray\]'"):
        get_engine("ray")


def test_cli_engine_ray_without_ray_is_one_line(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from featviz.cli import main

    monkeypatch.setitem(sys.modules, "ray", None)
    res = CliRunner().invoke(main, ["examples", "efficientnet_lite0", "--layers", "blocks.2", "--engine", "ray",
                                    "-o", str(tmp_path / "s"), "-q"])
    assert res.exit_code != 0
    assert "pip install 'featviz[ray]'" in res.output
    assert "Traceback" not in res.output


def test_a_shard_cannot_be_split_again(tiny, tmp_path):
    from featviz.examples import collect

    class Distributed(LocalEngine):
        distributed = True

    with pytest.raises(FeatvizError, match="shard"):
        collect(tiny, None, ["conv2"], 2, store=tmp_path / "s", shard="0/2", engine=Distributed())


def test_sharded_collect_over_an_engine_equals_one_pass(tiny, tmp_path):
    """The sharding and merging of the Ray path, run by a local engine that claims several workers."""
    from featviz.examples import PassOptions, collect

    class TwoWorkers(LocalEngine):
        distributed = True
        workers = 3

    torch.manual_seed(0)
    whole = collect(tiny, None, ["conv2", "conv3"], 3, store=tmp_path / "whole", batch_size=4)
    messages = []
    split = collect(tiny, None, ["conv2", "conv3"], 3, store=tmp_path / "split", batch_size=4,
                    engine=TwoWorkers(), options=PassOptions(log=messages.append))
    assert any("3 shards" in m for m in messages)
    assert split.digest() == whole.digest()
    assert split.settings == whole.settings
    assert not (tmp_path / ".split.shards").exists()  # staging removed once merged
    again = collect(tiny, None, ["conv2", "conv3"], 3, store=tmp_path / "split", batch_size=4,
                    engine=TwoWorkers(), options=PassOptions(log=messages.append))
    assert "already complete" in messages[-1]
    assert again.digest() == whole.digest()
