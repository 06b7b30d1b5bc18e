"""The `modelchain` command: one verb a job.

    modelchain config   PIPELINE [overrides]        print the composed, validated config
    modelchain compile  PIPELINE [overrides] [-o F] KFP IR YAML
    modelchain run      PIPELINE [overrides]        run here with kfp.local
    modelchain submit   PIPELINE --host URL ...     one run on a KFP server
    modelchain schedule PIPELINE --cron EXPR ...    a recurring run (created or updated in place)
    modelchain demo                                 finetune then rag_ingest here, and where to look
    modelchain lineage  MODEL[@ALIAS|/VERSION]      a model version's record, back to the data
    modelchain promote  MODEL VERSION               VERSION becomes champion (old one: previous)
    modelchain rollback MODEL                       champion goes back to previous
    modelchain render   training|infra --out DIR    validated TrainJob (or PyTorchJob) / Karpenter + FSx + runtime manifests
    modelchain render   serving --adapter-uri S3 --version N --adapter-sha256 D --out DIR   vLLM stable/canary + HTTPRoute
    modelchain data prep [overrides] --out DIR      the data step alone: splits, quarantine, data card
    modelchain eval [overrides] --adapter DIR --out DIR  evaluation + gate here; exit 3 when refused

Only argparse is imported at start-up; each verb imports what it needs, so `--help` is fast
and never loads torch, transformers, pymilvus, sentence-transformers or ragas.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable

PIPELINE_NAMES = ("finetune", "rag_ingest")
EXAMPLES = """examples:
  modelchain config finetune train.lora.rank=32
  modelchain compile finetune cluster=eks -o finetune.yaml
  modelchain run rag_ingest rag.source.uri=./docs
  modelchain submit finetune --host https://kfp.example.com --experiment support --wait cluster=eks
  modelchain schedule finetune --host https://kfp.example.com --cron "0 3 * * 1" --name weekly cluster=eks
  modelchain lineage smollm2-135m-instruct-ticket-routing@champion --json
  modelchain promote smollm2-135m-instruct-ticket-routing 3 cluster=eks
  modelchain render training model=llama3_8b train=cluster_8gpu --out k8s/
  modelchain render serving --adapter-uri s3://modelchain-mlflow/artifacts/1/RUN/artifacts/adapter --version 4 --adapter-sha256 9b2e61c0f4d84a7e3c5b1f0a6d2e8c4b7a9f3e1d5c0b8a6f4e2d1c9b7a5f3e1d --out k8s/serving/
  modelchain data prep data=chat_jsonl data.source.uri=s3://bucket/chats/ --out prepared/
  modelchain eval eval=default --adapter out/adapter --champion models:/NAME@champion --out eval-out/
