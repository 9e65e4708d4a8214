"""Tile batches on a Ray cluster: actors that each hold the model on one GPU (or a few CPUs), fed in
order with a bounded number of batches in flight, and a lost actor's batches redone elsewhere.

``RayPredictor(spec, address)`` is what :func:`.executor.make_predictor` returns when a job's
``cluster`` parameter is set: ``address`` is a Ray address (``ray://host:10001``, ``host:6379``,
``auto``) or ``local``, which starts a Ray instance on this machine for the job, bound to the loopback
interface only, and stops it at :meth:`RayPredictor.close`. The driver (the job's process) keeps
reading the raster and writing the outputs window by window; only tile batches travel, so the outputs
are those of a single-machine run with the same model.

On a cluster reached by address, the backend's code and the bundled models travel as the job's runtime
environment and the user's model files through the object store, checked by sha256 on arrival
(:mod:`.model_files`); the actors' size and count fit the nodes (:mod:`.placement`).

Failures are loud and fast: an address where no Ray answers fails within :data:`CONNECT_TIMEOUT_S`; the
first actor that cannot load its model stops the job with that actor's own error, and no actor is
started after it; an actor lost mid-job has its batches resubmitted and is replaced (bounded), and
:meth:`RayPredictor.report` lists what was lost and redone.

Why not ``ray.util.ActorPool``: its ``map`` keeps a lost actor's task as a failed future and raises
the actor's death to the caller; it neither resubmits the batch nor replaces the actor. The loop in
:meth:`RayPredictor.map` is that pool plus the resubmission, on ``ray.wait``.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import tempfile
import threading
import time
import traceback
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import UserError
from .placement import cluster_nodes, plan

if TYPE_CHECKING:  # torch comes with it: only the actors import it (not a Ray Client server)
    from .spec import TileModelSpec

LOG = logging.getLogger(__name__)

LOCAL_ADDRESS = "local"
#: Ray's switch for the node's address: off, a node uses 127.0.0.1 and binds its servers there (what
#: Ray does on macOS and Windows); read by ``ray._private.services.get_node_ip_address``.
_LOOPBACK_SWITCH = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
#: Seconds an address gets to answer (a TCP connection, then Ray's handshake) before the job fails with
#: one line; ``TERRAFUSE_RAY_CONNECT_TIMEOUT_S`` overrides it.
CONNECT_TIMEOUT_S = 30.0
CONNECT_TIMEOUT_ENV = "TERRAFUSE_RAY_CONNECT_TIMEOUT_S"
#: Seconds to wait, once an actor is placed on a node, for it to hold its model (a large backbone loads
#: in minutes at worst). Waiting for a node with room is not limited: the job says so and can be cancelled.
READY_TIMEOUT_S = 900.0
#: Seconds between two looks at the cancel flag while the driver waits on the cluster.
POLL_S = 0.5


@dataclass
class ClusterStats:
    """What a run did: batches submitted (resubmissions included), batches redone after an actor was
    lost, actors lost (number, node and why) and actors started to replace them."""

    submitted: int = 0
    resubmitted: int = 0
    actors_lost: int = 0
    actors_replaced: int = 0
    per_actor: dict[int, int] = field(default_factory=dict)  # batches each actor (by number) returned
    lost: list[dict[str, Any]] = field(default_factory=list)


class TileWorker:
    """One Ray actor's state: the tile model on its device, run through a
    :class:`~.predictor.LocalPredictor` so that a batch that does not fit is halved as on one machine.

    The model's files are first received (``delivery``, see :mod:`.model_files`). A load that fails keeps
    its exception, which :meth:`ready` raises: the driver gets the actor's own error, not Ray's account
    of a dead actor."""

    def __init__(self, job: str, params: dict[str, Any], device: str, threads: int, delivery: Any = None) -> None:
        self.device = device
        self.received: dict[str, str] = {}
        self.load_error: BaseException | None = None
        try:
            import torch

            from .predictor import LocalPredictor
            from .tile_model import TileModelSpec, load_tile_model

            spec = TileModelSpec(job, params)

            if device == "cpu":
                torch.set_num_threads(max(1, threads))
            if delivery is not None:
                spec, self.received = delivery.receive(spec)
            _check_model_files(spec)
            self.predictor = LocalPredictor(load_tile_model(spec, device))
        except Exception as exc:  # noqa: BLE001 - handed to the driver by ready()
            LOG.error("the model failed to load on %s:\n%s", socket.gethostname(), traceback.format_exc())
            self.load_error = delivery.in_driver_terms(exc, self.received) if delivery is not None else exc

    def ready(self) -> dict[str, Any]:
        """The model's provenance, with this actor's device, process, node and received files."""
        import ray

        if self.load_error is not None:
            raise self.load_error
        return {**self.predictor.provenance, "actor_device": self.device, "actor_pid": os.getpid(),
                "actor_host": socket.gethostname(), "actor_node": ray.get_runtime_context().get_node_id(),
                "actor_code": str(Path(__file__).resolve().parents[1]), "actor_files": self.received}

    def predict(self, batch: Any) -> Any:
        return self.predictor.predict(batch)


def _check_model_files(spec: TileModelSpec) -> None:
    """A model path the node does not have (attached to a cluster that got no delivery)."""
    path = spec.params.get("model")
    if path and (os.sep in str(path) or "/" in str(path)) and not Path(path).exists():
        raise UserError(f"The model folder {path} does not exist on the cluster node {socket.gethostname()}")


_REMOTE_WORKER: Any = None
_ACTOR_INFO = ("actor_device", "actor_pid", "actor_host", "actor_node", "actor_code", "actor_files")


@dataclass
class _Actor:
    number: int
    handle: Any
    ready_ref: Any
    ready: bool = False
    pending: int = 0
    host: str = ""
    node: str = ""


class RayPredictor:
    """Batches to Ray actors round-robin (least busy first), ``in_flight`` per actor, results yielded
    in input order; at most ``actors * in_flight`` batches are read ahead of the consumer.

    ``actors``, ``threads`` (torch threads and Ray CPUs of each CPU actor) and ``in_flight`` (batches
    per actor) default to a plan that fits the cluster's nodes (:func:`.placement.plan`). An actor lost
    mid-run (its process or node died, or it was killed) has its pending batches resubmitted to the
    others and is replaced, up to ``max_replacements`` times in all. Attaches to a Ray already
    initialised in this process (and leaves it running), else connects to ``address``. ``progress``
    (a :class:`~backend.progress.Progress`) hears what the driver waits for and is checked for a cancel
    while it waits.
    """

    def __init__(self, spec: TileModelSpec, address: str, actors: int | None = None, in_flight: int | None = None,
                 max_replacements: int | None = None, ready_timeout_s: float = READY_TIMEOUT_S,
                 threads: int | None = None, progress: Any = None) -> None:
        self.spec = spec
        self.address = str(address).strip()
        self.in_flight = max(1, int(in_flight or 2))
        self.stats = ClusterStats()
        self._progress = progress
        self._ready_timeout_s = ready_timeout_s
        self._actors: list[_Actor] = []
        self._closed = False
        self._session = RaySession.open(self.address)
        try:
            self.placement = plan(cluster_nodes(), actors, threads)
            count = self.placement.actors
            self._device, self._threads = self.placement.device, self.placement.threads
            self._delivery = _delivery(spec) if self._session.ships_files else None
            self.max_replacements = 2 * count if max_replacements is None else max(0, int(max_replacements))
            for _ in range(count):
                self._start_actor()
            first = self._wait_for_an_actor()
            self.provenance: dict[str, Any] = {k: v for k, v in first.items() if k not in _ACTOR_INFO}
            per_actor = f", {self._threads} thread{'s' * (self._threads > 1)} each" if self._device == "cpu" else ""
            self.provenance["device"] = (f"Ray {self._session.description}: {count} actor{'s' * (count > 1)} on "
                                         f"{self._device}{per_actor}")
            self.provenance["cluster"] = {"address": self.address, "actors": count, "device": self._device,
                                          "threads": self._threads, "in_flight": self.in_flight,
                                          "ray": self._session.ray_version}
            self.first_actor = first
        except BaseException:
            self.close()
            raise

    # -- actors -------------------------------------------------------------------------------------

    def _start_actor(self) -> _Actor:
        import ray

        global _REMOTE_WORKER
        if _REMOTE_WORKER is None:
            # No restarts by Ray itself: a lost actor's batches are resubmitted here, to live actors.
            _REMOTE_WORKER = ray.remote(max_restarts=0, max_task_retries=0)(TileWorker)
        # The spec as plain data: a Ray Client server unpickles the arguments, and must not import torch.
        handle = _REMOTE_WORKER.options(**self.placement.options).remote(
            self.spec.job, dict(self.spec.params), self._device, self._threads, self._delivery)
        actor = _Actor(len(self._actors), handle, handle.ready.remote())
        self._actors.append(actor)
        return actor

    def _live(self) -> list[_Actor]:
        return [a for a in self._actors if a.handle is not None]

    def _say(self, message: str) -> None:
        if self._progress is not None:
            self._progress.say(message)

    def _check_cancel(self) -> None:
        if self._progress is not None:
            self._progress.check()

    def _wait_for_an_actor(self) -> dict[str, Any]:
        """The first actor's readiness (its provenance). The first load error stops the job with that
        actor's own error (every actor is killed, none started after it); waiting for room on the
        cluster is said and can be cancelled; a placed actor gets ``ready_timeout_s`` to load."""
        import ray

        started = time.monotonic()
        placed_since: float | None = None
        said = ""
        while True:
            self._check_cancel()
            waiting = {a.ready_ref: a for a in self._live()}
            if not waiting:
                raise UserError(f"No Ray actor is left on the cluster {self.address}")
            ready, _ = ray.wait(list(waiting), num_returns=1, timeout=POLL_S)
            if ready:
                actor = waiting[ready[0]]
                try:
                    info = _get(ready[0])
                except _ActorLost as lost:
                    # Before any actor held the model, a death is the model's doing (or the node's
                    # environment's): it would kill every replacement the same way.
                    raise UserError(f"A Ray actor died while loading the model on the cluster {self.address}: "
                                    f"{lost.reason}") from None
                actor.ready = True
                actor.host, actor.node = str(info.get("actor_host", "")), str(info.get("actor_node", ""))
                others = {a.ready_ref: a for a in self._live() if not a.ready}
                if others:
                    for ref in ray.wait(list(others), num_returns=len(others), timeout=0)[0]:
                        self._mark_ready(others[ref])
                return info
            placed = _placed(list(waiting.values()))
            if placed and placed_since is None:
                placed_since = time.monotonic()
            if placed_since is not None and time.monotonic() - placed_since > self._ready_timeout_s:
                raise UserError(f"No Ray actor could load the model within {self._ready_timeout_s:.0f} s on the "
                                f"cluster {self.address} ({self.placement.describe()})")
            message = ("loading the model on the cluster" if placed else
                       f"waiting for room on the cluster: {self.placement.describe()}, none free yet "
                       f"({time.monotonic() - started:.0f} s)")
            if message != said:
                self._say(message)
                said = message

    def _lose(self, actor: _Actor, reason: str = "") -> None:
        """Forget a dead actor and start its replacement (bounded)."""
        import ray

        if actor.handle is None:
            return
        self.stats.actors_lost += 1
        self.stats.lost.append({"actor": actor.number, "host": actor.host, "node": actor.node,
                                "pending_batches": actor.pending,
                                "reason": reason.splitlines()[0] if reason else ""})
        LOG.warning("Ray actor %d was lost (%s); its batches go to the other actors", actor.number,
                    reason.splitlines()[0] if reason else "no reason given")
        try:
            ray.kill(actor.handle, no_restart=True)
        except Exception:  # noqa: BLE001 - already gone is the usual case
            LOG.debug("actor %d was already gone", actor.number)
        actor.handle = None
        actor.pending = 0
        if self.stats.actors_replaced >= self.max_replacements:
            if not self._live():
                raise UserError(f"Every Ray actor was lost ({self.stats.actors_lost} in all) on the cluster "
                                f"{self.address}; the job stopped (last: {reason.splitlines()[0] if reason else '?'})")
            return
        self.stats.actors_replaced += 1
        self._start_actor()

    def pending_per_actor(self) -> dict[int, int]:
        """Batches submitted and not yet returned, per live actor number."""
        return {a.number: a.pending for a in self._live()}

    def actor_handle(self, number: int) -> Any:
        """The Ray handle of actor ``number`` (for tests and tools that kill one)."""
        return self._actors[number].handle

    def actor_node(self, number: int) -> str:
        """The Ray node id of actor ``number`` once it held its model (empty before)."""
        return self._actors[number].node

    @property
    def started_actors(self) -> int:
        """Actors started so far, replacements included."""
        return len(self._actors)

    def report(self) -> dict[str, Any]:
        """What a job's result says about the cluster run: actors, batches, losses and resubmissions."""
        return {"address": self.address, "actors": self.placement.actors, "threads": self._threads,
                "in_flight": self.in_flight, "device": self._device,
                "batches_submitted": self.stats.submitted, "batches_resubmitted": self.stats.resubmitted,
                "actors_lost": self.stats.actors_lost, "actors_replaced": self.stats.actors_replaced,
                "lost": list(self.stats.lost),
                "batches_per_actor": {str(k): v for k, v in sorted(self.stats.per_actor.items())}}

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
                done, _ = ray.wait(list(pending) + list(loading), num_returns=1, timeout=POLL_S)
                self._check_cancel()
                for ref in done:
                    if ref in loading:  # a replacement holds its model now: it takes batches
                        self._mark_ready(loading[ref])
                        continue
                    sequence, actor = pending.pop(ref)
                    try:
                        results[sequence] = _get(ref)
                    except _ActorLost as lost:
                        # This actor's other batches fail the same way: take them back now.
                        others = [r for r, (_, a) in pending.items() if a is actor]
                        retry.extend(sorted([sequence] + [pending.pop(r)[0] for r in others]))
                        self.stats.resubmitted += 1 + len(others)
                        actor.pending = 1 + len(others)
                        self._lose(actor, lost.reason)
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
            info = _get(actor.ready_ref)
        except _ActorLost as lost:
            self._lose(actor, lost.reason)
            return
        actor.ready = True
        actor.host, actor.node = str(info.get("actor_host", "")), str(info.get("actor_node", ""))

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
        self._delivery = None  # its object refs go with it
        self._session.close()


