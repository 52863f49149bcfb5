"""The model repository: task name -> its served versions (each a model + batcher), loaded in the
background, reloaded without a restart.

The server starts listening at once; `load_all()` then loads the models one by one in a worker
thread, so health endpoints answer while sessions are built and warmed up. The server is
ready when loading is over and at least one model is ready: a corrupt model makes its own
endpoints answer 503 with the reason and leaves the others serving.

**Versions.** A task serves the versions its declaration names (`read_plan`):

- without `artifacts/<task>/versions.json`: version "1" = the selected variant
  (`selected.json`, with its CPU/GPU placements);
- with it: `{"versions": {"1": "<variant>", "2": "<variant>"}, "default": "2",
  "traffic": {"1": 0.1, "2": 0.9}, "labels": {"stable": "1", "canary": "2"}}`. Only
  `versions` is required; `default` defaults to the highest version (TF Serving's "latest"),
  `traffic` splits the requests of the unversioned paths between versions by weight (a
  weighted round robin: exact proportions over every cycle, no randomness), `labels` name
  versions for TF Serving's `/labels/{label}` paths.

**API for the protocols** (HTTP routes, gRPC), every call raising `serve.errors` errors:

- `get(name, version=None, label=None, split=True)` -> the `ServedModel` to run: the named
  version or label, else (unversioned path) the traffic split's pick, or with `split=False`
  the default version (metadata and status describe that one);
- `versions(name)` -> every version of a task, `index()` -> Triton's repository index,
  `describe()` -> the friendly model list;
- `await infer(model, x)` -> outputs and timings, through the model's batcher;
- `await load(name)` / `await unload(name)` -> Triton's repository extension.

**Reloading.** `load(name)` (Triton's load API) and the repository poll (`watch()`, every
`Settings.repository_poll_s`, when a task's selected.json or versions.json changed) read the
declaration, load and warm the new versions in a worker thread while the old ones keep
serving, then swap the task's version table in one assignment on the event loop. Requests
already queued on an old version's batcher are answered there; requests that picked the old
model before the swap run it inline; the old batcher closes once drained. If a new version
fails to load, the old ones keep serving and the failure is the index's `reason` (and logged).
`unload(name)` retires every version: the model's endpoints answer 404 `model_unloaded` until
it is loaded again (Triton answers requests for an unloaded model as for an unknown one), and
the poll leaves it unloaded.
"""
from __future__ import annotations

import asyncio
import collections
import itertools
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from serve.batching import ClientActivity, DynamicBatcher
from serve.errors import InvalidArgument, UnknownModel
from serve.metrics import ServerMetrics
from serve.model import ModelState, ServedModel
from serve.settings import Settings
from serve.statistics import InferenceStatistics
from core.artifacts import SELECTED, ArtifactError
from core.userdata import served_tasks

log = logging.getLogger("serve.repository")

VERSIONS_FILE = "versions.json"
PLAN_FIELDS = ("versions", "default", "traffic", "labels")
# Traffic weights are kept to this resolution, so one round-robin cycle has at most this many
# picks (0.1 / 0.9 -> a cycle of 10).
TRAFFIC_RESOLUTION = 1000


class UnknownVersion(UnknownModel):
    """A version or label the model does not have (404, like an unknown model)."""

    def __init__(self, name: str, what: str, known: list[str]):
        super().__init__(f"model {name!r} has no {what}",
                         expected=f"one of {', '.join(known) or 'none'} (or no version in "
                                  "the path)")


class ModelUnloaded(UnknownModel):
    """The model was unloaded through the repository API (404, as Triton answers)."""

    code = "model_unloaded"


class LoadFailed(InvalidArgument):
    """A load request whose model could not be loaded; answered 400 with the reason, as
    Triton's repository extension answers a failed load. The versions already serving stay."""

    code = "load_failed"


class PlanError(ArtifactError):
    """An unusable versions.json; the message names the field."""


