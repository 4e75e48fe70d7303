"""What every evaluation returns and writes: a table of methods x metrics, plus details.

`TaskResult.write(out_dir)` writes `<task>.json` (everything, machine-readable:
`grn-jax report` and `experiments/` read it) and `<task>.md` (the table, the
counts of anything left out, and the settings).
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any


def _fmt(cell: Any) -> str:
    if isinstance(cell, dict) and "mean" in cell:
        return f"{cell['mean']:.3f} ± {cell['sd']:.3f}"
    if isinstance(cell, dict) and "value" in cell:
        lo, hi = cell.get("ci", (math.nan, math.nan))
        return f"{cell['value']:.3f} [{lo:.3f}, {hi:.3f}]"
    if isinstance(cell, float):
        return f"{cell:.3f}"
    return "–" if cell is None else str(cell)


@dataclasses.dataclass
class TaskResult:
    """One evaluation's outcome.

    task: name ("annotation", ...); metrics: {setting: {method: {metric: cell}}} where a
    cell is {"mean", "sd", "n", "values"} over repeats or {"value", "ci"}; counts: what
    was filtered or skipped, by reason; settings: the arguments that produced it;
    details: task-specific arrays for plots (ROC points, confusion matrices, ...).
    """

    task: str
    metrics: dict
    counts: dict
    settings: dict
    details: dict = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_markdown(self) -> str:
        lines = [f"# {self.task}", ""]
        for setting, methods in self.metrics.items():
            names = sorted({m for row in methods.values() for m in row})
            lines += [f"## {setting}", "", "| method | " + " | ".join(names) + " |",
                      "|---|" + "---|" * len(names)]
            for method, row in methods.items():
                lines.append(f"| {method} | " + " | ".join(_fmt(row.get(n)) for n in names) + " |")
            lines.append("")
        lines += ["## counts", "", "```", json.dumps(self.counts, indent=2, default=str), "```", "",
                  "## settings", "", "```", json.dumps(self.settings, indent=2, default=str), "```", ""]
        return "\n".join(lines)

    def write(self, out_dir) -> dict:
        """Write `<task>.json` and `<task>.md` into `out_dir`; return their paths."""
        from grn_jax._io import atomic_write_text, check_out_dir

        out = check_out_dir(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        js, md = out / f"{self.task}.json", out / f"{self.task}.md"
        atomic_write_text(js, json.dumps(self.to_dict(), indent=2, default=_json_default))
        atomic_write_text(md, self.to_markdown())
        return {"json": str(js), "markdown": str(md)}


def _json_default(obj):
    import numpy as np

    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (np.integer, np.floating, np.bool_)):
        return obj.item()
    return str(obj)