def _delivery(spec: TileModelSpec) -> Any:
    from .model_files import deliver

    return deliver(spec)


def _placed(actors: list[_Actor]) -> bool:
    """Whether the cluster has given one of ``actors`` a worker process (its model is then loading), as
    Ray's actor table says (a process id once placed); unknown (Ray Client) counts as placed, and the
    ready timeout then applies."""
    try:
        from ray._private.state import actors as actor_table

        for actor in actors:
            entry = actor_table(actor_id=actor.handle._actor_id.hex()) or {}
            if entry.get("State") == "ALIVE" or int(entry.get("Pid") or 0) > 0:
                return True
        return False
    except Exception:  # noqa: BLE001 - no actor table here
        return True


class _ActorLost(Exception):
    """The actor that ran a batch died (process, node or a kill)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _get(ref: Any) -> Any:
    """``ray.get`` with Ray's wrappers removed: an actor's death becomes :class:`_ActorLost`, an error
    raised by the model (a UserError among them) is raised again as itself; a node that cannot set up
    the job's environment is a :class:`UserError`."""
    import ray
    from ray import exceptions

    try:
        return ray.get(ref)
    except exceptions.RayTaskError as exc:
        cause = getattr(exc, "cause", None)
        if isinstance(cause, ImportError):
            raise UserError(f"A cluster node cannot import {cause.name or cause}: install the backend's "
                            "requirements (requirements/backend.txt) in every node's Python") from None
        if isinstance(cause, BaseException):
            raise cause from None
        raise
    except exceptions.RuntimeEnvSetupError as exc:
        raise UserError(f"A cluster node could not set up the job's environment: {_first_line(exc)}") from None
    except (exceptions.RayActorError, exceptions.WorkerCrashedError, exceptions.ObjectLostError,
            exceptions.NodeDiedError) as exc:
        raise _ActorLost(_first_line(exc)) from exc


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