@dataclass(frozen=True)
class VersionPlan:
    """What a task serves: version -> variant name (None: the selection, selected.json),
    the default version, the traffic split of unversioned requests, TF Serving labels."""

    versions: dict[str, str | None]
    default: str
    traffic: dict[str, float] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    source: bytes = b""  # the declaration's bytes (versions.json + selected.json): changed?

    def spec(self, version: str) -> tuple:
        """What loading `version` reads: equal specs load the same model (reused on a poll)."""
        variant = self.versions[version]
        return ("variant", variant) if variant is not None else ("selected", self._selected)

    @property
    def _selected(self) -> bytes:
        return self.source.rpartition(b"\0")[2]


def declaration_source(artifacts: Path, task: str) -> bytes:
    """The bytes of a task's versions.json and selected.json ("" for a missing file): a change
    in either is a change of what the task serves."""
    parts = []
    for name in (VERSIONS_FILE, SELECTED):
        try:
            parts.append((Path(artifacts) / task / name).read_bytes())
        except (FileNotFoundError, NotADirectoryError):
            parts.append(b"")
    return b"\0".join(parts)


def read_plan(artifacts: Path, task: str) -> VersionPlan:
    """The task's versions.json, validated (PlanError names the field), or without one version
    "1" = the selected variant."""
    source = declaration_source(artifacts, task)
    raw = source.partition(b"\0")[0]
    if not raw:
        return VersionPlan({"1": None}, "1", source=source)
    where = f"{task}/{VERSIONS_FILE}"
    try:
        doc = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise PlanError(f"{where} is not valid JSON ({e})") from None
    return parse_plan(doc, where, source)


def parse_plan(doc, where: str = VERSIONS_FILE, source: bytes = b"") -> VersionPlan:
    """A versions.json document -> VersionPlan; every error names the field at fault."""
    def fail(field_name: str, problem: str, expected: str) -> PlanError:
        return PlanError(f"{where}: field {field_name!r} {problem}; expected {expected}")

    if not isinstance(doc, dict):
        raise fail("(top level)", f"is a JSON {type(doc).__name__}", "an object")
    unknown = sorted(set(doc) - set(PLAN_FIELDS))
    if unknown:
        raise fail(unknown[0], "is not a known field", f"only {', '.join(PLAN_FIELDS)}")
    versions = doc.get("versions")
    if not isinstance(versions, dict) or not versions:
        raise fail("versions", "is missing or empty" if not versions else "is not an object",
                   'an object of version number -> variant name, e.g. {"1": "<variant>"}')
    for v, variant in versions.items():
        if not (v.isascii() and v.isdigit() and len(v) <= 18 and int(v) > 0 and v == str(int(v))):
            raise fail(f"versions.{v}", "is not a version number",
                       "a positive whole number without leading zeros, e.g. \"1\"")
        if not isinstance(variant, str) or not variant or "/" in variant or variant.startswith("."):
            raise fail(f"versions.{v}", f"is {variant!r}", "the name of a variant of the task")
    known = sorted(versions, key=int)

    def version_ref(field_name: str, value) -> str:
        if not isinstance(value, str) or value not in versions:
            raise fail(field_name, f"is {value!r}", f"one of the versions {', '.join(known)}")
        return value

    default = version_ref("default", doc["default"]) if "default" in doc else known[-1]
    traffic = doc.get("traffic") or {}
    if not isinstance(traffic, dict):
        raise fail("traffic", "is not an object", 'version -> weight, e.g. {"1": 0.9, "2": 0.1}')
    for v, w in traffic.items():
        version_ref(f"traffic.{v}", v)
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not 0 <= w < math.inf:
            raise fail(f"traffic.{v}", f"is {w!r}", "a weight >= 0")
    if traffic and not any(round(w * TRAFFIC_RESOLUTION) for w in traffic.values()):
        raise fail("traffic", "gives no version any traffic",
                   f"at least one weight >= {1 / TRAFFIC_RESOLUTION:g}")
    labels = doc.get("labels") or {}
    if not isinstance(labels, dict):
        raise fail("labels", "is not an object", 'label -> version, e.g. {"stable": "1"}')
    for label, v in labels.items():
        if not label or label.isdigit():
            raise fail(f"labels.{label}", "is not a label name", "a name that is not a number")
        version_ref(f"labels.{label}", v)
    return VersionPlan({v: versions[v] for v in known}, default,
                       {v: float(w) for v, w in traffic.items()}, dict(labels), source)


