"""A third-party segmenter, found through the entry point, stitched by the same machinery."""

from __future__ import annotations

import sys
import textwrap

import numpy as np
import pytest
import yaml

from conftest import read_labels

from popseg_dask.segmenters import refresh_plugins

PLUGIN = textwrap.dedent('''
    import numpy as np
    from pydantic import Field
    from scipy import ndimage as ndi

    from popseg_dask.config import Strict
    from popseg_dask.segmenters import Segmenter, resolve_channel


    class BlobParams(Strict):
        channel: str
        sigma: float = Field(1.0, gt=0)
        threshold: float


    class BlobSegmenter(Segmenter):
        """Smooth, threshold, 8-connected components: local, so halo = blur reach + 2."""

        name = "blobs"
        Params = BlobParams

        def __init__(self, params, context):
            self.params = params
            self.channels = [resolve_channel(params.channel, context.channel_names, context.population)]
            self.halo = int(4 * params.sigma + 0.5) + 2
            self.link = 1

        def __call__(self, block, stats=None):
            smooth = ndi.gaussian_filter(block[0].astype(float), self.params.sigma)
            return ndi.label(smooth > self.params.threshold, structure=np.ones((3, 3)))[0]
''')

DIST = textwrap.dedent('''
    Metadata-Version: 2.1
    Name: popseg-test-plugin
    Version: 0.0.1
''').lstrip()


@pytest.fixture
def plugin_path(tmp_path, monkeypatch):
    (tmp_path / "popseg_test_plugin.py").write_text(PLUGIN)
    info = tmp_path / "popseg_test_plugin-0.0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(DIST)
    (info / "entry_points.txt").write_text("[popseg_dask.segmenters]\nblobs = popseg_test_plugin:BlobSegmenter\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    # worker processes import the plugin too
    monkeypatch.setenv("PYTHONPATH", str(tmp_path) + ":" + __import__("os").environ.get("PYTHONPATH", ""))
    refresh_plugins()
    yield tmp_path
    sys.modules.pop("popseg_test_plugin", None)
    monkeypatch.undo()
    refresh_plugins()


def test_plugin_is_listed_and_validated(plugin_path):
    from popseg_dask.config import PopulationSpec
    from popseg_dask.errors import PopsegError
    from popseg_dask.segmenters import available_segmenters, build_segmenter

    assert "blobs" in available_segmenters()
    seg = build_segmenter("p", PopulationSpec(segmenter="blobs", channel="cfse", threshold=300), ["nuclei", "cfse"])
    assert seg.channels == ["cfse"] and seg.halo == 6
    with pytest.raises(PopsegError, match="unknown key 'populations.p.treshold'"):
        build_segmenter("p", PopulationSpec(segmenter="blobs", channel="cfse", treshold=3), ["nuclei", "cfse"])


def test_plugin_tiled_equals_untiled_in_a_run(plugin_path, demo_dir):
    from popseg_dask.config import load_config
    from popseg_dask.pipeline import run

    outs = {}
    for tile in ("none", [48, 64]):
        cfg = {"input": "movie.ome.zarr", "output": f"out-{tile if tile == 'none' else 'tiled'}.zarr",
               "populations": {"cells": {"segmenter": "blobs", "channel": "cfse", "threshold": 330, "sigma": 1.5,
                                         "tile": tile}}}
        (demo_dir / "p.yaml").write_text(yaml.safe_dump(cfg))
        rec = run(load_config(demo_dir / "p.yaml"), n_workers=1)
        outs[str(tile)] = read_labels(demo_dir / cfg["output"], "cells")
        assert rec["populations"]["cells"]["n_objects"] > 0
    assert np.array_equal(outs["none"], outs["[48, 64]"])
