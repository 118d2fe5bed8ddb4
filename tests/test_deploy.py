"""The deploy recipes parse, ask for GPUs the way the scheduler understands, expose nothing
publicly, and run the project's real commands (no drift between recipes and CLI)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

from popseg_dask.cli import _parser

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"


def _yaml_docs(path: Path) -> list:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _popseg_subcommands() -> set[str]:
    sub = next(a for a in _parser()._actions if a.__class__.__name__ == "_SubParsersAction")
    return set(sub.choices)


def _check_command(argv: list[str]) -> None:
    """A command a recipe runs: popseg with a real subcommand and flags, or dask scheduler/worker."""
    if argv[0] == "popseg":
        args = ["PLACEHOLDER" if "$" in a else a for a in argv[1:]]  # shell variables stand for paths
        _parser().parse_args(args)  # exits (SystemExit) on an unknown subcommand or flag
    elif argv[0] == "dask":
        assert argv[1] in ("scheduler", "worker"), argv
        from distributed.cli.dask_scheduler import main as sched
        from distributed.cli.dask_worker import main as work

        cmd = sched if argv[1] == "scheduler" else work
        known = {o for p in cmd.params for o in p.opts + p.secondary_opts}
        for a in argv[2:]:
            if a.startswith("--"):
                assert a.split("=")[0] in known, f"{a} is not an option of dask {argv[1]}"
    else:
        raise AssertionError(f"unexpected command {argv}")


def test_every_yaml_recipe_parses():
    files = sorted(DEPLOY.rglob("*.yaml")) + sorted(DEPLOY.rglob("*.yml"))
    assert {f.name for f in files} >= {"dask.yaml", "docker-compose.yml", "jobqueue.yaml", "daskcluster.yaml",
                                       "values.yaml"}
    for f in files:
        assert _yaml_docs(f), f


def test_dask_config_is_valid_dask_config():
    import dask.config

    cfg = yaml.safe_load((DEPLOY / "dask.yaml").read_text())
    with dask.config.set(cfg):
        assert dask.config.get("distributed.scheduler.allowed-failures") == 3
        assert dask.config.get("optimization.fuse.active") is False
        assert dask.config.get("distributed.nanny.pre-spawn-environ.OMP_NUM_THREADS") == 1
        from popseg_dask._engine.plan import STITCH_IN_TASK_PIXELS, frame_task_pixels

        assert frame_task_pixels() == STITCH_IN_TASK_PIXELS  # the file states the default it documents


def test_compose_services_run_real_commands_and_publish_on_loopback_only():
    doc = _yaml_docs(DEPLOY / "docker" / "docker-compose.yml")[0]
    services = doc["services"]
    assert {"scheduler", "cpu-worker", "gpu-worker"} <= set(services)
    for name, svc in services.items():
        argv = svc["entrypoint"]
        _check_command(argv if argv[0] != "popseg" else argv + ["run", "x.yaml"])
        for port in svc.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"
    gpu = services["gpu-worker"]
    assert gpu["entrypoint"][gpu["entrypoint"].index("--resources") + 1] == "GPU=1"
    assert gpu["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    assert services["cpu-worker"]["environment"]["CUDA_VISIBLE_DEVICES"] == ""


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.cuda"])
def test_dockerfiles_install_the_package_and_run_its_cli(name):
    text = (DEPLOY / "docker" / name).read_text()
    assert re.search(r'pip install "?\.\[stardist,cellpose\]', text)
    assert 'ENTRYPOINT ["popseg"]' in text
    assert "USER popseg" in text  # not root
    assert "COPY deploy/dask.yaml" in text
    # no model download: no build step fetches weights, and start-up runs only the CLI
    runs = [line for line in text.splitlines() if line.startswith("RUN ")]
    assert not any(re.search(r"(wget|curl|hf_hub|model_type|pretrained)", r, re.I) for r in runs)
    starts = [line for line in text.splitlines() if line.startswith(("CMD", "ENTRYPOINT"))]
    assert starts == ['ENTRYPOINT ["popseg"]', 'CMD ["--help"]']


def test_slurm_cluster_job_script_asks_for_a_gpu_and_offers_the_resource():
    """dask-jobqueue renders the job script from deploy/slurm/jobqueue.yaml."""
    import dask.config

    jq = pytest.importorskip("dask_jobqueue", reason="dask-jobqueue is in the dev extra")
    cfg = yaml.safe_load((DEPLOY / "slurm" / "jobqueue.yaml").read_text())
    # key by key, as a config file would merge over dask-jobqueue's defaults
    with dask.config.set({f"jobqueue.slurm.{k}": v for k, v in cfg["jobqueue"]["slurm"].items()}):
        cluster = jq.SLURMCluster(scheduler_options={"dashboard_address": None, "host": "127.0.0.1"})
        try:
            script = cluster.job_script()
        finally:
            cluster.close()
    assert "#SBATCH --gres=gpu:1" in script
    assert "--resources GPU=1" in script
    assert "--nthreads 1" in script
    worker_cmd = next(line for line in script.splitlines() if "distributed.cli.dask_worker" in line)
    argv = shlex.split(worker_cmd)
    assert argv[argv.index("--resources") + 1] == "GPU=1"


def test_sbatch_script_runs_popseg_with_the_slurm_runner():
    text = (DEPLOY / "slurm" / "popseg.sbatch").read_text()
    assert "#SBATCH --gpus-per-task=1" in text
    srun = next(line for line in text.splitlines() if line.startswith("srun "))
    argv = shlex.split(srun)[1:]
    assert argv[:2] == ["popseg", "run"] and "--cluster" in argv
    assert argv[argv.index("--cluster") + 1] == "slurm-runner"
    _check_command(argv)


def _containers(doc) -> list[dict]:
    spec = doc["spec"]["worker"]["spec"]["containers"]
    if doc["kind"] == "DaskCluster":
        spec = spec + doc["spec"]["scheduler"]["spec"]["containers"]
    return spec


def test_kubernetes_recipe_has_a_gpu_worker_group_and_no_public_service():
    docs = {d["kind"]: d for d in _yaml_docs(DEPLOY / "k8s" / "daskcluster.yaml")}
    assert set(docs) == {"DaskCluster", "DaskWorkerGroup"}
    assert docs["DaskCluster"]["spec"]["scheduler"]["service"]["type"] == "ClusterIP"
    for doc in docs.values():
        for c in _containers(doc):
            _check_command([a for a in c["command"]])
    gpu = docs["DaskWorkerGroup"]["spec"]
    assert gpu["cluster"] == docs["DaskCluster"]["metadata"]["name"]
    (c,) = gpu["worker"]["spec"]["containers"]
    assert c["command"][c["command"].index("--resources") + 1] == "GPU=1"
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1


def test_helm_values_have_a_gpu_worker_group_and_no_public_service():
    (v,) = _yaml_docs(DEPLOY / "helm" / "values.yaml")
    assert v["scheduler"]["serviceType"] == "ClusterIP"
    assert not v["webUI"]["ingress"]["enabled"]
    (g,) = v["additional_worker_groups"]
    assert g["extraArgs"] == ["--resources", "GPU=1"]
    assert g["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert v["worker"]["threads_per_worker"] == 1


def test_readmes_name_only_real_popseg_subcommands():
    subs = _popseg_subcommands()
    seen = 0
    for doc in [DEPLOY / "README.md", DEPLOY.parent / "README.md"]:
        text = doc.read_text()
        # commands: lines of fenced code blocks, and inline code spans, that start with "popseg "
        blocks = re.findall(r"```.*?```", text, re.S)
        spans = re.findall(r"`([^`\n]+)`", re.sub(r"```.*?```", "", text, flags=re.S))
        lines = [ln.strip() for b in blocks for ln in b.splitlines()] + [sp.strip() for sp in spans]
        commands = [ln for ln in lines if ln.startswith("popseg ")]
        seen += len(commands)
        for cmd in commands:
            word = cmd.split()[1]
            if word.startswith("-"):
                continue
            assert word in subs, f"{doc.name} mentions 'popseg {word}', which is not a subcommand"
    assert seen > 5


def _worker_malloc_env(client, var="MALLOC_TRIM_THRESHOLD_") -> set:
    return set(client.run(lambda: __import__("os").environ.get(var)).values())


def test_embedded_workers_start_with_popseg_malloc_thresholds(monkeypatch):
    """Workers get popseg's glibc thresholds instead of dask's MALLOC_TRIM_THRESHOLD_ (also one
    restarted later, and also where an earlier nanny left dask's value in os.environ); the
    client's environment is as it was afterwards; a value the user exported is kept."""
    import os

    from popseg_dask import cluster
    from popseg_dask.cluster import WORKER_MALLOC, open_client

    ours = WORKER_MALLOC["MALLOC_TRIM_THRESHOLD_"]
    assert int(ours) >= 2**25 and WORKER_MALLOC["MALLOC_MMAP_THRESHOLD_"] == ours
    monkeypatch.setattr(cluster, "_USER_MALLOC", dict.fromkeys(WORKER_MALLOC))  # whatever the test shell exports
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "65536")
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "x")
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_")  # monkeypatch restores its absence afterwards
    with open_client(n_workers=1, gpu_workers=1, dashboard=False) as client:
        assert _worker_malloc_env(client) == {ours}
        assert _worker_malloc_env(client, "MALLOC_MMAP_THRESHOLD_") == {ours}
        client.restart()
        assert _worker_malloc_env(client) == {ours}
        assert _worker_malloc_env(client, "MALLOC_MMAP_THRESHOLD_") == {ours}
    assert "MALLOC_TRIM_THRESHOLD_" not in os.environ and "MALLOC_MMAP_THRESHOLD_" not in os.environ
    monkeypatch.setattr(cluster, "_USER_MALLOC", {**dict.fromkeys(WORKER_MALLOC), "MALLOC_TRIM_THRESHOLD_": "1048576"})
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "1048576")
    with open_client(n_workers=1, dashboard=False) as client:
        assert _worker_malloc_env(client) == {"1048576"}
        assert _worker_malloc_env(client, "MALLOC_MMAP_THRESHOLD_") == {ours}
    assert os.environ["MALLOC_TRIM_THRESHOLD_"] == "1048576"


