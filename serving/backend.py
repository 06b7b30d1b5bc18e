"""The serving seam: one interface for a place that serves a canary, picked by `serve.engine`.

A `ServingBackend` is a serving engine with its traffic router. A canary rollout asks it to
start (or find) the engine, to put the champion on the stable side and the candidate on the
canary side, for the router that moves the weights, for where the analysis reads each
side's metrics, to scale the canary down, and to stop what it started. The controller
(controller.py) and the rollout driver (rollout.py) only ever talk to this interface.

Engines are registered by name in `ENGINES`, one "module:Class" per rollout kind (imported only
when picked, so config validation stays light): `serve.rollout=adapter` (the default for LoRA
versions) serves both versions as versioned adapter names on one pool and splits the public
name between them; `pool` moves traffic between two pools (a change of base model). Adding an
engine: a module with a `ServingBackend` subclass, its line in `ENGINES`, and a
`configs/serve/<option>.yaml` that sets `engine:` to its name.

This module also owns the lists of serving options and checks them for config validation
(`check_config`, listed in core.config.OWNER_CHECKS).
"""

from __future__ import annotations

import importlib
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Optional

if TYPE_CHECKING:
    from modelchain.serving.controller import Analysis
    from modelchain.serving.probe import ProbeTarget
    from modelchain.serving.router import TrafficRouter

# serve.engine -> serve.rollout -> "module:Class"
ENGINES: dict[str, dict[str, str]] = {
    "local-vllm": {
        "adapter": "modelchain.serving.local_adapter:LocalAdapterBackend",
        "pool": "modelchain.serving.local_vllm:LocalVllmBackend",
    },
    "k8s-vllm": {
        "adapter": "modelchain.serving.k8s_adapter:KubernetesAdapterBackend",
        "pool": "modelchain.serving.k8s_vllm:KubernetesVllmBackend",
    },
}
ROLLOUTS = ("adapter", "pool")
# Suffixes of the names a pool serves besides the public one: `<public>-base` (the base model),
# `<public>-v<version>` (a registered version).
RESERVED_NAME = re.compile(r".*-(base|v\d+)$")
# serve.canary.enabled: auto runs the canary where the engine can run, true insists, false skips.
ENABLED = ("auto", "true", "false")


@dataclass(frozen=True)
class Rollout:
    """What one canary rolls out: a registered model's candidate version, and the version
    serving now (the champion; None: the base model serves)."""

    model: str
    candidate: str
    champion: Optional[str] = None

    @classmethod
    def from_aliases(cls, model: str, candidate: str, aliases: dict[str, str]) -> "Rollout":
        """The rollout of `candidate` given the registry's aliases. Where an earlier run already
        moved `champion` to the candidate (a promotion it did not finish), the stable side to
        retire is the version that served before it (`previous`)."""
        champion = aliases.get("champion")
        if champion == candidate:
            champion = aliases.get("previous")
        return cls(model, candidate, champion)