class RaySession:
    """This process's connection to Ray: attached to one already initialised (left running), connected
    to an address (the backend and bundled models as its runtime environment, bounded in time), or a
    local instance started for the job (loopback only, no dashboard, no usage statistics, logs in a
    temporary folder) and stopped with it. ``ships_files``: the nodes get the model files from the
    driver (:mod:`.model_files`) rather than reading the driver's paths."""

    def __init__(self, started: bool, description: str, restore: dict[str, str | None],
                 temp_dir: str | None = None, ships_files: bool = False) -> None:
        import ray

        self.started = started
        self.description = description
        self.ships_files = ships_files
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
            env = ray.get_runtime_context().runtime_env or {}
            return cls(False, f"at {_gcs_address()}", restore, ships_files=bool(env.get("working_dir")))
        if loopback:
            _loopback_constants(True)
        if local:
            # Ray's sessions and logs; removed at close (a local instance's logs are of no use after it).
            temp_dir = tempfile.mkdtemp(prefix="tf-ray-")
            try:
                ray.init(num_cpus=os.cpu_count() or 1, include_dashboard=False, _node_ip_address="127.0.0.1",
                         _temp_dir=temp_dir, log_to_driver=False, configure_logging=False,
                         runtime_env={"env_vars": {"PYTHONPATH": _worker_paths()}})
            except (ConnectionError, ValueError, RuntimeError) as exc:
                cls(False, "", restore, temp_dir).close()
                raise UserError(f"Cannot start a local Ray instance: {exc}") from None
            return cls(True, f"at {_gcs_address()} (local)", restore, temp_dir)
        try:
            _connect(address, connect_timeout_s())
        except BaseException:
            cls(False, "", restore).close()
            raise
        return cls(True, f"at {_gcs_address()}", restore, ships_files=True)

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


