"""The Ray side of a sweep: start or join a cluster, fail fast in one line when it cannot work.

Everything here happens before the sweep writes anything into its study directory:

* **Ray is an extra** (``pip install 'ppmech[sweep]'``): :func:`require_ray` says so in
  one line; ``import ppmech`` and a sweep that only reuses or re-analyses stored runs
  never import it.
* **Joining has a timeout** (``join_timeout``, default :data:`JOIN_TIMEOUT` seconds).
  Ray's own ``ray.init(address=...)`` retries for minutes against something that is not
  a Ray head, so the join is first tried in a child process that is killed at the
  timeout. Its output (Ray's warnings and log lines) goes to a log file
  (:func:`ray_log_path`), never to the console, and its failure is one line naming the
  cause: nothing listening, not a Ray head (no answer in time), token authentication
  (``RAY_AUTH_MODE=token``), a Ray/Python version mismatch, or no cluster for ``auto``.
* **Resources no node can provide are refused up front** (:func:`check_feasible`),
  naming what the cluster has: Ray would otherwise keep such a task pending forever.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ppmech.errors import PPMechError
from ppmech.sweep.study import Resources

#: Seconds a join may take before it is given up (``--join-timeout``).
JOIN_TIMEOUT = 30.0
RAY_EXTRA = "pip install 'ppmech[sweep]'"

# Run in a child process: join, report the alive nodes' resources, leave.
_PROBE = """
import json, logging, sys
import ray
ray.init(address=sys.argv[1], log_to_driver=False, logging_level=logging.WARNING)
nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
print("PPMECH-NODES " + json.dumps(nodes), flush=True)
ray.shutdown()
"""

# Causes of a failed join, recognised in Ray's output (first match wins).
_CAUSES: tuple[tuple[str, str, str], ...] = (
    (
        r"UNAUTHENTICATED|Invalid or missing authentication token|authentication token",
        "the cluster requires token authentication and refused this machine's token (or its lack of one)",
        "set RAY_AUTH_MODE=token and the cluster's token (RAY_AUTH_TOKEN, or ~/.ray/auth_token) here",
    ),
    (
        r"Version mismatch",
        "this machine's Ray or Python version differs from the cluster's",
        "install the cluster's Ray and Python versions here (`ray --version` on the head node)",
    ),
    (
        r"Could not find any running Ray instance",
        "no Ray cluster is running on this machine",
        "start one with `ray start --head`, or drop --address to let the sweep start its own",
    ),
)


def require_ray() -> None:
    """Refuse, in one line, to run a sweep's Ray side without Ray installed."""
    try:
        import ray  # noqa: F401
    except ImportError as exc:
        raise PPMechError("`ppmech sweep` needs Ray, which is not installed", RAY_EXTRA) from exc


def ray_version() -> str:
    """Ray's installed version, without importing it (a second of start-up)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ray")
    except PackageNotFoundError:
        return "not installed"


def ray_log_path() -> Path:
    """A fresh file for Ray's own output during this sweep (under the system temp directory)."""
    root = Path(tempfile.gettempdir()) / "ppmech-sweep-logs"
    root.mkdir(parents=True, exist_ok=True)
    return root / f"ray-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}.log"


# --------------------------------------------------------------------------- what the cluster has


@dataclass(frozen=True)
class Capacity:
    """The alive nodes of a cluster and their Ray resources (``CPU``, ``GPU``, ``memory`` in bytes)."""

    nodes: tuple[dict[str, float], ...]
    where: str

    def describe(self) -> str:
        parts = []
        for node in self.nodes[:4]:
            text = f"{node.get('CPU', 0):g} CPUs, {node.get('GPU', 0):g} GPUs"
            if "memory" in node:
                text += f", {node['memory'] / 2**30:.1f} GiB memory"
            parts.append(text)
        more = f" and {len(self.nodes) - 4} more" if len(self.nodes) > 4 else ""
        count = f"{len(self.nodes)} node{'s' if len(self.nodes) != 1 else ''}"
        return f"{self.where} has {count}: " + "; ".join(parts) + more


