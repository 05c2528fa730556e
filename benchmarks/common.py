"""Shared helpers of the sb-meta benchmarks: machine description, timing,
peak-memory measurement and the construction of models and episodes.

Two "setups" build brains and episodes with one interface:

* :class:`AN4Setup`: the CRDNN-CTC recognizer of
  ``recipes/AN4/hparams/crdnn_ctc_meta.yaml`` (loaded with hyperpyyaml, every
  brain with the same initial weights since the YAML seeds torch) on real AN4
  episodes (``prepare_an4`` into a work folder, the char tokenizer and datasets
  of the AN4 recipe (``recipes/AN4/train.py``), an :class:`~sb_meta.episodes.EpisodeLoader` with a
  fixed seed);
* :class:`ToySetup`: the toy regression brain of :mod:`sb_meta.testing`, for
  tests and the quick DDP run.

The benchmark modules live in ``benchmarks/`` (not a package): they import
each other by module name with this folder on ``sys.path``.
"""

import gc
import os
import pathlib
import platform
import shlex
import statistics
import sys
import threading
import time

import torch

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parent
AN4_YAML = REPO / "recipes" / "AN4" / "hparams" / "crdnn_ctc_meta.yaml"
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

#: malloc settings for memory-measuring subprocesses: a fixed mmap threshold
#: makes glibc hand large tensor buffers straight back to the OS when freed,
#: so RSS follows what the step really holds instead of the allocator's cache.
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "131072"}


# --------------------------------------------------------------------- machine
def cpu_model():
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info():
    """The machine and software a result was measured on."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        usable = os.cpu_count()
    mem_gib = None
    try:
        for line in open("/proc/meminfo", encoding="utf-8"):
            if line.startswith("MemTotal:"):
                mem_gib = round(int(line.split()[1]) / 1024**2, 1)
    except OSError:
        pass
    import speechbrain

    return {
        "cpu_model": cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "memory_gib": mem_gib,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "torch": torch.__version__,
        "speechbrain": speechbrain.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": "cpu",
        "cuda_available": torch.cuda.is_available(),
        "loadavg_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def command_line(argv=None):
    """The command that reproduces this run, as typed from the repo root."""
    argv = sys.argv[1:] if argv is None else argv
    return " ".join(["python", "benchmarks/run.py"] + [shlex.quote(a) for a in argv])


# ---------------------------------------------------------------------- timing
def summarize(samples):
    """Median and spread of a list of seconds (all raw samples kept)."""
    samples = [float(s) for s in samples]
    return {
        "median_s": statistics.median(samples),
        "min_s": min(samples),
        "max_s": max(samples),
        "n": len(samples),
        "samples_s": samples,
    }


def timed(fn):
    """Seconds taken by ``fn()``."""
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def round_robin(fns, repeats, warmup=1):
    """Time each of ``fns`` (name -> callable) ``repeats`` times, interleaved.

    Interleaving (one call of each per round) spreads the load of a busy
    machine over all contenders alike, so ratios stay meaningful. ``warmup``
    untimed rounds come first.
    """
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    samples = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            samples[name].append(timed(fn))
    return samples


# ---------------------------------------------------------------------- memory
def _status_kib(field):
    with open("/proc/self/status", encoding="utf-8") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return None


def rss_mib():
    """Current resident set size of this process (MiB)."""
    kib = _status_kib("VmRSS")
    if kib is None:  # not Linux: the peak is the best we have
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return kib / 1024


def reset_peak_rss():
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS; False if unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_mib():
    kib = _status_kib("VmHWM")
    if kib is None:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return kib / 1024


class RSSSampler:
    """Samples RSS in a thread (a cross-check of the kernel's peak mark)."""

    def __init__(self, interval=0.002):
        self.interval = interval
        self.peak = 0.0
        self._stop = threading.Event()

    def __enter__(self):
        self.peak = rss_mib()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_mib())
            time.sleep(self.interval)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_mib())


def measure_peak(fn):
    """Peak RSS growth (MiB) while ``fn()`` runs, over the RSS just before it.

    Uses the kernel's high-water mark, reset just before ``fn`` where Linux
    allows it, and a sampling thread as a cross-check; returns a dict.
    """
    gc.collect()
    base = rss_mib()
    kernel = reset_peak_rss()
    with RSSSampler() as sampler:
        t = timed(fn)
    peak = peak_rss_mib() if kernel else sampler.peak
    return {
        "baseline_mib": base,
        "peak_mib": peak,
        "delta_mib": max(peak, sampler.peak) - base,
        "sampled_delta_mib": sampler.peak - base,
        "method": "VmHWM reset via /proc/self/clear_refs" if kernel else "RSS sampled every 2 ms",
        "step_s": t,
    }


# ---------------------------------------------------------------------- models
def disable_dropout(modules):
    """Set every dropout probability in ``modules`` to 0 (deterministic forwards)."""
    n = 0
    for m in modules.modules():
        if isinstance(m, torch.nn.modules.dropout._DropoutNd):
            m.p = 0.0
            n += 1
        elif isinstance(m, torch.nn.RNNBase) and m.dropout:
            m.dropout = 0.0
            n += 1
    return n


