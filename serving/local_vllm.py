"""serve.engine=local-vllm: the local serving stack (two vLLM CPU servers, nginx, Prometheus).

The stable side serves the champion's adapter, or with no champion yet the base model through
an all-zero adapter; the canary side serves the candidate, both under the public name. Both
adapters are fetched from the registry (cluster.mlflow.tracking_uri) into
`<cluster.workdir>/adapters/<model>/<version>`; the servers' state and logs go under
`<cluster.workdir>/canary/<model>-<candidate>` (local state, not part of the report).
Validation prompts are replayed through nginx while the controller moves the weights.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Optional

from modelchain.serving.analysis import PrometheusAnalysis
from modelchain.serving.backend import Rollout, ServingBackend
from modelchain.serving.local_stack import LocalStack, ProcessRecord, StackSpec, missing_tools, zero_adapter
from modelchain.serving.probe import ProbeTarget
from modelchain.serving.verify_adapter import verify

# Head sizes vLLM 0.32's CPU attention backend accepts (CPUAttentionBackend.get_supported_head_sizes).
CPU_HEAD_SIZES = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)


def head_size(model_dir: Path) -> Optional[int]:
    try:
        config = json.loads((model_dir / "config.json").read_text())
        return int(config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"])
    except (OSError, ValueError, KeyError, ZeroDivisionError):
        return None


def process_record(cluster, rollout: Rollout) -> ProcessRecord:
    """Where a local stack records its processes: beside the work folders, one file per model."""
    return ProcessRecord(Path(cluster.workdir).resolve() / "canary" / f"{rollout.model}.processes.json")


def stop_leftovers(record: ProcessRecord) -> None:
    left = record.stop_leftovers()
    if left:
        print(f"canary: stopped what an earlier run left running: {', '.join(left)}", flush=True)


def local_adapters(cluster) -> Path:
    """Where local stacks keep the versions they fetch: `<cluster.workdir>/adapters`."""
    return Path(cluster.workdir).resolve() / "adapters"


def fetch_verified(adapters_root: str | Path, tracking_uri: str, rollout: Rollout) -> dict[str, Path]:
    """version -> the adapter folder of the candidate (first) and the champion, fetched from the
    registry into `<adapters_root>/<model>/<version>` and proven against their digests.

    resolve_adapter checks each folder when it fetches or reuses it; the same check runs again
    right before vLLM loads it (as the init container does on Kubernetes), so an adapter altered
    in between is refused, naming the file and both digests.
    """
    from modelchain.core import registry

    adapters = Path(adapters_root) / rollout.model
    versions = [rollout.candidate]
    if rollout.champion is not None and rollout.champion != rollout.candidate:
        versions.append(rollout.champion)
    proven = {version: registry.resolve_adapter(f"models:/{rollout.model}/{version}", adapters / version,
                                                tracking_uri=tracking_uri) for version in versions}
    digests = registry.adapter_digests(registry.client(tracking_uri), rollout.model, versions)
    for version in versions:
        verify(proven[version], digests[version], origin=f"models:/{rollout.model}/{version} at {proven[version]}")
    return proven


def check_base_model(adapter_dir: Path, base_model: Path, origin: str) -> None:
    """Refuse an adapter trained on another base model than the one the server runs.

    peft records the base as `base_model_name_or_path` (a folder or a Hub id); it matches when
    the strings, the resolved folders or their last path parts agree. A new base model is a
    pool rollout (serve.rollout=pool), not an adapter one.
    """
    try:
        recorded = str(json.loads((Path(adapter_dir) / "adapter_config.json").read_text()).get("base_model_name_or_path") or "")
    except (OSError, ValueError) as exc:
        raise ValueError(f"{origin}: cannot read adapter_config.json ({exc})") from exc
    if not recorded:
        return
    served = Path(base_model)
    same = (recorded == str(served) or Path(recorded).name.lower() == served.name.lower()
            or (Path(recorded).exists() and Path(recorded).resolve() == served.resolve()))
    if not same:
        raise ValueError(f"{origin} was trained on base model {recorded!r} but the server runs {str(served)!r}: "
                         "a change of base model needs serve.rollout=pool")


class LocalVllmBackend(ServingBackend):
    name = "local-vllm"
    replays_traffic = True

    def __init__(self, serve, cluster, model, *, base_model: Optional[Path] = None, stack: Optional[LocalStack] = None):
        """`base_model`: the base model folder (default: resolved from the model group);
        `stack`: a LocalStack already running, which this backend then neither starts nor stops."""
        super().__init__(serve, cluster, model)
        self._base_model = base_model
        self.stack = stack
        self._owns_stack = False
        self.stable_label = ""

    @classmethod
    def on_stack(cls, serve, stack: LocalStack) -> "LocalVllmBackend":
        """A backend over a stack started elsewhere (tests reuse one stack for several rollouts)."""
        return cls(serve, None, None, base_model=stack.spec.base_model, stack=stack)

    @property
    def base_model(self) -> Path:
        if self._base_model is None:
            from modelchain.core.models import resolve_base_model

            m = self.model
            self._base_model = resolve_base_model(m.name, path=m.path, gguf_package=m.gguf_package, gguf_file=m.gguf_file)
        return self._base_model

    def unavailable(self, required: bool) -> Optional[str]:
        missing = missing_tools(self.serve.canary.vllm_python)
        if missing:
            if required:
                raise RuntimeError(f"serve.canary.enabled=true but the local serving stack needs {', '.join(missing)}")
            return f"the local serving stack is not installed ({', '.join(missing)})"
        size = head_size(self.base_model)
        if size is not None and size not in CPU_HEAD_SIZES:
            why = f"vLLM's CPU attention cannot serve {self.base_model.name} (head size {size})"
            if required:
                raise RuntimeError(f"serve.canary.enabled=true but {why}")
            return why
        return None

    def _workdir(self, rollout: Rollout) -> Path:
        return Path(self.cluster.workdir).resolve() / "canary" / f"{rollout.model}-{rollout.candidate}"

    def start(self, rollout: Rollout) -> None:
        if self.stack is not None:
            return
        work = self._workdir(rollout)
        record = process_record(self.cluster, rollout)
        stop_leftovers(record)  # before the folder goes: a crashed run's nginx keeps its pid file there
        shutil.rmtree(work, ignore_errors=True)
        print(f"canary: starting the local stack (2 vLLM CPU servers, nginx, Prometheus) under {work}", flush=True)
        self.stack = LocalStack(StackSpec.from_serve(self.serve, self.base_model, work), record=record)
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

    def deploy(self, rollout: Rollout) -> str:
        """Fetch the champion's and the candidate's adapters from the registry, prove them, load them."""
        proven = fetch_verified(local_adapters(self.cluster), self.cluster.mlflow.tracking_uri, rollout)
        versions = list(proven)
        candidate = proven[rollout.candidate]
        if len(versions) == 2:
            stable = proven[rollout.champion]
            label = f"version {rollout.champion} (champion)"
        else:
            stable = zero_adapter(candidate, self.stack.spec.workdir / "zero-adapter")
            label = "the base model (no champion yet; an all-zero adapter)"
        print(f"canary: stable serves {label}", flush=True)
        self.deploy_adapters(stable, candidate, label, rollout.candidate)
        return label

    def deploy_adapters(self, stable: Path, candidate: Path, stable_label: str, version: str = "") -> None:
        """Load adapter folders: `stable` on the stable side, `candidate` (with serve.canary.fault) on the canary."""
        fault = self.serve.canary.fault
        self.stack.deploy("stable", stable)
        self.stack.deploy("canary", candidate, fault=fault)
        self.stable_label = stable_label
        print(f"canary: version {version or candidate} deployed on the canary side"
              + (f" with fault {fault!r}" if fault else ""), flush=True)

    @property
    def router(self):
        return self.stack.router

    def analysis(self) -> PrometheusAnalysis:
        return PrometheusAnalysis(self.stack.prometheus_url, self.stack.selectors)

    def scale_down_canary(self) -> None:
        self.stack.scale_down_canary()

    def promote_serving(self) -> None:
        self.stack.promote_serving()

    @property
    def traffic_url(self) -> str:
        return self.stack.url

    def probe_targets(self) -> dict[str, ProbeTarget]:
        """Each side's own server, asked for the public name as clients ask it."""
        return {role: ProbeTarget(self.stack.slot(role).url, self.serve.served_model_name) for role in ("stable", "canary")}

    def report(self) -> dict[str, Any]:
        stack = self.stack
        return {"timings": stack.timings, "stable": self.stable_label, "served_at_end": stack.served_adapters(),
                "fault": self.serve.canary.fault,
                "upstreams": {role: stack.slot(role).address for role in stack.roles}}
