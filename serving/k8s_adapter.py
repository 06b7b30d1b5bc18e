"""serve.engine=k8s-vllm, serve.rollout=adapter: the canary as adapter versions on the cluster's vLLM pool.

`modelchain render serving` wrote the pool (serving/adapter_manifests.py) and it was applied
before the rollout. This backend:
- fetches the candidate from the registry onto FSx (`serve.runtime_adapter_dir`), proves it
  against its digest, and asks every ready pod of the pool to load it under its versioned
  name (`/v1/load_lora_adapter`); the router gets the name only once every pod lists it and
  it answers a request on each;
- moves the weights of the llm-d InferenceModelRewrite (`InferenceModelRewriteRouter`);
- reads each version's series from the endpoint picker's metrics in the cluster's Prometheus
  (llm-d-router v0.10.0: `llm_d_epp_request_total`, `llm_d_epp_request_error_total`,
  `llm_d_epp_request_duration_seconds`, labelled `model_name` and `target_model_name`);
- unloads a version from every pod after a drain (the candidate after a rollback, the old
  stable after a promotion). Real clients send the traffic; nothing is replayed.

The service account needs get/patch on inferencemodelrewrites.llm-d.ai and list on pods in
the namespace; the step's pod must reach the pods' IPs and mount FSx.
"""

from __future__ import annotations

import copy
import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Optional

from modelchain.serving.adapter_manifests import (
    CANARY_TARGET_ANNOTATION, POOL, STABLE_TARGET_ANNOTATION, rewrite_name, runtime_adapter_dir,
)
from modelchain.serving.adapter_router import versioned_name
from modelchain.serving.analysis import LLM_D_EPP_SERIES, TargetAnalysis
from modelchain.serving.backend import Rollout, ServingBackend
from modelchain.serving.httproute import CONFLICT_RETRIES, RouteError, load_api_client
from modelchain.serving.probe import ProbeTarget
from modelchain.serving.router import check_weights

GROUP, VERSION, PLURAL = "llm-d.ai", "v1alpha2", "inferencemodelrewrites"


