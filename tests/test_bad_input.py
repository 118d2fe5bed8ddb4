"""The bad-input catalogue, part 2 (part 1, config mistakes, is tests/test_errors.py): inputs that
are not movies, broken outputs, blank frames. Each mistake: exit 2, one line naming the problem
and the fix, no traceback, the input untouched, nothing written that looks complete."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
import yaml
import zarr

from conftest import read_labels

from popseg_dask.cli import main
from popseg_dask.synthetic import DEMO_CONFIG

TCYX = {"dims": "tcyx", "channels": ["nuclei", "cfse"]}


def _inputs(root: Path) -> None:
    (root / "notes.txt").write_text("not pixels")
    zarr.open_group(str(root / "group.zarr"), mode="w")
    zarr.create_array(str(root / "one_d.zarr"), shape=(100,), dtype="uint16")
    zarr.create_array(str(root / "complex.zarr"), shape=(2, 2, 32, 32), dtype="complex64")
    zarr.create_array(str(root / "empty.zarr"), shape=(0, 2, 32, 32), dtype="uint16")
    zarr.create_array(str(root / "five_d.zarr"), shape=(2, 2, 3, 32, 32), dtype="uint16")
    zarr.create_array(str(root / "three_ch.zarr"), shape=(2, 3, 32, 32), dtype="uint16")
    (root / "fake.tif").write_bytes(b"II*\x00garbage")


CASES = {
    "not a movie (a text file)": ({"input": "notes.txt"}, "is not a movie popseg can read"),
    "Zarr group without an image": ({"input": "group.zarr"}, "without OME-NGFF multiscales"),
    "wrong number of dims (1-D array)": ({"input": "one_d.zarr"}, "give 'dims' in the config"),
    "z stack (5-D, z > 1)": ({"input": "five_d.zarr", "dims": "tczyx", "channels": ["nuclei", "cfse"]}, "z"),
    "dims do not match the array": ({"input": "one_d.zarr", "dims": "tcyx"}, "dims"),
    "unsupported pixel type": ({"input": "complex.zarr", **TCYX}, "pixel type complex64"),
    "empty movie": ({"input": "empty.zarr", **TCYX}, "is empty"),
    "more channel names than channels": ({"input": "three_ch.zarr", "dims": "tcyx", "channels": ["a", "b"]},
                                         "channel"),
    "corrupt TIFF": ({"input": "fake.tif"}, "fake.tif"),
    "halo not smaller than the tile": (
        {"populations": {"t": {**DEMO_CONFIG["populations"]["targets"], "tile": 32, "halo": 64}}},
        "halo 64 is not smaller than the tile"),
    "bad type (tile: big)": ({"populations": {"t": {**DEMO_CONFIG["populations"]["targets"], "tile": "big"}}},
                             "populations.t.tile"),
    "out-of-range pixel size": ({"pixel_size_um": -1}, "pixel_size_um"),
    "unknown device": ({"populations": {"t": {**DEMO_CONFIG["populations"]["targets"], "device": "tpu"}}},
                       "device"),
}


def _tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.md5(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*"))
            if p.is_file()}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_clear_line(name, demo_dir, capsys):
    over, message = CASES[name]
    _inputs(demo_dir)
    cfg = {**DEMO_CONFIG, **over, "output": "out.zarr"}
    (demo_dir / "bad.yaml").write_text(yaml.safe_dump(cfg))
    before = _tree(demo_dir)
    rc = main(["run", str(demo_dir / "bad.yaml"), "--quiet", "--workers", "1"])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.startswith("popseg: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert message in err, err
    assert _tree(demo_dir) == before  # input untouched, nothing written
    assert not (demo_dir / "out.zarr").exists()


def _read_only_dir(tmp_path: Path) -> Path:
    if os.geteuid() == 0:  # root writes through permission bits: use a file system that refuses
        return Path("/sys/popseg-read-only")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    return ro / "sub"


def test_output_in_a_read_only_location(demo_dir, tmp_path, capsys):
    target = _read_only_dir(tmp_path) / "out.zarr"
    (demo_dir / "ro.yaml").write_text(yaml.safe_dump({**DEMO_CONFIG, "output": str(target)}))
    assert main(["run", str(demo_dir / "ro.yaml"), "--quiet", "--workers", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot write output" in err and "choose a writable 'output'" in err, err
    assert not target.exists()


def test_output_that_is_not_a_zarr_store_is_never_deleted(demo_dir, capsys):
    (demo_dir / "precious").mkdir()
    (demo_dir / "precious" / "thesis.txt").write_text("years of work")
    (demo_dir / "p.yaml").write_text(yaml.safe_dump({**DEMO_CONFIG, "output": "precious"}))
    assert main(["run", str(demo_dir / "p.yaml"), "--quiet", "--workers", "1"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["run", str(demo_dir / "p.yaml"), "--quiet", "--workers", "1", "--overwrite"]) == 2
    assert "is not a Zarr store; refusing to delete it" in capsys.readouterr().err
    assert (demo_dir / "precious" / "thesis.txt").read_text() == "years of work"


@pytest.mark.parametrize("fill", ["nan", "constant"])
def test_blank_frames_give_empty_labels_not_errors(demo_dir, fill, capsys):
    """All-NaN and constant frames are data, not mistakes (a shutter closed, a focus lost): the run
    completes and those frames have no objects."""
    a = zarr.create_array(str(demo_dir / "blank.zarr"), shape=(3, 2, 64, 64), dtype="float32")
    a[:] = np.random.default_rng(0).normal(500, 50, a.shape).astype(np.float32)
    a[1] = np.nan if fill == "nan" else 7.0
    (demo_dir / "b.yaml").write_text(yaml.safe_dump({**DEMO_CONFIG, "input": "blank.zarr", **TCYX,
                                                     "output": "blank.out.zarr"}))
    assert main(["run", str(demo_dir / "b.yaml"), "--quiet", "--workers", "1"]) == 0
    for pop in ("targets", "effectors"):
        lab = read_labels(demo_dir / "blank.out.zarr", pop)
        assert lab[1].max() == 0
