"""Copy a reproduction's REPORT.md into docs/reproduction.md (between its report markers), so
the documented results are the generated ones: ``python -m experiments.publish RUN_DIR``."""

from __future__ import annotations

import sys
from pathlib import Path

BEGIN, END = "<!-- report:begin -->", "<!-- report:end -->"
DOC = Path(__file__).resolve().parent.parent / "docs" / "reproduction.md"


def publish(run_dir: Path, doc: Path = DOC) -> str:
    """Replace the text between the markers of ``doc`` with ``run_dir/REPORT.md`` (headings one
    level down; figures named, as they stay in ``run_dir/figures``). Returns the new text."""
    report = (Path(run_dir) / "REPORT.md").read_text().splitlines()
    body = []
    for line in report[1:]:  # the report's own title: the doc has one
        if line.startswith("!["):
            name = line[2 : line.index("]")]
            body.append(f"_Figure `{name}.png` in the run's `figures/`._")
        else:
            body.append("#" + line if line.startswith("#") else line)
    text = doc.read_text()
    if BEGIN not in text or END not in text:
        raise ValueError(f"{doc} must hold the markers {BEGIN} and {END}.")
    head, rest = text.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    new = head + BEGIN + "\n" + "\n".join(body).strip() + "\n" + END + tail
    doc.write_text(new)
    return new


if __name__ == "__main__":
    publish(Path(sys.argv[1]))
