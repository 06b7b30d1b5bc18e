"""Traffic between the stable and canary vLLM Services, through a Gateway API HTTPRoute.

`HTTPRouteRouter` is the cluster's TrafficRouter: `weights()` reads `backendRefs[].weight` of
the route (gateway.networking.k8s.io/v1) rendered by serving/manifests.py,
`set_weights()` changes them, and `scale_canary()` sets the canary Deployment's replicas.

A weight change is one merge-patch of `spec.rules` that carries the route's resourceVersion:
the API server refuses it (409) if someone changed the route since it was read, and then it is
read again and retried, so a concurrent edit of other fields (filters, hostnames) is never
overwritten with a stale copy. The patch answer is checked before `set_weights` returns.
Gateway weights are proportions, not percentages; `weights()` reports percentages.

The service account needs get/patch on httproutes.gateway.networking.k8s.io and patch on
deployments/scale (get on deployments/status to wait) in the route's namespace.
"""

from __future__ import annotations

import copy
import time
from typing import Any, Callable, Optional

GROUP, VERSION, PLURAL = "gateway.networking.k8s.io", "v1", "httproutes"
CONFLICT_RETRIES = 5


class RouteError(RuntimeError):
    """The route or the canary Deployment cannot be read or changed; the message says why."""


def load_api_client():
    """An ApiClient from the pod's service account, else from the kubeconfig."""
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return client.ApiClient()


