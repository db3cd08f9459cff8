"""Writes measurements into the documents (`python benchmarks/run.py --markdown`):
benchmarks/README.md holds one section per machine configuration, which a run replaces, and
README.md a summary of the current speedups between two markers. Both come from the same run, so
no figure in them can drift from the code that made it. Nothing here measures anything."""
import dataclasses
import platform
import re

from common import geometric_mean

SUMMARY_BEGIN = "<!-- speedups: written by `python benchmarks/run.py --markdown` -->"
SUMMARY_END = "<!-- end of speedups -->"
# The configuration the README's summary describes: the one the project's targets are set for.
SUMMARY_CONFIGURATION = ("cpu", 2, "float32")


def section_begin(key):
    return f"<!-- results: {key} -->"


def section_end(key):
    return f"<!-- end of results: {key} -->"


def cpu_model(cpuinfo="/proc/cpuinfo"):
    """The CPU's model name (Linux), else what the platform module knows."""
    try:
        with open(cpuinfo) as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@dataclasses.dataclass(frozen=True)
class RunInfo:
    """Where and with what a run measured."""
    cpu: str
    device: str          # "cpu", or "cuda" followed by the GPU's name
    threads: int
    dtype: str
    date: str
    torch: str
    fastgan: str
    commit: str          # the checkout's commit, "" when unknown
    copy_gbs: float
    matmul_gflops: float
    keeps_freed_memory: bool

    @property
    def key(self):
        """A machine configuration: a new run of the same key replaces its section."""
        key = f"{self.cpu}, {self.device}, {self.threads} threads, {self.dtype}"
        if "--" in key or "\n" in key:
            raise ValueError(f"a section key cannot hold '--' or a line break: {key!r}")
        return key

    @property
    def summary_applies(self):
        device_type = self.device.split()[0]
        return (device_type, self.threads, self.dtype) == SUMMARY_CONFIGURATION

    def versions(self):
        commit = f" (commit {self.commit})" if self.commit else ""
        return f"torch {self.torch}, fastgan {self.fastgan}{commit}"


def demote_headings(markdown, levels=1):
    """The suites' headings, `levels` deeper, to sit under a machine's heading."""
    return re.sub(r"^(#+) ", lambda m: "#" * (len(m[1]) + levels) + " ", markdown, flags=re.M)


def machine_section(info, suite_markdowns):
    """benchmarks/README.md's section for one run, markers included."""
    malloc = ("glibc's malloc keeping freed memory (`--keep-freed-memory`)"
              if info.keeps_freed_memory else "the C library's default malloc")
    lines = [section_begin(info.key), f"### {info.key}", "",
             f"Measured {info.date} with {info.versions()}, {malloc}. Copy bandwidth "
             f"{info.copy_gbs:.1f} GB/s, float32 matmul {info.matmul_gflops:.0f} GFLOP/s.", ""]
    for markdown in suite_markdowns:
        lines += [demote_headings(markdown.strip()), ""]
    lines.append(section_end(info.key))
    return "\n".join(lines)


def _span(document, begin, end):
    """(start, stop) of the text from `begin` through `end`, or None when neither is there."""
    count = document.count(begin)
    if count == 0 and end not in document:
        return None
    if count != 1 or document.count(end) != 1:
        raise ValueError(f"expected one {begin!r} and one {end!r}, found {count} and "
                         f"{document.count(end)}")
    start = document.index(begin)
    stop = document.index(end) + len(end)
    if stop < start:
        raise ValueError(f"{end!r} comes before {begin!r}")
    return start, stop


def replace_section(document, key, section):
    """`document` with the section of `key` replaced by `section`, or with `section` appended
    when the document has none for `key`."""
    span = _span(document, section_begin(key), section_end(key))
    if span is None:
        return document.rstrip("\n") + "\n\n" + section + "\n"
    start, stop = span
    return document[:start] + section + document[stop:]


def replace_summary(document, summary):
    """`document` with the text between its summary markers replaced by `summary`."""
    span = _span(document, SUMMARY_BEGIN, SUMMARY_END)
    if span is None:
        raise ValueError(f"no {SUMMARY_BEGIN!r} ... {SUMMARY_END!r} markers in the document")
    start, stop = span
    return document[:start] + SUMMARY_BEGIN + "\n" + summary + "\n" + SUMMARY_END + document[stop:]


def _times(value):
    return f"{value:.2f}x"


def _range(values):
    low, high = min(values), max(values)
    return _times(low) if f"{low:.2f}" == f"{high:.2f}" else f"{low:.2f}x - {high:.2f}x"


NO_DOUBLE_BACKWARD = "(cannot compile a double backward)"


