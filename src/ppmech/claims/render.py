"""The claims ledger written out: verdict counts, ``claims.json`` and ``claims.md``."""

from __future__ import annotations

from typing import Any

from ppmech.claims.ledger import DEFINITIONS, LedgerRow, inconsistencies
from ppmech.statistics import Estimate


def verdict_counts(rows: list[LedgerRow]) -> dict[str, int]:
    out = {"supported": 0, "not supported": 0, "inconclusive": 0}
    for r in rows:
        out[r.verdict] += 1
    return out


def ledger_json(
    rows: list[LedgerRow], meta: dict[str, Any], measurements: dict[str, Estimate]
) -> dict[str, Any]:
    """The JSON form of the ledger (``claims.json``)."""
    return {
        "meta": meta,
        "definitions": DEFINITIONS,
        "inconsistencies": inconsistencies(),
        "verdicts": verdict_counts(rows),
        "claims": [r.to_dict() for r in rows],
        "measurements": {k: v.to_dict() for k, v in sorted(measurements.items())},
    }


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(
    rows: list[LedgerRow], meta: dict[str, Any], extra_sections: list[tuple[str, str]] | None = None
) -> str:
    """The ledger as markdown (``claims.md``)."""
    counts = verdict_counts(rows)
    lines = [
        "# Claims ledger: Momentum–Point-Perplexity Mechanics",
        "",
        f"Command: `{meta.get('command', 'ppmech verify')}`  ",
        f"Models: {', '.join(meta.get('models', []))}; ppmech {meta.get('versions', {}).get('ppmech', '?')}, "
        f"torch {meta.get('versions', {}).get('torch', '?')}; wall time {meta.get('wall_seconds', '?')} s.",
        "",
        f"Verdicts: {counts['supported']} supported, {counts['not supported']} not supported, "
        f"{counts['inconclusive']} inconclusive.",
        "",
        "| id | model | source | claim | paper | measured [95% CI] | verdict | rule |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            "| "
            + " | ".join(
                _md_escape(x)
                for x in (
                    r.id,
                    r.model,
                    r.source,
                    r.claim,
                    r.paper,
                    r.measured,
                    f"**{r.verdict}**",
                    f"{r.rule} ({r.why})",
                )
            )
            + " |"
        )
    lines += ["", "## Definitions used", ""] + [f"- {d}" for d in DEFINITIONS]
    lines += ["", "## Ambiguities and inconsistencies in the paper", ""] + [
        f"- {d}" for d in inconsistencies()
    ]
    for title, body in extra_sections or []:
        lines += ["", f"## {title}", "", body]
    return "\n".join(lines) + "\n"
