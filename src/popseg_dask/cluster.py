"""Where the work runs: an embedded LocalCluster, or an existing scheduler.

The embedded cluster uses worker *processes* with one thread each, one worker per core, and
splits the machine's memory between them. Threads measured as fast on the threshold pipeline
(scipy's filters release the GIL), but a process per core gives each worker its own memory
limit and model cache, and a crash takes down one worker, not all.
"""

from __future__ import annotations

import contextlib
import logging
import os
import weakref
from collections.abc import Iterator

from .compat import adopt_new_workers
from .errors import PopsegError

__all__ = ["open_client", "default_workers", "detect_gpus", "worker_malloc", "forget_worker_malloc", "WORKER_MALLOC", "quiet_monitors",
           "PendingClient", "serves_dashboard"]

log = logging.getLogger(__name__)

# glibc reads MALLOC_* once, when a process starts. dask's default pre-spawn-environ sets
# MALLOC_TRIM_THRESHOLD_=65536 for every worker, and setting any threshold also freezes
# glibc's mmap threshold at 128 KiB: every frame-sized temporary is then a fresh mmap,
# page-faulted and unmapped again. That made segmentation 35-45 % slower in workers than in
# a plain loop (benchmarks/RESULTS.md, "malloc"). glibc's adaptive threshold is no cure at
# 2048²: it grows to 32 MiB at most, and one float64 plane of 2048² is 32 MiB plus a header, so
# every filter's output was still mapped and faulted afresh (26 000 page faults, 0.1 s of
# system time per frame and population). Workers therefore get both thresholds at 256 MiB:
# planes up to 4096² float32 / 2896² float64 are reused from the heap, and up to 256 MiB of
# free heap stays mapped between tasks (the cost: a worker's resident memory stays near its
# largest task's). A value the user exported before popseg started, or set in the dask config
# other than dask's own default, is kept.
WORKER_MALLOC = {"MALLOC_MMAP_THRESHOLD_": str(256 * 2**20), "MALLOC_TRIM_THRESHOLD_": str(256 * 2**20)}
_USER_MALLOC = {k: os.environ.get(k) for k in WORKER_MALLOC}
_DASK_MALLOC = {"MALLOC_TRIM_THRESHOLD_": "65536"}  # what dask's own config sets


# dask's clocks, set for dashboards and for workers that swing gigabytes in a blink; in an
# embedded cluster the scheduler and the nannies run in the client's process on the workers'
# cores, and at these defaults they alone took 3.5 % of a core while idle (tick 50 times a
# second, a system monitor twice a second, a memory monitor per nanny ten times a second);
# at the values here 1.1 % (benchmarks/RESULTS.md, "Scheduler share, shard writes"). A value
# the user set in the dask config is kept.
QUIET_MONITORS = {
    "distributed.admin.tick.interval": ("20ms", "500ms"),
    "distributed.admin.system-monitor.interval": ("500ms", "2s"),
    "distributed.worker.memory.monitor-interval": ("100ms", "500ms"),
}


# clients of embedded clusters started without the dashboard: dask formats a client's
# dashboard_link from its config, and its scheduler serves HTTP (health, metrics) on that port
# either way, so neither tells whether a dashboard is there
_NO_DASHBOARD: "weakref.WeakSet" = weakref.WeakSet()


def serves_dashboard(client) -> bool:
    """Whether ``client``'s scheduler may serve a dashboard (False for an embedded cluster popseg
    started without one; True for any other, whose dashboard popseg cannot see)."""
    return client not in _NO_DASHBOARD


def default_workers() -> int:
    """One worker per usable core."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def detect_gpus() -> list[str]:
    """GPU ids this process may use: ``CUDA_VISIBLE_DEVICES`` if set, else what ``nvidia-smi -L`` lists."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [v.strip() for v in visible.split(",") if v.strip() and v.strip() != "-1"]
    import shutil
    import subprocess

    if not shutil.which("nvidia-smi"):
        return []
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, _ in enumerate(x for x in out.splitlines() if x.startswith("GPU "))]


