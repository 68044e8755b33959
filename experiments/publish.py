"""Copy a reproduction's REPORT.md into docs/, so the documented results are the generated ones:
``python -m experiments.publish RUN_DIR`` fills docs/reproduction.md between its report markers;
``python -m experiments.publish RUN_DIR DOC.md`` writes DOC.md whole, with the run's figures
copied to docs/figures/<DOC's stem>/ and shown."""

from __future__ import annotations

import shutil
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
    new = replace_between(doc.read_text(), BEGIN, END, "\n".join(body).strip(), str(doc))
    doc.write_text(new)
    return new


def replace_between(text: str, begin: str, end: str, body: str, where: str) -> str:
    """``text`` with the part between the markers ``begin`` and ``end`` replaced by ``body``
    (each on lines of their own): the one function that writes a generated section of a
    document (the reproduction's report, claim 4's tables, the benchmark tables).

    Args:
        text: the document.
        begin: the opening marker, e.g. an HTML comment.
        end: the closing marker.
        body: what goes between them.
        where: the document's name, for the error.

    Returns:
        The new text. Raises ``ValueError`` unless each marker occurs exactly once, in order.
    """
    if text.count(begin) != 1 or text.count(end) != 1 or text.index(begin) > text.index(end):
        raise ValueError(f"{where} must hold the markers {begin} and {end} once each, in order.")
    head, rest = text.split(begin, 1)
    return head + begin + "\n" + body + "\n" + end + rest.split(end, 1)[1]


def publish_page(run_dir: Path, doc: Path, title: str, intro: str = "") -> str:
    """Write ``doc``: ``title``, ``intro`` and ``run_dir/REPORT.md`` below its own title,
    its figures copied to ``doc.parent/figures/<doc's stem>/`` and linked from there."""
    run_dir, doc = Path(run_dir), Path(doc)
    figs = doc.parent / "figures" / doc.stem
    if figs.exists():
        shutil.rmtree(figs)
    shutil.copytree(run_dir / "figures", figs)
    body = []
    for line in (run_dir / "REPORT.md").read_text().splitlines()[1:]:
        body.append(line.replace("](figures/", f"](figures/{doc.stem}/"))
    text = f"# {title}\n\n" + (intro.strip() + "\n\n" if intro else "") + "\n".join(body).strip()
    doc.write_text(text + "\n")
    return text


if __name__ == "__main__":
    if len(sys.argv) > 2:
        publish_page(Path(sys.argv[1]), Path(sys.argv[2]), " ".join(sys.argv[3:]) or "Report")
    else:
        publish(Path(sys.argv[1]))
