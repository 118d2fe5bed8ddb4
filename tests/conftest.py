"""Shared fixtures: small movies on disk and one real LocalCluster per test session."""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


@pytest.fixture(scope="session")
def client2():
    """A real 2-worker LocalCluster (processes), shared by the tests that need one."""
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                      host="127.0.0.1") as cluster, Client(cluster) as client:
        yield client


@pytest.fixture(scope="session")
def small_movie():
    """A 4-frame synthetic two-population movie (t, c, y, x) with ground truth."""
    from popseg_dask.synthetic import make_movie

    return make_movie(n_frames=4, size=192, n_targets=14, n_effectors=4, seed=3)


@pytest.fixture
def demo_dir(tmp_path, small_movie):
    """The small movie written as OME-Zarr 0.5 with a matching config file."""
    import yaml

    from popseg_dask.io.images import write_ome_zarr_image
    from popseg_dask.synthetic import DEMO_CONFIG

    write_ome_zarr_image(tmp_path / "movie.ome.zarr", small_movie.image, small_movie.channels,
                         pixel_size_um=small_movie.pixel_size_um)
    cfg = dict(DEMO_CONFIG)
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return tmp_path


def frames_equal(a, b) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and bool(np.array_equal(a, b))
