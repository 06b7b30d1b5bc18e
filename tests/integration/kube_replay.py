"""A replay of the Kubernetes API for tests: JSON (or text) answers written by hand, every request kept.

No Kubernetes API server can run on this machine (no container runtime, no kube-apiserver
package), so code that talks to one is tested against exchanges written by hand after the
API's documented objects (`recordings/kube/`, the format is in replay_server.py): nothing in
them was recorded from a live server. Requests are answered by the first unused exchange that matches them
(method, path and the query keys it names); a `repeat` exchange answers any number of times.
Anything unrecorded gets a 404 Status, as the API server answers an unknown object.
"""

from __future__ import annotations

from pathlib import Path

from .replay_server import ReplayServer

RECORDINGS = Path(__file__).parent / "recordings" / "kube"


class KubeReplay(ReplayServer):
    def __init__(self, recording: str | Path):
        super().__init__(Path(recording) if Path(recording).is_absolute() else RECORDINGS / f"{recording}.json")

    def training_client(self, namespace: str):
        """A kubeflow-training TrainingClient pointed at this replay (no kubeconfig read)."""
        from kubeflow.training import TrainingClient
        from kubernetes.client import Configuration

        configuration = Configuration()
        configuration.host = self.url
        return TrainingClient(client_configuration=configuration, namespace=namespace)

    def trainer_client(self, namespace: str):
        """A `kubeflow` SDK TrainerClient (Trainer v2) pointed at this replay (no kubeconfig read)."""
        from kubeflow.trainer import KubernetesBackendConfig, TrainerClient
        from kubernetes.client import Configuration

        configuration = Configuration()
        configuration.host = self.url
        return TrainerClient(KubernetesBackendConfig(namespace=namespace, client_configuration=configuration))

    def not_found(self, message: str) -> dict:
        return {"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": message,
                "reason": "NotFound", "code": 404}