class HTTPRouteRouter:
    """TrafficRouter over an HTTPRoute's weighted backendRefs (stable and canary Services).

    `api` is a kubernetes.client.ApiClient (None: the pod's service account, else the
    kubeconfig); `canary_deployment` defaults to the canary Service's name, as rendered.
    """

    def __init__(
        self,
        namespace: str,
        route_name: str,
        stable_service: str,
        canary_service: str,
        api=None,
        *,
        canary_deployment: Optional[str] = None,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.namespace = namespace
        self.route_name = route_name
        self.services = {"stable": stable_service, "canary": canary_service}
        self.canary_deployment = canary_deployment or canary_service
        self._api = api  # a kubernetes.client.ApiClient; None = loaded on first use
        self._sleep = sleep

    @classmethod
    def from_config(cls, cfg, api=None, **kwargs) -> "HTTPRouteRouter":
        """The route and Services `modelchain render serving` wrote for this config (anything
        with the `serve` and `cluster` groups as attributes)."""
        from modelchain.serving import manifests

        return cls(
            manifests.namespace(cfg),
            cfg.serve.route_name,
            manifests.deployment_name(cfg, "stable"),
            manifests.deployment_name(cfg, "canary"),
            api,
            **kwargs,
        )

    # ----------------------------------------------------------------- kubernetes access
    @property
    def api(self):
        if self._api is None:
            self._api = load_api_client()
        return self._api

    def _objects(self):
        from kubernetes import client

        return client.CustomObjectsApi(self.api)

    def _apps(self):
        from kubernetes import client

        return client.AppsV1Api(self.api)

    def _fail(self, action: str, exc) -> RouteError:
        status = getattr(exc, "status", None)
        where = f"HTTPRoute {self.namespace}/{self.route_name}"
        if status == 404:
            return RouteError(f"{action}: {where} not found (render and apply it: modelchain render serving)")
        if status in (401, 403):
            return RouteError(f"{action}: {where}: forbidden ({status}); the service account needs get/patch "
                              f"on httproutes.{GROUP} in {self.namespace}")
        return RouteError(f"{action}: {where}: {status or ''} {getattr(exc, 'reason', exc)}".replace("  ", " "))

    def _read(self) -> dict[str, Any]:
        from kubernetes.client.exceptions import ApiException

        try:
            return self._objects().get_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, self.route_name)
        except ApiException as exc:
            raise self._fail("read weights", exc) from exc

    # ----------------------------------------------------------------- weights
    def _raw_weights(self, route: dict[str, Any]) -> dict[str, int]:
        """Gateway weights of the two Services; the rules that name them must agree."""
        seen: Optional[dict[str, int]] = None
        for index, rule in enumerate(route.get("spec", {}).get("rules") or []):
            refs = {ref.get("name"): ref for ref in rule.get("backendRefs") or [] if ref.get("kind", "Service") == "Service"}
            if not any(name in refs for name in self.services.values()):
                continue
            # An absent backendRef gets no traffic; an absent weight is 1 (the Gateway API default).
            found = {track: int(refs[name].get("weight", 1)) if name in refs else 0
                     for track, name in self.services.items()}
            if seen is not None and found != seen:
                raise RouteError(f"HTTPRoute {self.namespace}/{self.route_name}: rules[{index}] weights {found} "
                                 f"differ from an earlier rule's {seen}")
            seen = found
        if seen is None:
            raise RouteError(f"HTTPRoute {self.namespace}/{self.route_name}: no rule sends traffic to "
                             f"{self.services['stable']} or {self.services['canary']}")
        return seen

    def weights(self) -> dict[str, int]:
        """{"stable": s, "canary": c} in percent (s + c == 100), as the route stands now."""
        raw = self._raw_weights(self._read())
        total = raw["stable"] + raw["canary"]
        if total == 0:
            raise RouteError(f"HTTPRoute {self.namespace}/{self.route_name}: both weights are 0, no traffic is served")
        stable = round(100 * raw["stable"] / total)
        return {"stable": stable, "canary": 100 - stable}

    def _rules_with(self, route: dict[str, Any], wanted: dict[str, int]) -> list[dict[str, Any]]:
        rules = copy.deepcopy(route.get("spec", {}).get("rules") or [])
        for rule in rules:
            refs = rule.get("backendRefs") or []
            names = [ref.get("name") for ref in refs]
            if not any(name in names for name in self.services.values()):
                continue
            for track, service in self.services.items():
                if service in names:
                    refs[names.index(service)]["weight"] = wanted[track]
                elif wanted[track] > 0:  # the side is missing: add it beside the other one
                    other = refs[names.index(self.services["stable" if track == "canary" else "canary"])]
                    refs.append({**copy.deepcopy(other), "name": service, "weight": wanted[track]})
            rule["backendRefs"] = refs
        return rules

    def set_weights(self, stable: int, canary: int) -> None:
        """Send `stable`% and `canary`% of requests to each Service; checked when it returns."""
        from kubernetes.client.exceptions import ApiException

        if not all(isinstance(w, int) and not isinstance(w, bool) and w >= 0 for w in (stable, canary)) \
                or stable + canary != 100:
            raise ValueError(f"weights must be whole percentages summing to 100, got stable={stable} canary={canary}")
        wanted = {"stable": stable, "canary": canary}
        for attempt in range(CONFLICT_RETRIES):
            route = self._read()
            if self._raw_weights(route) == wanted:
                return  # already so: a restarted controller repeats its last step harmlessly
            patch = {
                "metadata": {"resourceVersion": route["metadata"]["resourceVersion"]},
                "spec": {"rules": self._rules_with(route, wanted)},
            }
            try:
                answer = self._objects().patch_namespaced_custom_object(
                    GROUP, VERSION, self.namespace, PLURAL, self.route_name, patch
                )
            except ApiException as exc:
                if exc.status == 409:  # changed since we read it: read again
                    self._sleep(0.2 * (attempt + 1))
                    continue
                raise self._fail(f"set weights {stable}/{canary}", exc) from exc
            applied = self._raw_weights(answer)
            if applied != wanted:
                raise RouteError(f"HTTPRoute {self.namespace}/{self.route_name}: asked for {wanted}, "
                                 f"the API server kept {applied}")
            return
        raise RouteError(f"HTTPRoute {self.namespace}/{self.route_name}: still changing under us after "
                         f"{CONFLICT_RETRIES} tries; weights not set to {stable}/{canary}")

    # ----------------------------------------------------------------- canary Deployment
    def scale_canary(self, replicas: int, wait_s: float = 0.0, poll_s: float = 5.0) -> None:
        """Set the canary Deployment's replicas; with `wait_s`, wait until that many are ready
        (or, for 0, until none is left)."""
        from kubernetes.client.exceptions import ApiException

        if replicas < 0:
            raise ValueError(f"replicas must be >= 0, got {replicas}")
        apps, name = self._apps(), self.canary_deployment
        try:
            apps.patch_namespaced_deployment_scale(name, self.namespace, {"spec": {"replicas": replicas}})
        except ApiException as exc:
            raise RouteError(f"scale Deployment {self.namespace}/{name} to {replicas}: {exc.status} {exc.reason}") from exc
        if wait_s <= 0:
            return
        deadline = time.monotonic() + wait_s
        while True:
            try:
                status = apps.read_namespaced_deployment_status(name, self.namespace).status
            except ApiException as exc:
                raise RouteError(f"read Deployment {self.namespace}/{name}: {exc.status} {exc.reason}") from exc
            ready, present = status.ready_replicas or 0, status.replicas or 0
            if (replicas == 0 and present == 0) or (replicas > 0 and ready >= replicas):
                return
            if time.monotonic() >= deadline:
                raise RouteError(f"Deployment {self.namespace}/{name}: {ready} of {replicas} replicas ready "
                                 f"after {wait_s:.0f}s")
            self._sleep(poll_s)

    def describe(self) -> str:
        return (f"HTTPRoute {self.namespace}/{self.route_name} ({GROUP}/{VERSION}): "
                f"{self.services['stable']} (stable) / {self.services['canary']} (canary)")
