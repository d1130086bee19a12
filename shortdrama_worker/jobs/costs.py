"""The estimated cost of one job: reported usage times configured prices.

A handler reports provider usage in its result as
``"usage": {provider: {unit: amount, ..., "model": name}}`` (the provider's
own units: ``generated_images``, ``prompt_tokens`` …). The worker adds the GPU
time it measured around ``ctx.gpu()`` as ``{"gpu": {"seconds": s}}``. Each
unit is priced by ``[costs.prices."provider/model"]`` or, failing that,
``[costs.prices.provider]``; a unit with no price is listed as unpriced and
adds nothing. These are estimates: list prices, not the provider's invoice.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from shortdrama_worker.edge_settings import CostSettings

GPU = "gpu"


def usage_of(result: Mapping[str, Any] | None, gpu_seconds: float) -> dict[str, dict[str, Any]]:
    """The usage a job reported, plus the GPU time the worker measured."""
    usage: dict[str, dict[str, Any]] = {}
    reported = (result or {}).get("usage")
    if isinstance(reported, Mapping):
        for provider, entry in reported.items():
            if isinstance(entry, Mapping):
                usage[str(provider)] = dict(entry)
    if gpu_seconds > 0:
        usage[GPU] = {**usage.get(GPU, {}), "seconds": round(gpu_seconds, 3)}
    return usage


def estimate(usage: Mapping[str, Mapping[str, Any]], costs: CostSettings) -> dict[str, Any]:
    """The cost record of a job: a total and one line per priced or unpriced unit."""
    lines: list[dict[str, Any]] = []
    unpriced: list[str] = []
    total = 0.0
    for provider, entry in sorted(usage.items()):
        model = entry.get("model") if isinstance(entry.get("model"), str) else None
        table = _prices(costs, provider, model)
        for unit, amount in sorted(entry.items()):
            if unit == "model" or not isinstance(amount, int | float) or isinstance(amount, bool):
                continue
            if amount == 0:
                continue
            price = table.get(unit)
            if price is None:
                unpriced.append(f"{provider}.{unit}")
                continue
            cost = amount * price
            total += cost
            line = {"provider": provider, "unit": unit, "amount": amount, "unit_price": price}
            if model is not None:
                line["model"] = model
            lines.append({**line, "cost": round(cost, 6)})
    record: dict[str, Any] = {
        "total": round(total, 6),
        "currency": costs.currency,
        "estimate": True,
        "lines": lines,
    }
    if unpriced:
        record["unpriced"] = unpriced
    return record


def _prices(costs: CostSettings, provider: str, model: str | None) -> dict[str, float]:
    """Unit prices for ``provider``, a model's own prices over the provider's."""
    table = dict(costs.prices.get(provider, {}))
    if model is not None:
        table.update(costs.prices.get(f"{provider}/{model}", {}))
    return table


def reused_cost(source: Mapping[str, Any] | None, currency: str) -> dict[str, Any]:
    """The cost record of a job answered from an earlier result: nothing, and what it saved."""
    saved = float((source or {}).get("total", 0.0))
    return {"total": 0.0, "currency": currency, "estimate": True, "lines": [], "saved": saved}