"""


class CliError(Exception):
    """An error the user can fix; printed as one line, exit code 2."""


def _add_pipeline(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("pipeline", help=f"one of: {', '.join(PIPELINE_NAMES)}")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. train.max_steps=10 cluster=eks")


def _add_verbose(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="also show kfp.local's executor input/output dumps (always in the run's log file)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="modelchain",
        description="Kubeflow Pipelines for a fine-tuned LLM: data, LoRA fine-tune, gate, registry, RAG ingestion.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True)

    p = verbs.add_parser("config", help="print the composed, validated config")
    _add_pipeline(p)
    p.set_defaults(handler=cmd_config)

    p = verbs.add_parser("compile", help="compile a pipeline to KFP IR YAML")
    _add_pipeline(p)
    p.add_argument("-o", "--output", help="output file (default: PIPELINE.yaml)")
    p.set_defaults(handler=cmd_compile)

    p = verbs.add_parser("run", help="run a pipeline here with kfp.local (cluster=local)")
    _add_pipeline(p)
    _add_verbose(p)
    p.set_defaults(handler=cmd_run)

    p = verbs.add_parser("submit", help="submit one run to a KFP server")
    _add_pipeline(p)
    p.add_argument("--host", required=True, help="KFP API URL; the token comes from $KFP_TOKEN or kubeconfig")
    p.add_argument("--experiment", help="KFP experiment (default: experiment.name)")
    p.add_argument("--namespace", help="Kubeflow profile namespace")
    p.add_argument("--wait", action="store_true", help="wait for the run and fail if it fails")
    p.add_argument("--timeout", type=int, default=6 * 3600, help="seconds to wait with --wait")
    p.set_defaults(handler=cmd_submit)

    p = verbs.add_parser("schedule", help="create or update a recurring run; --list, --delete NAME")
    p.add_argument("pipeline", nargs="?", help=f"one of: {', '.join(PIPELINE_NAMES)}")
    p.add_argument("overrides", nargs="*", help="Hydra overrides")
    p.add_argument("--host", required=True, help="KFP API URL")
    p.add_argument("--cron", help="five-field cron expression, UTC (default: schedule.cron)")
    p.add_argument("--name", help="recurring run name (default: schedule.name)")
    p.add_argument("--experiment", help="KFP experiment (default: experiment.name)")
    p.add_argument("--namespace", help="Kubeflow profile namespace")
    p.add_argument("--max-concurrency", type=int, help="default: schedule.max_concurrency (1)")
    p.add_argument("--catchup", action="store_true", help="backfill missed intervals (default: no catch-up)")
    p.add_argument("--list", action="store_true", help="list recurring runs")
    p.add_argument("--delete", metavar="NAME", help="delete the recurring run NAME")
    p.set_defaults(handler=cmd_schedule)

    p = verbs.add_parser("demo", help="run finetune then rag_ingest here and show where the results are")
    p.add_argument("overrides", nargs="*", help="Hydra overrides applied to both pipelines' shared groups")
    _add_verbose(p)
    p.set_defaults(handler=cmd_demo)

    _add_registry_verbs(verbs)
    _add_render_verb(verbs)
    _add_data_verb(verbs)
    _add_eval_verb(verbs)
    return parser


def _compose(pipeline: str, overrides: list[str]):
    from modelchain.core.config import ConfigError, compose

    if pipeline not in PIPELINE_NAMES:
        raise CliError(f"unknown pipeline {pipeline!r}: choose one of {', '.join(PIPELINE_NAMES)}")
    try:
        return compose(pipeline, overrides)
    except ConfigError as exc:
        raise CliError(f"bad config: {exc}") from exc


def cmd_config(args) -> int:
    from omegaconf import OmegaConf

    from modelchain.core.config import component_image

    cfg = _compose(args.pipeline, args.overrides)
    print(OmegaConf.to_yaml(cfg), end="")
    image = component_image(cfg.cluster)
    print(f"# steps run in {image} ({'pinned by digest' if '@sha256:' in image else 'by tag: not pinned'})")
    return 0


def cmd_compile(args) -> int:
    from modelchain.pipelines.compile import compile_pipeline

    cfg = _compose(args.pipeline, args.overrides)
    path = compile_pipeline(args.pipeline, cfg, args.output or f"{args.pipeline}.yaml")
    print(f"compiled {args.pipeline} (cluster={cfg.cluster.name}) -> {path}")
    return 0


def cmd_run(args) -> int:
    from modelchain.pipelines.local_run import log_path_for, run_local

    cfg = _compose(args.pipeline, args.overrides)
    log_path = log_path_for(args.pipeline, cfg)
    try:
        root = run_local(args.pipeline, cfg, log_path=log_path, verbose=args.verbose)
    finally:
        print(f"full log: {log_path}", file=sys.stderr)
    print(f"{args.pipeline} finished; task outputs under {root}")
    print(_summary(args.pipeline, cfg, root))
    return 0


def _remote_context(args):
    """Compose, compile to a temporary package, connect: what submit and schedule share."""
    import tempfile

    from modelchain.pipelines import remote
    from modelchain.pipelines.compile import compile_pipeline
    from modelchain.pipelines.registry import module

    cfg = _compose(args.pipeline, args.overrides)
    package = compile_pipeline(args.pipeline, cfg, tempfile.mkdtemp(prefix="modelchain-") + f"/{args.pipeline}.yaml")
    client = remote.connect(args.host, namespace=args.namespace)
    return cfg, package, client, module(args.pipeline).parameters(cfg)


def cmd_submit(args) -> int:
    from modelchain.pipelines import remote

    cfg, package, client, params = _remote_context(args)
    result = remote.submit(
        client,
        str(package),
        pipeline_name=args.pipeline,
        run_name=f"{args.pipeline}-{cfg.cluster.name}",
        experiment=args.experiment or cfg.experiment.name,
        params=params,
        wait=args.wait,
        timeout_s=args.timeout,
    )
    print(" ".join(f"{k}={v}" for k, v in result.items()))
    return 0


def cmd_schedule(args) -> int:
    from modelchain.pipelines import remote

    if args.list or args.delete:
        client = remote.connect(args.host, namespace=args.namespace)
        if args.list:
            for item in remote.list_schedules(client, args.experiment):
                print(" ".join(f"{k}={v}" for k, v in item.items()))
        else:
            # Without --experiment, the configured experiment of the pipeline (or the default one).
            experiment = args.experiment or _compose(args.pipeline or "finetune", args.overrides).experiment.name
            remote.delete_schedule(client, args.delete, experiment)
            print(f"deleted recurring run {args.delete}")
        return 0
    if not args.pipeline:
        raise CliError("schedule needs a PIPELINE (or --list / --delete NAME)")
    cfg, package, client, params = _remote_context(args)
    result = remote.schedule(
        client,
        str(package),
        name=args.name or cfg.schedule.name,
        cron=args.cron or cfg.schedule.cron,
        experiment=args.experiment or cfg.experiment.name,
        params=params,
        max_concurrency=args.max_concurrency or cfg.schedule.max_concurrency,
        no_catchup=not args.catchup and cfg.schedule.no_catchup,
        pipeline_name=args.pipeline,
    )
    print(" ".join(f"{k}={v}" for k, v in result.items()))
    return 0


def cmd_demo(args) -> int:
    from modelchain.pipelines.local_run import log_path_for, run_local

    results = []
    for pipeline in PIPELINE_NAMES:
        # The demo ingests modelchain's own guides, the corpus the finetune evaluation reads.
        demo_corpus = ["rag=project_docs"] if pipeline == "rag_ingest" else []
        cfg = _compose(pipeline, [*demo_corpus, *args.overrides])
        log_path = log_path_for(pipeline, cfg)
        print(f"== {pipeline}: running with kfp.local (cluster={cfg.cluster.name}; full log: {log_path})", flush=True)
        root = run_local(pipeline, cfg, log_path=log_path, verbose=args.verbose)
        results.append(_summary(pipeline, cfg, root))
    print("\n".join(["", "== demo finished", *results]))
    return 0


def _summary(pipeline: str, cfg, outputs=None) -> str:
    from modelchain.pipelines.summary import describe

    return describe(pipeline, cfg, outputs)


# --------------------------------------------------------------------------- registry verbs
def _add_registry_verbs(verbs) -> None:
    """lineage, promote, rollback: read a model version's record and move its aliases."""

    def registry_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else "
                       "cluster.mlflow.tracking_uri of the finetune config with the overrides)")
        p.add_argument("overrides", nargs="*", help="Hydra overrides that pick the registry, e.g. cluster=eks")

    p = verbs.add_parser("lineage", help="a model version's record, from serving alias back to the data")
    p.add_argument("model", metavar="MODEL[@ALIAS|/VERSION]", help="registered model; alias champion by default")
    p.add_argument("--json", action="store_true", help="print the record as JSON")
    registry_args(p)
    p.set_defaults(handler=cmd_lineage)

    p = verbs.add_parser("promote", help="make VERSION the champion; the old champion keeps alias previous")
    p.add_argument("model", metavar="MODEL")
    p.add_argument("version", metavar="VERSION")
    registry_args(p)
    p.set_defaults(handler=cmd_promote)

    p = verbs.add_parser("rollback", help="move alias champion back to the previous champion")
    p.add_argument("model", metavar="MODEL")
    registry_args(p)
    p.set_defaults(handler=cmd_rollback)


