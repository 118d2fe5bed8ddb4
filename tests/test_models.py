"""Deep-learning segmenters end to end: threshold labels -> corrected -> export -> train -> run.

Models are trained here, by ``popseg train``, on a synthetic movie (nothing is downloaded), once
per test session. StarDist trains a tiny network in about a minute, Cellpose 3 a full-size one for
a couple of minutes; both run inside real ``popseg run`` calls on a real LocalCluster.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
import yaml

from conftest import read_labels

from popseg_dask.cli import main
from popseg_dask.metrics import f1_score

pytest.importorskip("stardist", reason="the stardist extra is not installed (pip install '.[stardist]')")
pytest.importorskip("cellpose", reason="the cellpose extra is not installed (pip install '.[cellpose]')")

N_FRAMES, SIZE = 8, 256


def _labels(out: Path, pop: str) -> np.ndarray:
    return read_labels(out, pop)


def _mean_f1(a: np.ndarray, b: np.ndarray, iou: float = 0.5) -> float:
    return float(np.mean([f1_score(a[t], b[t], iou) for t in range(len(a))]))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A movie, its threshold labels, 'corrected' labels, training sets and two trained models."""
    from popseg_dask.io.images import write_ome_zarr_image
    from popseg_dask.synthetic import DEMO_CONFIG, make_movie

    root = tmp_path_factory.mktemp("models")
    mv = make_movie(n_frames=N_FRAMES, size=SIZE, n_targets=30, n_effectors=8, seed=0)
    write_ome_zarr_image(root / "movie.ome.zarr", mv.image, mv.channels, pixel_size_um=mv.pixel_size_um)
    (root / "threshold.yaml").write_text(yaml.safe_dump({**DEMO_CONFIG, "output": "threshold.zarr"}))
    assert main(["run", str(root / "threshold.yaml"), "--quiet", "--workers", "1"]) == 0
    # "Corrected in napari": the traditional labels of frames 0-5 fixed by hand, saved as TIFF.
    corrected = _labels(root / "threshold.zarr", "targets").copy()
    corrected[:6] = mv.truth["targets"][:6]
    tifffile.imwrite(root / "targets_corrected.tif", corrected)
    assert main(["export-training", str(root / "threshold.zarr"), "--population", "targets",
                 "--labels", str(root / "targets_corrected.tif"), "--frames", "0:6", "--out", str(root / "ds_t")]) == 0
    assert main(["export-training", str(root / "threshold.zarr"), "--population", "effectors", "--frames", "0:6",
                 "--tiles", "1", "--out", str(root / "ds_e")]) == 0
    # smaller patches than the defaults (this fixture was half of the suite's time), as many
    # steps as keep the models good enough to fine-tune and to tile consistently
    assert main(["train", "stardist", str(root / "ds_t"), "--out", str(root / "models" / "sd"), "--size", "tiny",
                 "--epochs", "20", "--steps", "15", "--patch", "128"]) == 0
    assert main(["train", "cellpose", str(root / "ds_e"), "--out", str(root / "models" / "cp"), "--epochs", "100",
                 "--patch", "96"]) == 0
    return root, mv


def test_training_writes_a_usable_model_folder(trained, capsys):
    root, _ = trained
    sd = root / "models" / "sd"
    assert {"config.json", "thresholds.json", "weights_best.h5", "config_input.json"} <= {p.name for p in sd.iterdir()}
    meta = json.loads((sd / "config_input.json").read_text())
    assert meta["channels"] == ["nuclei"] and meta["spatial_calibration"] == pytest.approx(0.65)
    assert meta["popseg"]["validation_f1"] >= 0.8, meta["popseg"]
    assert 10 <= meta["popseg"]["object_size_px"] <= 40
    cp = root / "models" / "cp"
    cmeta = json.loads((cp / "config_input.json").read_text())
    assert (cp / "cp").is_file() and cmeta["channels"] == ["cfse"] and cmeta["diameter"] > 10
    assert cmeta["popseg"]["validation_f1"] >= 0.8, cmeta["popseg"]
    ds = json.loads((root / "ds_t" / "dataset.json").read_text())
    assert len(ds["items"]) == 6 and ds["source"]["labels"].endswith("targets_corrected.tif")
    # the whole frame's intensity range travels with each tile
    assert all(len(i["scaling"]) == 1 and i["scaling"][0][0] < i["scaling"][0][1] for i in ds["items"])