class ServingBackend(ABC):
    """A serving engine and its traffic router, as a canary rollout drives them.

    Built from the typed `serve`, `cluster` and `model` config groups. Use as a context
    manager around `start`/`stop`, then `deploy`, then hand it to `rollout.rollout`.
    """

    name: ClassVar[str]  # its serve.engine value
    # True: the rollout replays validation prompts to `traffic_url` (no real clients here).
    replays_traffic: ClassVar[bool] = False
    # A callable that makes the stable side serve the promoted candidate (then the canary is
    # scaled down); None: the candidate keeps all traffic on the canary side after promotion.
    promote_serving: Optional[Callable[[], None]] = None

    def __init__(self, serve, cluster, model):
        self.serve, self.cluster, self.model = serve, cluster, model

    def unavailable(self, required: bool) -> Optional[str]:
        """Why this engine cannot run a canary on this machine (None: it can). With
        `required` (serve.canary.enabled=true) it raises RuntimeError instead."""
        return None

    @abstractmethod
    def start(self, rollout: Rollout) -> None:
        """Start the engine, or find the one already running."""

    def stop(self) -> None:
        """Stop what `start` started (nothing, where the engine outlives the rollout)."""

    @abstractmethod
    def deploy(self, rollout: Rollout) -> str:
        """Stable side: the champion (or the base model); canary side: the candidate.
        Returns what the stable side serves, for the report."""

    @property
    @abstractmethod
    def router(self) -> "TrafficRouter":
        """Where the controller sets the stable/canary weights."""

    @abstractmethod
    def analysis(self) -> "Analysis":
        """Where each side's error rate and latencies are read (controller.Analysis)."""

    @abstractmethod
    def scale_down_canary(self) -> None:
        """The canary side stops serving the candidate (rollback, or after promotion)."""

    @property
    def traffic_url(self) -> Optional[str]:
        """Where replayed client traffic goes (only where `replays_traffic`)."""
        return None

    def probe_targets(self) -> Optional[dict[str, "ProbeTarget"]]:
        """Where the quality probe asks each side, addressed directly (None: it cannot here)."""
        return None

    def report(self) -> dict[str, Any]:
        """What the rollout report adds about the engine ({}: nothing)."""
        return {}

    def __enter__(self) -> "ServingBackend":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def backend_class(engine: str, rollout: str = "adapter") -> type[ServingBackend]:
    """The ServingBackend registered under `engine` (a serve.engine value) for `rollout` (serve.rollout)."""
    if engine not in ENGINES:
        raise ValueError(f"serve.engine: unknown engine {engine!r} (registered: {', '.join(ENGINES)})")
    if rollout not in ENGINES[engine]:
        raise ValueError(f"serve.rollout: must be {' or '.join(ENGINES[engine])}, got {rollout!r}")
    module, _, cls = ENGINES[engine][rollout].partition(":")
    return getattr(importlib.import_module(module), cls)


def make_backend(serve, cluster, model) -> ServingBackend:
    """The backend `serve.engine` and `serve.rollout` name, for these typed config groups."""
    return backend_class(serve.engine, serve.rollout)(serve, cluster, model)


def check_config(cfg, need) -> None:
    """The serve group's switches, steps and limits (config validation asks here)."""
    if "serve" not in cfg:
        return
    from modelchain.serving.local_stack import FAULTS

    serve = cfg.serve
    need(serve.engine in ENGINES, "serve.engine", f"unknown engine {serve.engine!r} (registered: {', '.join(ENGINES)})")
    need(serve.rollout in ROLLOUTS, "serve.rollout", f"must be {' or '.join(ROLLOUTS)}, got {serve.rollout!r}")
    steps = list(serve.canary_steps)
    need(bool(steps) and all(0 < s <= 100 for s in steps) and steps == sorted(set(steps)) and steps[-1] == 100,
         "serve.canary_steps", f"must be increasing percentages in 1..100 ending at 100, got {steps}")
    need(not RESERVED_NAME.match(serve.served_model_name), "serve.served_model_name",
         f"{serve.served_model_name!r} clashes with the names the pool serves besides it "
         "(<name>-base for the base model, <name>-v<version> for each version): choose one without that suffix")
    need(serve.analysis_interval_s >= 1, "serve.analysis_interval_s", "must be >= 1")
    canary = serve.canary
    # Hydra parses `enabled=true` as a bool, which the str field keeps as "True".
    need(str(canary.enabled).lower() in ENABLED, "serve.canary.enabled",
         f"must be {', '.join(ENABLED[:-1])} or {ENABLED[-1]}, got {canary.enabled!r}")
    need(canary.fault in FAULTS, "serve.canary.fault",
         f"must be {' or '.join(fault or repr(fault) for fault in FAULTS)}, got {canary.fault!r}")
    for key in ("max_latency_ratio", "max_ttft_ratio"):
        need(canary[key] >= 1.0, f"serve.canary.{key}", f"must be >= 1.0, got {canary[key]}")
    need(canary.min_requests >= 1, "serve.canary.min_requests", "must be >= 1")
    need(canary.probe_margin >= 0, "serve.canary.probe_margin", f"must be >= 0, got {canary.probe_margin}")
    need(canary.probe_examples >= 0, "serve.canary.probe_examples", "must be >= 0 (0: no quality probe)")
    need(canary.drain_s >= 0, "serve.canary.drain_s", "must be >= 0")
