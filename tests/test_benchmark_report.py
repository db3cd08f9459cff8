"""benchmarks/report.py: how `benchmarks/run.py --markdown` writes its measurements into the
documents (a section per machine, the README's summary between markers), on made-up figures:
nothing here times anything."""
import dataclasses
import math
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import report  # noqa: E402
from common import SuiteResult  # noqa: E402

INFO = report.RunInfo(cpu="Test CPU 9000", device="cpu", threads=2, dtype="float32",
                      date="2000-01-02", torch="2.13.0+cpu", fastgan="0.1.0", commit="abc1234",
                      copy_gbs=31.25, matmul_gflops=190.4, keeps_freed_memory=True)

FIGURES = {
    "convert": {"iteration": 1.1},
    "r1": {"d_step_r1": {"speedup": 1.5, "over_floor": 2.5},
           "d_step": {"speedup": 1.2, "over_floor": 2.0},
           "iteration": {"speedup": 1.4, "over_floor": 3.0}},
    "convt": {"vs_eager": [2.0, 8.0, 1.0, 4.0, 1.0], "vs_compile": [1.0, 1.0, 1.0, 1.0, 32.0]},
    "bn": {"vs_eager": [4.0, 2.0], "vs_compile": [1.5, 3.0], "over_floor": [1.25, 2.5],
           "r1_vs_eager": [5.0, 17.0]},
    "cyclegan": {"rows": [{"size": 128, "blocks": 6, "converted": 1.25, "fastgan": 1.3},
                          {"size": 256, "blocks": 9, "converted": 1.5, "fastgan": 2.0}]},
    "memory": {"eager_mib": 512.4, "fastgan_mib": 300.0, "cyclegan_eager_mib": 900.0,
               "cyclegan_fastgan_mib": 800.4, "processes": 3},
}

BENCHMARKS_README = """# Benchmarks

How to run.

## Results
"""

README = f"""# fastgan

Intro.

{report.SUMMARY_BEGIN}
old table
{report.SUMMARY_END}

## After
"""


def results(markdown="### A suite\n\n| a |\n|---|\n| 1 |"):
    return {name: SuiteResult(markdown, figures) for name, figures in FIGURES.items()}


@pytest.fixture
def documents(tmp_path):
    benchmarks_readme, readme = tmp_path / "benchmarks.md", tmp_path / "README.md"
    benchmarks_readme.write_text(BENCHMARKS_README)
    readme.write_text(README)
    return benchmarks_readme, readme


def test_a_new_machine_gets_a_section_at_the_end(documents):
    benchmarks_readme, readme = documents
    report.write(INFO, results(), str(benchmarks_readme), str(readme))
    text = benchmarks_readme.read_text()
    assert text.startswith(BENCHMARKS_README)
    begin = "<!-- results: Test CPU 9000, cpu, 2 threads, float32 -->"
    end = "<!-- end of results: Test CPU 9000, cpu, 2 threads, float32 -->"
    assert text.count(begin) == 1 and text.rstrip().endswith(end)
    section = text[text.index(begin):]
    assert "### Test CPU 9000, cpu, 2 threads, float32" in section
    for fact in ("2000-01-02", "torch 2.13.0+cpu", "fastgan 0.1.0 (commit abc1234)",
                 "Copy bandwidth 31.2 GB/s", "float32 matmul 190 GFLOP/s", "keeping freed memory"):
        assert fact in section
    assert section.count("#### A suite") == len(FIGURES)  # the suites' headings, one level down


def test_a_run_replaces_its_own_section_only(documents):
    benchmarks_readme, readme = documents
    other = dataclasses.replace(INFO, cpu="Other CPU")
    report.write(other, results("### Other machine's table"), str(benchmarks_readme), str(readme))
    report.write(INFO, results("### First run"), str(benchmarks_readme), str(readme))
    report.write(INFO, results("### Second run"), str(benchmarks_readme), str(readme))
    text = benchmarks_readme.read_text()
    assert "First run" not in text
    assert text.count("#### Second run") == len(FIGURES)
    assert text.count("#### Other machine's table") == len(FIGURES)
    assert text.index("Other machine's table") < text.index("Second run")  # sections keep places


def test_writing_twice_changes_nothing(documents):
    benchmarks_readme, readme = documents
    report.write(INFO, results(), str(benchmarks_readme), str(readme))
    once = benchmarks_readme.read_text(), readme.read_text()
    report.write(INFO, results(), str(benchmarks_readme), str(readme))
    assert (benchmarks_readme.read_text(), readme.read_text()) == once


def test_the_summary_replaces_the_text_between_the_markers(documents):
    benchmarks_readme, readme = documents
    report.write(INFO, results(), str(benchmarks_readme), str(readme))
    text = readme.read_text()
    assert "old table" not in text
    assert text.startswith("# fastgan\n\nIntro.\n\n" + report.SUMMARY_BEGIN + "\n")
    assert text.endswith(report.SUMMARY_END + "\n\n## After\n")
    summary = text[text.index(report.SUMMARY_BEGIN):text.index(report.SUMMARY_END)]
    assert "Test CPU 9000, cpu, 2 threads, float32" in summary and "2000-01-02" in summary
    assert "torch 2.13.0+cpu" in summary