def test_fine_tuning_starts_from_the_base_model(trained, capsys):
    root, _ = trained
    out = root / "models" / "sd_ft"
    assert main(["train", "stardist", str(root / "ds_t"), "--out", str(out), "--from", str(root / "models" / "sd"),
                 "--epochs", "2", "--steps", "5"]) == 0
    meta = json.loads((out / "config_input.json").read_text())
    assert meta["popseg"]["base"] == str(root / "models" / "sd")
    # two short epochs from a trained model keep it good; from scratch they would not
    assert meta["popseg"]["validation_f1"] >= 0.8
    assert "validation F1" in capsys.readouterr().out


@pytest.fixture(scope="module")
def dl_run(trained, client2):
    from popseg_dask.config import load_config
    from popseg_dask.pipeline import run

    root, mv = trained
    cfg = {"input": "movie.ome.zarr", "output": "dl.zarr", "populations": {
        "sd": {"segmenter": "stardist", "model": "models/sd", "tile": "none"},
        "sd_tiled": {"segmenter": "stardist", "model": "models/sd", "tile": 96},
        "cp": {"segmenter": "cellpose", "model": "models/cp", "tile": "none"},
        "cp_tiled": {"segmenter": "cellpose", "model": "models/cp", "tile": 128, "halo": 64},
    }}
    (root / "dl.yaml").write_text(yaml.safe_dump(cfg))
    rec = run(load_config(root / "dl.yaml"), client=client2)
    return root, mv, rec


def test_stardist_run_matches_truth_and_tiles_agree(dl_run):
    root, mv, rec = dl_run
    sd, sdt = _labels(root / "dl.zarr", "sd"), _labels(root / "dl.zarr", "sd_tiled")
    assert _mean_f1(sd, mv.truth["targets"]) >= 0.8
    assert rec["populations"]["sd_tiled"]["tiles_per_frame"] == 9
    assert _mean_f1(sdt, sd, 0.9) >= 0.99
    # ids are unique across the movie, in frame order
    ids = [np.unique(sdt[t][sdt[t] > 0]) for t in range(N_FRAMES)]
    assert all(a.max() < b.min() for a, b in zip(ids, ids[1:]))
    assert rec["populations"]["sd"]["device"] == "cpu" and rec["populations"]["sd"]["resources"] is None


def test_cellpose_run_matches_truth_and_tiles_agree(dl_run):
    root, mv, rec = dl_run
    cp, cpt = _labels(root / "dl.zarr", "cp"), _labels(root / "dl.zarr", "cp_tiled")
    assert _mean_f1(cp, mv.truth["effectors"]) >= 0.8
    assert rec["populations"]["cp_tiled"]["tiles_per_frame"] == 4
    assert _mean_f1(cpt, cp, 0.9) >= 0.99


def test_models_load_once_per_worker(dl_run, client2):
    from popseg_dask.segmenters.model import model_loads

    loads = client2.run(model_loads)
    per_model: dict[str, int] = {}
    for worker, counts in loads.items():
        for key, n in counts.items():
            assert n == 1, f"{key} loaded {n} times on {worker}"
            per_model[key] = per_model.get(key, 0) + 1
    # two populations share each model: still at most one load per worker process
    assert {k.split(":")[0] for k in per_model} == {"stardist", "cellpose"}
    assert all(n <= len(loads) for n in per_model.values())


