"""The benchmark scripts' `--markdown PATH`: each rewrites only its own section of that file
(docs/benchmarks.md), between `<!-- bench:NAME begin -->` and `<!-- bench:NAME end -->`.

A section holds a heading, one line on what is measured, the tables (made from the rows the
script prints) and a facts line: date, machine, versions, BLAS and the command as run.
Scripts import it as `benchmarks_md` (python puts scripts/ on the path of a script it runs).
"""

from __future__ import annotations

import datetime
import os
import platform
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

import numpy as np
from rich.table import Table
from rich.text import Text

REPO = Path(__file__).resolve().parents[1]
# environment variables that change what a benchmark measures, shown in its command line
ENV_PREFIXES = ("GIGAMLX_", "OPENBLAS_", "OMP_", "MLX_")


def sgemm_gflops(n: int = 1024, repeats: int = 5) -> float:
    """numpy's float32 n x n matmul rate, best of `repeats`: how fast this machine is right now,
    printed beside every timing."""
    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ a
        best = min(best, time.perf_counter() - start)
    return 2.0 * n**3 / best / 1e9


def begin_marker(name: str) -> str:
    return f"<!-- bench:{name} begin -->"


def end_marker(name: str) -> str:
    return f"<!-- bench:{name} end -->"


def _cell(value: object) -> str:
    text = Text.from_markup(value).plain if isinstance(value, str) else str(value)
    return " ".join(text.split()).replace("|", "\\|")  # one line, pipes escaped


def markdown_table(
    header: Sequence[str], rows: Sequence[Sequence[object]], right: Sequence[bool] | None = None
) -> str:
    """A GitHub markdown table; `right` marks right-aligned columns (default: all but the
    first, the row labels)."""
    right = [i > 0 for i in range(len(header))] if right is None else right
    lines = ["| " + " | ".join(_cell(h) for h in header) + " |"]
    lines.append("|" + "|".join("---:" if r else "---" for r in right) + "|")
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def rich_to_markdown(table: Table) -> str:
    """A rich Table as markdown, aligned as printed: its title in bold above its columns."""
    columns = table.columns
    rows = list(zip(*(list(c.cells) for c in columns), strict=True))
    right = [c.justify == "right" for c in columns]
    body = markdown_table([c.header for c in columns], rows, right)
    return f"**{_cell(table.title)}**\n\n{body}" if table.title else body


def _cpu_model() -> str:
    """The CPU's name where the OS says it (macOS sysctl, Linux cpuinfo), else the arch."""
    if sys.platform == "darwin":
        try:
            query = ["sysctl", "-n", "machdep.cpu.brand_string"]
            done = subprocess.run(query, capture_output=True, text=True, timeout=5, check=False)
            if done.stdout.strip():
                return done.stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def _ram_gb() -> str:
    try:
        return f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 1e9:.1f} GB"
    except (ValueError, OSError, AttributeError):
        return "unknown"


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _commit() -> str:
    """The checkout's short commit, '+dirty' with uncommitted changes to anything but
    markdown (a previous section written to docs/benchmarks.md is not a code change); ''
    outside git."""
    status = ["git", "status", "--porcelain", "-uno", "--", ".", ":(exclude)*.md"]
    try:
        run = dict(cwd=REPO, capture_output=True, text=True, timeout=10, check=False)
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], **run).stdout.strip()
        dirty = subprocess.run(status, **run).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""
    return head + ("+dirty" if head and dirty else "")


def _blas() -> str:
    if "gigamlx.backends.mlx.blas" not in sys.modules:  # importing it would load a BLAS
        return "— (this run did not load MLX)"
    from gigamlx.backends.mlx.blas import blas_info

    info = blas_info()
    return f"{info.name} ({info.path or info.reason})"


def command_line(argv: Sequence[str] | None = None) -> str:
    """The command as run, from the repository root: `python3 scripts/NAME args`, led by the
    environment variables that change a measurement."""
    argv = list(sys.argv if argv is None else argv)
    env = [f"{k}={shlex.quote(v)}" for k, v in sorted(os.environ.items())
           if k.startswith(ENV_PREFIXES)]  # fmt: skip
    return " ".join([*env, "python3", f"scripts/{Path(argv[0]).name}", shlex.join(argv[1:])])


def machine_facts(sgemm_gflops: float | None = None, argv: Sequence[str] | None = None) -> dict:
    """Date (UTC), machine, versions, BLAS and command of this run, as labelled strings."""
    import gigamlx

    now = datetime.datetime.now(datetime.UTC)
    facts = {
        "date": now.strftime("%Y-%m-%d %H:%M UTC"),
        "machine": _cpu_model(),
        "cores": str(os.cpu_count()),
        "RAM": _ram_gb(),
        "OS": f"{platform.system()} {platform.release()} {platform.machine()}",
        "python": platform.python_version(),
        "mlx": _version("mlx") or "not installed",
        "numpy": _version("numpy") or "not installed",
        "torch": _version("torch"),
        "gigamlx": f"{gigamlx.__version__} (commit {_commit() or 'unknown'})",
        "gigamlx_fused": _version("gigamlx-fused") or "not installed",
        "BLAS": _blas(),
        "numpy sgemm": f"{sgemm_gflops:.0f} GFLOP/s" if sgemm_gflops else None,
        "command": f"`{command_line(argv)}`",
    }
    return {k: v for k, v in facts.items() if v is not None}


def render_section(name: str, title: str, what: str, tables: Sequence[str], facts: dict) -> str:
    """The section's text, markers included."""
    facts_line = "; ".join(f"{k}: {v}" for k, v in facts.items())
    parts = [begin_marker(name), f"## {title}", what, *tables, f"*{facts_line}*", end_marker(name)]
    return "\n\n".join(parts[:-1]) + "\n" + parts[-1]


def replace_section(document: str, name: str, section: str) -> str:
    """`document` with the section `name` replaced by `section` (appended if absent)."""
    pattern = re.compile(
        re.escape(begin_marker(name)) + r".*?" + re.escape(end_marker(name)), re.DOTALL
    )
    if pattern.search(document):
        return pattern.sub(lambda _: section, document, count=1)
    return document.rstrip("\n") + ("\n\n" if document.strip() else "") + section + "\n"


def write_section(path: Path, name: str, title: str, what: str, tables: Sequence[str],
                  facts: dict | None = None) -> None:  # fmt: skip
    """Rewrite section `name` of the markdown file at `path`, keeping everything else."""
    path = Path(path)
    document = path.read_text() if path.exists() else ""
    section = render_section(name, title, what, tables, facts or machine_facts())
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")  # a reader never sees half a file
    partial.write_text(replace_section(document, name, section))
    os.replace(partial, path)


def publish(path: Path, name: str, title: str, what: str, tables: Sequence[Table | str],
            sgemm_gflops: float | None = None) -> None:  # fmt: skip
    """What a script's `--markdown PATH` does: its tables (rich or markdown) and this run's
    facts into its section `name` of `path`."""
    blocks = [t if isinstance(t, str) else rich_to_markdown(t) for t in tables]
    write_section(path, name, title, what, blocks, machine_facts(sgemm_gflops))