def test_summary_rows_carry_the_suites_figures():
    rows = {row[0]: row[1:] for row in report.summary_rows(FIGURES)}
    assert len(rows) == 10
    convert = next(cells for what, cells in rows.items() if "fastgan.nn.convert" in what)
    assert convert[0] == "1.10x"
    d_step = next(cells for what, cells in rows.items() if "discriminator step with R1" in what)
    assert d_step[0] == "1.50x" and d_step[2].startswith("2.50x")
    conv = next(cells for what, cells in rows.items() if "conv_transpose2d" in what)
    eager_mean = math.prod(FIGURES["convt"]["vs_eager"]) ** (1 / 5)
    assert conv[0] == f"{eager_mean:.2f}x geometric mean (1.00x - 8.00x)"
    assert conv[1] == "2.00x geometric mean (1.00x - 32.00x)"
    bn = next(cells for what, cells in rows.items() if "LeakyReLU forward+backward" in what)
    assert bn == ["2.00x - 4.00x", "1.50x - 3.00x", "1.25x - 2.50x the four-pass floor"]
    r1 = next(cells for what, cells in rows.items() if "double backward" in what)
    assert r1[0] == "5.00x - 17.00x"
    memory = next(cells for what, cells in rows.items()
                  if what == "peak memory a DCGAN-64 step adds (D with R1, then G; medians of 3 "
                             "processes)")
    assert memory[0] == "300 MiB against eager's 512 MiB"
    memory = next(cells for what, cells in rows.items() if "memory a CycleGAN" in what)
    assert memory[0] == "800 MiB against eager's 900 MiB"
    cyclegan = {what: cells for what, cells in rows.items() if what.startswith("CycleGAN")}
    assert cyclegan == {
        "CycleGAN training iteration at 128x128 (6 blocks) and 256x256 (9 blocks), torch.nn "
        "models passed through `fastgan.nn.convert`": ["1.25x, 1.50x", "", ""],
        "CycleGAN training iteration at 128x128 (6 blocks) and 256x256 (9 blocks), "
        "fastgan.models": ["1.30x, 2.00x", "", ""]}


def test_a_suite_that_measured_nothing_gives_no_row():
    figures = {"convert": {"iteration": 1.1}, "memory": {}, "cyclegan": {"rows": []}}
    assert [row[0] for row in report.summary_rows(figures)] == [
        "pytorch/examples DCGAN-64 training iteration, models passed through "
        "`fastgan.nn.convert`"]


@pytest.mark.parametrize("device, threads, dtype", [
    ("cuda NVIDIA H100", 2, "float32"), ("cpu", 16, "float32"), ("cpu", 2, "bfloat16")])
def test_other_configurations_leave_the_readme_alone(documents, device, threads, dtype):
    benchmarks_readme, readme = documents
    info = dataclasses.replace(INFO, device=device, threads=threads, dtype=dtype)
    assert report.write(info, results(), str(benchmarks_readme),
                        str(readme)) == [str(benchmarks_readme)]
    assert readme.read_text() == README
    assert f"### Test CPU 9000, {device}, {threads} threads, {dtype}" in (
        benchmarks_readme.read_text())


@pytest.mark.parametrize("readme_text", [
    "# no markers\n",
    f"{report.SUMMARY_BEGIN}\nonly the first\n",
    f"{report.SUMMARY_END}\n{report.SUMMARY_BEGIN}\n",
    f"{report.SUMMARY_BEGIN}\n{report.SUMMARY_END}\n{report.SUMMARY_BEGIN}\n{report.SUMMARY_END}\n",
], ids=["none", "no end", "reversed", "twice"])
def test_bad_summary_markers_are_an_error_and_nothing_is_written(documents, readme_text):
    benchmarks_readme, readme = documents
    readme.write_text(readme_text)
    with pytest.raises(ValueError, match="speedups"):
        report.write(INFO, results(), str(benchmarks_readme), str(readme))
    assert benchmarks_readme.read_text() == BENCHMARKS_README
    assert readme.read_text() == readme_text


def test_a_section_without_its_end_marker_is_an_error():
    document = BENCHMARKS_README + report.section_begin(INFO.key) + "\nhalf a section\n"
    with pytest.raises(ValueError, match="end of results"):
        report.replace_section(document, INFO.key, "new")


def test_a_key_that_would_close_the_marker_is_refused():
    with pytest.raises(ValueError, match="section key"):
        dataclasses.replace(INFO, cpu="CPU --> here").key


def test_headings_move_one_level_down_and_nothing_else_does():
    markdown = "### Title\n\ntext with a # sign\n#### Sub\n| a # b |"
    expected = "#### Title\n\ntext with a # sign\n##### Sub\n| a # b |"
    assert report.demote_headings(markdown) == expected


def test_cpu_model_reads_the_model_name(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: AMD EPYC 9B14\nflags\t\t: fpu\n")
    assert report.cpu_model(str(cpuinfo)) == "AMD EPYC 9B14"


def test_markdown_refuses_a_partial_run():
    result = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "run.py"),
                             "--markdown", "--only", "bn"], capture_output=True, text=True)
    assert result.returncode == 2
    assert "--markdown runs every suite" in result.stderr


def test_the_repository_documents_have_what_run_py_writes_into():
    """README.md has one pair of summary markers, and every machine section of
    benchmarks/README.md is closed, so that `run.py --markdown` can rewrite them."""
    with open(os.path.join(ROOT, "README.md")) as f:
        assert report.SUMMARY_BEGIN in report.replace_summary(f.read(), "table")
    with open(os.path.join(ROOT, "benchmarks", "README.md")) as f:
        document = f.read()
    keys = [line[len("<!-- results: "):-len(" -->")] for line in document.splitlines()
            if line.startswith("<!-- results: ")]
    for key in keys:  # replaced, not appended to
        assert report.section_begin(key) not in report.replace_section(document, key, "new")