@pytest.mark.parametrize("kind", ["stardist", "cellpose"])
def test_batched_windows_equal_windows_one_at_a_time(trained, kind):
    """Several windows per forward pass, read ahead and post-processed in threads: the same labels
    bitwise as one window at a time, and one network pass per window."""
    from popseg_dask.segmenters import WindowContext, get_segmenter_class
    from popseg_dask.segmenters.model import network_passes

    root, mv = trained
    channel = mv.channels[0 if kind == "stardist" else 1]
    model = str(root / "models" / ("sd" if kind == "stardist" else "cp"))
    one = get_segmenter_class(kind).from_config({"model": model, "channel": channel}, mv.channels)
    three = get_segmenter_class(kind).from_config({"model": model, "channel": channel, "batch_windows": 3},
                                                  mv.channels)
    assert one.batch_windows == 1 and three.batch_windows == 3 and three.window_stream == 12
    assert one.on_device("gpu").batch_windows == 8  # the default on a GPU; on the CPU one at a time
    c = mv.channels.index(channel)
    # four whole frames, then a smaller window between them: batches of 3, then 1 (its shape differs), then 1
    windows = [(mv.image[t, [c]].astype(np.float32), None, WindowContext.whole((SIZE, SIZE))) for t in range(4)]
    windows.insert(3, (mv.image[4, [c], :96, :160].astype(np.float32), None, WindowContext((SIZE, SIZE), frame=4)))
    before = network_passes().get(three.population, 0)
    got = list(three.segment_windows(iter(windows)))
    assert network_passes()[three.population] - before == 5
    for (labels, support, _), (block, stats, ctx) in zip(got, windows):
        ref, _, _ = one.segment_window(block, stats, ctx)
        assert labels.shape == block.shape[-2:]
        assert np.array_equal(labels, ref) and np.array_equal(support, ref > 0)
    assert sum(int(labels.max() > 0) for labels, _, _ in got) >= 4  # every whole frame holds cells
    # two worker threads streaming at once share the network (Cellpose 3 converted it to MKL-DNN
    # on every CPU call, which failed when two threads did it together): same labels
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(2) as pool:
        both = list(pool.map(lambda _: list(three.segment_windows(iter(windows))), range(2)))
    for other in both:
        assert all(np.array_equal(a[0], b[0]) for a, b in zip(other, got))