def round_robin(weights: dict[str, float]) -> list[str]:
    """One cycle of a smooth weighted round robin: each key appears in proportion to its weight
    (at TRAFFIC_RESOLUTION) and the picks are spread out, not in runs ({a: 1, b: 3} -> b a b b)."""
    ints = {k: round(w * TRAFFIC_RESOLUTION) for k, w in weights.items()}
    ints = {k: n for k, n in ints.items() if n > 0}
    divisor = math.gcd(*ints.values())
    ints = {k: n // divisor for k, n in ints.items()}
    total, current, cycle = sum(ints.values()), dict.fromkeys(ints, 0), []
    for _ in range(total):
        for k, n in ints.items():
            current[k] += n
        best = max(current, key=current.__getitem__)
        current[best] -= total
        cycle.append(best)
    return cycle


class _Slot:
    """What `infer` needs for one loaded model: its batcher (None: run inline), its queue-time
    observer, and the count of requests it served (metrics read it at scrape time)."""

    __slots__ = ("batcher", "observe_queue", "served_key", "served")

    def __init__(self, batcher, observe_queue, served_key):
        self.batcher, self.observe_queue, self.served_key = batcher, observe_queue, served_key
        self.served = 0


class _Task:
    """One task's version table; replaced as a whole (`install`) so readers never see half."""

    def __init__(self, name: str):
        self.name = name
        self.plan: VersionPlan | None = None
        self.models: dict[str, ServedModel] = {}
        self.default: ServedModel | None = None
        self._cycle = None           # itertools.cycle of models: the traffic split
        self._target: ServedModel | None = None  # without a split: the one model to use
        self.unloaded = False
        self.reason = ""             # why the last load failed while older versions serve
        self.source: bytes | None = None  # declaration last loaded (or tried)
        self.lock = asyncio.Lock()

    def install(self, plan: VersionPlan | None, models: dict[str, ServedModel], default: str) -> None:
        self.plan, self.models, self.default = plan, models, models[default]
        self.unloaded = False
        # A version that failed to load gets no share: its weight goes to the others.
        ready = {v: w for v, w in (plan.traffic if plan else {}).items() if models[v].ready}
        cycle = (round_robin(ready) if any(round(w * TRAFFIC_RESOLUTION) for w in ready.values())
                 else [default])
        self._cycle = itertools.cycle([models[v] for v in cycle]) if len(set(cycle)) > 1 else None
        self._target = models[cycle[0]]

    def pick(self) -> ServedModel:
        return next(self._cycle) if self._cycle is not None else self._target


class ModelRepository:
    def __init__(self, settings: Settings, metrics: ServerMetrics, tasks=None,
                 activity: ClientActivity | None = None):
        """Serve `tasks` (default: the built-in served tasks and the user tasks imported into
        the artifact root)."""
        tasks = served_tasks(settings.artifacts) if tasks is None else tasks
        self.settings = settings
        self.metrics = metrics
        # Who has sent requests lately; the request middleware feeds it (see serve.batching).
        self.activity = activity or ClientActivity()
        self._warmup = (1, settings.max_batch_size) if settings.batching else (1,)
        self._tasks = {t: _Task(t) for t in tasks}
        self._slots: dict[ServedModel, _Slot] = {}
        self.statistics = InferenceStatistics()  # Triton's statistics extension
        metrics.queue_depth_source = self._queue_depths
        metrics.version_requests_source = self._served_counts
        self.loading_done = False
        for task in self._tasks.values():
            # Until load_all has run: the declared versions, loading (or failed: bad declaration).
            try:
                plan = read_plan(settings.artifacts, task.name)
                task.install(plan, {v: self._new_model(task.name, v, plan.versions[v], plan)
                                    for v in plan.versions}, plan.default)
            except ArtifactError as e:
                task.install(None, {"1": self._new_model(task.name, "1").fail(str(e))}, "1")
            metrics.set_model_state(task.name, "loading")

    # -- reading -----------------------------------------------------------------------------
    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._tasks)

    @property
    def models(self) -> dict[str, ServedModel]:
        """Each loaded task's default version."""
        return {n: t.default for n, t in self._tasks.items() if not t.unloaded}

    @property
    def ready(self) -> bool:
        return self.loading_done and any(m.ready for m in self.models.values())

    def _task(self, name: str) -> _Task:
        task = self._tasks.get(name)
        if task is None:
            raise UnknownModel(f"unknown model {name!r}",
                               expected=f"one of {', '.join(sorted(self._tasks))}")
        return task

    def _loaded(self, name: str) -> _Task:
        task = self._task(name)
        if task.unloaded:
            raise ModelUnloaded(f"model {name!r} is unloaded",
                                expected=f"POST /v2/repository/models/{name}/load first")
        return task

    def get(self, name: str, version: str | None = None, label: str | None = None,
            split: bool = True) -> ServedModel:
        """The model version to use for `name`: `version` (a number as text) or `label` when
        given, else the traffic split's pick (`split=False`: the default version). An empty
        version is no version (gRPC's unset field). Raises UnknownModel, UnknownVersion or
        ModelUnloaded; the caller checks `require_ready()`."""
        task = self._tasks.get(name)
        if task is None or task.unloaded:
            task = self._loaded(name)  # raises the right error
        if not version and not label:
            return task.pick() if split else task.default
        if label:
            labels = task.plan.labels if task.plan else {}
            if label not in labels:
                raise UnknownVersion(name, f"version label {label!r}", sorted(labels))
            version = labels[label]
        model = task.models.get(version)
        if model is None:
            raise UnknownVersion(name, f"version {version!r}", list(task.models))
        return model

    def versions(self, name: str) -> list[ServedModel]:
        """Every version of a loaded model, in version order."""
        return list(self._loaded(name).models.values())

    def labels(self, name: str) -> dict[str, str]:
        plan = self._loaded(name).plan
        return dict(plan.labels) if plan else {}

    def index(self, ready: bool = False) -> list[dict]:
        """Triton's repository index: one row per model version, {name, version, state,
        reason}; `ready=True`: only versions ready for inference."""
        rows = []
        for task in self._tasks.values():
            if task.unloaded:
                versions = list(task.plan.versions) if task.plan else ["1"]
                rows += [{"name": task.name, "version": v, "state": "UNAVAILABLE",
                          "reason": "unloaded"} for v in versions]
                continue
            for v, model in task.models.items():
                state = {ModelState.READY: "READY", ModelState.LOADING: "LOADING"}.get(
                    model.state, "UNAVAILABLE")
                reason = model.error or task.reason
                rows.append({"name": task.name, "version": v, "state": state, "reason": reason})
        return [r for r in rows if r["state"] == "READY"] if ready else rows

    def describe(self) -> list[dict]:
        """The friendly model list: per task its default version's description, plus every
        version, the traffic split and labels."""
        out = []
        for task in self._tasks.values():
            if task.unloaded:
                out.append({"name": task.name, "state": "unloaded"})
                continue
            entry = task.default.describe()
            entry["default_version"] = task.default.version
            entry["versions"] = [{k: d[k] for k in ("version", "state", "variant", "runtime",
                                                    "provider", "placement", "error") if k in d}
                                 for d in (m.describe() for m in task.models.values())]
            if task.plan and task.plan.traffic:
                entry["traffic"] = task.plan.traffic
            if task.plan and task.plan.labels:
                entry["labels_to_versions"] = task.plan.labels
            if task.reason:
                entry["reload_error"] = task.reason
            out.append(entry)
        return out

    # -- inference ---------------------------------------------------------------------------
    async def infer(self, model: ServedModel, x: np.ndarray) -> tuple[np.ndarray, dict]:
        """Raw outputs for model inputs, through the batcher when batching is on; counted in
        `self.statistics` (every protocol's inferences pass here)."""
        slot = self._slots.get(model)
        if slot is None:  # retired by a reload after this request picked it: run it inline
            self.metrics.version_requests[_served_key(model)] += 1
            batcher = None
        else:
            slot.served += 1
            batcher = slot.batcher
        stats = self.statistics.of(model)
        start = time.perf_counter()
        if batcher is None:
            try:
                out = model.predict(x)
            except Exception:
                stats.failure(time.perf_counter() - start)
                raise
            infer_s = time.perf_counter() - start
            stats.success(len(x), 0.0, infer_s, len(x))
            return out, {"queue": 0.0, "inference": round(infer_s * 1e3, 3), "batch_rows": len(x)}
        try:
            result = await batcher.submit(x)
        except Exception:
            stats.failure(time.perf_counter() - start)
            raise
        stats.success(len(x), result.queue_seconds, result.infer_seconds, result.batch_rows)
        slot.observe_queue(result.queue_seconds)
        return result.outputs, {"queue": round(result.queue_seconds * 1e3, 3),
                                "inference": round(result.infer_seconds * 1e3, 3),
                                "batch_rows": result.batch_rows}

    def _served_counts(self) -> collections.Counter:
        counts = collections.Counter()
        for slot in list(self._slots.values()):
            counts[slot.served_key] += slot.served
        return counts

    def _queue_depths(self) -> dict[str, int]:
        depths = dict.fromkeys(self._tasks, 0)
        for model, slot in list(self._slots.items()):
            if slot.batcher is not None:
                depths[model.name] += slot.batcher.queue_depth
        return depths

    # -- loading -----------------------------------------------------------------------------
    def _new_model(self, task: str, version: str, variant: str | None = None,
                   plan: VersionPlan | None = None) -> ServedModel:
        s = self.settings
        return ServedModel(task, s.artifacts, s.providers, s.session_threads, self._warmup,
                           max_rows=s.max_request_rows, variant_name=variant, version=version)

    async def load_all(self) -> None:
        for task in self._tasks.values():
            try:
                await self._load(task, fresh=True)
            except LoadFailed:
                pass  # reported: the model's state, its endpoints, the index and the log
        self.loading_done = True
        failed = {f"{m.name} v{m.version}": m.error for t in self._tasks.values()
                  for m in t.models.values() if m.error}
        log.info("models loaded: %s ready, %s failed%s",
                 sum(m.ready for t in self._tasks.values() for m in t.models.values()),
                 len(failed), "".join(f"; {n}: {e}" for n, e in failed.items()))

    async def load(self, name: str) -> None:
        """Load (or reload) every version of `name` from its declaration; raises UnknownModel
        or LoadFailed (the versions already serving then keep serving)."""
        await self._load(self._task(name), fresh=True)

    async def unload(self, name: str) -> None:
        """Stop serving every version of `name`; queued requests are still answered."""
        task = self._task(name)
        async with task.lock:
            retired = list(task.models.values())
            task.unloaded, task.reason = True, ""
            self.metrics.set_model_state(name, "unloaded")
            self.metrics.model_info.pop(name, None)
            log.info("model %s unloaded", name)
            await self._retire(retired)

    async def _load(self, task: _Task, fresh: bool) -> None:
        """Read the declaration, load what changed beside what serves, swap, retire the rest.
        `fresh`: load every version anew (else reuse versions whose declaration is unchanged)."""
        async with task.lock:
            source = declaration_source(self.settings.artifacts, task.name)
            task.source = source
            serving = not task.unloaded and any(m.ready for m in task.models.values())
            try:
                plan = read_plan(self.settings.artifacts, task.name)
            except ArtifactError as e:
                raise self._failed(task, serving, str(e),
                                   {"1": self._new_model(task.name, "1")}) from None
            reuse = {} if fresh or task.unloaded or task.plan is None else {
                task.plan.spec(v): m for v, m in task.models.items() if m.ready}
            models, fresh_models = {}, []
            for v, variant in plan.versions.items():
                model = reuse.get(plan.spec(v))
                if model is None or model.version != v:
                    model = self._new_model(task.name, v, variant, plan)
                    fresh_models.append(model)
                models[v] = model
            for model in fresh_models:
                await asyncio.to_thread(model.load)
            failed = [m for m in fresh_models if not m.ready]
            if failed:
                why = "; ".join(f"version {m.version}: {m.error}" for m in failed)
                if serving:
                    raise self._failed(task, serving, why, models)
                task.reason = why
            else:
                task.reason = ""
            for model in fresh_models:
                if model.ready:
                    self._slots[model] = self._slot(model)
            retired = [m for m in task.models.values() if m not in models.values()]
            task.install(plan, models, plan.default)  # the swap: one assignment per field
            self._report(task)
            if fresh_models and any(m.ready for m in retired):
                log.info("model %s now serves %s", task.name, ", ".join(
                    f"v{m.version}={m.variant.name if m.variant else '?'}" for m in models.values()))
            await self._retire(retired)
            if failed:
                raise LoadFailed(f"model {task.name!r} failed to load: {why}",
                                 expected="a valid declaration and variants (see the index)")

    def _failed(self, task: _Task, serving: bool, why: str, models: dict) -> LoadFailed:
        """A load that failed: the versions serving keep serving (the reason is reported);
        with none serving, the failed versions are installed so their endpoints say why.
        Returns the error to raise."""
        task.reason = why
        if serving:
            log.error("model %s: reload failed, the loaded versions keep serving: %s",
                      task.name, why)
        else:
            for m in models.values():
                if m.error is None:
                    m.fail(why)
            task.install(None, models, next(iter(models)))
            self._report(task)
            log.error("model %s failed to load: %s", task.name, why)
        return LoadFailed(f"model {task.name!r} failed to load: {why}",
                         expected="a valid declaration and variants (see the index)")

    def _slot(self, model: ServedModel) -> _Slot:
        batcher = None
        if self.settings.batching:
            batcher = DynamicBatcher(
                model.name, model.predict, max_batch_size=self.settings.max_batch_size,
                max_queue_delay_us=self.settings.max_queue_delay_us,
                max_queue_size=self.settings.max_queue_size,
                on_batch=self.metrics.batch_observer(model.name), alone=self.activity.alone)
        return _Slot(batcher, self.metrics.queue_time_observer(model.name), _served_key(model))

    def _report(self, task: _Task) -> None:
        model = task.default
        self.metrics.set_model_state(task.name, model.state.value)
        if model.ready:
            self.metrics.set_model_info(task.name, variant=model.variant.name,
                                        runtime=model.runtime, provider=model.provider,
                                        placement=model.placement)

    async def _retire(self, models: list[ServedModel]) -> None:
        """Take models out of service: new requests no longer reach their batchers (one that
        still holds such a model runs it inline), queued ones are answered, then they close."""
        slots = [self._slots.pop(m) for m in models if m in self._slots]
        for slot in slots:
            self.metrics.version_requests[slot.served_key] += slot.served
            if slot.batcher is not None:
                await slot.batcher.close()

    # -- the repository poll -----------------------------------------------------------------
    async def watch(self) -> None:
        """Every `repository_poll_s` seconds, reload each loaded task whose declaration
        (selected.json, versions.json) changed; runs until cancelled. 0 turns it off."""
        interval = self.settings.repository_poll_s
        if not interval > 0:
            return
        while True:
            await asyncio.sleep(interval)
            await self.poll_once()

    async def poll_once(self) -> list[str]:
        """One look at every declaration; returns the tasks it reloaded (or tried to)."""
        names = [t.name for t in self._tasks.values() if not t.unloaded and not t.lock.locked()]
        sources = await asyncio.to_thread(
            lambda: {n: declaration_source(self.settings.artifacts, n) for n in names})
        changed = [n for n in names if sources[n] != self._tasks[n].source]
        for name in changed:
            log.info("model %s: declaration changed, reloading", name)
            try:
                await self._load(self._tasks[name], fresh=False)
            except LoadFailed:
                pass  # reported by _load; the old versions keep serving
        return changed

    async def close(self) -> None:
        """Finish every queued request, then stop the batchers."""
        await self._retire(list(self._slots))


def _served_key(model: ServedModel) -> tuple[str, str, str]:
    return model.name, model.version, model.variant.name if model.variant else ""
