"""The plan is complete before any task, and the same tile policy serves a run and segment_frame."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import numpy as np
import pytest
import zarr
from conftest import read_labels

from popseg_dask.config import parse_config
from popseg_dask.errors import PopsegError
from popseg_dask.pipeline import ClusterFacts, plan_run, run, segment_frame
from popseg_dask.segmenters import Segmenter, build_segmenter, protocol_markdown
from popseg_dask.stitch import canonical_relabel
from popseg_dask.synthetic import DEMO_CONFIG


def tiled_config(demo_dir, output="tiled.zarr"):
    cfg = copy.deepcopy(DEMO_CONFIG)
    cfg["output"] = output
    cfg["populations"]["targets"]["tile"] = [64, 96]
    # a position-dependent filter: this population cannot be tiled exactly, so it must run whole
    cfg["populations"]["effectors"]["filters"] = [["std", 4], ["gauss", 1]]
    cfg["populations"]["effectors"]["thresholds"] = [25, float("inf")]
    cfg["populations"]["effectors"]["tile"] = 64
    return parse_config(cfg, demo_dir)


def test_segment_frame_equals_a_run_on_a_tiled_config(demo_dir, client2):
    config = tiled_config(demo_dir)
    rec = run(config, client=client2)
    plan = plan_run(config)
    assert rec["populations"]["effectors"]["tiles_per_frame"] == 1  # the policy ran it whole
    assert rec["populations"]["targets"]["tiles_per_frame"] == 6
    names = [str(c) for c in plan.movie.c.values]
    for pop, spec in config.populations.items():
        seg = build_segmenter(pop, spec, names, base_dir=config.base_dir)  # as built, before the policy
        stored = read_labels(demo_dir / "tiled.zarr", pop)
        for t in range(plan.n_frames):
            frame = plan.movie.sel(c=seg.channels)[t].values
            got, info = segment_frame(seg, frame, tile=spec.tile, halo=spec.halo, tile_memory_mb=spec.tile_memory_mb)
            assert np.array_equal(got, canonical_relabel(stored[t])[0]), (pop, t)
            assert info.count == int(got.max())


class GpuCapable(Segmenter):
    name, channels, devices = "gpu-capable", ["nuclei"], ("cpu", "gpu")

    def __call__(self, block, stats=None):
        return (block[0] > 0).astype(np.int32)

    def on_device(self, device):
        new = copy.copy(self)
        new.resources = {"GPU": 1} if device == "gpu" else None
        return new


def with_segmenter(plan, device):
    config = plan.config.model_copy(deep=True)
    config.populations["targets"].device = device
    jobs = [dataclasses.replace(j, segmenter=GpuCapable()) if j.name == "targets" else j for j in plan.jobs]
    return dataclasses.replace(plan, config=config, jobs=jobs)


def test_placing_a_plan_is_a_pure_function_of_the_cluster_facts(demo_dir):
    plan = plan_run(tiled_config(demo_dir))
    auto = with_segmenter(plan, "auto")
    on_gpu = auto.for_cluster(ClusterFacts(threads=4, gpu_workers=1))
    on_cpu = auto.for_cluster(ClusterFacts(threads=4, gpu_workers=0))
    job = {j.name: j for j in on_gpu.jobs}["targets"]
    assert job.device == "gpu" and job.segmenter.resources == {"GPU": 1}
    assert {j.name: j for j in on_cpu.jobs}["targets"].device == "cpu"
    # the plan it came from is untouched: segmenters are copied, never mutated
    assert {j.name: j for j in auto.jobs}["targets"].segmenter.resources is None
    assert on_gpu.window == 16 and on_gpu.facts.threads == 4
    with pytest.raises(PopsegError, match="asks for device: gpu but no worker"):
        with_segmenter(plan, "gpu").for_cluster(ClusterFacts(threads=2, gpu_workers=0))


def test_untiled_frames_are_batched_but_every_thread_gets_work(demo_dir):
    plan = plan_run(parse_config({**DEMO_CONFIG, "output": "b.zarr"}, demo_dir))
    placed = {j.name: j for j in plan.for_cluster(ClusterFacts(threads=1)).jobs}
    # 4 frames on 1 thread: at least 4 tasks, so one frame each
    assert all(j.tiles.untiled and j.frames_per_task == 1 for j in placed.values())
    from popseg_dask._engine.plan import frames_per_task

    assert frames_per_task(10_000, 32 * 32, 2, 1 << 22) == 64          # capped at 64
    assert frames_per_task(10_000, 2048 * 2048, 2, 1 << 22) == 1      # one large frame fills the budget
    assert frames_per_task(40, 32 * 32, 2, 1 << 22) == 5              # 8 tasks for 2 threads


def test_untiled_populations_are_numbered_directly_where_uint32_provably_holds_every_id(demo_dir):
    from popseg_dask._engine.plan import aligned, direct_fits

    plan = plan_run(tiled_config(demo_dir))
    placed = {j.name: j for j in plan.for_cluster(ClusterFacts(threads=2)).jobs}
    assert placed["targets"].numbering == "direct"    # 4 tiled frames, 2 lanes: each frame's tiles in one task
    assert placed["effectors"].numbering == "direct"  # run whole by the tile policy
    # too few frames to keep every lane busy: a frame's tiles spread over tasks, through a scratch array
    placed = {j.name: j for j in plan.for_cluster(ClusterFacts(threads=3)).jobs}
    assert placed["targets"].numbering == "staged" and placed["effectors"].numbering == "direct"
    # the dtype is fixed before any count is known: one object per pixel must still fit uint32
    assert direct_fits(1000, (2048, 2048)) and not direct_fits(1024, (2048, 2048))
    assert direct_fits(100_000, (32, 32))
    # a shard row (8 frames) is covered by whole segment tasks
    assert [aligned(n, 8) for n in (1, 2, 3, 5, 7, 8, 9, 17, 64)] == [1, 2, 2, 4, 4, 8, 8, 16, 64]
    assert [aligned(n, 1) for n in (1, 3, 64)] == [1, 3, 64]  # Zarr v2: no shards


def test_frames_too_large_for_one_task_are_tiled_across_tasks(demo_dir):
    import dask

    plan = plan_run(tiled_config(demo_dir))
    for limit, numbering in ((192 * 192, "direct"), (192 * 192 - 1, "staged"), (0, "staged")):
        with dask.config.set({"popseg.frame-task-pixels": limit}):  # the demo's frames are 192²
            placed = {j.name: j for j in plan.for_cluster(ClusterFacts(threads=1)).jobs}
        assert placed["targets"].numbering == numbering and placed["effectors"].numbering == "direct"
    with dask.config.set({"popseg.frame-task-pixels": "big"}), pytest.raises(PopsegError, match="set a number"):
        plan.for_cluster(ClusterFacts(threads=1))


def test_tiled_frames_stitched_in_one_task_equal_the_staged_run_and_the_untiled_one(demo_dir, client2):
    """Tiles of a frame in one task (direct) and in tasks of their own (staged): the same stitching,
    bitwise the same labels, and both equal to the untiled frames."""
    from popseg_dask.pipeline import execute

    cfg = copy.deepcopy(DEMO_CONFIG)
    cfg["populations"]["targets"]["tile"] = [64, 96]
    recs = {}
    for name, tile, direct in (("direct", [64, 96], True), ("staged", [64, 96], False), ("whole", "none", True)):
        cfg["output"], cfg["populations"]["targets"]["tile"] = f"{name}.zarr", tile
        recs[name] = execute(client2, dataclasses.replace(plan_run(parse_config(cfg, demo_dir)), direct=direct))
    pops = {k: r["populations"]["targets"] for k, r in recs.items()}
    assert [pops[k]["numbering"] for k in ("direct", "staged", "whole")] == ["direct", "staged", "direct"]
    assert pops["direct"]["tiles_per_frame"] == pops["staged"]["tiles_per_frame"] == 6
    assert pops["direct"]["merged_regions"] == pops["staged"]["merged_regions"]
    assert pops["direct"]["copied_clusters"] == pops["staged"]["copied_clusters"]
    labels = {k: read_labels(demo_dir / f"{k}.zarr", "targets") for k in recs}
    cut = labels["direct"][:, 63] == labels["direct"][:, 64]  # rows either side of the first cut
    assert (cut & (labels["direct"][:, 64] > 0)).any()  # objects the tiles cut, whole in the labels
    assert np.array_equal(labels["direct"], labels["staged"]) and np.array_equal(labels["direct"], labels["whole"])


def test_a_frame_plane_is_read_like_a_scratch_array_and_holds_one_frame():
    from popseg_dask._engine.frame import FramePlane

    p = FramePlane(3, (4, 5), np.uint32)
    p[3, 1:3, 2:4] = 7
    view = p[3, 0:2, 2:5]
    assert view.tolist() == [[0, 0, 0], [7, 7, 0]]
    with pytest.raises(ValueError):
        view[0, 0] = 1  # a read is never an alias to write through
    with pytest.raises(IndexError, match="frame 2 asked of the plane of frame 3"):
        p[2, 0:1, 0:1]


def test_direct_and_staged_numbering_write_the_same_labels(demo_dir, client2):
    """The staged path still serves untiled frames of movies too long for uint32's bound."""
    import dataclasses as dc

    from popseg_dask.pipeline import execute

    config = parse_config({**DEMO_CONFIG, "output": "direct.zarr"}, demo_dir)
    rec = run(config, client=client2)
    staged = parse_config({**DEMO_CONFIG, "output": "staged.zarr"}, demo_dir)
    rec2 = execute(client2, dc.replace(plan_run(staged), direct=False))
    for pop in DEMO_CONFIG["populations"]:
        assert rec["populations"][pop]["numbering"] == "direct" and rec2["populations"][pop]["numbering"] == "staged"
        assert np.array_equal(read_labels(demo_dir / "direct.zarr", pop), read_labels(demo_dir / "staged.zarr", pop))
        assert rec["populations"][pop]["objects_per_frame"] == rec2["populations"][pop]["objects_per_frame"]