def check_feasible(resources: Resources, capacity: Capacity) -> None:
    """Refuse resources that no node can provide (Ray would keep such a run pending forever).

    Raises:
        PPMechError: naming the study's ``[resources]`` and what the cluster has.
    """
    wanted = {"CPU": resources.cpus, "GPU": resources.gpus}
    if resources.memory_gb:
        wanted["memory"] = resources.memory_gb * 2**30
    if any(all(node.get(k, 0.0) >= v for k, v in wanted.items() if v) for node in capacity.nodes):
        return
    asked = f"cpus = {resources.cpus:g}, gpus = {resources.gpus:g}" + (
        f", memory_gb = {resources.memory_gb:g}" if resources.memory_gb else ""
    )
    raise PPMechError(
        f"no node can run one run of this study ([resources] {asked}): {capacity.describe()}",
        "lower [resources] (e.g. --set resources.gpus=0), or add a node that has them",
    )


def local_capacity(num_cpus: int | None, num_gpus: int | None) -> Capacity:
    """What a local Ray instance started with these sizes would have (CPUs and GPUs; before starting it)."""
    if num_cpus is None:
        try:
            num_cpus = len(os.sched_getaffinity(0))
        except AttributeError:  # not on Linux
            num_cpus = os.cpu_count() or 1
    if num_gpus is None:
        import torch

        num_gpus = torch.cuda.device_count()
    return Capacity(({"CPU": float(num_cpus), "GPU": float(num_gpus)},), "this machine's Ray instance")


def ray_capacity(where: str) -> Capacity:
    """What the Ray cluster this process is connected to has."""
    import ray

    return Capacity(tuple(n["Resources"] for n in ray.nodes() if n.get("Alive")), where)


# --------------------------------------------------------------------------- joining


def _reachable(address: str) -> None:
    """Fail fast, in one line, when nothing listens at ``HOST:PORT`` (or ``ray://HOST:PORT``)."""
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise PPMechError(
            f"--address {address!r} is not auto, HOST:PORT or ray://HOST:PORT",
            "pass the address `ray start --head` printed, e.g. 10.0.0.5:6379",
        )
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=5):
            pass
    except OSError as exc:
        raise PPMechError(
            f"cannot reach a Ray cluster at {address}: nothing listens there ({exc.strerror or exc})",
            "check the address and that the cluster is up (`ray status` on its head node)",
        ) from exc


def _cause(text: str) -> tuple[str, str] | None:
    for pattern, problem, fix in _CAUSES:
        if re.search(pattern, text, re.IGNORECASE):
            return problem, fix
    return None


def _last_error(text: str) -> str:
    """The last line of Ray's output that reads as an error (for a cause we do not recognise)."""
    lines = [strip_ansi(line).strip() for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if re.search(r"Error|error|failed|Failed", line)]
    line = (errors or lines or ["no output"])[-1]
    return line[:300]


def probe(address: str, timeout: float, log: Path) -> Capacity:
    """Join ``address`` in a child process, within ``timeout`` seconds, and read its nodes' resources.

    Ray's output goes to ``log``. Raises a one-line :class:`PPMechError` naming the cause.
    """
    if address != "auto":
        _reachable(address)
    with open(log, "ab") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-c", _PROBE, address],
            stdout=subprocess.PIPE,
            stderr=sink,
            start_new_session=True,  # so that a timeout kills whatever Ray started for it
        )
        deadline = time.monotonic() + timeout
        stdout: bytes | None = None
        while True:
            try:
                stdout, _ = proc.communicate(timeout=0.5)
                break
            except subprocess.TimeoutExpired:
                pass
            # Ray retries a refused token until the timeout; its log says so at once.
            if time.monotonic() > deadline or _cause(log.read_text(errors="replace")):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.communicate()
                break
    text = log.read_text(errors="replace")
    cause = _cause(text)
    if stdout is None:
        problem, fix = cause or (
            f"nothing at {address} answered as a Ray head within {timeout:g} s",
            "check that it is the address `ray start --head` printed (its GCS port, 6379 by default), "
            "or give the join more time with --join-timeout",
        )
        raise PPMechError(f"cannot join the Ray cluster at {address}: {problem}", f"{fix} (Ray's log: {log})")
    match = re.search(rb"^PPMECH-NODES (.*)$", stdout, re.MULTILINE)
    if proc.returncode != 0 or match is None:
        problem, fix = cause or (
            _last_error(text),
            "check the address, and that this machine's Ray and Python match the cluster's",
        )
        raise PPMechError(f"cannot join the Ray cluster at {address}: {problem}", f"{fix} (Ray's log: {log})")
    return Capacity(tuple(json.loads(match.group(1))), f"the Ray cluster at {address}")