def summary_rows(figures):
    """The summary's rows (what runs, vs eager, vs torch.compile, against the floor) from the
    suites' figures ({suite name: SuiteResult.figures}); a suite that is absent or measured
    nothing gives no row."""
    rows = []
    convert = figures.get("convert")
    if convert:
        rows.append(["pytorch/examples DCGAN-64 training iteration, models passed through "
                     "`fastgan.nn.convert`", _times(convert["iteration"]), "", ""])
        for key, what in (("iteration_r1", "the same iteration with R1 every D step"),
                          ("d_step_r1", "its D step with R1")):
            if key in convert:
                rows.append([f"{what}, converted", _times(convert[key]), NO_DOUBLE_BACKWARD, ""])
        others = [row for row in convert.get("rows", [])
                  if (row["batch"], row["layout"]) != (64, "NCHW")]
        if others:
            rows.append(["the R1 iteration, converted, at " + ", ".join(
                f"batch {row['batch']} {row['layout']}" for row in others),
                ", ".join(_times(row["speedup"]) for row in others), NO_DOUBLE_BACKWARD, ""])
    r1 = figures.get("r1")
    if r1:
        for key, what in (("d_step_r1", "DCGAN-64 discriminator step with R1 every step"),
                          ("iteration", "DCGAN-64 iteration (D step with R1, then G step)")):
            rows.append([f"{what}, fastgan's models", _times(r1[key]["speedup"]),
                         NO_DOUBLE_BACKWARD,
                         f"{r1[key]['over_floor']:.2f}x its convolution FLOPs at the matmul rate"])
    convt = figures.get("convt")
    if convt:
        rows.append(["conv_transpose2d forward+backward, the DCGAN-64 generator's layers",
                     f"{_times(geometric_mean(convt['vs_eager']))} geometric mean "
                     f"({_range(convt['vs_eager'])})",
                     f"{_times(geometric_mean(convt['vs_compile']))} geometric mean "
                     f"({_range(convt['vs_compile'])})", ""])
    bn = figures.get("bn")
    if bn:
        rows.append(["BatchNorm+LeakyReLU forward+backward, DCGAN shapes, NCHW and NHWC",
                     _range(bn["vs_eager"]), _range(bn["vs_compile"]),
                     f"{_range(bn['over_floor'])} the four-pass floor"])
        rows.append(["BatchNorm+LeakyReLU double backward (the R1 pattern), the same shapes",
                     _range(bn["r1_vs_eager"]), NO_DOUBLE_BACKWARD, ""])
    instance_norm = figures.get("in")
    if instance_norm:
        rows.append(["InstanceNorm+ReLU forward+backward, CycleGAN shapes, NCHW and NHWC",
                     f"{_times(geometric_mean(instance_norm['vs_eager']))} geometric mean "
                     f"({_range(instance_norm['vs_eager'])})",
                     f"{_times(geometric_mean(instance_norm['vs_compile']))} geometric mean",
                     f"{_range(instance_norm['over_copies'])} the time of four copies"])
        rows.append(["InstanceNorm+ReLU double backward (the R1 pattern), the same shapes",
                     f"{_times(geometric_mean(instance_norm['r1_vs_eager']))} geometric mean",
                     NO_DOUBLE_BACKWARD, ""])
    cyclegan = figures.get("cyclegan")
    if cyclegan and cyclegan["rows"]:
        cases = " and ".join(f"{row['size']}x{row['size']} ({row['blocks']} blocks)"
                             for row in cyclegan["rows"])
        for key, what in (("converted", "torch.nn models passed through `fastgan.nn.convert`"),
                          ("fastgan", "fastgan.models")):
            rows.append([f"CycleGAN training iteration at {cases}, {what}",
                         ", ".join(_times(row[key]) for row in cyclegan["rows"]), "", ""])
    memory = figures.get("memory")
    count = memory.get("processes", 1) if memory else 1
    processes = "one process" if count == 1 else f"medians of {count} processes"
    if memory:
        rows.append([f"peak memory a DCGAN-64 step adds (D with R1, then G; {processes})",
                     f"{memory['fastgan_mib']:.0f} MiB against eager's "
                     f"{memory['eager_mib']:.0f} MiB", "", ""])
    if memory and "cyclegan_fastgan_mib" in memory:
        rows.append([f"peak memory a CycleGAN iteration adds (128x128, 6 blocks; {processes}), "
                     "converted",
                     f"{memory['cyclegan_fastgan_mib']:.0f} MiB against eager's "
                     f"{memory['cyclegan_eager_mib']:.0f} MiB", "", ""])
    return rows


def summary(info, figures):
    """README.md's summary: where and when it was measured, then the table."""
    header = ["what runs", "vs PyTorch eager", "vs torch.compile", "fastgan against its floor"]
    rows = summary_rows(figures)
    lines = [f"{info.cpu}, {info.device}, {info.threads} threads, {info.dtype}, batch 64; "
             f"measured {info.date} with {info.versions()}. A ratio is PyTorch's time over "
             "fastgan's: above 1.00x, fastgan is faster.", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def write(info, results, benchmarks_readme, readme):
    """Writes the run's section into `benchmarks_readme` and, for the summary's configuration, its
    summary into `readme` ({suite name: SuiteResult} in `results`). Returns the paths written."""
    with open(benchmarks_readme) as f:
        document = f.read()
    section = machine_section(info, [result.markdown for result in results.values()])
    written = [benchmarks_readme]
    updated = {benchmarks_readme: replace_section(document, info.key, section)}
    if info.summary_applies:
        with open(readme) as f:
            updated[readme] = replace_summary(
                f.read(), summary(info, {name: r.figures for name, r in results.items()}))
        written.append(readme)
    for path, text in updated.items():  # both checked before either is written
        with open(path, "w") as f:
            f.write(text)
    return written