def _registry_errors(handler: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """A RegistryError (missing model, refused promotion, server down) is one line, exit 2."""

    def wrapped(args: argparse.Namespace) -> int:
        from modelchain.core.registry import RegistryError

        try:
            return handler(args)
        except RegistryError as exc:
            raise CliError(str(exc)) from exc

    return wrapped


def _registry_client(args):
    from modelchain.core import registry
    from modelchain.core.config import ConfigError

    try:
        uri = args.tracking_uri or registry.default_tracking_uri(args.overrides)
    except ConfigError as exc:
        raise CliError(f"bad config: {exc}") from exc
    return registry.client(uri)


@_registry_errors
def cmd_lineage(args) -> int:
    import json

    from modelchain.core import lineage
    from modelchain.core.registry import ModelRef

    ref = ModelRef.parse(args.model)
    record = lineage.build(_registry_client(args), ref)
    print(json.dumps(record, indent=2) if args.json else lineage.render(record))
    return 0


@_registry_errors
def cmd_promote(args) -> int:
    from modelchain.core import registry

    result = registry.promote(_registry_client(args), args.model, args.version)
    if not result["changed"]:
        print(f"models:/{args.model}/{result['champion']} is already champion; nothing changed")
    else:
        was = f"previous: version {result['previous']}" if result["previous"] else "no champion before"
        print(f"models:/{args.model}/{result['champion']} is now champion ({was})")
    return 0


@_registry_errors
def cmd_rollback(args) -> int:
    from modelchain.core import registry

    result = registry.rollback(_registry_client(args), args.model)
    done = "rolled back" if result["changed"] else "already rolled back"
    suffix = "" if result["changed"] else "; nothing changed"
    print(f"{args.model}: champion {done} from version {result['rolled_back_from']} to {result['champion']}{suffix}")
    return 0


# --------------------------------------------------------------------------- render
def _add_render_verb(verbs) -> None:
    p = verbs.add_parser(
        "render",
        help="write validated cluster manifests: the training job, the Karpenter/FSx/runtime infra, or serving",
    )
    p.add_argument("what", choices=("training", "infra", "serving"), help="training: ConfigMap + TrainJob "
                   "(PyTorchJob with cluster.training.backend=pytorchjob); infra: NodePools, EC2NodeClass, FSx "
                   "StorageClass/PV/PVC, ClusterTrainingRuntime; serving: vLLM stable and canary "
                   "Deployments, Services, PodDisruptionBudgets, HTTPRoute (serve=eks is implied)")
    p.add_argument("overrides", nargs="*", help="Hydra overrides of the finetune config (cluster=eks is implied)")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the YAML files (<kind>-<name>.yaml)")
    p.add_argument("--crd-dir", metavar="DIR", help="CRDs to validate against (default: $MODELCHAIN_CRD_DIR, "
                   "else ../shared/crds); e.g. from `kubectl get crd nodepools.karpenter.sh -o yaml`")
    p.add_argument("--name", help="training job name (training; default: <model>-lora-<hash of the settings>)")
    p.add_argument("--adapter-uri", metavar="URI", help="serving: the candidate model version's adapter, its s3:// "
                   "artifact URI (`modelchain lineage MODEL/N` shows it); served by the canary")
    p.add_argument("--version", metavar="N", help="serving: the candidate's model version number")
    p.add_argument("--adapter-sha256", metavar="DIGEST", help="serving: the candidate's lineage.adapter_sha256 "
                   "(`modelchain lineage MODEL/N` shows it); the pod refuses an adapter whose manifest differs")
    p.add_argument("--stable-uri", metavar="URI", help="serving: the champion's adapter URI, served by the stable "
                   "track (default: the candidate on both, a first rollout)")
    p.add_argument("--stable-version", metavar="N", help="serving: the champion's model version number")
    p.add_argument("--stable-sha256", metavar="DIGEST", help="serving: the champion's lineage.adapter_sha256")
    p.add_argument("--canary-weight", type=int, default=0, metavar="PCT",
                   help="serving: the canary's initial share of traffic in percent (default: 0)")
    p.set_defaults(handler=cmd_render)


def cmd_render(args) -> int:
    from modelchain.core.manifest_validation import ManifestError, default_crd_dir, write_manifests

    overrides = list(args.overrides)
    if not any(o.startswith("cluster=") for o in overrides):
        overrides.insert(0, "cluster=eks")
    if args.what == "serving" and not any(o.startswith("serve=") for o in overrides):
        overrides.insert(1, "serve=eks")
    if args.what == "serving" and not (args.adapter_uri and args.version and args.adapter_sha256):
        raise CliError("render serving needs --adapter-uri URI, --version N and --adapter-sha256 DIGEST "
                       "(the candidate model version; `modelchain lineage MODEL/N` shows all three)")
    cfg = _compose("finetune", overrides)
    if cfg.cluster.kind != "eks":
        raise CliError(f"render describes an EKS cluster; cluster.kind is {cfg.cluster.kind!r} (use cluster=eks)")
    crd_dir = args.crd_dir or default_crd_dir()
    if crd_dir is None:
        raise CliError("no CRDs to validate against: pass --crd-dir DIR or set MODELCHAIN_CRD_DIR")
    try:
        if args.what == "training":  # the manifests of the configured training backend
            from modelchain.training.backends import get

            manifests = get(cfg.cluster.training.backend).render(cfg, args.name)
        elif args.what == "serving" and cfg.serve.rollout == "adapter":
            # One pool serving the given version; the canary step loads later ones into it.
            from modelchain.serving import adapter_manifests

            if args.stable_uri or args.stable_version or args.stable_sha256 or args.canary_weight:
                raise CliError("render serving: --stable-* and --canary-weight describe two pools (serve.rollout=pool); "
                               "with serve.rollout=adapter give only the version the pool serves")
            manifests = adapter_manifests.render(cfg, args.adapter_uri, args.version, adapter_sha256=args.adapter_sha256)
        elif args.what == "serving":
            from modelchain.serving.manifests import render

            manifests = render(cfg, args.adapter_uri, args.version, adapter_sha256=args.adapter_sha256,
                               stable_uri=args.stable_uri, stable_version=args.stable_version,
                               stable_sha256=args.stable_sha256, canary_weight=args.canary_weight)
        else:
            from modelchain.training.infra import render

            manifests = render(cfg)
        paths = write_manifests(manifests, args.out, crd_dir)
    except (ValueError, KeyError, FileNotFoundError) as exc:
        if isinstance(exc, ManifestError):  # several lines, one per problem; nothing was written
            print(f"modelchain: render {args.what}: nothing written, {exc}", file=sys.stderr)
            return 1
        raise CliError(f"render {args.what}: {exc}") from exc
    for path in paths:
        print(path)
    return 0


# --------------------------------------------------------------------------- data
def _add_data_verb(verbs) -> None:
    p = verbs.add_parser("data", help="work on the data alone: `data prep` runs the data_prep step here")
    sub = p.add_subparsers(dest="data_verb", metavar="ACTION", required=True)
    q = sub.add_parser("prep", help="read, validate, clean and split data.source (and data.feedback) into DIR")
    q.add_argument("overrides", nargs="*", help="Hydra overrides of the finetune config, e.g. data=chat_jsonl "
                   "data.source.uri=s3://bucket/prefix/ data.tokens.max_tokens=1024")
    q.add_argument("--out", required=True, metavar="DIR", help="output folder (replaced as a whole at the end)")
    q.set_defaults(handler=cmd_data_prep)


def cmd_data_prep(args) -> int:
    import os

    from modelchain.components.data_prep.logic import DataError, prepare_from_config

    cfg = _compose("finetune", args.overrides)
    try:
        result = prepare_from_config(cfg.data, cfg.model, args.out, progress=sys.stderr.isatty())
    except DataError as exc:
        raise CliError(str(exc)) from exc
    card = result.card
    print(f"read {card['rows_in']} rows: {card['rows_quarantined']} quarantined, {card['rows_deduplicated']} "
          f"duplicates, {card['rows_out']} kept")
    for name, split in card["splits"].items():
        print(f"  {name:5} {split['count']:>8} rows  sha256 {split['sha256'][:16]}")
    pii = card["pii"]["counts"]
    if pii:
        print("PII replaced: " + ", ".join(f"{kind} {n}" for kind, n in pii.items()))
    print(f"wrote {os.path.abspath(args.out)} (chat splits, quarantine.jsonl, data_card.md)")
    return 0


# --------------------------------------------------------------------------- eval
GATE_REFUSED = 3  # exit code of `modelchain eval` when the gate refuses


def _add_eval_verb(verbs) -> None:
    p = verbs.add_parser("eval", help="evaluate an adapter (against a champion) and apply the gate here")
    p.add_argument("overrides", nargs="*", help="Hydra overrides of the finetune config, e.g. eval=default")
    p.add_argument("--adapter", required=True, metavar="DIR", help="the LoRA adapter folder to evaluate")
    p.add_argument("--champion", metavar="URI", default=None,
                   help="auto (the registered model's champion), none, models:/NAME@ALIAS|/VERSION or an adapter "
                        "folder (default: eval.champion)")
    p.add_argument("--splits", metavar="DIR", help="prepared splits (default: prepare data.source into OUT/splits)")
    p.add_argument("--out", required=True, metavar="DIR", help="where results.json and the gate reports go")
    p.set_defaults(handler=cmd_eval)


def cmd_eval(args) -> int:
    import os

    # Every path is checked before the config is composed or a model loads: a typo costs seconds.
    check_eval_inputs(args.splits, args.adapter, args.champion, args.out)
    cfg = _compose("finetune", args.overrides)
    if args.champion is None and cfg.eval.champion:
        _check_champion(cfg.eval.champion, "eval.champion")
    splits = args.splits
    if not splits:
        from modelchain.components.data_prep.logic import prepare_from_config

        splits = os.path.join(args.out, "splits")
        prepare_from_config(cfg.data, cfg.model, splits)
    from modelchain.pipelines.evaluate_and_gate import evaluate_and_gate

    decision, run_id = evaluate_and_gate(cfg, splits, args.adapter, args.out, champion=args.champion, progress=True)
    print("\n".join(decision.reasons))
    print(f"gate: {'passed' if decision.passed else 'refused'}; report {os.path.join(args.out, 'gate_report.md')}; "
          f"MLflow run {run_id}")
    return 0 if decision.passed else GATE_REFUSED


SPLIT_FILES = ("test.jsonl", "val.jsonl")  # evaluate reads test (val when test is empty), perplexity val
CHAMPION_URI = r"models:/[^/@\s]+(@[\w-]+|/\d+)"


def check_eval_inputs(splits: str | None, adapter: str, champion: str | None, out: str) -> None:
    """`modelchain eval`'s paths, checked with the standard library only; a CliError names the first bad one."""
    import os

    if splits is not None:
        if not os.path.isdir(splits):
            raise CliError(f"--splits {splits}: no such folder (prepared splits, e.g. from `modelchain data prep`)")
        if not any(os.path.isfile(os.path.join(splits, f)) and os.path.getsize(os.path.join(splits, f))
                   for f in SPLIT_FILES):
            raise CliError(f"--splits {splits}: neither {' nor '.join(SPLIT_FILES)} holds any example")
        if not os.path.isfile(os.path.join(splits, "data_card.json")):
            raise CliError(f"--splits {splits}: no data_card.json (the MLflow run records it; "
                           "`modelchain data prep` writes it)")
    if not os.path.isfile(os.path.join(adapter, "adapter_config.json")):
        what = "no such folder" if not os.path.isdir(adapter) else "no adapter_config.json (not a LoRA adapter folder)"
        raise CliError(f"--adapter {adapter}: {what}")
    if champion:
        _check_champion(champion, "--champion")
    if os.path.exists(out) and not os.path.isdir(out):
        raise CliError(f"--out {out}: exists and is not a folder")
    parent = os.path.abspath(out)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK | os.X_OK):
        raise CliError(f"--out {out}: {parent} is not a writable folder")


