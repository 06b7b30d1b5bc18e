"""What a cluster fine-tune costs: GPU-hours x instance price, and the budget that guards it.

The estimate is tokens to process over the configured throughput, plus a fixed start-up
(nodes, image pull, checkpoint import), charged per whole instance-hour rate from the price
table in `cluster.training.prices`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Optional


class BudgetExceeded(RuntimeError):
    """The estimate of a job is above `cluster.training.budget_usd`; nothing was submitted."""

    def __init__(self, estimate: "CostEstimate", budget_usd: float):
        self.estimate, self.budget_usd = estimate, budget_usd
        super().__init__(
            f"estimated ${estimate.cost_usd:,.2f} exceeds cluster.training.budget_usd ${budget_usd:,.2f}: "
            f"{estimate.explain()}; lower train.max_steps or raise the budget"
        )


@dataclass(frozen=True)
class CostEstimate:
    instance_type: str
    nodes: int
    gpus_per_node: int
    price_per_hour: float  # USD per instance-hour
    tokens: int
    hours: float
    gpu_hours: float
    cost_usd: float

    @property
    def price_per_gpu_hour(self) -> float:
        return self.price_per_hour / self.gpus_per_node

    def explain(self) -> str:
        return (
            f"{self.gpu_hours:,.1f} GPU-hours ({self.nodes} x {self.instance_type} x {self.gpus_per_node} GPUs "
            f"x {self.hours:.2f} h) at ${self.price_per_gpu_hour:,.2f} per GPU-hour "
            f"(${self.price_per_hour:,.2f} per instance-hour)"
        )

    def metrics(self) -> dict[str, float]:
        return {
            "estimated_hours": self.hours,
            "estimated_gpu_hours": self.gpu_hours,
            "estimated_cost_usd": self.cost_usd,
            "price_per_gpu_hour": self.price_per_gpu_hour,
        }

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "price_per_gpu_hour": self.price_per_gpu_hour}


def estimate(cfg) -> CostEstimate:
    """The estimate for one run of `cfg` (a composed finetune config with cluster=eks)."""
    train, training = cfg.train, cfg.cluster.training
    prices = dict(training.prices)
    if training.instance_type not in prices:
        raise KeyError(
            f"cluster.training.prices has no price for {training.instance_type!r} "
            f"(cluster.training.instance_type); known: {sorted(prices)}"
        )
    if training.tokens_per_gpu_second <= 0:
        raise ValueError("cluster.training.tokens_per_gpu_second must be > 0")
    tokens = train.max_steps * train.batch_size * train.grad_accum * train.max_seq_len
    gpus = train.nodes * train.procs_per_node
    hours = tokens / (training.tokens_per_gpu_second * gpus) / 3600 + training.startup_minutes / 60
    price = float(prices[training.instance_type])
    # Whole instances are billed, whether or not every GPU on them is used.
    gpu_hours = train.nodes * training.gpus_per_node * hours
    return CostEstimate(
        instance_type=training.instance_type,
        nodes=train.nodes,
        gpus_per_node=training.gpus_per_node,
        price_per_hour=price,
        tokens=tokens,
        hours=hours,
        gpu_hours=gpu_hours,
        cost_usd=train.nodes * hours * price,
    )


def check_budget(est: CostEstimate, budget_usd: Optional[float]) -> None:
    """Raise BudgetExceeded, with the figures, when the estimate is over the budget."""
    if budget_usd is not None and est.cost_usd > budget_usd:
        raise BudgetExceeded(est, budget_usd)


def actual_cost(est: CostEstimate, seconds: float) -> dict[str, float]:
    """What the finished job cost at the same rates, from its wall-clock time."""
    hours = seconds / 3600
    return {
        "hours": hours,
        "gpu_hours": est.nodes * est.gpus_per_node * hours,
        "cost_usd": est.nodes * hours * est.price_per_hour,
    }
