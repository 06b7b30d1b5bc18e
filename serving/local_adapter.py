"""serve.engine=local-vllm, serve.rollout=adapter: the canary as two adapter versions on one vLLM server.

The stable side is the champion's versioned name (`<public>-v<champion>`; with no champion yet
`<public>-v0`, the base model through an all-zero adapter of the candidate's shape, so both
sides pay the same LoRA cost), the canary side the candidate's (`<public>-v<candidate>`).
Deploying proves both adapter folders against their registry digests, refuses a candidate
trained on another base model, loads what the server does not list yet, and points the
router at the two names only once both are listed and answer. Rollback unloads the
candidate after a drain period; promotion makes its name the stable target and unloads the
old stable's. The stack's work folder is `<cluster.workdir>/canary/<model>-adapters`.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any, Optional

from modelchain.serving.adapter_router import versioned_name
from modelchain.serving.adapter_stack import AdapterStack, missing_adapter_tools
from modelchain.serving.analysis import LOCAL_ROUTER_SERIES, TargetAnalysis
from modelchain.serving.backend import Rollout, ServingBackend
from modelchain.serving.local_stack import StackError, StackSpec, scrambled_adapter, zero_adapter
from modelchain.serving.local_vllm import (
    CPU_HEAD_SIZES, check_base_model, fetch_verified, head_size, local_adapters, process_record, stop_leftovers,
)
from modelchain.serving.probe import ProbeTarget


class LocalAdapterBackend(ServingBackend):
    name = "local-vllm"
    replays_traffic = True

    def __init__(self, serve, cluster, model, *, base_model: Optional[Path] = None, stack: Optional[AdapterStack] = None):
        """`base_model`: the base model folder (default: resolved from the model group);
        `stack`: an AdapterStack already running, which this backend then neither starts nor stops."""
        super().__init__(serve, cluster, model)
        self._base_model = base_model
        self.stack = stack
        self._owns_stack = False
        self.stable_label = ""
        self.timings: dict[str, float] = {}

    @classmethod
    def on_stack(cls, serve, cluster, stack: AdapterStack) -> "LocalAdapterBackend":
        """A backend over a stack started elsewhere (tests reuse one stack for several rollouts)."""
        return cls(serve, cluster, None, base_model=stack.spec.base_model, stack=stack)

    @property
    def base_model(self) -> Path:
        if self._base_model is None:
            from modelchain.core.models import resolve_base_model

            m = self.model
            self._base_model = resolve_base_model(m.name, path=m.path, gguf_package=m.gguf_package, gguf_file=m.gguf_file)
        return self._base_model

    def unavailable(self, required: bool) -> Optional[str]:
        why = None
        missing = missing_adapter_tools(self.serve.canary.vllm_python)
        if missing:
            why = f"the local serving stack is not installed ({', '.join(missing)})"
        else:
            size = head_size(self.base_model)
            if size is not None and size not in CPU_HEAD_SIZES:
                why = f"vLLM's CPU attention cannot serve {self.base_model.name} (head size {size})"
        if why and required:
            raise RuntimeError(f"serve.canary.enabled=true but {why}")
        return why

    # -- the stack
    def start(self, rollout: Rollout) -> None:
        if self.stack is not None:
            return
        work = Path(self.cluster.workdir).resolve() / "canary" / f"{rollout.model}-adapters"
        record = process_record(self.cluster, rollout)
        stop_leftovers(record)  # before the folder goes: a crashed run's nginx keeps its pid file there
        shutil.rmtree(work, ignore_errors=True)
        print(f"canary: starting the local stack (1 vLLM CPU server, nginx + njs, mtail, Prometheus) under {work}",
              flush=True)
        self.stack = AdapterStack(StackSpec.from_serve(self.serve, self.base_model, work), record=record)
        self._owns_stack = True
        try:
            self.stack.start()
        except BaseException:
            self.stop()
            raise
        print(f"canary: stack ready in {self.stack.timings['start_s']} s", flush=True)

    def stop(self) -> None:
        if self._owns_stack and self.stack is not None:
            self.stack.stop()
            self._owns_stack = False

    # -- the two versions
    def deploy(self, rollout: Rollout) -> str:
        """Prove, load and check both versions, then point the router's sides at their names."""
        public = self.serve.served_model_name
        proven = fetch_verified(local_adapters(self.cluster), self.cluster.mlflow.tracking_uri, rollout)
        candidate_dir = proven[rollout.candidate]
        for version, folder in proven.items():
            check_base_model(folder, self.stack.spec.base_model, f"models:/{rollout.model}/{version}")
        if rollout.champion is not None and rollout.champion in proven and rollout.champion != rollout.candidate:
            stable_name, stable_dir = versioned_name(public, rollout.champion), proven[rollout.champion]
            self.stable_label = f"version {rollout.champion} (champion) as {stable_name}"
        else:
            stable_name = versioned_name(public, 0)
            stable_dir = zero_adapter(candidate_dir, self.stack.spec.workdir / "zero-adapter")
            self.stable_label = f"the base model (no champion yet; an all-zero adapter) as {stable_name}"
        return self.deploy_adapters(stable_name, stable_dir, versioned_name(public, rollout.candidate), candidate_dir)

    def deploy_adapters(self, stable_name: str, stable_dir: Path, candidate_name: str, candidate_dir: Path) -> str:
        """Load both folders under their names, wait until each is listed and answers, then route to them."""
        fault = self.serve.canary.fault
        if fault == "wrong_answers":
            candidate_dir = scrambled_adapter(candidate_dir, self.stack.spec.workdir / "scrambled-candidate")
        t0 = time.monotonic()
        for name, folder in ((stable_name, stable_dir), (candidate_name, candidate_dir)):
            self.timings[f"load_{name}_s"] = self.stack.load(name, folder)
        self._wait_answering([stable_name, candidate_name])
        self.timings["candidate_ready_s"] = round(time.monotonic() - t0, 3)
        if fault == "unknown_model":
            # The drill: the candidate passed its checks, then the server lost it (evicted, restarted).
            self.stack.unload(candidate_name)
        weights = self.stack.router.weights()
        self.stack.router.route(stable_name, candidate_name, weights["stable"], weights["canary"])
        print(f"canary: {candidate_name} loaded and answering in {self.timings['candidate_ready_s']} s; "
              f"stable serves {self.stable_label}" + (f"; fault {fault!r}" if fault else ""), flush=True)
        return self.stable_label

    def _wait_answering(self, names: list[str], timeout_s: float = 120.0) -> None:
        """Until the server lists every name and each answers a request (AdapterStack.answers)."""
        deadline = time.monotonic() + timeout_s
        pending = list(names)
        while pending:
            listed = self.stack.listed()
            pending = [name for name in pending if not (name in listed and self.stack.answers(name))]
            if pending and time.monotonic() > deadline:
                raise StackError(f"{', '.join(pending)} not listed and answering after {timeout_s:.0f} s")
            if pending:
                time.sleep(0.5)

    @property
    def router(self):
        return self.stack.router

    def analysis(self) -> TargetAnalysis:
        return TargetAnalysis(self.stack.prometheus_url, LOCAL_ROUTER_SERIES, lambda: dict(self.stack.router.targets),
                              up_selector='job="vllm"')

    def scale_down_canary(self) -> None:
        """After a drain period, unload the canary side's version (the candidate after a rollback,
        the old stable after a promotion); the base model and the stable's version stay."""
        targets = self.stack.router.targets
        name = targets["canary"]
        if name == targets["stable"] or name == f"{self.serve.served_model_name}-base":
            return
        time.sleep(self.serve.canary.drain_s)
        self.stack.unload(name)

    def promote_serving(self) -> None:
        """The candidate's name becomes the stable target with all traffic; the old stable's is the canary side's."""
        targets = self.stack.router.targets
        self.stack.router.route(targets["canary"], targets["stable"], 100, 0)

    def probe_targets(self) -> dict[str, ProbeTarget]:
        targets = self.stack.router.targets
        return {side: ProbeTarget(self.stack.server_url, name) for side, name in targets.items()}

    @property
    def traffic_url(self) -> str:
        return self.stack.url

    def report(self) -> dict[str, Any]:
        return {"timings": {**self.stack.timings, **self.timings}, "stable": self.stable_label,
                "targets_at_end": dict(self.stack.router.targets), "loaded_at_end": sorted(self.stack.listed()),
                "fault": self.serve.canary.fault}