def connect_timeout_s() -> float:
    """:data:`CONNECT_TIMEOUT_S`, or ``$TERRAFUSE_RAY_CONNECT_TIMEOUT_S``."""
    try:
        return max(1.0, float(os.environ.get(CONNECT_TIMEOUT_ENV) or CONNECT_TIMEOUT_S))
    except ValueError:
        raise UserError(f"{CONNECT_TIMEOUT_ENV} must be a number of seconds") from None


def _connect(address: str, timeout_s: float) -> None:
    """``ray.init`` at ``address`` with the backend and bundled models as the job's ``working_dir``,
    within ``timeout_s`` in all: a TCP probe first (a refused or silent port fails at once), then Ray's
    handshake in a thread of its own (Ray retries an unanswered address for minutes)."""
    import ray

    from .model_files import stage_code

    deadline = time.monotonic() + timeout_s
    if address.lower() != "auto":
        host, port = _probe(address, timeout_s)
        _handshake(address, host, port, max(0.5, deadline - time.monotonic()), timeout_s)
    stage = stage_code()
    outcome: dict[str, BaseException | None] = {}
    # Ray's notes while connecting (the bundled weights' size, no SIGTERM handler in a thread) are not the
    # user's business; its errors still are.
    ray_logger = logging.getLogger("ray")
    level = ray_logger.level

    def init() -> None:
        try:
            ray.init(address=address, log_to_driver=False, configure_logging=False,
                     runtime_env={"working_dir": str(stage)})
            outcome["error"] = None
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
            outcome["error"] = exc
        finally:
            ray_logger.setLevel(level)

    thread = threading.Thread(target=init, name="terrafuse-ray-connect", daemon=True)
    ray_logger.setLevel(logging.ERROR)
    try:
        thread.start()
        thread.join(max(0.1, deadline - time.monotonic()))
    finally:
        if not thread.is_alive():
            shutil.rmtree(stage, ignore_errors=True)
    if thread.is_alive():
        raise _no_answer(address, timeout_s)
    error = outcome.get("error")
    if error is not None:
        first = _first_line(error)
        raise UserError(f"Cannot connect to the Ray cluster at {address!r}: {first}") from None


