"""Tile batches on a Ray cluster: actors that each hold the model on one GPU (or a few CPUs), fed in
order with a bounded number of batches in flight, and a lost actor's batches redone elsewhere.

``RayPredictor(spec, address)`` is what :func:`.predictor.make_predictor` returns when a job's
``cluster`` parameter is set: ``address`` is a Ray address (``ray://host:10001``, ``host:6379``,
``auto``) or ``local``, which starts a Ray instance on this machine for the job, bound to the loopback
interface only, and stops it at :meth:`RayPredictor.close`. The driver (the job's process) keeps
reading the raster and writing the outputs window by window; only tile batches travel, so the outputs
are those of a single-machine run with the same model.

Why not ``ray.util.ActorPool``: its ``map`` keeps a lost actor's task as a failed future and raises
the actor's death to the caller; it neither resubmits the batch nor replaces the actor. The loop in
:meth:`RayPredictor.map` is that pool plus the resubmission, on ``ray.wait``.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UserError
from .tile_model import TileModelSpec

LOG = logging.getLogger(__name__)

LOCAL_ADDRESS = "local"
#: Ray's switch for the node's address: off, a node uses 127.0.0.1 and binds its servers there (what
#: Ray does on macOS and Windows); read by ``ray._private.services.get_node_ip_address``.
_LOOPBACK_SWITCH = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
#: Most CPU actors started by default (each holds a copy of the model in memory).
MAX_CPU_ACTORS = 4
#: Seconds to wait for the first actor to hold its model before giving up (a backbone loads in minutes
#: at worst; an actor that cannot be placed waits forever otherwise).
READY_TIMEOUT_S = 900.0


@dataclass
class ClusterStats:
    """What a run did: batches submitted (resubmissions included), batches redone after an actor was
    lost, actors lost and actors started to replace them."""

    submitted: int = 0
    resubmitted: int = 0
    actors_lost: int = 0
    actors_replaced: int = 0
    per_actor: dict[int, int] = field(default_factory=dict)  # batches each actor (by number) returned


class TileWorker:
    """One Ray actor's state: the tile model on its device, run through a
    :class:`~.predictor.LocalPredictor` so that a batch that does not fit is halved as on one machine."""

    def __init__(self, spec: TileModelSpec, device: str, threads: int) -> None:
        import torch

        from .predictor import LocalPredictor
        from .tile_model import load_tile_model

        if device == "cpu":
            torch.set_num_threads(max(1, threads))
        _check_model_files(spec)
        self.predictor = LocalPredictor(load_tile_model(spec, device))
        self.device = device

    def ready(self) -> dict[str, Any]:
        """The model's provenance, with this actor's device and process."""
        import socket

        return {**self.predictor.provenance, "actor_device": self.device, "actor_pid": os.getpid(),
                "actor_host": socket.gethostname()}

    def predict(self, batch: Any) -> Any:
        return self.predictor.predict(batch)


def _check_model_files(spec: TileModelSpec) -> None:
    """On a cluster node, the model's files must be at the driver's paths (a shared or copied folder)."""
    import socket

    for key in ("model",):
        path = spec.params.get(key)
        if path and not Path(path).exists():
            raise UserError(f"The {key} folder {path} does not exist on the cluster node {socket.gethostname()}: "
                            "every node needs the model files at the same path (a shared or copied folder)")


_REMOTE_WORKER: Any = None


@dataclass
class _Actor:
    number: int
    handle: Any
    ready_ref: Any
    ready: bool = False
    pending: int = 0


class RayPredictor:
    """Batches to Ray actors round-robin (least busy first), ``in_flight`` per actor, results yielded
    in input order; at most ``actors * in_flight`` batches are read ahead of the consumer.

    ``actors``: how many (default: one per GPU of the cluster, else ``min(CPUs // threads, 4)`` actors);
    ``threads``: torch threads (and Ray CPUs) of each CPU actor (default: the cluster's CPUs shared out).
    An actor lost mid-run (its process or node died, or it was killed) has its pending batches
    resubmitted to the others and is replaced, up to ``max_replacements`` times in all; then, or when
    no actor holds its model within ``ready_timeout_s``, a :class:`UserError` says so. Attaches to a
    Ray already initialised in this process (and leaves it running), else connects to ``address``.
    """

    def __init__(self, spec: TileModelSpec, address: str, actors: int | None = None, in_flight: int = 2,
                 max_replacements: int | None = None, ready_timeout_s: float = READY_TIMEOUT_S,
                 threads: int | None = None) -> None:
        self.spec = spec
        self.address = str(address).strip()
        self.in_flight = max(1, int(in_flight))
        self.stats = ClusterStats()
        self._ready_timeout_s = ready_timeout_s
        self._session = RaySession.open(self.address)
        self._actors: list[_Actor] = []
        self._closed = False
        try:
            self._device, count, self._actor_options, self._threads = self._placement(actors, threads)
            self.max_replacements = 2 * count if max_replacements is None else max(0, int(max_replacements))
            for _ in range(count):
                self._start_actor()
            first = self._wait_for_an_actor()
            self.provenance: dict[str, Any] = {
                k: v for k, v in first.items() if k not in ("actor_device", "actor_pid", "actor_host")}
            per_actor = f", {self._threads} thread{'s' * (self._threads > 1)} each" if self._device == "cpu" else ""
            self.provenance["device"] = (f"Ray {self._session.description}: {count} actor{'s' * (count > 1)} on "
                                         f"{self._device}{per_actor}")
            self.provenance["cluster"] = {"address": self.address, "actors": count, "device": self._device,
                                          "ray": self._session.ray_version}
        except BaseException:
            self.close()
            raise

    # -- actors -------------------------------------------------------------------------------------

    def _placement(self, actors: int | None, threads: int | None) -> tuple[str, int, dict[str, Any], int]:
        """Device, actor count, Ray resource options per actor and torch threads per actor."""
        import ray

        resources = ray.cluster_resources()
        gpus = int(resources.get("GPU", 0))
        cpus = max(1, int(resources.get("CPU", 1)))
        if gpus:
            count = min(int(actors), gpus) if actors else gpus
            return "cuda", max(1, count), {"num_gpus": 1, "num_cpus": 1}, 1
        if actors:
            count = max(1, min(int(actors), cpus // max(1, threads or 1)))
        else:
            count = max(1, min(cpus // max(1, threads or 1), MAX_CPU_ACTORS))
        threads = max(1, threads or cpus // count)
        return "cpu", count, {"num_cpus": threads}, threads

    def _start_actor(self) -> _Actor:
        import ray

        global _REMOTE_WORKER
        if _REMOTE_WORKER is None:
            # No restarts by Ray itself: a lost actor's batches are resubmitted here, to live actors.
            _REMOTE_WORKER = ray.remote(max_restarts=0, max_task_retries=0)(TileWorker)
        handle = _REMOTE_WORKER.options(**self._actor_options).remote(self.spec, self._device, self._threads)
        actor = _Actor(len(self._actors), handle, handle.ready.remote())
        self._actors.append(actor)
        return actor

    def _live(self) -> list[_Actor]:
        return [a for a in self._actors if a.handle is not None]

    def _wait_for_an_actor(self) -> dict[str, Any]:
        """The first actor's readiness (its provenance); an actor whose model fails to load raises that
        error, as the same load would on one machine."""
        import ray

        deadline = time.monotonic() + self._ready_timeout_s
        while True:
            waiting = {a.ready_ref: a for a in self._live()}
            ready, _ = ray.wait(list(waiting), num_returns=1, timeout=max(0.0, deadline - time.monotonic()))
            if not ready:
                raise UserError(f"No Ray actor could load the model within {self._ready_timeout_s:.0f} s on the "
                                f"cluster {self.address} (resources {self._actor_options} per actor)")
            actor = waiting[ready[0]]
            try:
                info = _get(ready[0])
            except _ActorLost:
                self._lose(actor)
                continue
            actor.ready = True
            others = {a.ready_ref: a for a in self._live() if not a.ready}
            if others:
                for ref in ray.wait(list(others), num_returns=len(others), timeout=0)[0]:
                    self._mark_ready(others[ref])
            return info

    def _lose(self, actor: _Actor) -> None:
        """Forget a dead actor and start its replacement (bounded)."""
        import ray

        if actor.handle is None:
            return
        self.stats.actors_lost += 1
        LOG.warning("Ray actor %d was lost; its batches go to the other actors", actor.number)
        try:
            ray.kill(actor.handle, no_restart=True)
        except Exception:  # noqa: BLE001 - already gone is the usual case
            LOG.debug("actor %d was already gone", actor.number)
        actor.handle = None
        actor.pending = 0
        if self.stats.actors_replaced >= self.max_replacements:
            if not self._live():
                raise UserError(f"Every Ray actor was lost ({self.stats.actors_lost} in all) on the cluster "
                                f"{self.address}; the job stopped")
            return
        self.stats.actors_replaced += 1
        self._start_actor()

    def pending_per_actor(self) -> dict[int, int]:
        """Batches submitted and not yet returned, per live actor number."""
        return {a.number: a.pending for a in self._live()}

    def actor_handle(self, number: int) -> Any:
        """The Ray handle of actor ``number`` (for tests and tools that kill one)."""
        return self._actors[number].handle

    # -- the stream ---------------------------------------------------------------------------------

    def map(self, batches: Iterable[Any]) -> Iterator[Any]:
        import ray

        iterator = iter(batches)
        exhausted = False
        pending: dict[Any, tuple[int, _Actor]] = {}  # result ref -> (sequence number, actor)
        inputs: dict[int, Any] = {}  # sequence number -> the batch's object ref, until its result is in
        results: dict[int, Any] = {}
        retry: deque[int] = deque()
        next_read = next_yield = 0
        try:
            while True:
                capacity = self.in_flight * max(1, len(self._live()))
                # Read and submit while fewer than ``capacity`` batches are out (in flight or waiting
                # for an earlier one to be yielded): memory stays bounded whatever the actors' speed.
                while retry or (not exhausted and next_read - next_yield < capacity):
                    actor = self._choose()
                    if actor is None:  # every actor has ``in_flight`` batches out
                        break
                    if retry:
                        sequence = retry.popleft()
                    else:
                        try:
                            batch = next(iterator)
                        except StopIteration:
                            exhausted = True
                            continue
                        sequence, next_read = next_read, next_read + 1
                        inputs[sequence] = ray.put(batch)
                    pending[actor.handle.predict.remote(inputs[sequence])] = (sequence, actor)
                    actor.pending += 1
                    self.stats.submitted += 1
                while next_yield in results:
                    inputs.pop(next_yield, None)
                    output = results.pop(next_yield)
                    next_yield += 1
                    yield output
                if exhausted and next_yield == next_read:
                    return
                if next_yield in results:
                    continue
                loading = {a.ready_ref: a for a in self._live() if not a.ready}
                done, _ = ray.wait(list(pending) + list(loading), num_returns=1)
                for ref in done:
                    if ref in loading:  # a replacement holds its model now: it takes batches
                        self._mark_ready(loading[ref])
                        continue
                    sequence, actor = pending.pop(ref)
                    try:
                        results[sequence] = _get(ref)
                    except _ActorLost:
                        # This actor's other batches fail the same way: take them back now.
                        lost = [r for r, (_, a) in pending.items() if a is actor]
                        retry.extend(sorted([sequence] + [pending.pop(r)[0] for r in lost]))
                        self.stats.resubmitted += 1 + len(lost)
                        self._lose(actor)
                        continue
                    actor.pending -= 1
                    actor.ready = True
                    self.stats.per_actor[actor.number] = self.stats.per_actor.get(actor.number, 0) + 1
        finally:
            for ref in pending:
                try:
                    ray.cancel(ref)
                except Exception:  # noqa: BLE001 - an actor task that already ran cannot be cancelled
                    LOG.debug("batch already running; it is dropped")
            for _, actor in pending.values():
                actor.pending = max(0, actor.pending - 1)
            close = getattr(iterator, "close", None)
            if close is not None:
                close()

    def _choose(self) -> _Actor | None:
        """The ready actor with the fewest batches out, if one has fewer than ``in_flight``; actors still
        loading their model are queued on only while no actor is ready."""
        live = self._live()
        if not live:
            raise UserError(f"No Ray actor is left on the cluster {self.address}")
        usable = [a for a in live if a.ready] or live
        free = [a for a in usable if a.pending < self.in_flight]
        return min(free, key=lambda a: (a.pending, a.number)) if free else None

    def _mark_ready(self, actor: _Actor) -> None:
        """Take in an actor's readiness: its load error is raised, a lost one replaced."""
        try:
            _get(actor.ready_ref)
        except _ActorLost:
            self._lose(actor)
            return
        actor.ready = True

    def close(self) -> None:
        """Kill the actors and, when this predictor started a local Ray, stop it."""
        if self._closed:
            return
        self._closed = True
        import ray

        for actor in self._actors:
            if actor.handle is not None:
                try:
                    ray.kill(actor.handle, no_restart=True)
                except Exception:  # noqa: BLE001 - closing must not fail on an actor already gone
                    LOG.debug("actor %d already gone", actor.number)
                actor.handle = None
        self._session.close()


class _ActorLost(Exception):
    """The actor that ran a batch died (process, node or a kill)."""


def _get(ref: Any) -> Any:
    """``ray.get`` with Ray's wrappers removed: an actor's death becomes :class:`_ActorLost`, an error
    raised by the model (a UserError among them) is raised again as itself."""
    import ray
    from ray import exceptions

    try:
        return ray.get(ref)
    except exceptions.RayTaskError as exc:
        cause = getattr(exc, "cause", None)
        if isinstance(cause, BaseException):
            raise cause from None
        raise
    except exceptions.ActorDiedError as exc:
        creation_error = _creation_error(exc)
        if creation_error is not None:
            raise creation_error from None
        raise _ActorLost(str(exc)) from exc
    except (exceptions.RayActorError, exceptions.WorkerCrashedError, exceptions.ObjectLostError,
            exceptions.NodeDiedError) as exc:
        raise _ActorLost(str(exc)) from exc


def _creation_error(exc: BaseException) -> BaseException | None:
    """The exception an actor's constructor raised (the model failed to load), if that is why it died."""
    for name in ("creation_task_error", "base_exception"):
        error = getattr(exc, name, None)
        if isinstance(error, BaseException):
            cause = getattr(error, "cause", None)
            return cause if isinstance(cause, BaseException) else error
    cause = getattr(exc, "cause", None)
    if hasattr(cause, "cause") and isinstance(cause.cause, BaseException):
        return cause.cause
    return None


class RaySession:
    """This process's connection to Ray: attached to one already initialised (left running), connected
    to an address, or a local instance started for the job (loopback only, no dashboard, no usage
    statistics, logs in a temporary folder) and stopped with it."""

    def __init__(self, started: bool, description: str, restore: dict[str, str | None],
                 temp_dir: str | None = None) -> None:
        import ray

        self.started = started
        self.description = description
        self.ray_version = ray.__version__
        self._restore = restore
        self._temp_dir = temp_dir

    @classmethod
    def open(cls, address: str) -> RaySession:
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        if not address:
            raise UserError("Give a Ray cluster address (host:port, ray://host:port, auto) or 'local'")
        local = address.lower() == LOCAL_ADDRESS
        restore: dict[str, str | None] = {}
        # A cluster on this machine's loopback needs the driver on the loopback too (Ray would otherwise
        # rewrite 127.0.0.1 into the machine's network address, where nothing listens).
        loopback = local or _is_loopback(address)
        if loopback and not _ray_initialised():
            restore[_LOOPBACK_SWITCH] = os.environ.get(_LOOPBACK_SWITCH)
            os.environ[_LOOPBACK_SWITCH] = "0"
        try:
            import ray
        except ImportError:
            raise UserError("Running on a cluster needs Ray in the backend's environment: pip install "
                            "ray (the pinned version is in requirements/backend.txt)") from None
        if ray.is_initialized():
            return cls(False, f"at {ray.get_runtime_context().gcs_address}", restore)
        if loopback:
            _loopback_constants(True)
        runtime_env = {"env_vars": {"PYTHONPATH": _worker_paths()}} if local else {"py_modules": [_backend_package()]}
        # Ray's sessions and logs; removed at close (a local instance's logs are of no use after it).
        temp_dir = tempfile.mkdtemp(prefix="tf-ray-") if local else None
        try:
            if local:
                ray.init(num_cpus=os.cpu_count() or 1, include_dashboard=False, _node_ip_address="127.0.0.1",
                         _temp_dir=temp_dir, log_to_driver=False, configure_logging=False, runtime_env=runtime_env)
            else:
                ray.init(address=address, log_to_driver=False, configure_logging=False, runtime_env=runtime_env)
        except (ConnectionError, ValueError, RuntimeError) as exc:
            cls(False, "", restore, temp_dir).close()
            raise UserError(f"Cannot connect to the Ray cluster at {address!r}: {exc}") from None
        return cls(True, f"at {ray.get_runtime_context().gcs_address}" + (" (local)" if local else ""), restore,
                   temp_dir)

    def close(self) -> None:
        import ray

        if self.started and ray.is_initialized():
            ray.shutdown()
        self.started = False
        for name, value in self._restore.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        if _LOOPBACK_SWITCH in self._restore:
            _loopback_constants(False)
        self._restore = {}
        if self._temp_dir:
            shutil.rmtree(self._temp_dir, ignore_errors=True)
            self._temp_dir = None


def _is_loopback(address: str) -> bool:
    """Whether a Ray address (host:port, ray://host:port) names this machine's loopback interface."""
    import ipaddress
    from urllib.parse import urlsplit

    host = urlsplit(address if "://" in address else f"//{address}").hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _ray_initialised() -> bool:
    import sys

    ray = sys.modules.get("ray")
    return bool(ray is not None and ray.is_initialized())


def _loopback_constants(loopback: bool) -> None:
    """Ray reads the switch once, at its import; an import before this one kept the old value."""
    from ray._private import ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = not loopback and ray_constants.env_bool(
        _LOOPBACK_SWITCH, not ray_constants.IS_WINDOWS_OR_OSX)


def _backend_package() -> str:
    return str(Path(__file__).resolve().parents[1])


def _backend_root() -> str:
    """The folder that holds the ``backend`` package, for local workers' ``sys.path`` (the plugin's
    worker may run from any folder)."""
    return str(Path(_backend_package()).parent)


def _worker_paths() -> str:
    """``PYTHONPATH`` for local workers: the folder that holds the ``backend`` package first (the
    plugin's worker may run from any folder), then the driver's own."""
    return os.pathsep.join(p for p in (_backend_root(), os.environ.get("PYTHONPATH", "")) if p)