def an4_root():
    return os.environ.get("SBMETA_AN4_ROOT")


def an4_missing_reason():
    root = an4_root()
    if not root:
        return "SBMETA_AN4_ROOT is not set (it must point at the AN4 corpus: etc/, wav/)"
    if not (pathlib.Path(root) / "etc" / "an4_train.transcription").is_file():
        return f"SBMETA_AN4_ROOT={root} does not hold etc/an4_train.transcription"
    return None


class _EpisodeSource:
    """Episodes over ``self.train`` for a setup's brains."""

    def loader(self, brain, seed=0, **sampler):
        return brain.make_episode_loader(self.train, seed=seed, **sampler)

    def episode(self, brain, seed=0, **sampler):
        """The first episode of the stream of ``seed`` (collated)."""
        return next(iter(self.loader(brain, seed=seed, **sampler)))


class AN4Setup(_EpisodeSource):
    """AN4 CRDNN-CTC brains and real AN4 episodes.

    Arguments
    ---------
    data_folder : str
        The AN4 root.
    workdir : str or pathlib.Path
        Where manifests, the tokenizer and the YAML's output folder go.
    """

    name = "an4-crdnn-ctc"

    def __init__(self, data_folder, workdir):
        sys.path.insert(0, str(REPO / "recipes" / "AN4"))
        from an4_prepare import prepare_an4

        from sb_meta.utils import load_script

        self.recipe = load_script(REPO / "recipes" / "AN4" / "train.py", "sbmeta_bench_an4_recipe")
        self.data_folder = str(data_folder)
        self.workdir = pathlib.Path(workdir)
        manifests = self.workdir / "manifests"
        prepare_an4(self.data_folder, str(manifests), dev_speakers=6, seed=1234)
        self.csvs = {"train": manifests / "train.csv"}
        hp = self.hparams()
        self.datasets = self.recipe.dataio_prepare(hp, self.csvs)
        self.tokenizer = hp["tokenizer"]
        self.train = self.datasets["train"]

    def hparams(self, **overrides):
        from hyperpyyaml import load_hyperpyyaml

        from sb_meta.recipe import prepare_tokenizer

        ov = {"data_folder": self.data_folder, "output_folder": str(self.workdir / "out")}
        ov.update(overrides)
        with open(AN4_YAML, encoding="utf-8") as f:
            hp = load_hyperpyyaml(f, ov)
        prepare_tokenizer(hp, self.csvs["train"], self.workdir / "tokenizer")
        return hp

    def brain(self, dropout=True, **meta):
        """A fresh AN4 recipe brain on CPU (same initial weights every time).

        ``meta`` overrides YAML keys (``meta_strategy``, ``inner_steps``...).
        """
        hp = self.hparams(**meta)
        if not dropout:
            disable_dropout(hp["modules"]["enc"])
        brain = self.recipe.ASR(
            modules=hp["modules"],
            opt_class=hp["opt_class"],
            hparams=hp,
            run_opts={"device": "cpu", "noprogressbar": True},
            checkpointer=None,
        )
        brain.init_optimizers()
        brain.modules.train()
        return brain


class ToySetup(_EpisodeSource):
    """The toy regression brain of :mod:`sb_meta.testing` (same interface)."""

    name = "toy (sb_meta.testing)"

    def __init__(self, n_tasks=8, utts_per_task=12):
        from sb_meta.testing import toy_dataset

        self.train = toy_dataset(n_tasks=n_tasks, utts_per_task=utts_per_task)

    def brain(self, dropout=True, **meta):
        from sb_meta.testing import make_toy_brain

        hp = {"inner_lr": 0.05}
        hp.update(meta)
        brain = make_toy_brain(hp, opt="adam", lr=0.002, hidden=64, batchnorm=True)
        brain.modules.train()
        return brain


def make_setup(kind, workdir=None):
    if kind == "toy":
        return ToySetup()
    reason = an4_missing_reason()
    if reason:
        raise SkipSection(reason)
    return AN4Setup(an4_root(), workdir)


class SkipSection(Exception):
    """A section cannot run here (its reason is recorded as ``not run``)."""


def not_run(reason):
    return {"status": "not run", "reason": reason}


def episode_shape(episode):
    """Sizes of an episode's batches, for the record."""

    def size(batch):
        if batch is None:
            return None
        out = {"utterances": len(batch)}
        sig = getattr(batch, "sig", None)
        if sig is not None:
            wavs, lens = sig
            out["padded_seconds"] = round(wavs.shape[1] / 16000, 3)
            out["audio_seconds"] = round(float((lens * wavs.shape[1]).sum()) / 16000, 3)
        return out

    return [
        {"task": t.name, "support": size(t.support), "query": size(t.query)}
        for t in episode.tasks
    ]
