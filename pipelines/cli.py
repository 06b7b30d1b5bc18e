"""The `modelchain` command: one verb a job.

    modelchain config   PIPELINE [overrides]        print the composed, validated config
    modelchain compile  PIPELINE [overrides] [-o F] KFP IR YAML
    modelchain run      PIPELINE [overrides]        run here with kfp.local
    modelchain submit   PIPELINE --host URL ...     one run on a KFP server
    modelchain schedule PIPELINE --cron EXPR ...    a recurring run (created or updated in place)
    modelchain demo                                 finetune then rag_ingest here, and where to look

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
  modelchain schedule finetune --cron "0 3 * * 1" --name weekly cluster=eks
"""


class CliError(Exception):
    """An error the user can fix; printed as one line, exit code 2."""


def _add_pipeline(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("pipeline", help=f"one of: {', '.join(PIPELINE_NAMES)}")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. train.max_steps=10 cluster=eks")


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
    p.set_defaults(handler=cmd_demo)
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

    print(OmegaConf.to_yaml(_compose(args.pipeline, args.overrides)), end="")
    return 0


def cmd_compile(args) -> int:
    from modelchain.pipelines.compile import compile_pipeline

    cfg = _compose(args.pipeline, args.overrides)
    path = compile_pipeline(args.pipeline, cfg, args.output or f"{args.pipeline}.yaml")
    print(f"compiled {args.pipeline} (cluster={cfg.cluster.name}) -> {path}")
    return 0


def cmd_run(args) -> int:
    from modelchain.pipelines.local_run import run_local

    cfg = _compose(args.pipeline, args.overrides)
    root = run_local(args.pipeline, cfg)
    print(f"{args.pipeline} finished; task outputs under {root}")
    print(_summary(args.pipeline, cfg))
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
    from modelchain.pipelines.local_run import run_local

    results = []
    for pipeline in PIPELINE_NAMES:
        cfg = _compose(pipeline, args.overrides)
        print(f"== {pipeline}: running with kfp.local (cluster={cfg.cluster.name})", flush=True)
        run_local(pipeline, cfg)
        results.append(_summary(pipeline, cfg))
    print("\n".join(["", "== demo finished", *results]))
    return 0


def _summary(pipeline: str, cfg) -> str:
    from modelchain.pipelines.summary import describe

    return describe(pipeline, cfg)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
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


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else repr(exc)


if __name__ == "__main__":
    sys.exit(main())
