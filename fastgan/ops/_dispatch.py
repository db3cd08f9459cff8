"""Measured dispatch: which engine, torch's kernels (oneDNN) or fastgan's, computes each part of a
CPU convolution (forward, input gradient, weight gradient), as torch.backends.cudnn.benchmark
chooses among cuDNN's algorithms.

The first call of a shape (with its dtype, layouts, geometry, activation, thread count and the
allow_winograd switch) times each engine on the forward and each pair of engines on the
backward, interleaved, on tensors of that shape, and keeps the fastest: in memory, and in a JSON file per machine (CPU model, capability, torch
and fastgan versions) under fastgan.backends.cpu.cache_dir, written atomically, so that later
processes skip the timing. A file that cannot be read, or was written for another machine, is
ignored with a warning and replaced. fastgan.backends.cpu's switches decide whether this runs at
all (benchmark, engine)."""
import dataclasses
import hashlib
import json
import logging
import os
import platform
import tempfile
import threading
import time
import warnings

import torch

from fastgan import _backend
from fastgan._version import __version__
from fastgan.backends import cpu as switches

logger = logging.getLogger("fastgan.dispatch")

PARTS = ("forward", "input_grad", "weight_grad")
# 3: the key names the gemm switch; choices timed with the earlier products are stale. 4: the
# Winograd paths read U packed and take 3x3 stride-2 layers, the products' last rows a tile of
# their own: choices timed with the earlier kernels are stale.
FORMAT = 4
# fastgan's kernels must beat torch's by this factor to be chosen: within it the two are level on
# a busy machine, and torch's result is the one a user compares against.
MARGIN = 0.97
# Each engine is timed at least this many times per part, and more while the part's timing has
# taken less than MIN_SECONDS (small shapes: one call is too short to trust). Five rounds: on a
# shared machine a burst of another process's work can slow down every call of an engine in
# three rounds, and a choice is kept for good.
MIN_ROUNDS, MAX_ROUNDS, MIN_SECONDS = 5, 20, 0.05


@dataclasses.dataclass(frozen=True)
class Engines:
    """The engine of each part of one convolution shape."""
    forward: str
    input_grad: str
    weight_grad: str

    @classmethod
    def all(cls, engine):
        return cls(engine, engine, engine)

    def own(self):
        """(forward, input_grad, weight_grad): whether fastgan's kernels compute each."""
        return tuple(getattr(self, part) == "fastgan" for part in PARTS)


_lock = threading.Lock()
_chosen = {}          # key -> Engines, this process's choices
_loaded_file = None   # the cache file _chosen was filled from, once read
_seconds_timing = 0.0


def select(op, arguments, candidates, rule):
    """The Engines for a call of `op` on `arguments` (its tensors and everything else the speed
    depends on besides the thread count and the switches). `candidates()` returns
    {"forward": {engine: callable}, "backward": {(input_grad engine, weight_grad engine):
    callable}} to time; `rule()` returns the fixed choice used without the
    benchmark (and while torch.compile traces)."""
    if switches.engine is not None:
        return Engines.all(switches.engine)
    if not switches.benchmark or torch.compiler.is_compiling():
        return rule()
    key = (f"{op} {_describe(arguments)} threads={torch.get_num_threads()} "
           f"winograd={switches.allow_winograd} gemm={switches.gemm}")
    found = _chosen.get(key)
    if found is not None:
        return found
    with _lock:  # a second thread meeting the same shape waits for the first one's timing
        _read_cache_file()
        found = _chosen.get(key)
        if found is None:
            found = _measure(key, candidates(), rule)
            _chosen[key] = found
            _write_cache_file()
    return found


def _describe(arguments):
    """A call's description: tensors by shape, dtype and layout, other arguments as they
    print."""
    # Tuples print as lists: a module's (2, 2) and a list [2, 2] are the same geometry.
    return " ".join(_describe_tensor(a) if isinstance(a, torch.Tensor)
                    else str(list(a)) if isinstance(a, tuple) else str(a) for a in arguments)


def _describe_tensor(tensor):
    if tensor.is_contiguous():
        layout = "contiguous"
    elif tensor.dim() == 4 and tensor.is_contiguous(memory_format=torch.channels_last):
        layout = "channels_last"
    else:
        layout = "strided"
    return f"{tuple(tensor.shape)}:{str(tensor.dtype).removeprefix('torch.')}:{layout}"


def choices():
    """{key: {part: engine}} of this process's choices (measured or read from the cache)."""
    return {key: dataclasses.asdict(engines) for key, engines in _chosen.items()}


def info():
    """The dispatch's state, for fastgan.backend_info()."""
    return {"benchmark": switches.benchmark, "engine": switches.engine,
            "allow_winograd": switches.allow_winograd, "cache_file": _cache_file(),
            "shapes_chosen": len(_chosen), "seconds_timing": round(_seconds_timing, 3)}


def forget():
    """Drops this process's choices (the file stays): the next call of each shape times again or
    reads the file."""
    global _loaded_file, _seconds_timing
    with _lock:
        _chosen.clear()
        _loaded_file = None
        _seconds_timing = 0.0