def make_security(ca_file: str | None = None, cert: str | None = None, key: str | None = None):
    """A ``distributed.security.Security`` for TLS from certificate files (None: dask config's).

    Raises
    ------
    PopsegError
        If only some of the files are given, or one does not exist.
    """
    given = {"--tls-ca-file": ca_file, "--tls-cert": cert, "--tls-key": key}
    if not any(given.values()):
        return None
    missing = [k for k, v in given.items() if not v]
    if missing:
        raise PopsegError(f"TLS needs all three of --tls-ca-file, --tls-cert and --tls-key; missing {missing}")
    for flag, path in given.items():
        if not os.path.isfile(path):
            raise PopsegError(f"{flag} {path}: no such file")
    from distributed.security import Security

    return Security(tls_ca_file=ca_file, tls_client_cert=cert, tls_client_key=key, require_encryption=True)


def _connect(address: str, timeout: float, security):
    from distributed import Client

    if address.startswith("tls://") and security is None:
        import dask.config

        if not dask.config.get("distributed.comm.tls.ca-file", None):
            raise PopsegError(f"{address} is a TLS scheduler: give --tls-ca-file, --tls-cert and --tls-key "
                              "(or set distributed.comm.tls in your dask config)")
    try:
        return Client(address, timeout=timeout, security=security)
    except (OSError, TimeoutError) as err:
        hint = ("; check the certificates (the scheduler's CA must have signed yours)"
                if address.startswith("tls://") else "")
        raise PopsegError(
            f"cannot reach the Dask scheduler at {address} ({type(err).__name__}){hint}; "
            "check the address and that the scheduler is running, or omit --scheduler to run locally"
        ) from None
    except ValueError as err:  # an address distributed cannot parse
        raise PopsegError(f"bad scheduler address {address!r}: {err}") from None


@contextlib.contextmanager
def open_client(
    scheduler: str | None = None,
    *,
    cluster: str | None = None,
    n_workers: int | None = None,
    threads_per_worker: int = 1,
    dashboard: bool = True,
    timeout: float = 10.0,
    gpu_workers: int | None = None,
    security=None,
) -> Iterator["distributed.Client"]:  # noqa: F821
    """Yield a connected ``distributed.Client``, closing what it started.

    Parameters
    ----------
    scheduler : str, optional
        Address of a running scheduler (``tcp://host:8786``, ``tls://...``). Without it an
        embedded ``LocalCluster`` is started and shut down on exit.
    cluster : str, optional
        ``local`` (the default), ``slurm`` (a dask-jobqueue ``SLURMCluster`` configured by the
        dask config's ``jobqueue.slurm``, ``n_workers`` jobs), ``slurm-runner`` (inside an
        ``sbatch`` allocation: rank 0 scheduler, rank 1 this client, the rest workers; the
        other ranks never return from here), or a scheduler address.
    n_workers : int, optional
        Workers of the embedded cluster (default: one per core), or SLURM jobs.
    threads_per_worker : int
        Threads per embedded worker.
    dashboard : bool
        Serve the dashboard of an embedded cluster (on a free local port).
    timeout : float
        Seconds to wait for a remote scheduler before giving up.
    gpu_workers : int, optional
        Extra embedded workers that each own one GPU: resource ``GPU=1`` and
        ``CUDA_VISIBLE_DEVICES`` pinned to their device, so GPU tasks go there and two workers
        never share a card by accident. Default: one per GPU found (:func:`detect_gpus`). The
        other workers see no GPU, so no framework on them reserves GPU memory.
    security : distributed.security.Security, optional
        TLS credentials for a ``tls://`` scheduler (see :func:`make_security`).
    """

    if cluster and cluster not in ("local", "slurm", "slurm-runner"):
        if "://" not in cluster:
            raise PopsegError(f"--cluster {cluster!r}: use local, slurm, slurm-runner or a scheduler address "
                              "(tcp://host:8786, tls://host:8786)")
        if scheduler and scheduler != cluster:
            raise PopsegError("give the scheduler address once (--cluster or --scheduler)")
        scheduler = cluster
    if scheduler:
        client = _connect(scheduler, timeout, security)
        try:
            yield client
        finally:
            client.close()
        return
    if cluster == "slurm":
        with _slurm_cluster(n_workers) as client:
            yield client
        return
    if cluster == "slurm-runner":
        with _slurm_runner() as client:
            yield client
        return
    with _embedded(n_workers, threads_per_worker, dashboard, gpu_workers) as client:
        yield client