def _check_champion(champion: str, where: str) -> None:
    """auto, none, models:/NAME@ALIAS, models:/NAME/VERSION or an adapter folder (the registry is asked later)."""
    import os
    import re

    if champion.strip().lower() in ("", "auto", "none"):  # eval/champion.py: the registry's alias, or none
        return
    if champion.startswith("models:/"):
        if not re.fullmatch(CHAMPION_URI, champion):
            raise CliError(f"{where} {champion}: not models:/NAME@ALIAS or models:/NAME/VERSION")
    elif not os.path.isfile(os.path.join(champion, "adapter_config.json")):
        raise CliError(f"{where} {champion}: neither auto, none, a models:/ URI nor an adapter folder "
                       "(no adapter_config.json)")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parse_args(parser, argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except CliError as exc:
        print(f"modelchain: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("modelchain: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a task failure or a bad input: one line, no traceback
        print(f"modelchain: {args.verb} failed: {type(exc).__name__}: {_first_line(exc)}", file=sys.stderr)
        return 1


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Options and Hydra overrides in any order: `compile finetune -o f.yaml cluster=eks`.

    argparse stops filling a `nargs="*"` positional at the first option, so overrides that
    come after one are left over; they join `overrides`. Anything else left over (an unknown
    option, or a stray word on a verb without overrides) is an error, as before.
    """
    args, extra = parser.parse_known_args(argv)
    strays = [word for word in extra if word.startswith("-") or "=" not in word]
    if strays or (extra and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(strays or extra)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    return args


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else repr(exc)


if __name__ == "__main__":
    sys.exit(main())
