"""Per-run report: a markdown table and a PNG bar plot of the metrics dict."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path


def _table(metrics: dict[str, float]) -> tuple[list[str], list[str], dict]:
    """Rows = methods, columns = metric names, from keys like 'method/R@1'."""
    grid: dict[str, dict[str, float]] = defaultdict(dict)
    cols: list[str] = []
    for key, v in metrics.items():
        row, _, col = key.rpartition("/")
        grid[row or "-"][col] = v
        if col not in cols:
            cols.append(col)
    return list(grid), cols, grid


def write_report(metrics: dict[str, float], out_dir: str | Path, title: str = "Evaluation"
                 ) -> dict[str, Path]:
    """Write `report.md` and `metrics.png` under out_dir; return their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows, cols, grid = _table(metrics)
    lines = [f"# {title}", "", "| method | " + " | ".join(cols) + " |",
             "|---|" + "---|" * len(cols)]
    for r in rows:
        cells = [f"{grid[r][c]:.2f}" if c in grid[r] else "–" for c in cols]
        lines.append(f"| {r} | " + " | ".join(cells) + " |")
    md = out / "report.md"
    md.write_text("\n".join(lines) + "\n")

    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(cols) * max(1, len(rows)) / 2), 4))
    width = 0.8 / max(1, len(rows))
    for i, r in enumerate(rows):
        xs = [j + i * width for j in range(len(cols))]
        ax.bar(xs, [grid[r].get(c, 0.0) for c in cols], width, label=r)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(cols))], cols)
    ax.set_ylabel("%")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    png = out / "metrics.png"
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return {"markdown": md, "plot": png}