@contextlib.contextmanager
def _stderr_to(log: Path) -> Iterator[None]:
    """Send this process's file descriptor 2 (where Ray's C++ core logs) to ``log`` for a while."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(log, "ab") as sink:
            os.dup2(sink.fileno(), 2)
            yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def _ray_logging_to(log: Path) -> None:
    """Ray's Python loggers write to ``log`` instead of the console."""
    handler = logging.FileHandler(log, delay=True)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.set_name("ppmech-sweep")
    ray_logger = logging.getLogger("ray")
    for old in list(
        ray_logger.handlers
    ):  # the console handler Ray installs on import; an earlier sweep's file
        if old.get_name() == "ppmech-sweep" or not isinstance(old, logging.FileHandler):
            ray_logger.removeHandler(old)
            old.close()
    ray_logger.addHandler(handler)
    ray_logger.propagate = False


@dataclass
class Session:
    """A connection to Ray for one sweep; :meth:`close` stops what this sweep started."""

    started: bool
    capacity: Capacity
    log: Path

    def close(self) -> None:
        if self.started:
            import ray

            with _stderr_to(self.log), contextlib.suppress(Exception):
                ray.shutdown()
        with contextlib.suppress(OSError):
            if self.log.stat().st_size == 0:
                self.log.unlink()  # Ray had nothing to say: leave no empty log behind


def connect(
    resources: Resources,
    address: str | None = None,
    num_cpus: int | None = None,
    num_gpus: int | None = None,
    join_timeout: float = JOIN_TIMEOUT,
) -> Session:
    """Start or join Ray and check that its nodes can hold a run; nothing is written but Ray's log.

    ``address=None`` starts a local instance (``num_cpus``/``num_gpus``: its size, default the
    machine's); ``auto``, ``HOST:PORT`` or ``ray://HOST:PORT`` joins a running cluster. A Ray
    this process already started (a notebook, a test session) is used as it is.

    Raises:
        PPMechError: Ray missing, the join failed or timed out, or no node can hold a run.
    """
    require_ray()
    import ray

    log = ray_log_path()
    _ray_logging_to(log)
    if ray.is_initialized():
        capacity = ray_capacity("the running Ray instance")
        check_feasible(resources, capacity)
        return Session(False, capacity, log)
    # configure_logging=False: Ray keeps its hands off the loggers redirected above.
    quiet: dict[str, Any] = {"log_to_driver": False, "configure_logging": False}
    if address:
        check_feasible(resources, probe(address, join_timeout, log))
        try:
            with _stderr_to(log):
                ray.init(address=address, **quiet)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            problem, fix = _cause(str(exc)) or (
                strip_ansi(str(exc)).splitlines()[0][:300],
                "check the address",
            )
            raise PPMechError(f"cannot join the Ray cluster at {address}: {problem}", fix) from exc
        where = f"the Ray cluster at {address}"
    else:
        check_feasible(resources, local_capacity(num_cpus, num_gpus))
        with _stderr_to(log):
            ray.init(address="local", num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False, **quiet)
        where = "this machine's Ray instance"
    session = Session(True, ray_capacity(where), log)
    try:
        check_feasible(resources, session.capacity)  # e.g. memory, known only once Ray runs
    except PPMechError:
        session.close()
        raise
    return session


_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def strip_ansi(text: str) -> str:
    """``text`` without terminal colour codes (Ray colours its task errors)."""
    return _ANSI.sub("", text)