def test_readme_protocol_table_is_generated_from_the_base_class():
    text = (Path(__file__).parents[1] / "README.md").read_text()
    block = text.split("<!-- protocol:start -->\n", 1)[1].split("<!-- protocol:end -->", 1)[0]
    assert block == protocol_markdown(), "regenerate it: python -m popseg_dask.segmenters README.md"
    # every capability the engine reads is declared (with a default) on the base class and documented
    for name in ("halo", "link", "object_size", "align", "objects_independent", "whole_frame_reason", "devices",
                 "resources", "needs_frame_stats", "needs_tile_stats", "tile_stats_rounds", "on_device", "with_context",
                 "segment_window"):
        assert hasattr(Segmenter, name) and f"`{name}" in block


def test_output_paths_come_from_one_layout(demo_dir, client2):
    from popseg_dask.io.layout import OutputLayout

    config = parse_config({**DEMO_CONFIG, "output": "lay.zarr"}, demo_dir)
    run(config, client=client2)
    lay = OutputLayout(demo_dir / "lay.zarr")
    for pop in config.populations:
        assert zarr.open_array(str(lay.label_array(pop)), mode="r").ndim == 3
    assert not lay.state.exists()  # the ledger and scratch are gone once the run is complete


def test_shifted_into_adds_the_offset_to_objects_only():
    from popseg_dask._engine.direct import shifted_into

    rng = np.random.default_rng(3)
    ids = (rng.random((37, 41)) < 0.4) * rng.integers(1, 500, (37, 41))
    for dtype in (np.uint32, np.int64):
        for offset in (0, 1, 12345, 2**32 - 501):
            out = np.full(ids.shape, 7, np.uint32)  # a reused buffer holds an earlier frame's ids
            shifted_into(out, ids.astype(dtype), offset)
            assert np.array_equal(out, np.where(ids > 0, ids + offset, 0).astype(np.uint32)), (dtype, offset)


def test_shard_block_is_reused_per_thread_and_replaced_for_another_shape():
    import threading

    from popseg_dask._engine.worker import shard_block

    a = shard_block((2, 8, 8), np.uint32)
    assert shard_block((2, 8, 8), np.uint32) is a
    assert shard_block((2, 8, 8), np.uint64) is not a
    other = []
    t = threading.Thread(target=lambda: other.append(shard_block((2, 8, 8), np.uint64)))
    t.start()
    t.join()
    assert other[0] is not shard_block((2, 8, 8), np.uint64)  # two threads never share a buffer