def test_deploy_dask_config_sets_popseg_malloc_thresholds(monkeypatch):
    import dask.config
    from distributed import Client, LocalCluster

    from popseg_dask.cluster import WORKER_MALLOC

    for var in WORKER_MALLOC:  # so that monkeypatch restores each variable's absence,
        monkeypatch.setenv(var, "x")  # which the nannies below would otherwise leave set
        monkeypatch.delenv(var)

    def dotted(d, prefix=""):
        for k, v in d.items():
            yield from dotted(v, f"{prefix}{k}.") if isinstance(v, dict) else [(prefix + k, v)]

    # merged into dask's defaults, as dask does with a file in ~/.config/dask
    with dask.config.set(dict(dotted(yaml.safe_load((DEPLOY / "dask.yaml").read_text())))):
        with LocalCluster(n_workers=1, processes=True, dashboard_address=None) as cluster, Client(cluster) as client:
            for var, ours in WORKER_MALLOC.items():  # the file says what the embedded cluster does
                assert _worker_malloc_env(client, var) == {ours}
    for var in WORKER_MALLOC:  # what those nannies wrote into this process's environment
        monkeypatch.delenv(var, raising=False)
    with LocalCluster(n_workers=1, processes=True, dashboard_address=None) as cluster, Client(cluster) as client:
        assert _worker_malloc_env(client) == {"65536"}  # dask's own default, which the file replaces