class PendingClient:
    """An embedded cluster starting in a background thread while this one does other work.

    ``popseg run`` starts its worker processes first, then imports the pipeline and plans the
    run (reads the config and the movie's metadata) while they start: the two overlap instead
    of adding up. :meth:`result` waits for the client (re-raising what stopped it);
    :meth:`close` shuts down what was started, also when :meth:`result` was never called.
    Keyword arguments are those of :func:`open_client` for an embedded cluster.
    """

    def __init__(self, **kwargs):
        import threading

        self._stack = contextlib.ExitStack()
        self._client = self._error = None
        self._imported = threading.Event()
        self._thread = threading.Thread(target=self._start, args=(kwargs,), name="popseg-cluster-start",
                                        daemon=True)
        self._thread.start()
        # Imports in two threads share one GIL: letting the cluster's go first starts the
        # worker processes ~0.7 s earlier, and they then import on the other core.
        self._imported.wait(timeout=30)

    def _start(self, kwargs: dict) -> None:
        try:
            try:
                import distributed  # noqa: F401
            finally:
                self._imported.set()
            self._client = self._stack.enter_context(open_client(**kwargs))
        except BaseException as e:  # handed to the thread that asks for the client
            self._error = e

    def result(self):
        """The connected ``distributed.Client`` (waits for the cluster to start)."""
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._client

    def close(self) -> None:
        self._thread.join()
        self._stack.close()

    def __enter__(self) -> "PendingClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@contextlib.contextmanager
def _embedded(n_workers: int | None, threads_per_worker: int, dashboard: bool, gpu_workers: int | None):
    """A LocalCluster of worker processes (plus pinned GPU workers) and its client."""
    from distributed import Client

    # The scheduler of an embedded cluster lives in this process: keep its INFO chatter
    # out of the user's terminal (warnings and errors still show).
    for name in ("distributed", "distributed.scheduler", "distributed.nanny", "distributed.core"):
        logging.getLogger(name).setLevel(logging.WARNING)
    n = n_workers or default_workers()
    if n < 1:
        raise PopsegError(f"--workers must be at least 1, got {n}")
    gpus = detect_gpus()
    n_gpu = len(gpus) if gpu_workers is None else int(gpu_workers)
    if n_gpu < 0:
        raise PopsegError(f"--gpu-workers must be >= 0, got {n_gpu}")
    # without real devices (a CPU test of the placement), GPU workers are numbered 0, 1, ...
    ids = (gpus + [str(i) for i in range(len(gpus), n_gpu)])[:n_gpu]
    with worker_malloc(), quiet_monitors():
        cluster = _local_cluster(n, n_gpu, gpus, ids, threads_per_worker, dashboard)
        client = Client(cluster)
    if not dashboard:
        _NO_DASHBOARD.add(client)
    if n_gpu:
        client.wait_for_workers(n + n_gpu, timeout=120)
    try:
        yield client
    finally:
        client.close()
        cluster.close()
        forget_worker_malloc()


def _local_cluster(n: int, n_gpu: int, gpus: list[str], ids: list[str], threads_per_worker: int,
                   dashboard: bool):
    from distributed import LocalCluster

    cluster = LocalCluster(
        n_workers=n,
        env={"CUDA_VISIBLE_DEVICES": ""} if n_gpu or gpus else {},
        threads_per_worker=threads_per_worker,
        processes=True,
        dashboard_address="127.0.0.1:0" if dashboard else None,
        host="127.0.0.1",
        # Task failures come back to the client (and the CLI says them in one line); the workers'
        # own copies would print tracebacks over the progress bar. --debug shows them.
        silence_logs=logging.WARNING if log.isEnabledFor(logging.DEBUG) else logging.CRITICAL,
    )
    if n_gpu:
        from distributed import Nanny

        base = dict(cluster.new_spec["options"])
        for i, dev in enumerate(ids):
            opts = {**base, "resources": {"GPU": 1}, "env": {**(base.get("env") or {}), "CUDA_VISIBLE_DEVICES": dev}}
            cluster.worker_spec[f"gpu-{i}"] = {"cls": Nanny, "options": opts}
        adopt_new_workers(cluster)
    return cluster


