"""serve.engine=k8s-vllm, serve.rollout=pool: two vLLM Deployments behind a Gateway API HTTPRoute.

For a change of base model. `modelchain render serving serve.rollout=pool` wrote the stable
and canary Deployments (each syncing its model version's adapter from S3 and proving it),
their Services and the route, and they were applied before the rollout. This backend puts the
candidate on the canary Deployment (its pod template rendered for the candidate's adapter,
scaled to serve.canary_replicas) and waits for ready pods carrying the candidate's version
label before any traffic moves; moves the route's weights (httproute.HTTPRouteRouter); reads
each track's metrics from the cluster's Prometheus (serve.canary.prometheus_url, tracks picked
by serve.canary.stable_selector and canary_selector). A promotion rolls the stable Deployment
to the candidate, waits for its pods, ends with the route at 100 % on stable and the canary
scaled to 0; a rollback scales the canary to 0. Real clients send the traffic.
"""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Callable, Optional

from modelchain.serving import manifests
from modelchain.serving.analysis import PrometheusAnalysis
from modelchain.serving.backend import Rollout, ServingBackend


class KubernetesVllmBackend(ServingBackend):
    name = "k8s-vllm"

    def __init__(self, serve, cluster, model, *, api=None, sleep: Callable[[float], None] = time.sleep):
        """`api`: a kubernetes.client.ApiClient (None: the pod's service account, else the kubeconfig)."""
        super().__init__(serve, cluster, model)
        self._model_name: Optional[str] = None
        self.api = api
        self._router = None
        self._sleep = sleep
        self._candidate: Optional[manifests.Adapter] = None

    def _cfg(self):
        """The groups the manifest helpers read; the registered model is the rollout's (set by `start`)."""
        return SimpleNamespace(serve=self.serve, cluster=self.cluster, model=self.model,
                               experiment=SimpleNamespace(registered_model=self._model_name))

    def start(self, rollout: Rollout) -> None:
        self._model_name = rollout.model
        from modelchain.serving.httproute import HTTPRouteRouter

        if not self.serve.canary.prometheus_url:
            raise ValueError("serve.canary.prometheus_url: the cluster's Prometheus HTTP API is needed for the analysis")
        self._router = HTTPRouteRouter.from_config(self._cfg(), api=self.api, sleep=self._sleep)
        if self.api is None:
            self.api = self._router.api

    def _adapter(self, model: str, version: str) -> manifests.Adapter:
        """A registered version's adapter as the Deployments sync it: its S3 source and manifest digest."""
        from modelchain.core import registry

        client = registry.client(self.cluster.mlflow.tracking_uri)
        digest = registry.adapter_digests(client, model, [version])[version]
        return manifests.Adapter(client.get_model_version(model, version).source, str(version), digest)

    def deploy(self, rollout: Rollout) -> str:
        """The candidate on the canary Deployment, its pods ready, before any traffic moves."""
        self._candidate = self._adapter(rollout.model, rollout.candidate)
        self.roll_track("canary", self._candidate, self.serve.canary_replicas)
        return "the stable Deployment's adapter (as rendered)"

    def roll_track(self, track: str, adapter: manifests.Adapter, replicas: int) -> None:
        """Patch the track's Deployment to serve `adapter` with `replicas` pods, then wait until that
        many ready pods carry the adapter's version label (the pod template is the rendered one)."""
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        from modelchain.serving.httproute import RouteError

        cfg, name, ns = self._cfg(), manifests.deployment_name(self._cfg(), track), manifests.namespace(self._cfg())
        template = manifests.deployment(cfg, track, adapter)["spec"]["template"]
        try:
            client.AppsV1Api(self.api).patch_namespaced_deployment(
                name, ns, {"spec": {"replicas": replicas, "template": template}})
        except ApiException as exc:
            raise RouteError(f"roll Deployment {ns}/{name} to version {adapter.version}: {exc.status} {exc.reason}") from exc
        selector = ",".join(f"{k}={v}" for k, v in {**manifests.labels(cfg, track),
                                                     manifests.VERSION_LABEL: adapter.version}.items())
        deadline = time.monotonic() + self.serve.canary.start_timeout_s
        while True:
            pods = client.CoreV1Api(self.api).list_namespaced_pod(ns, label_selector=selector).items
            ready = [p for p in pods if any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or [])]
            if len(ready) >= replicas:
                print(f"canary: {ns}/{name} serves version {adapter.version} on {len(ready)} ready pods", flush=True)
                return
            if time.monotonic() >= deadline:
                raise RouteError(f"Deployment {ns}/{name}: {len(ready)} of {replicas} pods ready with version "
                                 f"{adapter.version} after {self.serve.canary.start_timeout_s} s")
            self._sleep(5)

    def promote_serving(self) -> None:
        """The stable Deployment rolls to the candidate (its PDB keeps capacity), then takes the traffic back."""
        self.roll_track("stable", self._candidate, self.serve.replicas)

    @property
    def router(self):
        return self._router

    def analysis(self) -> PrometheusAnalysis:
        canary = self.serve.canary
        return PrometheusAnalysis(canary.prometheus_url, {"stable": canary.stable_selector, "canary": canary.canary_selector})

    def scale_down_canary(self) -> None:
        self._router.scale_canary(0)