def _measure(key, candidates, rule):
    """The Engines timed fastest: the forward's engine, and the backward's pair of engines
    (input gradient, weight gradient), timed as the pair runs: one engine computing both may
    share work (the activation's derivative, one call for both) that two cannot."""
    global _seconds_timing
    start = time.perf_counter()
    with torch.no_grad(), torch.autocast("cpu", enabled=False):
        forward = _time_engines(candidates["forward"])
        backward = _time_engines(candidates["backward"])
    fallback = rule()
    engines = Engines(_fastest(forward, "torch", fallback.forward),
                      *_fastest(backward, ("torch", "torch"),
                                (fallback.input_grad, fallback.weight_grad)))
    report = ["forward: " + ", ".join(f"{engine} {s * 1e3:.2f} ms"
                                      for engine, s in forward.items()),
              "backward (input, weight): " + ", ".join(
                  f"{'/'.join(pair)} {s * 1e3:.2f} ms" for pair, s in backward.items())]
    elapsed = time.perf_counter() - start
    _seconds_timing += elapsed
    logger.info("%s: %s (%s; timed in %.2f s)", key, dataclasses.asdict(engines),
                "; ".join(report), elapsed)
    return engines


def _fastest(seconds, baseline, fallback):
    """The fastest candidate, where it beats `baseline` (torch's kernels) by MARGIN; `fallback`
    when nothing ran."""
    if not seconds:
        return fallback
    best = min(seconds, key=seconds.get)
    if baseline in seconds and seconds[best] >= MARGIN * seconds[baseline]:
        return baseline
    return best


def _time_engines(by_engine):
    """{engine (or pair): fastest seconds of one call}, the engines taking turns; an engine that raises on
    its first call is left out (and logged)."""
    runnable = {}
    for engine, fn in by_engine.items():
        try:
            fn()
        except Exception as error:  # noqa: BLE001 - any failure only removes the candidate
            logger.debug("engine %s failed while timed: %r", engine, error)
        else:
            runnable[engine] = fn
    best = {engine: float("inf") for engine in runnable}
    order = list(runnable)
    start = time.perf_counter()
    for round_index in range(MAX_ROUNDS):
        if round_index >= MIN_ROUNDS and time.perf_counter() - start >= MIN_SECONDS:
            break
        # Each engine in turn goes first, after another's calls have left the caches.
        turn = round_index % max(len(order), 1)
        for engine in order[turn:] + order[:turn]:
            tick = time.perf_counter()
            runnable[engine]()
            best[engine] = min(best[engine], time.perf_counter() - tick)
    return best


# --- the cache file ------------------------------------------------------------------------------

def _machine():
    """What a choice depends on besides the shape: a file made under another is not used."""
    extension = _backend.extension
    return {"cpu": _cpu_model(),
            "capability": extension.cpu_capability if extension is not None else None,
            "torch": torch.__version__, "fastgan": __version__}


def _cpu_model():
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cache_file():
    directory = switches.cache_dir
    if directory is None:
        return None
    digest = hashlib.sha256(json.dumps(_machine(), sort_keys=True).encode()).hexdigest()[:12]
    return os.path.join(directory, f"cpu_dispatch_{digest}.json")


def _read_file(path):
    """The choices in `path`: {} when it is absent, and with a warning when it is unreadable or
    another machine's."""
    try:
        with open(path, encoding="utf-8") as file:
            content = json.load(file)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as error:
        warnings.warn(f"fastgan: ignoring the dispatch cache {path}, which cannot be read "
                      f"({error}); it will be replaced", RuntimeWarning, stacklevel=4)
        return {}
    if not isinstance(content, dict) or content.get("format") != FORMAT or \
            content.get("machine") != _machine() or not isinstance(content.get("choices"), dict):
        warnings.warn(f"fastgan: ignoring the dispatch cache {path}: it was written for another "
                      f"machine or version; it will be replaced", RuntimeWarning, stacklevel=4)
        return {}
    choices = {}
    for key, parts in content["choices"].items():
        try:
            engines = Engines(**parts)
        except TypeError:
            continue
        if all(engine in switches.ENGINES for engine in dataclasses.astuple(engines)):
            choices[key] = engines
    return choices


def _read_cache_file():
    global _loaded_file
    path = _cache_file()
    if path is None or path == _loaded_file:
        return
    _loaded_file = path
    for key, engines in _read_file(path).items():
        _chosen.setdefault(key, engines)


def _write_cache_file():
    """Merges this process's choices into the file (another process may have added its own) and
    replaces it atomically: a reader sees the old file or the new one, never a part."""
    path = _cache_file()
    if path is None:
        return
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the read warned already, if it had to
            merged = _read_file(path)
        merged.update(_chosen)
        content = {"format": FORMAT, "machine": _machine(),
                   "choices": {key: dataclasses.asdict(e) for key, e in sorted(merged.items())}}
        handle, temporary = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".tmp")
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as file:
                json.dump(content, file, indent=1)
            os.replace(temporary, path)
        except BaseException:
            os.unlink(temporary)
            raise
    except OSError as error:
        logger.warning("could not write the dispatch cache %s: %s", path, error)
