"""Windows streamed through a segmenter: threads that run ahead, batches, and the tasks that feed them."""

from __future__ import annotations

import copy
import dataclasses
import threading
import time

import numpy as np
import pytest
from scipy import ndimage as ndi

from popseg_dask.config import parse_config
from popseg_dask.pipeline import ClusterFacts, plan_run
from popseg_dask.segmenters import Segmenter, WindowContext
from popseg_dask.segmenters.stream import ahead, batches
from popseg_dask.synthetic import DEMO_CONFIG


def _ahead_threads() -> int:
    return sum(1 for t in threading.enumerate() if t.name == "popseg-ahead")


def test_ahead_keeps_order_and_runs_at_most_depth_items_ahead():
    produced = []

    def items():
        for i in range(20):
            produced.append(i)
            yield i

    seen = []
    for item in ahead(items(), depth=3):
        time.sleep(0.005)  # a slow consumer: the producer must wait for it
        # one item in the consumer's hands, `depth` in the queue, one being put
        assert len(produced) - len(seen) <= 3 + 2
        seen.append(item)
    assert seen == list(range(20))
    assert _ahead_threads() == 0


def test_ahead_raises_the_producers_error_at_its_item():
    def items():
        yield 1
        yield 2
        raise ValueError("frame 3 is damaged")

    got = []
    with pytest.raises(ValueError, match="frame 3 is damaged"):
        for item in ahead(items(), depth=2):
            got.append(item)
    assert got == [1, 2] and _ahead_threads() == 0


def test_ahead_closed_early_stops_its_thread():
    def forever():
        i = 0
        while True:
            yield i
            i += 1

    it = ahead(forever(), depth=2)
    assert [next(it) for _ in range(3)] == [0, 1, 2]
    it.close()
    assert _ahead_threads() == 0

    def consume():  # the consumer fails: the producer stops too
        for item in ahead(forever(), depth=1):
            if item == 5:
                raise RuntimeError("consumer failed")

    with pytest.raises(RuntimeError, match="consumer failed"):
        consume()
    assert _ahead_threads() == 0


def test_batches_group_consecutive_items_of_one_key_up_to_a_size():
    items = [(4, "a"), (4, "b"), (4, "c"), (2, "d"), (4, "e"), (4, "f")]
    got = list(batches(items, size=lambda it: 2, key=lambda it: it[0]))
    assert [[x[1] for x in g] for g in got] == [["a", "b"], ["c"], ["d"], ["e", "f"]]
    assert list(batches([], size=lambda it: 3, key=lambda it: 0)) == []


class Blobs(Segmenter):
    """Connected components above a level; declares nothing but the required parts."""

    name, channels = "blobs", ["nuclei"]

    def __call__(self, block, stats=None):
        return ndi.label(block[0] > 0.5)[0]


class StreamingBlobs(Blobs):
    """The same labels, through a stream that reads ahead in a thread and handles pairs."""

    window_stream = 6

    def segment_windows(self, windows):
        for group in batches(ahead(windows, depth=2), size=lambda w: 2, key=lambda w: w[0].shape):
            for block, stats, ctx in group:
                yield self.segment_window(block, stats, ctx)


def test_the_default_stream_is_segment_window_one_after_another():
    rng = np.random.default_rng(0)
    blocks = [rng.random((1, 40, 50)) for _ in range(5)]
    windows = [(b, None, WindowContext.whole(b.shape[-2:])) for b in blocks]
    for seg in (Blobs(), StreamingBlobs()):
        got = list(seg.segment_windows(iter(windows)))
        assert len(got) == 5
        for (labels, support, vote), b in zip(got, blocks):
            assert np.array_equal(labels, ndi.label(b[0] > 0.5)[0]) and np.array_equal(support, labels > 0)
            assert vote is False


def _with(plan, segmenter, name="targets"):
    jobs = [dataclasses.replace(j, segmenter=segmenter) if j.name == name else j for j in plan.jobs]
    return dataclasses.replace(plan, jobs=jobs)


def test_a_streaming_segmenter_gets_several_frames_per_task(tmp_path):
    from popseg_dask.synthetic import make_movie
    from popseg_dask.io.images import write_ome_zarr_image

    m = make_movie(n_frames=24, size=192, n_targets=4, n_effectors=2, seed=1)
    write_ome_zarr_image(tmp_path / "movie.ome.zarr", m.image, m.channels)
    cfg = copy.deepcopy(DEMO_CONFIG)
    cfg.update(input="movie.ome.zarr", output="out.zarr")
    plan = plan_run(parse_config(cfg, tmp_path))
    placed = {j.name: j for j in _with(plan, StreamingBlobs()).for_cluster(ClusterFacts(threads=2)).jobs}
    # 24 frames on 2 threads: the threshold population gets 3 per task (4 tasks per thread), the
    # streaming one its 6 (2 tasks per thread); each made a divisor of the 8-frame shard row
    assert placed["effectors"].frames_per_task == 2
    assert placed["targets"].frames_per_task == 4
    placed = {j.name: j for j in _with(plan, StreamingBlobs()).for_cluster(ClusterFacts(threads=12)).jobs}
    assert placed["targets"].frames_per_task == 1  # short movie, many threads: every thread gets work


def _wait(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def test_a_unit_that_fills_the_window_alone_is_not_alone_in_flight(client2):
    """A unit weighing the whole window (a shard row of frames) still has the next unit submitted
    beside it, so workers never idle while a row's last task runs; and never more than that."""
    import dask

    from popseg_dask._engine.submit import run_progressively

    in_flight_at_build, done = [], []

    def build(unit):
        in_flight_at_build.append(unit - len(done))  # units submitted and not yet handed back
        return dask.delayed(_wait, pure=False)(0.3)

    run_progressively(client2, range(5), build, window=8, on_result=lambda unit, r: done.append(unit),
                      weight=lambda unit: 8)
    assert sorted(done) == [0, 1, 2, 3, 4]
    # the second unit went out while the first ran, each later one as an earlier one came back
    assert in_flight_at_build == [0, 1, 1, 1, 1]
