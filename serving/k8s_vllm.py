"""serve.engine=k8s-vllm: vLLM Deployments on Kubernetes behind a Gateway API HTTPRoute.

`modelchain render serving` wrote the stable and canary Deployments (each syncing its model
version's adapter from S3), their Services and the route, and they were applied before the
rollout: this backend finds them rather than starting anything, moves the route's weights
(httproute.HTTPRouteRouter), reads each track's metrics from the cluster's Prometheus
(serve.canary.prometheus_url, tracks picked by serve.canary.stable_selector and
canary_selector), and scales the canary Deployment to 0 when it is done. Real clients send
the traffic; nothing is replayed.
"""

from __future__ import annotations

from types import SimpleNamespace

from modelchain.serving.analysis import PrometheusAnalysis
from modelchain.serving.backend import Rollout, ServingBackend


class KubernetesVllmBackend(ServingBackend):
    name = "k8s-vllm"

    def __init__(self, serve, cluster, model, *, api=None):
        """`api`: a kubernetes.client.ApiClient (None: the pod's service account, else the kubeconfig)."""
        super().__init__(serve, cluster, model)
        self.api = api
        self._router = None

    def start(self, rollout: Rollout) -> None:
        from modelchain.serving.httproute import HTTPRouteRouter

        if not self.serve.canary.prometheus_url:
            raise ValueError("serve.canary.prometheus_url: the cluster's Prometheus HTTP API is needed for the analysis")
        self._router = HTTPRouteRouter.from_config(SimpleNamespace(serve=self.serve, cluster=self.cluster), api=self.api)

    def deploy(self, rollout: Rollout) -> str:
        # The Deployments already serve the adapters they were rendered with (render serving).
        return "the stable Deployment's adapter (as rendered)"

    @property
    def router(self):
        return self._router

    def analysis(self) -> PrometheusAnalysis:
        canary = self.serve.canary
        return PrometheusAnalysis(canary.prometheus_url, {"stable": canary.stable_selector, "canary": canary.canary_selector})

    def scale_down_canary(self) -> None:
        self._router.scale_canary(0)