class InferenceModelRewriteRouter:
    """TrafficRouter over the weighted targets of an llm-d InferenceModelRewrite for one public name.

    The sides are the versioned names in the object's annotations; a target at weight 0 is
    left out (llm-d's minimum weight is 1). Every change is one merge-patch carrying the
    object's resourceVersion: a 409 (changed since read) reads it again and retries, so a
    concurrent edit is never overwritten with a stale copy. The answer is checked.
    """

    def __init__(self, namespace: str, name: str, public: str, api=None, *, sleep: Callable[[float], None] = time.sleep):
        self.namespace, self.name, self.public = namespace, name, public
        self._api, self._sleep = api, sleep

    @classmethod
    def from_config(cls, cfg, api=None, **kwargs) -> "InferenceModelRewriteRouter":
        from modelchain.serving import manifests

        return cls(manifests.namespace(cfg), rewrite_name(cfg), manifests.adapter_name(cfg), api, **kwargs)

    @property
    def api(self):
        if self._api is None:
            self._api = load_api_client()
        return self._api

    def _objects(self):
        from kubernetes import client

        return client.CustomObjectsApi(self.api)

    def _where(self) -> str:
        return f"InferenceModelRewrite {self.namespace}/{self.name}"

    def _read(self) -> dict[str, Any]:
        from kubernetes.client.exceptions import ApiException

        try:
            return self._objects().get_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, self.name)
        except ApiException as exc:
            if exc.status == 404:
                raise RouteError(f"{self._where()} not found (render and apply it: modelchain render serving)") from exc
            raise RouteError(f"read {self._where()}: {exc.status} {exc.reason}") from exc

    def _rule(self, obj: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        for index, rule in enumerate(obj.get("spec", {}).get("rules") or []):
            if any(m.get("model", {}).get("value") == self.public for m in rule.get("matches") or []):
                return index, rule
        raise RouteError(f"{self._where()}: no rule matches model {self.public!r}")

    def _sides(self, obj: dict[str, Any]) -> dict[str, str]:
        notes = obj.get("metadata", {}).get("annotations") or {}
        if STABLE_TARGET_ANNOTATION not in notes or CANARY_TARGET_ANNOTATION not in notes:
            raise RouteError(f"{self._where()}: annotations {STABLE_TARGET_ANNOTATION} and {CANARY_TARGET_ANNOTATION} "
                             "name no sides (render it with modelchain render serving)")
        return {"stable": notes[STABLE_TARGET_ANNOTATION], "canary": notes[CANARY_TARGET_ANNOTATION]}

    def _weights_of(self, obj: dict[str, Any]) -> dict[str, int]:
        sides, (_, rule) = self._sides(obj), self._rule(obj)
        raw = {t["modelRewrite"]: int(t.get("weight", 1)) for t in rule.get("targets") or []}
        unknown = set(raw) - set(sides.values())
        if unknown:
            raise RouteError(f"{self._where()}: targets {sorted(unknown)} are neither side ({sides})")
        if sides["stable"] == sides["canary"]:
            return {"stable": 100, "canary": 0}
        stable, canary = raw.get(sides["stable"], 0), raw.get(sides["canary"], 0)
        if stable + canary == 0:
            raise RouteError(f"{self._where()}: no target has weight, no traffic is served")
        share = round(100 * stable / (stable + canary))
        return {"stable": share, "canary": 100 - share}

    @property
    def targets(self) -> dict[str, str]:
        return self._sides(self._read())

    def weights(self) -> dict[str, int]:
        return self._weights_of(self._read())

    def set_weights(self, stable: int, canary: int) -> None:
        sides = self.targets
        self.route(sides["stable"], sides["canary"], stable, canary)

    def route(self, stable_model: str, canary_model: str, stable: int, canary: int) -> None:
        """Name both sides and set their weights, in one patch guarded by resourceVersion."""
        from kubernetes.client.exceptions import ApiException

        check_weights(stable, canary)
        wanted_sides = {"stable": stable_model, "canary": canary_model}
        wanted = {"stable": stable, "canary": canary}
        for attempt in range(CONFLICT_RETRIES):
            obj = self._read()
            if self._sides(obj) == wanted_sides and self._weights_of(obj) == wanted:
                return  # already so: a restarted controller repeats its last step harmlessly
            index, _ = self._rule(obj)
            rules = copy.deepcopy(obj["spec"]["rules"])
            rules[index]["targets"] = [{"modelRewrite": wanted_sides[side], "weight": wanted[side]}
                                       for side in ("stable", "canary") if wanted[side] > 0]
            patch = {"metadata": {"resourceVersion": obj["metadata"]["resourceVersion"],
                                  "annotations": {STABLE_TARGET_ANNOTATION: stable_model,
                                                  CANARY_TARGET_ANNOTATION: canary_model}},
                     "spec": {"rules": rules}}
            try:
                answer = self._objects().patch_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL,
                                                                        self.name, patch)
            except ApiException as exc:
                if exc.status == 409:
                    self._sleep(0.2 * (attempt + 1))
                    continue
                raise RouteError(f"set {self._where()} to {wanted_sides} {stable}/{canary}: {exc.status} {exc.reason}") from exc
            if self._sides(answer) != wanted_sides or self._weights_of(answer) != wanted:
                raise RouteError(f"{self._where()}: asked for {wanted_sides} {wanted}, the API server kept "
                                 f"{self._sides(answer)} {self._weights_of(answer)}")
            return
        raise RouteError(f"{self._where()}: still changing under us after {CONFLICT_RETRIES} tries")

    def describe(self) -> str:
        return f"{self._where()} ({GROUP}/{VERSION}): model {self.public!r} split between versioned names"


