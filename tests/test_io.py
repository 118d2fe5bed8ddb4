"""Lazy movie input: every source maps to (t, c, y, x) with channel names; nothing is read early."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import zarr

from popseg_dask.errors import PopsegError
from popseg_dask.io.images import write_ome_zarr_image
from popseg_dask.io.movie import _tiff_zarr, open_movie

RNG = np.random.default_rng(0)
TCYX = RNG.integers(0, 4000, size=(3, 2, 24, 32), dtype=np.uint16)


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_ome_zarr_round_trip(tmp_path, version):
    p = write_ome_zarr_image(tmp_path / "m.ome.zarr", TCYX, ["nuclei", "cfse"], pixel_size_um=0.3, version=version)
    m = open_movie(p)
    assert m.dims == ("t", "c", "y", "x")
    assert list(m.c.values) == ["nuclei", "cfse"]
    assert m.attrs["pixel_size_um"] == pytest.approx(0.3)
    assert m.attrs["source"]["ngff_version"] == version
    assert m.attrs["source"]["zarr_format"] == (3 if version == "0.5" else 2)
    np.testing.assert_array_equal(m.values, TCYX)


def test_channel_coordinate_is_indexed_without_loading_duck_array_libraries(tmp_path):
    """xarray infers an index by probing every installed duck-array library (pint, which
    napari brings, takes 0.13 s to import); the coordinate comes with its index instead."""
    import subprocess
    import sys

    p = write_ome_zarr_image(tmp_path / "m.ome.zarr", TCYX, ["nuclei", "cfse"], pixel_size_um=0.3)
    code = ("import sys; from popseg_dask.io.movie import open_movie; m = open_movie(sys.argv[1]); "
            "print('pint' in sys.modules, m.c.values.dtype.kind, list(m.sel(c=['cfse']).c.values), "
            "m.isel(t=0, c=1).shape)")
    out = subprocess.run([sys.executable, "-c", code, str(p)], capture_output=True, text=True, check=True).stdout
    assert out.split(maxsplit=2) == ["False", "U", "['cfse'] (24, 32)\n"]


def test_ome_zarr_other_axis_orders_and_singleton_z(tmp_path):
    czyx = TCYX[0][:, None]  # (c, z=1, y, x), no t
    p = write_ome_zarr_image(tmp_path / "czyx.ome.zarr", czyx, ["a", "b"], axes="czyx")
    m = open_movie(p)
    assert m.shape == (1, 2, 24, 32)
    np.testing.assert_array_equal(m.values[0], TCYX[0])


def test_z_stack_is_refused(tmp_path):
    p = write_ome_zarr_image(tmp_path / "z.ome.zarr", np.zeros((2, 3, 8, 8), np.uint16), ["a", "b"], axes="czyx")
    with pytest.raises(PopsegError, match="z-planes"):
        open_movie(p)


def test_plain_zarr_needs_dims_when_ambiguous(tmp_path):
    z = zarr.create_array(store=str(tmp_path / "a.zarr"), shape=(3, 24, 32), chunks=(1, 24, 32), dtype="uint16")
    z[...] = TCYX[:, 0]
    with pytest.raises(PopsegError, match="dims"):
        open_movie(tmp_path / "a.zarr")
    m = open_movie(tmp_path / "a.zarr", dims="tyx", channels=["dna"])
    assert m.shape == (3, 1, 24, 32) and list(m.c.values) == ["dna"]
    np.testing.assert_array_equal(m.values[:, 0], TCYX[:, 0])
    m = open_movie(tmp_path / "a.zarr", dims="cyx")
    assert m.shape == (1, 3, 24, 32) and list(m.c.values) == ["0", "1", "2"]


def test_plain_zarr_4d_defaults_to_tcyx(tmp_path):
    z = zarr.create_array(store=str(tmp_path / "b.zarr"), shape=TCYX.shape, chunks=(1, 1, 24, 32), dtype="uint16")
    z[...] = TCYX
    m = open_movie(tmp_path / "b.zarr", channels=["x1", "x2"])
    np.testing.assert_array_equal(m.values, TCYX)


def test_imagej_hyperstack(tmp_path):
    tifffile.imwrite(tmp_path / "h.tif", TCYX, imagej=True, metadata={"axes": "TCYX", "Labels": ["n", "c"]})
    m = open_movie(tmp_path / "h.tif")
    assert m.shape == TCYX.shape
    np.testing.assert_array_equal(m.values, TCYX)


def test_celldetective_page_order(tmp_path):
    # A plain multi-page stack: page = t * n_channels + c.
    pages = TCYX.reshape(-1, 24, 32)
    tifffile.imwrite(tmp_path / "cd.tif", pages)
    m = open_movie(tmp_path / "cd.tif", channels=["nuclei", "cfse"])
    assert m.shape == TCYX.shape and list(m.c.values) == ["nuclei", "cfse"]
    np.testing.assert_array_equal(m.values, TCYX)
    with pytest.raises(PopsegError, match="multiple"):
        open_movie(tmp_path / "cd.tif", channels=["a", "b", "c", "d", "e"])


def test_ome_tiff_channel_names_and_pixel_size(tmp_path):
    tifffile.imwrite(tmp_path / "o.ome.tif", TCYX, ome=True,
                     metadata={"axes": "TCYX", "Channel": {"Name": ["dapi", "gfp"]},
                               "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5})
    m = open_movie(tmp_path / "o.ome.tif")
    assert list(m.c.values) == ["dapi", "gfp"]
    assert m.attrs["pixel_size_um"] == pytest.approx(0.5)
    np.testing.assert_array_equal(m.values, TCYX)


def test_tiff_is_read_lazily_page_by_page(tmp_path):
    tifffile.imwrite(tmp_path / "lazy.tif", TCYX.reshape(-1, 24, 32))
    _tiff_zarr.cache_clear()
    m = open_movie(tmp_path / "lazy.tif", channels=["a", "b"])
    assert _tiff_zarr.cache_info().misses == 0, "opening must not read pixels"
    one = m.isel(t=2, c=1).values
    np.testing.assert_array_equal(one, TCYX[2, 1])


def test_zarr_is_not_read_on_open(tmp_path):
    p = write_ome_zarr_image(tmp_path / "m.ome.zarr", TCYX, ["a", "b"])
    chunk = p / "0" / "c" / "1" / "0" / "0" / "0"
    assert chunk.exists()
    chunk.write_bytes(b"garbage")          # a corrupted chunk ...
    m = open_movie(p)                       # ... does not stop opening: nothing was read
    np.testing.assert_array_equal(m.isel(t=0).values, TCYX[0])
    with pytest.raises(Exception):
        m.isel(t=1).values


def _text_file(p):
    (p / "notes.txt").write_text("hi")
    return p / "notes.txt"


def _empty_group(p):
    zarr.open_group(str(p / "g.zarr"), mode="w")
    return p / "g.zarr"


def _bad_tiff(p):
    (p / "bad.tif").write_bytes(b"not a tiff")
    return p / "bad.tif"


@pytest.mark.parametrize("make, message", [
    (lambda p: p / "missing.zarr", "not found"),
    (_text_file, "not a movie"),
    (_empty_group, "multiscales"),
    (_bad_tiff, "not a readable TIFF"),
])
def test_bad_inputs_give_one_line(tmp_path, make, message):
    with pytest.raises(PopsegError, match=message) as err:
        open_movie(make(tmp_path))
    assert "\n" not in str(err.value)


def test_channel_count_mismatch(tmp_path):
    p = write_ome_zarr_image(tmp_path / "m.ome.zarr", TCYX, ["a", "b"])
    with pytest.raises(PopsegError, match="one name per channel"):
        open_movie(p, channels=["only"])


def test_unsupported_dtype(tmp_path):
    zarr.create_array(store=str(tmp_path / "c.zarr"), shape=(4, 4), chunks=(4, 4), dtype="complex64")
    with pytest.raises(PopsegError, match="pixel type"):
        open_movie(tmp_path / "c.zarr")