def test_gpu_population_without_gpu_workers_is_refused_before_writing(trained, client2):
    from popseg_dask.config import load_config
    from popseg_dask.errors import PopsegError
    from popseg_dask.pipeline import run

    root, _ = trained
    cfg = {"input": "movie.ome.zarr", "output": "gpu.zarr",
           "populations": {"sd": {"segmenter": "stardist", "model": "models/sd", "device": "gpu"}}}
    (root / "gpu.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(PopsegError, match="no worker of the cluster offers a GPU"):
        run(load_config(root / "gpu.yaml"), client=client2)
    assert not (root / "gpu.zarr").exists()


@pytest.mark.parametrize("pop, message", [
    ({"segmenter": "stardist", "model": "nowhere"}, "model .*nowhere not found"),
    ({"segmenter": "stardist", "model": "models/cp", "channel": "nuclei"}, "not a StarDist model folder"),
    ({"segmenter": "stardist", "model": "models/sd", "channels": ["nuclei", "cfse"]}, "reads 1 channel"),
    ({"segmenter": "stardist", "model": "models/sd", "channel": "dapi"}, "channel 'dapi' is not in the movie"),
    ({"segmenter": "stardist", "model": "models/sd", "channel": "nuclei", "channels": ["nuclei"]}, "either 'channel'"),
    ({"segmenter": "stardist", "model": "models/sd", "percentiles": [99, 1]}, "low must be below high"),
    ({"segmenter": "stardist", "model": "models/sd", "prob_thresh": 1.5}, "prob_thresh"),
    ({"segmenter": "threshold", "channel": "nuclei", "thresholds": [1, 2], "device": "gpu"}, "CPU only"),
    ({"segmenter": "cellpose", "model": "models/cp", "normalize": "absolute"}, "needs 'values"),
])
def test_model_config_errors_are_one_line(trained, pop, message, capsys):
    root, _ = trained
    (root / "bad.yaml").write_text(yaml.safe_dump({"input": "movie.ome.zarr", "output": "bad.zarr",
                                                   "populations": {"p": pop}}))
    assert main(["run", str(root / "bad.yaml"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("popseg: error:")
    import re
    assert re.search(message, err), err
    assert not (root / "bad.zarr").exists()


def test_stardist_receptive_field_bounds_the_network(trained):
    """Changing one input pixel changes the network output only within the computed radius."""
    from stardist.models import StarDist2D

    from popseg_dask.segmenters.stardist import stardist_receptive_field

    root, _ = trained
    cfg = json.loads((root / "models" / "sd" / "config.json").read_text())
    rf, div = stardist_receptive_field(cfg)
    assert div == 8
    model = StarDist2D(None, name="sd", basedir=str(root / "models"))
    x = np.random.default_rng(0).random((1, 256, 256, 1)).astype(np.float32)
    y = x.copy()
    y[0, 128, 128, 0] += 5.0
    # both outputs (prob saturates where the model is sure; the ray distances do not), grid resolution
    a, b = (np.concatenate([np.asarray(o)[0] for o in model.keras_model(v, training=False)], axis=-1)
            for v in (x, y))
    changed = np.argwhere(np.abs(a - b).max(axis=-1) > 1e-6) * 2  # grid 2 -> pixels
    assert len(changed)
    reach = np.abs(changed - 128).max()
    assert reach <= rf, (reach, rf)
    assert reach >= rf // 3  # the bound is not absurdly loose


class TinyCpsam:
    """A stand-in for a cellpose 4 (cpsam) model: its ``eval`` has v4's signature (no ``channels``)."""

    def __init__(self):
        import torch

        self.net = torch.nn.Conv2d(3, 1, 1, bias=False)
        with torch.no_grad():
            self.net.weight[:] = 0
            self.net.weight[0, 0, 0, 0] = 1.0
        self.calls = []

    def eval(self, x, batch_size=8, channel_axis=None, normalize=True, diameter=None, flow_threshold=0.4,
             cellprob_threshold=0.0, min_size=15, **kw):
        import torch
        from scipy import ndimage as ndi

        self.calls.append(dict(channel_axis=channel_axis, normalize=normalize, diameter=diameter, shape=x.shape))
        img = np.moveaxis(np.asarray(x), channel_axis, 0)
        img = np.concatenate([img, np.zeros((3 - img.shape[0], *img.shape[1:]), img.dtype)])[:3]
        with torch.no_grad():
            prob = self.net(torch.from_numpy(np.ascontiguousarray(img))[None])[0, 0].numpy()
        masks, _ = ndi.label(prob > 0.5)
        return masks, None, None


def test_cellpose4_api_path(trained, tmp_path):
    import shutil

    from popseg_dask.segmenters.cellpose import CellposeSegmenter, cellpose_api
    from popseg_dask.segmenters.model import cached_model
    from popseg_dask.pipeline import segment_frame

    root, mv = trained
    stand_in = TinyCpsam()
    assert cellpose_api(stand_in) == 4
    # a folder of its own: this process may hold the real model under the original path already
    shutil.copytree(root / "models" / "cp", tmp_path / "cp")
    seg = CellposeSegmenter.from_config({"model": str(tmp_path / "cp"), "channel": "nuclei",
                                         "diameter": 12}, list(mv.channels))
    cached_model(("cellpose", str(seg.model_path), "cpu"), lambda: stand_in)  # what a v4 load would give
    frame = mv.image[0, :1]
    whole, _ = segment_frame(seg, frame)
    tiled, _ = segment_frame(seg, frame, tile=96)
    assert stand_in.calls and all(c["normalize"] is False and c["channel_axis"] == -1 and c["diameter"] == 12
                                  for c in stand_in.calls)
    assert whole.max() > 10 and np.array_equal(whole, tiled)


def test_export_training_refuses_bad_input(trained, capsys):
    root, _ = trained
    assert main(["export-training", str(root / "threshold.zarr"), "--population", "nobody", "--out",
                 str(root / "x")]) == 2
    assert "population 'nobody' is not in" in capsys.readouterr().err
    assert main(["export-training", str(root / "threshold.zarr"), "--population", "targets", "--frames", "5:99:x",
                 "--out", str(root / "x")]) == 2
    assert "--frames" in capsys.readouterr().err
    assert main(["export-training", str(root / "threshold.zarr"), "--population", "targets", "--out",
                 str(root / "ds_t")]) == 2
    assert "already exists" in capsys.readouterr().err
    # a popseg output trains on a population's corrections: without --population, one line says so
    assert main(["train", "stardist", str(root / "threshold.zarr"), "--out", str(root / "m")]) == 2
    assert "is a popseg output: give --population" in capsys.readouterr().err
    assert main(["train", "stardist", str(root / "ds_t" / "images"), "--out", str(root / "m")]) == 2
    assert "not a training set" in capsys.readouterr().err
    assert not (root / "x").exists() and not (root / "m").exists()


def test_gpu_population_runs_only_on_the_gpu_worker(trained, tmp_path):
    """A real scheduler and two real workers, one offering GPU=1: every segment task of the GPU
    populations (explicit gpu, and auto) ran there; the CPU population used the other worker too."""
    from distributed import Client, get_task_stream
    from conftest import start_loopback_cluster, stop_processes

    import dataclasses

    from popseg_dask.config import load_config, parse_config
    from popseg_dask.pipeline import execute, plan_run, run

    root, _ = trained
    cfg = {"input": "movie.ome.zarr", "output": "placed.zarr", "populations": {
        "sd": {"segmenter": "stardist", "model": "models/sd", "tile": 128, "device": "gpu"},
        "sd_auto": {"segmenter": "stardist", "model": "models/sd", "tile": "none"},
        "thr": {"segmenter": "threshold", "channel": "cfse", "thresholds": [300, 1e9], "tile": "none"},
    }}
    (root / "placed.yaml").write_text(yaml.safe_dump(cfg))
    addr, procs = start_loopback_cluster(tmp_path, [["--resources", "GPU=1"], []])
    try:
        with Client(addr) as client:
            gpu = [w for w, i in client.scheduler_info()["workers"].items() if i.get("resources", {}).get("GPU")]
            with get_task_stream(client) as ts:
                rec = run(load_config(root / "placed.yaml"), client=client)
            # the same tiled population with its tiles in tasks of their own (staged)
            one = {**cfg, "output": "staged.zarr", "populations": {"sd": cfg["populations"]["sd"]}}
            with get_task_stream(client) as ts_staged:
                rec_staged = execute(client, dataclasses.replace(plan_run(parse_config(one, root)), direct=False))
        assert rec["complete"] and rec_staged["complete"]
        assert rec["populations"]["sd"]["device"] == "gpu" and rec["populations"]["sd_auto"]["device"] == "gpu"
        assert rec["populations"]["sd"]["resources"] == {"GPU": 1}
        where, staged = _where(ts.data), _where(ts_staged.data)
        gpu_keys = {**where["direct-sd"], **where["direct-sd_auto"], **staged["tile-sd"], **staged["merge-sd"]}
        assert len(where["direct-sd"]) == N_FRAMES  # a tiled frame's tiles in one task, frames in parallel
        assert len(staged["tile-sd"]) + len(staged["merge-sd"]) == N_FRAMES * (4 + 1)
        # an untiled network streams several frames through one task on the GPU worker
        assert 1 <= len(where["direct-sd_auto"]) < N_FRAMES
        assert set().union(*gpu_keys.values()) == set(gpu)
        other = set().union(*where["direct-thr"].values())
        assert other - set(gpu), "the CPU population should also use the worker without a GPU"
    finally:
        stop_processes(procs)
    sd = _labels(root / "placed.zarr", "sd")
    assert sd.max() > 0 and np.array_equal(sd, _labels(root / "staged.zarr", "sd"))


def _where(task_stream) -> dict[str, dict[str, set[str]]]:
    """``{"<kind>-<population>": {key: workers}}`` of a task stream. Keys, not executions: Dask may
    run a task twice (a steal racing its start, a worker restarted for memory) and that is not
    what the placement tests are about; where each ran is."""
    where: dict[str, dict[str, set[str]]] = {}
    for task in task_stream:
        kind, pop = str(task["key"]).split("-")[:2]
        where.setdefault(f"{kind}-{pop}", {}).setdefault(str(task["key"]), set()).add(task["worker"])
    return where


def test_embedded_gpu_workers_are_pinned():
    """--gpu-workers: embedded workers own one device each; the others see none."""
    from popseg_dask.cluster import open_client

    with open_client(n_workers=1, gpu_workers=2, dashboard=False) as client:
        env = client.run(lambda: __import__("os").environ.get("CUDA_VISIBLE_DEVICES"))
        res = {w: i.get("resources", {}) for w, i in client.scheduler_info()["workers"].items()}
    gpu_env = sorted(env[w] for w, r in res.items() if r.get("GPU") == 1)
    cpu_env = [env[w] for w, r in res.items() if not r.get("GPU")]
    assert gpu_env == ["0", "1"] and cpu_env == [""]


def test_model_populations_record_their_weights_and_tiles(dl_run, client2, tmp_path):
    """A network's labels depend on its weights' bytes and its windows, not on its path or batch size."""
    import shutil

    from popseg_dask.config import parse_config
    from popseg_dask.pipeline import run
    from popseg_dask.segmenters.model import files_digest

    root, _, rec = dl_run
    parts = rec["populations"]["sd_tiled"]["labels_from"]
    assert len(parts["model"]) == 16 and parts["tiles"][0] == [96, 96]
    assert parts["versions"]["stardist"] and "model" not in parts["settings"]
    assert rec["populations"]["cp"]["labels_from"]["model"] == rec["populations"]["cp_tiled"]["labels_from"]["model"]

    out = tmp_path / "dl.zarr"
    shutil.copytree(root / "dl.zarr", out)
    shutil.copytree(root / "models" / "cp", tmp_path / "cp_copy")  # the same bytes elsewhere
    before = {p.name: p.stat().st_mtime_ns for p in (out / "labels" / "cp").rglob("*") if p.is_file()}
    cfg = yaml.safe_load((root / "dl.yaml").read_text())
    cfg.update(input=str(root / "movie.ome.zarr"), output=str(out))
    for name in ("sd", "sd_tiled"):
        cfg["populations"][name]["model"] = str(root / "models" / "sd")
    cfg["populations"]["sd_tiled"]["tile"] = 128
    cfg["populations"]["cp"].update(model=str(tmp_path / "cp_copy"), batch_size=2)
    cfg["populations"]["cp_tiled"]["model"] = str(root / "models" / "cp")
    lines: list[str] = []
    new = run(parse_config(cfg, tmp_path), client=client2, echo=lines.append)
    assert "population sd_tiled: recomputed (tiles changed)" in lines
    assert {x.split(":")[0] for x in lines if x.endswith("kept (computed from the same settings and input)")} == {
        "population sd", "population cp", "population cp_tiled"}
    assert new["populations"]["sd_tiled"]["tiles_per_frame"] == 4
    assert {p.name: p.stat().st_mtime_ns for p in (out / "labels" / "cp").rglob("*") if p.is_file()} == before

    weights = tmp_path / "cp_copy" / "cp"
    digest = files_digest([weights])
    with open(weights, "ab") as f:  # other weights, same file name
        f.write(b"\0")
    assert files_digest([weights]) != digest


def test_cached_network_outputs_rerun_only_post_processing(dl_run, client2, tmp_path):
    """cache: model_outputs — a threshold change reruns post-processing only, with a fresh run's labels."""
    from popseg_dask.config import parse_config
    from popseg_dask.pipeline import run, segment_frame
    from popseg_dask.segmenters import build_segmenter
    from popseg_dask.io.record import read_run_record
    from popseg_dask.segmenters.model import network_passes

    root, mv, _ = dl_run
    pops = {"sd": {"segmenter": "stardist", "model": str(root / "models" / "sd"), "tile": "none",
                   "cache": "model_outputs"},
            "cp": {"segmenter": "cellpose", "model": str(root / "models" / "cp"), "tile": "none",
                   "cache": "model_outputs"}}
    cfg = {"input": str(root / "movie.ome.zarr"), "output": str(tmp_path / "c.zarr"), "populations": pops}
    rec = run(parse_config(cfg, tmp_path), client=client2)
    for p in ("sd", "cp"):  # the cache changes no label: equal to the uncached run of the same settings
        assert np.array_equal(_labels(tmp_path / "c.zarr", p), _labels(root / "dl.zarr", p))
        assert rec["populations"][p]["cache"]["frames"] == N_FRAMES
        assert 0 < rec["populations"][p]["cache"]["bytes_per_frame"] < 4 * SIZE * SIZE * 40
    assert (tmp_path / "c.zarr" / "cache" / "sd" / "cache.json").is_file()

    def passes():
        return sum(n for w in client2.run(network_passes).values() for k, n in w.items() if k in ("sd", "cp"))

    before = passes()
    pops["sd"]["prob_thresh"], pops["cp"]["cellprob_threshold"] = 0.7, 1.5
    lines: list[str] = []
    rec = run(parse_config(cfg, tmp_path), client=client2, echo=lines.append)
    assert "population sd: recomputed (settings.prob_thresh changed)" in lines
    assert any(x.startswith("population cp: network outputs from its cache (8 frame(s)") for x in lines)
    assert passes() == before  # no window went through a network again
    for p in ("sd", "cp"):  # ... and the labels are a fresh run's with the new settings (frame 0)
        spec = parse_config(cfg, tmp_path).populations[p]
        seg = build_segmenter(p, spec, list(mv.channels), pixel_size_um=mv.pixel_size_um)
        pixels = mv.image[0, [list(mv.channels).index(c) for c in seg.channels]]
        # on a worker, as runs are: a network's last float bits depend on its process's thread count
        fresh, _ = client2.submit(segment_frame, seg, pixels, pure=False).result()
        assert np.array_equal(_labels(tmp_path / "c.zarr", p)[0], fresh)
    # the new threshold did change the labels (which way the count goes depends on how NMS
    # plays with the candidates a trained-by-the-test model proposes, so only the change is asserted)
    assert not np.array_equal(_labels(tmp_path / "c.zarr", "sd"), _labels(root / "dl.zarr", "sd"))

    pops["cp"]["min_size"] = 10_000  # a post-processing key too: nothing is left, still no network pass
    before = passes()  # (the fresh frames above went through the networks)
    lines.clear()
    rec = run(parse_config(cfg, tmp_path), client=client2, echo=lines.append, drop_cache=True)
    assert passes() == before and _labels(tmp_path / "c.zarr", "cp").max() == 0
    assert "population sd: kept (computed from the same settings and input)" in lines
    assert not (tmp_path / "c.zarr" / "cache").exists() and "cache" not in rec["populations"]["cp"]
    stored = read_run_record(tmp_path / "c.zarr")
    assert not any("cache" in p for p in stored["populations"].values())  # kept sd's entry too


def test_tune_runs_each_network_once_per_frame(dl_run, client2):
    """Post-processing settings share one network pass per window (StarDist and Cellpose)."""
    from popseg_dask.config import parse_config
    from popseg_dask.segmenters.model import network_passes
    from popseg_dask.tune import expand_space, tune

    root, mv, _ = dl_run
    cfg = parse_config({"input": str(root / "movie.ome.zarr"), "output": str(root / "tune.zarr"), "populations": {
        "sd": {"segmenter": "stardist", "model": str(root / "models" / "sd"), "tile": "none"},
        "cp": {"segmenter": "cellpose", "model": str(root / "models" / "cp"), "tile": "none"}}}, root)
    spaces = {"sd": {"prob_thresh": [0.3, 0.5, 0.7], "nms_thresh": [0.3, 0.5]},
              "cp": {"cellprob_threshold": [-1.0, 0.0, 2.0]}}
    truths = {"sd": mv.truth["targets"], "cp": mv.truth["effectors"]}
    for pop, space in spaces.items():
        before = sum(w.get(pop, 0) for w in client2.run(network_passes).values())
        grid = expand_space(space)
        res = tune(cfg, pop, truths[pop][[1, 4]], [1, 4], grid, client=client2)
        passes = sum(w.get(pop, 0) for w in client2.run(network_passes).values()) - before
        assert passes == 2, f"{pop}: {passes} network passes for 2 frames and {len(grid)} settings"
        assert len(res.rows) == len(grid) and res.best()["mean_f1"] >= 0.5
        assert len({r["f1@0.9"] for r in res.rows}) > 1  # thresholds change the result