def _no_answer(address: str, timeout_s: float) -> UserError:
    return UserError(f"The Ray cluster at {address!r} did not answer within {timeout_s:.0f} s (is a Ray head "
                     "there? For ray:// the cluster's client server and, where the cluster asks for one, "
                     f"RAY_AUTH_MODE/RAY_AUTH_TOKEN as on the cluster; {CONNECT_TIMEOUT_ENV} sets the wait)")


def _handshake(address: str, host: str, port: int, wait_s: float, timeout_s: float) -> None:
    """An HTTP/2 (gRPC) handshake with the port, as Ray's GCS and client server answer one: a port held
    by something else fails here, without Ray's own retries and their messages."""
    try:
        import grpc
    except ImportError:  # Ray's handshake alone then, still within the deadline
        return
    channel = grpc.insecure_channel(f"{host}:{port}")
    try:
        grpc.channel_ready_future(channel).result(timeout=wait_s)
    except grpc.FutureTimeoutError:
        raise _no_answer(address, timeout_s) from None
    finally:
        channel.close()


def _probe(address: str, timeout_s: float) -> tuple[str, int]:
    """A TCP connection to the address's host and port (Ray Client's 10001 when ``ray://`` names none);
    the host and port."""
    from urllib.parse import urlsplit

    parts = urlsplit(address if "://" in address else f"//{address}")
    try:
        port = parts.port or (10001 if address.startswith("ray://") else None)
    except ValueError:
        raise UserError(f"The Ray address {address!r} has no valid port") from None
    if not parts.hostname or port is None:
        raise UserError(f"Give the Ray address as host:port or ray://host:port; got {address!r}")
    try:
        with socket.create_connection((parts.hostname, port), timeout=min(timeout_s, 10.0)):
            pass
        return parts.hostname, port
    except socket.gaierror:
        raise UserError(f"The Ray cluster's host {parts.hostname!r} is unknown (address {address!r})") from None
    except OSError as exc:
        why = "connection refused" if isinstance(exc, ConnectionRefusedError) else (exc.strerror or str(exc) or
                                                                                   "no answer")
        raise UserError(f"Nothing answers at {parts.hostname}:{port} ({why}): is the Ray head running there "
                        "and the port open to this machine?") from None


def _gcs_address() -> str:
    import ray

    try:
        return str(ray.get_runtime_context().gcs_address)
    except Exception:  # noqa: BLE001 - Ray Client: the address given
        return "the cluster"


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


def _backend_root() -> str:
    """The folder that holds the ``backend`` package, for local workers' ``sys.path`` (the plugin's
    worker may run from any folder)."""
    return str(Path(__file__).resolve().parents[2])


def _worker_paths() -> str:
    """``PYTHONPATH`` for local workers: the folder that holds the ``backend`` package first (the
    plugin's worker may run from any folder), then the driver's own."""
    return os.pathsep.join(p for p in (_backend_root(), os.environ.get("PYTHONPATH", "")) if p)
