"""Network segmenters on their device: popseg's streamed batches vs one window at a time vs the bare loop.

``gpu``: on a machine with an NVIDIA GPU (CUDA builds of TensorFlow and torch, and
``nvidia-ml-py`` for the busy share: ``deploy/docker/Dockerfile.cuda`` has all three), the
StarDist and Cellpose models of ``benchmarks/.models`` (trained by ``popseg train`` on first use)
segment the same movie three ways, interleaved:

- *bare loop*: one process, the framework's own call per frame (StarDist ``predict_instances``,
  Cellpose 3 ``eval``) on the normalised frame, ids renumbered and written — the least any tool does;
- *popseg, one at a time*: ``POPSEG_STREAM=0``, one window per forward pass, nothing overlapped
  (popseg before batching);
- *popseg, streamed*: several frames per forward pass (``batch_windows``), the next batch read
  and normalised and the previous one post-processed while the device runs the current one.

It prints frames/s, the GPU's busy share (NVML, sampled every 50 ms while each variant runs) and
the ratio to the bare loop (goals: busy >= 90 %, popseg >= 0.95x the bare loop). Without a GPU
(or with ``--device cpu``) the same comparison runs on the CPU and busy is not measured.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np
import yaml
import zarr
from bench_models import bare_loop, trained_models
from common import demo_movie, medians, popseg_run, print_rows

class BusySampler:
    """Mean GPU utilisation (NVML, every 50 ms) while the block runs; None without NVML or GPU."""

    def __init__(self):
        self.handle = None
        with contextlib.suppress(Exception):
            import pynvml

            pynvml.nvmlInit()
            self.nvml = pynvml
            self.handle = pynvml.nvmlDeviceGetHandleByIndex(0)

    @contextlib.contextmanager
    def measure(self, into: list):
        samples: list[int] = []
        stop = threading.Event()

        def loop():
            while not stop.wait(0.05):
                samples.append(self.nvml.nvmlDeviceGetUtilizationRates(self.handle).gpu)

        thread = threading.Thread(target=loop, daemon=True) if self.handle is not None else None
        if thread:
            thread.start()
        try:
            yield
        finally:
            stop.set()
            if thread:
                thread.join()
            into.append(float(np.mean(samples)) if samples else None)


def _has_gpu() -> bool:
    import shutil

    return bool(shutil.which("nvidia-smi")) and subprocess.run(["nvidia-smi", "-L"], capture_output=True,
                                                                check=False).returncode == 0


def _set_stream(client, on: bool) -> None:
    """POPSEG_STREAM here (the plan's frames per task) and on every worker (their segment tasks)."""
    value = "1" if on else "0"
    os.environ["POPSEG_STREAM"] = value
    client.run(os.environ.__setitem__, "POPSEG_STREAM", value)


def gpu(a) -> dict:
    from popseg_dask.cluster import open_client

    device = "gpu" if getattr(a, "device", None) != "cpu" and _has_gpu() else "cpu"
    frames = a.frames or (64 if device == "gpu" else 8)
    size = a.size or (1024 if device == "gpu" else 512)
    repeats = a.repeats or 2
    models = trained_models(sys.executable)
    sampler = BusySampler()
    out: dict = {"device": device, "movie": {"frames": frames, "size": size}, "repeats": repeats, "kinds": {}}
    variants = ("bare loop", "popseg, one at a time", "popseg, streamed")
    with tempfile.TemporaryDirectory() as tmp, \
            open_client(n_workers=1 if device == "gpu" else 2, threads_per_worker=2, dashboard=False,
                        gpu_workers=None if device == "gpu" else 0) as client:
        tmp = Path(tmp)
        demo_movie(tmp, frames, size, seed=5)
        for kind, channel in (("stardist", 0), ("cellpose", 1)):
            cfg = {"input": "movie.ome.zarr", "output": f"{kind}.zarr", "populations": {
                kind: {"segmenter": kind, "model": str(models[kind]), "tile": "none", "device": device}}}
            (tmp / f"{kind}.yaml").write_text(yaml.safe_dump(cfg))
            popseg_run(tmp / f"{kind}.yaml", client)  # warm-up: the worker loads the model once
            times = {v: [] for v in variants}
            busy = {v: [] for v in variants}
            for _ in range(repeats):
                with sampler.measure(busy["bare loop"]):
                    times["bare loop"].append(bare_loop(sys.executable, kind, models[kind], tmp / "movie.ome.zarr",
                                                        channel, tmp / "bare", device=device))
                for variant, on in (("popseg, one at a time", False), ("popseg, streamed", True)):
                    _set_stream(client, on)
                    with sampler.measure(busy[variant]):
                        times[variant].append(popseg_run(tmp / f"{kind}.yaml", client)[0])
                    if not on:
                        one = zarr.open_array(str(tmp / f"{kind}.zarr" / "labels" / kind / "0"), mode="r")[...]
            streamed = zarr.open_array(str(tmp / f"{kind}.zarr" / "labels" / kind / "0"), mode="r")[...]
            med = medians(times)
            out["kinds"][kind] = {
                "seconds": times, "frames_per_s": {k: frames / v for k, v in med.items()},
                "gpu_busy_percent": {k: (float(np.median([b for b in v if b is not None]))
                                         if any(b is not None for b in v) else None) for k, v in busy.items()},
                "ratios": {"streamed / bare loop (throughput)": med["bare loop"] / med["popseg, streamed"],
                           "one at a time / bare loop (throughput)": med["bare loop"] / med["popseg, one at a time"],
                           "streamed / one at a time (throughput)":
                               med["popseg, one at a time"] / med["popseg, streamed"]},
                "streamed_equals_one_at_a_time": bool(np.array_equal(one, streamed)),
            }
    return out


def show_gpu(res: dict) -> None:
    mv = res["movie"]
    print(f"gpu: {mv['frames']} frames of {mv['size']}x{mv['size']} on the {res['device']}, untiled; "
          f"median of {res['repeats']}")
    for kind, r in res["kinds"].items():
        print(f"  {kind}: " + ", ".join(f"{k} {v:.2f} frames/s" for k, v in r["frames_per_s"].items()))
        busy = r["gpu_busy_percent"]
        if any(v is not None for v in busy.values()):
            print("    GPU busy: " + ", ".join(f"{k} {v:.0f} %" for k, v in busy.items() if v is not None))
        print_rows(r["ratios"], "{:5.2f}", indent="    ")
        print(f"    streamed labels == one at a time: {r['streamed_equals_one_at_a_time']}")