def test_object_store_recipes_need_no_shared_volume():
    """Kubernetes, Helm and compose variants for s3:// inputs and outputs: no volume on any worker,
    credentials from a Secret (never written in the recipe), nothing public."""
    docs = {d["kind"]: d for d in _yaml_docs(DEPLOY / "k8s" / "daskcluster-s3.yaml")}
    assert set(docs) == {"DaskCluster", "DaskWorkerGroup"}
    assert docs["DaskCluster"]["spec"]["scheduler"]["service"]["type"] == "ClusterIP"
    assert docs["DaskWorkerGroup"]["spec"]["cluster"] == docs["DaskCluster"]["metadata"]["name"]
    for doc in docs.values():
        assert "volumes" not in doc["spec"]["worker"]["spec"]
        for c in doc["spec"]["worker"]["spec"]["containers"]:
            _check_command(c["command"])
            assert "volumeMounts" not in c and c["envFrom"] == [{"secretRef": {"name": "popseg-s3"}}]
    (secret,) = _yaml_docs(DEPLOY / "k8s" / "secret-s3.example.yaml")
    assert secret["kind"] == "Secret" and set(secret["stringData"]) >= {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    assert set(secret["stringData"].values()) >= {"REPLACE-ME"}
    (v,) = _yaml_docs(DEPLOY / "helm" / "values-s3.yaml")
    assert v["scheduler"]["serviceType"] == "ClusterIP"
    for group in [v["worker"], *v["additional_worker_groups"]]:
        assert "mounts" not in group
        keys = {e["name"]: e for e in group["env"]}
        assert keys["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "popseg-s3"
    compose = _yaml_docs(DEPLOY / "docker" / "docker-compose.s3.yml")[0]["services"]
    assert {"s3", "scheduler", "cpu-worker", "client"} <= set(compose)
    for name, svc in compose.items():
        for port in svc.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"
        if name in ("scheduler", "cpu-worker"):
            assert "volumes" not in svc  # the cluster shares nothing but the network
            _check_command(svc["entrypoint"])
    assert compose["cpu-worker"]["environment"]["AWS_ENDPOINT_URL"] == "http://s3:9000"


def test_embedded_cluster_runs_quiet_monitors_and_keeps_the_users_choice():
    """The scheduler, the nannies and the workers they spawn all take popseg's slower monitors;
    a value the user set is kept, and the process's dask config is left as it was."""
    import dask.config

    from popseg_dask.cluster import QUIET_MONITORS, open_client

    tick = "distributed.admin.tick.interval"
    with open_client(n_workers=1, dashboard=False) as client:
        assert client.cluster.scheduler.periodic_callbacks["tick"].callback_time == 500
        seen = client.run(lambda: {k: dask.config.get(k) for k in QUIET_MONITORS})
        assert list(seen.values()) == [{k: quiet for k, (_, quiet) in QUIET_MONITORS.items()}]
        assert dask.config.get(tick) == "20ms"
    with dask.config.set({tick: "100ms"}):
        with open_client(n_workers=1, dashboard=False) as client:
            assert client.cluster.scheduler.periodic_callbacks["tick"].callback_time == 100
            assert set(client.run(lambda: dask.config.get(tick)).values()) == {"100ms"}


def test_deploy_dask_config_sets_the_embedded_clusters_monitors():
    config = yaml.safe_load((DEPLOY / "dask.yaml").read_text())
    from popseg_dask.cluster import QUIET_MONITORS

    for key, (_, quiet) in QUIET_MONITORS.items():
        node = config
        for part in key.split("."):
            node = node[part]
        assert node == quiet, key


def test_a_pending_client_starts_in_the_background_and_hands_back_its_errors():
    import pytest

    from popseg_dask.cluster import PendingClient
    from popseg_dask.errors import PopsegError

    with PendingClient(n_workers=1, dashboard=False) as pending:
        client = pending.result()
        assert pending.result() is client
        assert len(client.scheduler_info()["workers"]) == 1
        assert client.submit(sum, [1, 2]).result() == 3
    assert client.status == "closed"
    with PendingClient(n_workers=1, gpu_workers=-1, dashboard=False) as pending:
        with pytest.raises(PopsegError, match="--gpu-workers must be >= 0"):
            pending.result()
    PendingClient(n_workers=1, dashboard=False).close()  # closed without ever being asked for


def test_the_package_imports_its_heavy_parts_only_when_used():
    import subprocess
    import sys

    code = ("import sys, popseg_dask.cli; heavy = [m for m in ('dask.array', 'xarray', 'skimage', 'distributed') "
            "if m in sys.modules]; print(heavy); from popseg_dask import run, open_movie; print(run.__module__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["[]", "popseg_dask._engine.run"]