@contextlib.contextmanager
def quiet_monitors() -> Iterator[None]:
    """Create a scheduler, nannies and workers inside this block with slower periodic monitors.

    Each server reads its intervals when it is created and nannies hand their config to the
    workers they spawn, so the setting lasts for the cluster's life and leaves the rest of
    the process's dask config alone. Keys the user changed from dask's defaults are kept.
    """
    import dask.config

    chosen = {key: quiet for key, (default, quiet) in QUIET_MONITORS.items()
              if str(dask.config.get(key, default)) == default}
    with dask.config.set(chosen):
        yield


@contextlib.contextmanager
def worker_malloc() -> Iterator[None]:
    """Start worker processes inside this block with popseg's glibc malloc thresholds
    (:data:`WORKER_MALLOC`).

    Nannies read their environment from the dask config when they are created (a value in
    ``os.environ`` wins over it), keep it for every respawn, and write it into this process's
    ``os.environ`` as they spawn; :func:`forget_worker_malloc` removes it again once they are
    closed. A value the user chose (exported before popseg started, or a dask config value
    other than dask's own default) is kept.
    """
    import dask.config

    chosen = {}
    for var, ours in WORKER_MALLOC.items():
        key = f"distributed.nanny.pre-spawn-environ.{var}"
        if _USER_MALLOC[var] is None and str(dask.config.get(key, None)) in ("None", _DASK_MALLOC.get(var)):
            chosen[key] = ours  # (str: a yaml file gives ints)
    forget_worker_malloc()  # an earlier nanny's value
    with dask.config.set(chosen):
        yield


def forget_worker_malloc() -> None:
    """Remove from ``os.environ`` the malloc thresholds that nannies wrote there (the user's own stay)."""
    for var in WORKER_MALLOC:
        if _USER_MALLOC[var] is None:
            os.environ.pop(var, None)


@contextlib.contextmanager
def _slurm_cluster(jobs: int | None):
    from distributed import Client

    try:
        from dask_jobqueue import SLURMCluster
    except ImportError:
        raise PopsegError("--cluster slurm needs dask-jobqueue: pip install 'popseg-dask[slurm]'") from None
    import dask.config

    if not dask.config.get("jobqueue.slurm.cores", None):
        raise PopsegError("--cluster slurm: no jobqueue.slurm settings in your dask config; copy "
                          "deploy/slurm/jobqueue.yaml to ~/.config/dask/ and edit it")
    cluster = SLURMCluster()
    cluster.scale(jobs=jobs or 1)
    client = Client(cluster)
    try:
        log.warning("waiting for the first SLURM worker (jobs queued: %d)", jobs or 1)
        client.wait_for_workers(1)
        yield client
    finally:
        client.close()
        cluster.close()


@contextlib.contextmanager
def _slurm_runner():
    from distributed import Client

    try:
        from dask_jobqueue.slurm import SLURMRunner
    except ImportError:
        raise PopsegError("--cluster slurm-runner needs dask-jobqueue: pip install 'popseg-dask[slurm]'") from None
    # every rank builds its runner; a worker rank that sees a GPU offers it as a resource
    gpu = {"resources": {"GPU": 1}, "nthreads": 1} if detect_gpus() else {"nthreads": 1}
    folder = os.environ.get("POPSEG_SLURM_DIR", ".popseg-slurm")
    os.makedirs(folder, exist_ok=True)
    with SLURMRunner(scheduler_file=os.path.join(folder, "scheduler-{job_id}.json"),
                     worker_options=gpu) as runner:
        with Client(runner) as client:
            client.wait_for_workers(max(1, getattr(runner, "n_workers", 1)))
            yield client
