"""The finetune pipeline: data_prep -> finetune -> evaluate -> gate -> (passed) register -> canary."""

# No `from __future__ import annotations` here: KFP reads the real parameter types.

from omegaconf import DictConfig

from modelchain.components.canary.component import canary
from modelchain.components.data_prep.component import data_prep
from modelchain.components.evaluate.component import evaluate
from modelchain.components.finetune.component import finetune
from modelchain.components.gate.component import gate
from modelchain.components.kfp_factory import make_component
from modelchain.components.register.component import register
from modelchain.core.config import component_image, group_json, parameter_values, registered_model_name
from modelchain.pipelines.build import git_commit, place, run_parameters, workspace


def build(cfg: DictConfig):
    """The pipeline function for `cfg`: run-time values become parameters with config defaults."""
    from kfp import dsl

    image = component_image(cfg.cluster)
    data_prep_op, finetune_op, evaluate_op, gate_op, register_op, canary_op = (
        make_component(fn, image) for fn in (data_prep, finetune, evaluate, gate, register, canary)
    )
    cluster = cfg.cluster
    pipeline_options, on_workspace = workspace(cluster)

    def body(params: dict):
        prep = place(
            data_prep_op(
                data=group_json(cfg, "data"),
                model=group_json(cfg, "model"),
                data_uri=params["data_uri"],
                feedback_since=params["feedback_since"],
                feedback_until=params["feedback_until"],
                **on_workspace,
            ),
            cluster,
        ).set_display_name("data-prep")
        tune = place(
            finetune_op(
                model=group_json(cfg, "model"),
                train=group_json(cfg, "train"),
                cluster=group_json(cfg, "cluster"),
                experiment=group_json(cfg, "experiment"),
                splits=prep.outputs["splits"],
                max_steps=params["max_steps"],
                learning_rate=params["learning_rate"],
                lora_rank=params["lora_rank"],
                lora_alpha=params["lora_alpha"],
                **on_workspace,
            ),
            cluster,
        )
        scored = place(
            evaluate_op(
                model=group_json(cfg, "model"),
                eval=group_json(cfg, "eval"),
                cluster=group_json(cfg, "cluster"),
                rag=group_json(cfg, "rag"),
                splits=prep.outputs["splits"],
                adapter=tune.outputs["adapter"],
                champion=params["champion"],
                registered_model=registered_model_name(cfg),
            ),
            cluster,
        )
        decided = place(
            gate_op(
                **{group: group_json(cfg, group) for group in ("model", "data", "train", "eval", "cluster", "experiment")},
                results=scored.outputs["results"],
                splits=prep.outputs["splits"],
                adapter=tune.outputs["adapter"],
                **params,  # every run-time value: the gate records the run's config as it ran
                kfp_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
                git_commit=git_commit(),
            ),
            cluster,
        )
        with dsl.If(decided.outputs["Output"] == True, name="gate-passed"):  # noqa: E712 (KFP condition)
            registered = place(
                register_op(
                    model=group_json(cfg, "model"),
                    data=group_json(cfg, "data"),
                    cluster=group_json(cfg, "cluster"),
                    experiment=group_json(cfg, "experiment"),
                    mlflow_run=decided.outputs["mlflow_run"],
                    adapter=tune.outputs["adapter"],
                ),
                cluster,
            )
            # canary -> promote (alias champion) or roll back; serve.canary.enabled can skip it
            place(
                canary_op(
                    serve=group_json(cfg, "serve"), model=group_json(cfg, "model"), cluster=group_json(cfg, "cluster"),
                    eval=group_json(cfg, "eval"), model_uri=registered.output, splits=prep.outputs["splits"],
                ),
                cluster,
            )

    return dsl.pipeline(
        run_parameters("finetune", cfg, body),
        name="finetune",
        description="Data prep, LoRA fine-tune, evaluation gate, MLflow registration and canary rollout of an adapter.",
        **pipeline_options,
    )



def parameters(cfg: DictConfig) -> dict:
    """The run-time parameters and their values under `cfg` (what a run or schedule sends)."""
    return parameter_values("finetune", cfg)