class PoolPods:
    """The ready pods of the pool, each asked directly on its IP (load, unload, list, answer)."""

    def __init__(self, namespace: str, selector: str, port: int, api=None, timeout_s: float = 120.0):
        self.namespace, self.selector, self.port = namespace, selector, port
        self._api, self.timeout_s = api, timeout_s

    def urls(self) -> list[str]:
        from kubernetes import client

        api = client.CoreV1Api(self._api or load_api_client())
        pods = api.list_namespaced_pod(self.namespace, label_selector=self.selector).items
        ready = [p for p in pods if p.status.pod_ip and any(c.type == "Ready" and c.status == "True"
                                                            for c in p.status.conditions or [])]
        if not ready:
            raise RouteError(f"no ready pod in {self.namespace} matches {self.selector}")
        return [f"http://{p.status.pod_ip}:{self.port}" for p in ready]

    def _post(self, url: str, payload: dict) -> tuple[int, str]:
        request = urllib.request.Request(url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                return response.status, response.read().decode(errors="replace")
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode(errors="replace")

    def listed(self, url: str) -> set[str]:
        with urllib.request.urlopen(f"{url}/v1/models", timeout=self.timeout_s) as response:
            return {m["id"] for m in json.load(response)["data"]}

    def load(self, name: str, path: str) -> None:
        for url in self.urls():
            if name in self.listed(url):
                continue  # versioned names are immutable: listed means this version
            status, body = self._post(f"{url}/v1/load_lora_adapter", {"lora_name": name, "lora_path": path})
            if status != 200 and name not in self.listed(url):
                raise RouteError(f"pod {url} could not load {path} as {name!r}: {status} {body[:300]}")

    def answering(self, name: str) -> bool:
        for url in self.urls():
            if name not in self.listed(url):
                return False
            status, _ = self._post(f"{url}/v1/chat/completions",
                                   {"model": name, "messages": [{"role": "user", "content": "ping"}], "max_tokens": 2})
            if status != 200:
                return False
        return True

    def unload(self, name: str) -> None:
        for url in self.urls():
            status, body = self._post(f"{url}/v1/unload_lora_adapter", {"lora_name": name})
            if status not in (200, 404) and name in self.listed(url):
                raise RouteError(f"pod {url} could not unload {name!r}: {status} {body[:300]}")


class KubernetesAdapterBackend(ServingBackend):
    name = "k8s-vllm"

    def __init__(self, serve, cluster, model, *, api=None, pods: Optional[PoolPods] = None):
        super().__init__(serve, cluster, model)
        self._model_name: Optional[str] = None
        self.api, self._pods, self._router = api, pods, None
        self.timings: dict[str, float] = {}

    def _cfg(self):
        """The groups the manifest helpers read; the registered model is the rollout's (set by `start`)."""
        return SimpleNamespace(serve=self.serve, cluster=self.cluster, model=self.model,
                               experiment=SimpleNamespace(registered_model=self._model_name))

    def start(self, rollout: Rollout) -> None:
        self._model_name = rollout.model
        from modelchain.serving import manifests

        if not self.serve.canary.prometheus_url:
            raise ValueError("serve.canary.prometheus_url: the cluster's Prometheus HTTP API is needed for the analysis")
        cfg = self._cfg()
        self._router = InferenceModelRewriteRouter.from_config(cfg, api=self.api)
        if self._pods is None:
            selector = ",".join(f"{k}={v}" for k, v in manifests.labels(cfg, POOL).items())
            self._pods = PoolPods(manifests.namespace(cfg), selector, self.serve.port, api=self.api)

    def deploy(self, rollout: Rollout) -> str:
        """Put the candidate on FSx, proven; load it in every pod; name it the canary side once all answer."""
        from modelchain.serving.local_vllm import check_base_model, fetch_verified
        from modelchain.serving.manifests import adapter_name, base_model

        public = adapter_name(self._cfg())
        proven = fetch_verified(runtime_adapter_dir(self._cfg()), self.cluster.mlflow.tracking_uri,
                                Rollout(rollout.model, rollout.candidate, None))
        check_base_model(proven[rollout.candidate], Path(base_model(self._cfg())), f"models:/{rollout.model}/{rollout.candidate}")
        candidate = versioned_name(public, rollout.candidate)
        t0 = time.monotonic()
        self._pods.load(candidate, str(proven[rollout.candidate]))
        deadline = time.monotonic() + 300
        while not self._pods.answering(candidate):
            if time.monotonic() > deadline:
                raise RouteError(f"{candidate} not listed and answering on every pod after 300 s")
            time.sleep(2)
        self.timings["candidate_ready_s"] = round(time.monotonic() - t0, 3)
        stable = versioned_name(public, rollout.champion) if rollout.champion else self._router.targets["stable"]
        weights = self._router.weights()
        self._router.route(stable, candidate, weights["stable"], weights["canary"])
        return f"{stable} (the pool's stable version)"

    @property
    def router(self):
        return self._router

    def analysis(self) -> TargetAnalysis:
        canary = self.serve.canary
        return TargetAnalysis(canary.prometheus_url, LLM_D_EPP_SERIES, lambda: self._router.targets)

    def scale_down_canary(self) -> None:
        targets = self._router.targets
        if targets["canary"] != targets["stable"]:
            time.sleep(self.serve.canary.drain_s)
            self._pods.unload(targets["canary"])

    def promote_serving(self) -> None:
        targets = self._router.targets
        self._router.route(targets["canary"], targets["stable"], 100, 0)

    def probe_targets(self) -> Optional[dict[str, ProbeTarget]]:
        url = self.serve.canary.probe_url
        if not url:
            return None
        return {side: ProbeTarget(url, name) for side, name in self._router.targets.items()}

    def report(self) -> dict[str, Any]:
        return {"timings": self.timings, "targets_at_end": self._router.targets if self._router else None}
