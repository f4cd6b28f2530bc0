"""The claims ledger written out: verdict counts, ``claims.json`` and ``claims.md``."""

from __future__ import annotations

from typing import Any

from ppmech.claims.ledger import DEFINITIONS, LedgerRow, inconsistencies
from ppmech.claims.rules import VERDICTS
from ppmech.statistics import Estimate


def verdict_counts(rows: list[LedgerRow]) -> dict[str, int]:
    """Rows per verdict (every verdict of :data:`~ppmech.claims.rules.VERDICTS`, zeros included)."""
    out: dict[str, int] = dict.fromkeys(VERDICTS, 0)
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
    """The ledger as markdown (``claims.md``); "beyond the paper" rows get their own heading."""
    counts = verdict_counts(rows)
    paper_rows = [r for r in rows if not r.source.startswith("beyond the paper")]
    beyond_rows = [r for r in rows if r.source.startswith("beyond the paper")]
    counted = ", ".join(
        f"{n} {v}" for v, n in counts.items() if n or v in ("supported", "not supported", "inconclusive")
    )
    lines = [
        "# Claims ledger: Momentum–Point-Perplexity Mechanics",
        "",
        f"Command: `{meta.get('command', 'ppmech verify')}`  ",
        f"Models: {', '.join(meta.get('models', []))}; ppmech {meta.get('versions', {}).get('ppmech', '?')}, "
        f"torch {meta.get('versions', {}).get('torch', '?')}; wall time {meta.get('wall_seconds', '?')} s.",
        "",
        f"Verdicts: {counted}.",
        "",
        "Conserved-type claims (CV below 13%, conservation, 'conserve more tightly') are supported only "
        "when the paper's rule passes *and* their controls do: K and V compensate (R's 95% CI below 1 "
        "and below its pairing-shuffle band) and the claim still holds with h rescaled by c = 0.5 and "
        "c = 2. Otherwise: 'low variance without compensation' or 'holds only in these units'. The "
        "controls column shows R with its shuffle band, the shuffle-null CV and the range of c over "
        "which 13% holds.",
        "",
    ]
    lines += _row_table(paper_rows)
    if beyond_rows:
        lines += [
            "",
            "## Beyond the paper: null models and confounder controls",
            "",
            "Is the low CV of H more than an artefact? Each row's rule was fixed before measuring "
            "(see `ppmech.nulls` and the definitions below). In plain words:",
            "",
            *[f"- {line}" for line in controls_summary(beyond_rows)],
            "",
            *_row_table(beyond_rows),
        ]
    lines += ["", "## Definitions used", ""] + [f"- {d}" for d in DEFINITIONS]
    lines += ["", "## Ambiguities and inconsistencies in the paper", ""] + [
        f"- {d}" for d in inconsistencies()
    ]
    for title, body in extra_sections or []:
        lines += ["", f"## {title}", "", body]
    return "\n".join(lines) + "\n"


def controls_summary(rows: list[LedgerRow]) -> list[str]:
    """One plain sentence per model and weights: flatter than the unpaired null, and does it survive?"""
    by = {(r.id, r.model): r for r in rows}
    out = []
    models = list(dict.fromkeys(r.model for r in rows))
    for model in models:
        for weights, tag in (("pretrained", "pre"), ("random", "rand")):
            shuffle = by.get((f"N-shuffle-{tag}", model))
            comp = by.get((f"N-compensate-{tag}", model))
            if shuffle is None or comp is None:
                continue
            paired = shuffle.verdict == "supported"
            compensate = comp.verdict == "supported"
            flat = paired and compensate
            text = (
                f"{model}, {weights}: H is {'' if paired else 'not '}flatter than its unpaired null "
                f"(permutation p = {_num(shuffle.value)})"
                + (
                    ", and K and V compensate"
                    if flat
                    else (
                        ", but K and V do not compensate overall" if paired else "; K and V do not compensate"
                    )
                    if not compensate
                    else ", though K and V compensate"
                )
                + f" (R = {comp.measured})."
            )
            scale = by.get((f"N-scale-{tag}", model))
            if scale is not None:
                fate = {
                    "supported": "survives",
                    "not supported": "does not survive",
                    "inconclusive": "is inconclusive under",
                }[scale.verdict]
                text += (
                    " The pairing test and R do not depend on the units of h; the 'CV < 13%' verdict "
                    f"{fate} rescaling h (largest CV over c ∈ {{0.5, 1, 2, 10}}: {scale.measured})."
                )
            tp, tp_p = by.get((f"N-tokpos-{tag}", model)), by.get((f"N-tokpos-shuffle-{tag}", model))
            if tp is not None and tp_p is not None:
                after = tp.verdict == "supported" and tp_p.verdict == "supported"
                if flat:
                    verdict = "the result survives" if after else "the result does not survive"
                else:
                    verdict = "they compensate" if after else "they still do not compensate"
                text += (
                    f" With produced-token, input-token and position effects removed from K, {verdict} "
                    f"(R' = {tp.measured}, permutation p = {_num(tp_p.value)})."
                )
            out.append(text)
    return out


def _num(x: float | None) -> str:
    return "—" if x is None else f"{x:.3g}"


def _row_table(rows: list[LedgerRow]) -> list[str]:
    lines = [
        "| id | model | source | claim | paper | measured [95% CI] | verdict | controls | rule |",
        "|---|---|---|---|---|---|---|---|---|",
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
                    f"**{r.verdict}**"
                    + (
                        f" (paper's rule: {r.paper_verdict})"
                        if r.paper_verdict not in (None, r.verdict)
                        else ""
                    ),
                    r.controls or "—",
                    f"{r.rule} ({r.why})",
                )
            )
            + " |"
        )
    return lines
