"""scripts/benchmarks_md.py: one script's section of docs/benchmarks.md rewritten, the rest kept."""

import benchmarks_md as md  # scripts/benchmarks_md.py, through pytest's pythonpath (pyproject.toml)
from rich.table import Table


def test_write_section_rewrites_one_section_and_keeps_the_others(tmp_path):
    path = tmp_path / "benchmarks.md"
    path.write_text("# Benchmarks\n\nregenerate with ...\n")
    facts = {"date": "2026-01-01 00:00 UTC", "command": "`python3 scripts/a.py`"}
    md.write_section(path, "a.py", "A", "what a measures", ["| x |\n|---|\n| 1 |"], facts)
    md.write_section(path, "b.py", "B", "what b measures", ["| y |\n|---|\n| 2 |"], facts)
    md.write_section(path, "a.py", "A", "what a measures", ["| x |\n|---|\n| 3 |"], facts)
    text = path.read_text()
    assert text.startswith("# Benchmarks\n\nregenerate with ...\n")
    assert text.count(md.begin_marker("a.py")) == 1 and text.count(md.end_marker("a.py")) == 1
    assert "| 3 |" in text and "| 1 |" not in text  # a's table replaced
    assert "| 2 |" in text and "what b measures" in text  # b's kept
    assert text.index(md.begin_marker("a.py")) < text.index(md.begin_marker("b.py"))  # in place
    before = text
    md.write_section(path, "a.py", "A", "what a measures", ["| x |\n|---|\n| 3 |"], facts)
    assert path.read_text() == before  # idempotent
    assert not list(tmp_path.glob("*.partial"))


def test_machine_facts_line_names_the_run(tmp_path):
    facts = md.machine_facts(sgemm_gflops=123.4, argv=["/x/scripts/bench.py", "--sizes", "2 5"])
    for key in ("date", "machine", "cores", "RAM", "OS", "python", "mlx", "numpy", "gigamlx",
                "gigamlx_fused", "BLAS", "numpy sgemm", "command"):  # fmt: skip
        assert facts[key], key
    assert facts["date"].endswith("UTC") and facts["numpy sgemm"] == "123 GFLOP/s"
    assert "python3 scripts/bench.py --sizes '2 5'`" in facts["command"]
    assert "numpy sgemm" not in md.machine_facts(argv=["bench.py"])  # only when measured
    path = tmp_path / "b.md"
    md.write_section(path, "bench.py", "T", "what", ["table"], facts)
    facts_line = [line for line in path.read_text().splitlines() if line.startswith("*date:")]
    assert len(facts_line) == 1 and "machine: " in facts_line[0] and "BLAS: " in facts_line[0]


def test_rich_table_to_markdown_keeps_cells_and_alignment():
    table = Table(title="a title")
    table.add_column("name")
    table.add_column("s/step", justify="right")
    table.add_row("a|b", "1.50")
    table.add_row("[bold]c[/bold]", "")
    text = md.rich_to_markdown(table)
    assert text.splitlines() == [
        "**a title**",
        "",
        "| name | s/step |",
        "|---|---:|",
        "| a\\|b | 1.50 |",
        "| c |  |",
    ]
