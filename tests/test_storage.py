"""Inputs and outputs where screens live: a real S3 server and a real HTTP server on loopback.

The S3 server is moto's ``ThreadedMotoServer`` (S3 over HTTP, conditional writes included); the
HTTP server is Python's own ``http.server`` serving an OME-Zarr folder. Nothing is mocked.
"""

from __future__ import annotations

import copy
import functools
import http.server
import json
import threading

import numpy as np
import pytest
import yaml
import zarr
from conftest import free_port, read_labels

from popseg_dask.cli import main
from popseg_dask.config import parse_config
from popseg_dask.io.identity import frame_tokens
from popseg_dask.io.lease import Lease
from popseg_dask.io.record import read_run_record
from popseg_dask.location import Location
from popseg_dask.pipeline import plan_run, run
from popseg_dask.synthetic import DEMO_CONFIG

KEY, SECRET = "popseg-test-key", "popseg-test-secret-value"


@pytest.fixture(scope="module")
def s3():
    """A real S3 endpoint on loopback with a bucket; yields the ``storage:`` section to reach it."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    storage = {"endpoint_url": f"http://{host}:{port}", "key": KEY, "secret": SECRET}
    fs = Location.of("s3://popseg", parse_config({"input": "x", "storage": storage,
                                                  "populations": {"p": {"segmenter": "threshold"}}}
                                                 ).storage.options("s3")).fs()
    fs.mkdir("popseg")
    yield storage, fs
    server.stop()


def s3_config(demo_dir, storage, fs, name, **over):
    """The demo config with input and output on S3 (the movie uploaded once per test folder)."""
    if not fs.exists(f"popseg/{demo_dir.name}/movie.ome.zarr/zarr.json"):
        fs.put(str(demo_dir / "movie.ome.zarr"), f"popseg/{demo_dir.name}/movie.ome.zarr", recursive=True)
    cfg = copy.deepcopy(DEMO_CONFIG)
    for p in cfg["populations"].values():
        p["tile"] = 96
    cfg.update(input=f"s3://popseg/{demo_dir.name}/movie.ome.zarr", output=f"s3://popseg/{demo_dir.name}/{name}",
               storage=storage, **over)
    return cfg


def s3_labels(fs, url, pop):
    store = zarr.storage.FsspecStore(fs=_async(fs), path=url.removeprefix("s3://") + f"/labels/{pop}/0", read_only=True)
    return zarr.open_array(store=store, mode="r")[...]


def _async(fs):
    import s3fs

    return s3fs.S3FileSystem(**{**fs.storage_options, "asynchronous": True})


def local_run(demo_dir, client, name="local.zarr"):
    cfg = copy.deepcopy(DEMO_CONFIG)
    for p in cfg["populations"].values():
        p["tile"] = 96
    cfg["output"] = name
    run(parse_config(cfg, demo_dir), client=client)
    return {p: read_labels(demo_dir / name, p) for p in cfg["populations"]}


def test_a_run_on_s3_equals_the_local_run_and_keeps_no_secret(demo_dir, client2, s3):
    storage, fs = s3
    local = local_run(demo_dir, client2)
    cfg = s3_config(demo_dir, storage, fs, "out.popseg.zarr")
    rec = run(parse_config(cfg, demo_dir), client=client2)
    assert rec["complete"] and rec["output"] == cfg["output"]
    for pop, labels in local.items():
        assert np.array_equal(s3_labels(fs, cfg["output"], pop), labels), pop
    prefix = f"popseg/{demo_dir.name}/out.popseg.zarr"
    names = {p.rsplit("/", 1)[-1] for p in fs.ls(prefix)}
    assert names == {"zarr.json", "labels"}  # no ledger, scratch or lease left
    stored = b"".join(fs.cat(p) for p in fs.find(prefix) if p.endswith(".json"))
    assert SECRET.encode() not in stored, "the secret was stored"
    assert KEY.encode() not in stored, "the access key was stored"
    assert b'"storage"' not in stored, "the storage section was stored"
    assert SECRET not in json.dumps(rec)
    # the record reads back from S3 through the same options
    loc = parse_config(cfg, demo_dir).location(cfg["output"])
    assert read_run_record(loc)["fingerprint"] == rec["fingerprint"]


def test_secrets_are_never_printed_and_the_environment_is_enough(demo_dir, s3, capsys, monkeypatch):
    storage, fs = s3
    cfg = s3_config(demo_dir, storage, fs, "printed.zarr")
    (demo_dir / "s3.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["run", str(demo_dir / "s3.yaml"), "--workers", "1"]) == 0
    # credentials and endpoint the way AWS tools take them: the environment, no config at all
    monkeypatch.setenv("AWS_ENDPOINT_URL", storage["endpoint_url"])
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    assert main(["inspect", cfg["output"], "--json"]) == 0
    out = capsys.readouterr()
    info = json.loads(out.out[out.out.index("{"):])
    assert info["run"]["complete"] is True and set(info["labels"]) == {"targets", "effectors"}
    assert SECRET not in out.out + out.err and KEY not in out.out + out.err
    # the downstream commands work on the URL too: the tables land in the bucket
    assert main(["measure", cfg["output"], "--workers", "1", "--quiet"]) == 0
    prefix = cfg["output"].removeprefix("s3://")
    assert fs.exists(f"{prefix}/measurements.parquet/_popseg_complete")
    from popseg_dask.measure import read_measurements

    table = read_measurements(parse_config(cfg, demo_dir).location(cfg["output"]) / "measurements.parquet")
    assert set(table["population"].astype(str)) == {"targets", "effectors"}
    # the report reads the table, labels and movie with the environment's credentials (this
    # process reached the bucket before with the config's: nothing stale may be reused)
    assert main(["report", cfg["output"]]) == 0
    assert fs.exists(f"{prefix}/report/index.html") and fs.exists(f"{prefix}/report/areas.png")
    out = capsys.readouterr()
    assert SECRET not in out.out + out.err and KEY not in out.out + out.err


@pytest.fixture
def http_root(tmp_path):
    """``http.server`` serving a folder on loopback (read-only: GET and HEAD only)."""
    served = tmp_path / "served"
    served.mkdir()
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    handler = functools.partial(Quiet, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield served, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_an_http_input_is_read_in_place(demo_dir, client2, http_root, capsys):
    served, base = http_root
    import shutil

    shutil.copytree(demo_dir / "movie.ome.zarr", served / "movie.ome.zarr")
    local = local_run(demo_dir, client2)
    cfg = copy.deepcopy(DEMO_CONFIG)
    for p in cfg["populations"].values():
        p["tile"] = 96
    cfg.update(input=f"{base}/movie.ome.zarr", output="from-http.zarr")
    run(parse_config(cfg, demo_dir), client=client2)
    for pop, labels in local.items():
        assert np.array_equal(read_labels(demo_dir / "from-http.zarr", pop), labels)
    # HTTP is read-only: an output beside the input cannot be written, said before anything runs
    cfg.pop("output")
    (demo_dir / "http.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["run", str(demo_dir / "http.yaml"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "read-only" in err and "set 'output'" in err and err.count("\n") == 1


def test_a_tiff_url_is_refused_with_the_fix(demo_dir, capsys):
    cfg = {**DEMO_CONFIG, "input": "s3://popseg/movie.ome.tif", "output": "x.zarr"}
    (demo_dir / "tif.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["run", str(demo_dir / "tif.yaml"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "TIFF inputs are read from local disk only" in err and "convert" in err and err.count("\n") == 1


@pytest.mark.parametrize("where", ["local", "s3"])
def test_the_lease_refuses_a_second_run_and_takes_over_a_stale_one(where, demo_dir, s3, capsys):
    storage, fs = s3
    cfg = s3_config(demo_dir, storage, fs, "leased.zarr") if where == "s3" else {**DEMO_CONFIG, "output": "leased.zarr"}
    (demo_dir / "l.yaml").write_text(yaml.safe_dump(cfg))
    out = parse_config(cfg, demo_dir).location(cfg["output"])
    other = Lease(out / ".popseg-lease")
    other.acquire()  # another run, alive: its heartbeat is fresh
    try:
        for extra in ([], ["--overwrite"]):
            assert main(["run", str(demo_dir / "l.yaml"), "--quiet", "--workers", "1", *extra]) == 2
            err = capsys.readouterr().err
            assert "is being written by another run" in err and f"pid {other.info['pid']}" in err, err
            assert err.count("\n") == 1
        assert [n for n in out.list() if n != ".popseg-lease"] == []  # nothing was written or deleted
    finally:
        other._stop.set()
    # the other run dies without giving the lease back, on another host: it goes stale by its heartbeat
    gen = other.generation
    info = {**other.info, "host": "elsewhere", "heartbeat": other.info["heartbeat"] - 3600}
    (out / ".popseg-lease" / f"{gen:06d}.json").write_bytes(json.dumps(info).encode())
    assert main(["run", str(demo_dir / "l.yaml"), "--workers", "1"]) == 0
    text = capsys.readouterr().out
    assert "taking over the output from a run that stopped (host elsewhere" in text
    assert ".popseg-lease" not in out.list()
    with pytest.raises(Exception, match="took over"):
        other.check()  # the old holder, should it wake up, finds out and stops


def test_frame_tokens_change_only_for_the_frames_whose_chunks_change(demo_dir, s3):
    storage, fs = s3
    for cfg in ({**DEMO_CONFIG}, s3_config(demo_dir, storage, fs, "tokens.zarr")):
        plan = plan_run(parse_config(cfg, demo_dir))
        source = plan.movie.attrs["source"]
        before = frame_tokens(source, plan.n_frames, plan.input.storage_options)
        assert before is not None and len({tuple(b) for b in before}) == plan.n_frames  # a chunk row per frame
        arr = zarr.open_array(store=Location.of(source["array"], plan.input.storage_options).zarr_store(), mode="r+")
        arr[2, 1] = arr[2, 1] + 1  # frame 2, channel 1 only
        after = frame_tokens(source, plan.n_frames, plan.input.storage_options)
        assert [t for t in range(plan.n_frames) if before[t] != after[t]] == [2]
        assert before[2][0] == after[2][0] and before[2][1] != after[2][1]  # per channel block


@pytest.mark.parametrize("numbering", ["staged", "direct-tiled", "direct"])
def test_a_resume_never_mixes_two_inputs(numbering, tmp_path, capsys, request):
    """A frame with results replaced between an interrupted run and its resume is refused, with
    tiles in tasks of their own (frames recorded one by one), and tiled or untiled frames in one
    task each (whole shard rows of 8 frames numbered at once)."""
    from popseg_dask.io.images import write_ome_zarr_image
    from popseg_dask.io.ledger import Ledger
    from popseg_dask.synthetic import make_movie

    m = make_movie(n_frames=12, size=128, n_targets=10, n_effectors=3, seed=5)
    write_ome_zarr_image(tmp_path / "movie.ome.zarr", m.image, m.channels, pixel_size_um=m.pixel_size_um)
    cfg = copy.deepcopy({**DEMO_CONFIG, "output": "mixed.zarr"})
    for p in cfg["populations"].values():
        p["tile"] = "none" if numbering == "direct" else 64
    if numbering == "staged":
        request.getfixturevalue("staged_tiles")
    (tmp_path / "m.yaml").write_text(yaml.safe_dump(cfg))
    movie = tmp_path / "movie.ome.zarr" / "0"
    arr = zarr.open_array(str(movie), mode="r+")
    good = arr[10].copy()
    # frame 10 unreadable: the run stops after recording other frames, nothing complete
    chunk = movie / "c" / "10" / "0" / "0" / "0"
    saved = chunk.read_bytes()
    chunk.write_bytes(b"damaged")
    assert main(["run", str(tmp_path / "m.yaml"), "--quiet", "--workers", "1"]) == 2
    capsys.readouterr()
    assert not read_run_record(tmp_path / "mixed.zarr", complete=False)["complete"]
    # frame 10 is repaired, and the movie replaced by another one: a recorded frame now holds other cells
    chunk.write_bytes(saved)
    assert np.array_equal(arr[10], good)
    ledger = Ledger(tmp_path / "mixed.zarr" / ".popseg")
    done = ledger.segmented if numbering == "staged" else ledger.numbered
    recorded = [t for t in range(12) if t != 10 and any(done(p, 12)[t] for p in DEMO_CONFIG["populations"])]
    replaced = recorded[0]
    arr[replaced] = np.roll(arr[replaced], 17, axis=-1)
    assert main(["run", str(tmp_path / "m.yaml"), "--quiet", "--workers", "1"]) == 2
    err = capsys.readouterr().err
    assert "changed since the interrupted run" in err and f"1 frame(s) differ ({replaced})" in err, err
    assert "--overwrite" in err
    assert main(["run", str(tmp_path / "m.yaml"), "--quiet", "--workers", "1", "--overwrite"]) == 0
    assert read_run_record(tmp_path / "mixed.zarr")["complete"]


@pytest.mark.parametrize("first, then", [(0, None), (None, 0)], ids=["staged-then-in-task", "in-task-then-staged"])
def test_a_resume_planned_another_way_still_gives_the_clean_labels(first, then, tmp_path, capsys, monkeypatch):
    """Whether a frame's tiles share one task depends on the cluster (frames per worker thread), so
    a resume on another cluster can number another way than the run it resumes: nothing recorded
    one way is taken for the other, and the labels are those of one clean run."""
    import dask

    from popseg_dask.io.images import write_ome_zarr_image
    from popseg_dask.synthetic import make_movie

    m = make_movie(n_frames=12, size=128, n_targets=10, n_effectors=3, seed=5)
    write_ome_zarr_image(tmp_path / "movie.ome.zarr", m.image, m.channels, pixel_size_um=m.pixel_size_um)
    cfg = copy.deepcopy(DEMO_CONFIG)
    for p in cfg["populations"].values():
        p["tile"] = 64
    for name in ("clean", "resumed"):
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump({**cfg, "output": f"{name}.zarr"}))
    assert main(["run", str(tmp_path / "clean.yaml"), "--quiet", "--workers", "1"]) == 0

    def planned(pixels):  # None: popseg's default
        monkeypatch.setitem(dask.config.config, "popseg", {} if pixels is None else {"frame-task-pixels": pixels})

    chunk = tmp_path / "movie.ome.zarr" / "0" / "c" / "10" / "0" / "0" / "0"
    saved = chunk.read_bytes()
    chunk.write_bytes(b"damaged")  # the first run stops at frame 10, after recording others
    planned(first)
    assert main(["run", str(tmp_path / "resumed.yaml"), "--quiet", "--workers", "1"]) == 2
    chunk.write_bytes(saved)
    planned(then)
    assert main(["run", str(tmp_path / "resumed.yaml"), "--quiet", "--workers", "1"]) == 0
    capsys.readouterr()
    rec = read_run_record(tmp_path / "resumed.zarr")
    assert rec["complete"]
    assert {p["numbering"] for p in rec["populations"].values()} == {"staged" if then == 0 else "direct"}
    for pop in cfg["populations"]:
        assert np.array_equal(read_labels(tmp_path / "resumed.zarr", pop), read_labels(tmp_path / "clean.zarr", pop))


# --------------------------------------------------------------------------- sharded labels

def test_every_shard_row_has_exactly_one_writer():
    from popseg_dask._engine.plan import shard_units

    n_t = 45
    for missing in (list(range(n_t)), [3, 4, 30, 44], [8, 9, 10, 11, 12, 13, 14, 15]):
        for per_task in (1, 8, 20, 64):
            units = shard_units(missing, 8, per_task, n_t)
            groups = [g for u in units for g in u]
            rows = [g[0] // 8 for g in groups]
            assert len(rows) == len(set(rows)), "a shard row in two units would have two writers"
            assert all(g == list(range(g[0], min(n_t, g[0] + 8))) and g[0] % 8 == 0 for g in groups)  # whole rows
            assert set(missing) <= {t for g in groups for t in g}


def test_sharded_output_equals_unsharded_and_reads_back(tmp_path, client2):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader
    from ome_zarr_models.v05 import ImageLabel

    from popseg_dask.io.images import write_ome_zarr_image
    from popseg_dask.synthetic import make_movie

    m = make_movie(n_frames=19, size=160, n_targets=10, n_effectors=3, seed=5)
    v4 = write_ome_zarr_image(tmp_path / "v4.ome.zarr", m.image, m.channels, pixel_size_um=0.65, version="0.4")
    write_ome_zarr_image(tmp_path / "v5.ome.zarr", m.image, m.channels, pixel_size_um=0.65)
    cfg = copy.deepcopy(DEMO_CONFIG)
    cfg["input"] = "v5.ome.zarr"
    cfg["output"] = "sharded.zarr"
    rec = run(parse_config(cfg, tmp_path), client=client2)
    plain = {**cfg, "input": str(v4)}
    plain.pop("output")
    run(parse_config(plain, tmp_path), client=client2, in_place=True)  # NGFF 0.4 in place: Zarr v2, no shards
    for pop in cfg["populations"]:
        sharded = zarr.open_array(str(tmp_path / "sharded.zarr" / "labels" / pop / "0"), mode="r")
        unsharded = zarr.open_array(str(v4 / "labels" / pop / "0"), mode="r")
        assert sharded.shards == (8, 160, 160) and sharded.chunks == (1, 160, 160) and unsharded.shards is None
        assert np.array_equal(sharded[...], unsharded[...]) and rec["populations"][pop]["n_objects"] > 0
        # one stored object per shard: 19 frames -> 3 shards
        stored = [p for p in (tmp_path / "sharded.zarr" / "labels" / pop / "0" / "c").rglob("*") if p.is_file()]
        assert len(stored) == 3
        ImageLabel.from_zarr(zarr.open_group(str(tmp_path / "sharded.zarr" / "labels" / pop), mode="r"))
        nodes = list(Reader(parse_url(str(tmp_path / "sharded.zarr" / "labels" / pop)))())
        assert any(n.data and np.array_equal(np.asarray(n.data[0]), sharded[...]) for n in nodes)


def test_a_run_on_s3_killed_mid_run_resumes_to_identical_labels(tmp_path, client2, s3, capsys, staged_tiles):
    import os
    import signal
    import subprocess
    import sys
    import time

    from popseg_dask.io.images import write_ome_zarr_image
    from popseg_dask.synthetic import make_movie

    storage, fs = s3
    m = make_movie(n_frames=30, size=192, n_targets=14, n_effectors=4, seed=9)
    write_ome_zarr_image(tmp_path / "movie.ome.zarr", m.image, m.channels, pixel_size_um=m.pixel_size_um)
    clean = local_run(tmp_path, client2, "clean.zarr")
    cfg = s3_config(tmp_path, storage, fs, "killed.zarr")
    (tmp_path / "killed.yaml").write_text(yaml.safe_dump(cfg))
    frames = f"popseg/{tmp_path.name}/killed.zarr/.popseg/frames"

    def segmented():
        return sum(len(fs.ls(f"{frames}/{p}", refresh=True)) for p in clean if fs.exists(f"{frames}/{p}"))

    proc = subprocess.Popen([sys.executable, "-m", "popseg_dask.cli", "run", str(tmp_path / "killed.yaml"),
                             "--workers", "1", "--quiet"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    deadline = time.time() + 180
    while segmented() < 8:
        assert proc.poll() is None, "the run ended before it could be killed: " + proc.stderr.read().decode()
        assert time.time() < deadline, "no frame finished within 3 minutes"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # the client and its embedded workers, mid-run
    proc.wait()
    done = segmented()
    assert 8 <= done < 60
    assert main(["run", str(tmp_path / "killed.yaml"), "--workers", "2", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "taking over the output from a run that stopped" in out  # its lease: a dead pid of this host
    assert f"resuming: {done} of 60 frame(s) already segmented" in out
    for pop, labels in clean.items():
        assert np.array_equal(s3_labels(fs, cfg["output"], pop), labels), pop


def test_a_worker_killed_mid_run_on_s3_still_gives_identical_labels(tmp_path, s3, staged_tiles):
    """Input and output on S3, real ``dask worker`` processes on loopback: one is SIGKILLed mid-run
    and the run finishes on the other, with the labels of a clean local run."""
    import os
    import signal
    import time

    from conftest import start_loopback_cluster, stop_processes
    from distributed import Client

    from popseg_dask.io.images import write_ome_zarr_image
    from popseg_dask.synthetic import make_movie

    storage, fs = s3
    m = make_movie(n_frames=30, size=192, n_targets=14, n_effectors=4, seed=12)
    write_ome_zarr_image(tmp_path / "movie.ome.zarr", m.image, m.channels, pixel_size_um=m.pixel_size_um)
    addr, procs = start_loopback_cluster(tmp_path, [[], []])
    frames = f"popseg/{tmp_path.name}/worker.zarr/.popseg/frames"
    result: dict = {}
    try:
        with Client(addr) as client:
            clean = local_run(tmp_path, client, "clean.zarr")
            cfg = s3_config(tmp_path, storage, fs, "worker.zarr")

            def segmented():
                return sum(len(fs.ls(f"{frames}/{p}", refresh=True)) for p in clean if fs.exists(f"{frames}/{p}"))

            def go():
                try:
                    result["record"] = run(parse_config(cfg, tmp_path), client=client)
                except BaseException as err:  # reported below
                    result["error"] = err

            th = threading.Thread(target=go)
            th.start()
            deadline = time.time() + 180
            while segmented() < 8:
                assert th.is_alive(), f"the run ended before a worker could be killed: {result}"
                assert time.time() < deadline, "no frame finished within 3 minutes"
                time.sleep(0.2)
            os.killpg(procs[1].pid, signal.SIGKILL)  # a worker (procs[0] is the scheduler)
            killed_at = segmented()
            th.join(timeout=300)
            assert not th.is_alive() and "error" not in result, result.get("error")
            assert len(client.scheduler_info()["workers"]) == 1  # it stayed dead
    finally:
        stop_processes([p for p in procs if p.poll() is None])
    assert killed_at < 60
    assert result["record"]["complete"] and result["record"]["frames_computed"] == 60
    for pop, labels in clean.items():
        assert np.array_equal(s3_labels(fs, cfg["output"], pop), labels), pop


@pytest.mark.parametrize("where", ["local", "s3"])
def test_model_output_cache_on_disk_and_on_s3(where, s3, tmp_path):
    """Cached network outputs: windows stored and read back, sized in one listing, kept only for
    the outputs they were computed from."""
    from popseg_dask.io.cache import ModelOutputCache

    storage, fs = s3
    if where == "s3":
        options = parse_config({"input": "x", "storage": storage, "populations": {"p": {"segmenter": "threshold"}}}
                               ).storage.options("s3")
        root = Location.of(f"s3://popseg/{tmp_path.name}/cache/sd", options)
    else:
        root = Location.of(tmp_path / "cache" / "sd")
    cache = ModelOutputCache(root)
    assert cache.open_for("fp1", {"settings": {}}) is False and cache.size() == (0, 0)
    prob = np.arange(12, dtype=np.float16).reshape(3, 4)
    for t, box in ((0, (0, 0, 3, 4)), (0, (0, 4, 3, 4)), (5, (0, 0, 3, 4))):
        cache.save(t, box, {"prob": prob + t})
    got = cache.load(5, (0, 0, 3, 4))
    assert got["prob"].dtype == np.float16 and np.array_equal(got["prob"], prob + 5)
    assert cache.load(1, (0, 0, 3, 4)) is None
    size, frames = cache.size()
    objects = [root / f"t{t:06d}" / n for t in (0, 5) for n in (root / f"t{t:06d}").list()]
    assert frames == 2 and len(objects) == 3 and size == sum(len(o.read_bytes()) for o in objects)
    assert cache.open_for("fp1", {"settings": {}}) is True and cache.size() == (size, 2)  # kept
    assert cache.open_for("fp2", {"settings": {"n_tiles": [2, 2]}}) is False  # another network input
    assert cache.size() == (0, 0) and cache.meta()["fingerprint"] == "fp2"
