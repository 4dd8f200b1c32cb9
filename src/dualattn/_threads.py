"""CPU threads for torch that do not oversubscribe a shared machine (base layer: imports no torch at load).

torch starts one OpenMP thread per physical core whatever else runs on the machine. When another job
already keeps those cores busy, the threads take turns on the same cores and every parallel region waits
for its slowest thread: on a busy 2-core machine ``dualattn demo --preset tiny`` ran 15x slower with
torch's default than with one thread (measurements: ``benchmarks/results/threads.json``, written by
``benchmarks/threads.py``; summary in docs/demo.md, "Threads").

The rule every computing command (``demo``, ``train``, ``evaluate``, ``explain``) applies
(:func:`choose_threads`):

1. ``--threads N`` wins;
2. else ``OMP_NUM_THREADS`` when it is set in the environment (the user's, or a launcher's, choice);
3. else the cores that are free now (:func:`free_cores`): the cores this process may run on
   (``os.sched_getaffinity``, capped by a cgroup CPU quota) minus the cores other processes keep busy,
   rounded, at least 1. "Busy" is measured over a short window (:data:`SAMPLE_S`) from the kernel's CPU
   counters (``/proc/stat``, :func:`busy_cores`), where that file is missing the 1-minute load average.
   An idle 2-core machine gives 2, one other busy job 1, a busy machine 1.

A short window rather than the 1-minute load average: the load average still counts a job that ended
seconds ago (the previous command of a script) and not yet one that started seconds ago.

:func:`prefer_passive_waiting` sets ``OMP_WAIT_POLICY=PASSIVE`` (idle OpenMP threads sleep instead of
spinning) when the environment does not say otherwise; it only has an effect before torch is imported,
so the command-line entry points call it first.

Example:
    >>> choice = choose_threads(3)
    >>> choice.threads, choice.reason
    (3, '--threads')
    >>> free_cores(cores=2, online=2, busy=0.3), free_cores(cores=2, online=2, busy=1.0)
    (2, 1)
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Mapping, MutableMapping

__all__ = ["SAMPLE_S", "ThreadChoice", "apply_threads", "busy_cores", "choose_threads", "free_cores", "load_average",
           "prefer_passive_waiting", "usable_cores"]

logger = logging.getLogger(__name__)

#: Seconds over which :func:`busy_cores` measures the CPU use of the machine.
SAMPLE_S = 0.25
#: The kernel's CPU time counters (Linux).
PROC_STAT = Path("/proc/stat")
#: The cgroup v2 CPU quota file ("max 100000" or "<quota> <period>" in microseconds).
CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


@dataclasses.dataclass(frozen=True)
class ThreadChoice:
    """A thread count, why it was chosen (the sentence the CLI logs) and where it came from.

    ``source`` is ``"option"`` (``--threads``), ``"environment"`` (``OMP_NUM_THREADS``, a count per process
    as in OpenMP) or ``"free cores"``.
    """

    threads: int
    reason: str
    source: str = "free cores"


def _cgroup_cpus(path: Path = CGROUP_CPU_MAX) -> float | None:
    """The CPUs a cgroup v2 quota allows (``quota / period``), or ``None`` without a quota."""
    try:
        quota, period = path.read_text(encoding="ascii").split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    try:
        q, p = float(quota), float(period)
    except ValueError:
        return None
    return q / p if q > 0 and p > 0 else None


#: fewer busy CPUs than this (other processes, sampled over SAMPLE_S) counts as an idle machine
IDLE_BUSY: float = 0.25


def usable_cores() -> int:
    """The cores this process may run on: its CPU affinity, capped by a cgroup CPU quota (at least 1)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cores = os.cpu_count() or 1
    quota = _cgroup_cpus()
    if quota is not None:
        cores = min(cores, max(1, math.ceil(quota)))
    return max(1, cores)


def load_average() -> float | None:
    """The 1-minute load average (runnable tasks, averaged), or ``None`` where the system has none."""
    try:
        return float(os.getloadavg()[0])
    except (AttributeError, OSError):
        return None


def _cpu_times(path: Path) -> tuple[float, float, int] | None:
    """(busy ticks, all ticks, CPUs) summed over the machine from ``/proc/stat``, or ``None``."""
    try:
        lines = path.read_text(encoding="ascii").splitlines()
    except (OSError, ValueError):
        return None
    total = [ln for ln in lines if ln.startswith("cpu ")]
    n = sum(1 for ln in lines if ln.startswith("cpu") and ln[3:4].isdigit())
    if not total or n < 1:
        return None
    try:
        # user nice system idle iowait irq softirq steal (guest time is already inside user)
        ticks = [float(v) for v in total[0].split()[1:9]]
    except ValueError:
        return None
    if len(ticks) < 4:
        return None
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0.0)
    return sum(ticks) - idle, sum(ticks), n


def busy_cores(window: float = SAMPLE_S, *, stat: Path = PROC_STAT) -> tuple[float | None, str]:
    """How many of the machine's CPUs other processes keep busy now, and how that was measured.

    The caller sleeps through the window, so its own threads do not count; time stolen by other virtual
    machines counts as busy.

    Args:
        window: seconds between the two reads of ``stat``.
        stat: the CPU counters (``/proc/stat``); where unreadable, the 1-minute load average is used.

    Returns:
        ``(busy CPUs of the whole machine, or None when unknown, how it was measured)``.
    """
    first = _cpu_times(stat)
    if first is not None and window > 0:
        time.sleep(window)
        second = _cpu_times(stat)
        if second is not None and second[1] > first[1]:
            share = (second[0] - first[0]) / (second[1] - first[1])
            return max(0.0, min(1.0, share)) * second[2], f"CPU use over {window:g} s"
    return load_average(), "1-minute load average"


def free_cores(*, cores: int | None = None, online: int | None = None, busy: float | None = None) -> int:
    """The cores free now: ``cores`` minus their share of the busy CPUs, rounded, at least 1.

    ``busy`` counts busy CPUs of the whole machine (``online`` CPUs); a process pinned to ``cores`` of
    them is assumed to see its share, ``busy * cores / online``.

    Args:
        cores: the cores this process may use; default :func:`usable_cores`.
        online: the machine's CPUs; default ``os.cpu_count()``.
        busy: busy CPUs of the machine; default :func:`busy_cores` (unknown: every core counts as free).

    Returns:
        An int in ``[1, cores]``.

    Example:
        >>> [free_cores(cores=2, online=2, busy=x) for x in (0.0, 0.49, 0.51, 1.2, 2.0, 7.0)]
        [2, 2, 1, 1, 1, 1]
        >>> free_cores(cores=4, online=64, busy=32.0)  # half the machine busy: half of our 4 cores
        2
    """
    cores = usable_cores() if cores is None else int(cores)
    online = (os.cpu_count() or cores) if online is None else int(online)
    busy = busy_cores()[0] if busy is None else float(busy)
    if busy is None or not math.isfinite(busy):
        return max(1, cores)
    share = min(float(cores), max(0.0, busy) * cores / max(online, cores))
    return max(1, min(cores, int(math.floor(cores - share + 0.5))))


def _env_threads(environ: Mapping[str, str]) -> int | None:
    text = environ.get("OMP_NUM_THREADS", "").strip()
    if not text:
        return None
    try:
        # OpenMP allows a list ("4,2") for nested levels: the first is the outer level's count
        value = int(text.split(",")[0])
    except ValueError:
        logger.warning("OMP_NUM_THREADS=%r is not a number: ignored", text)
        return None
    return value if value >= 1 else None


def choose_threads(requested: int | None = None, *, environ: Mapping[str, str] | None = None,
                   cores: int | None = None, online: int | None = None, busy: float | None = None) -> ThreadChoice:
    """The thread count a command uses (module docstring): ``requested``, else ``OMP_NUM_THREADS``, else free cores.

    Args:
        requested: ``--threads`` (``None``: not given).
        environ: the environment (default ``os.environ``).
        cores, online, busy: as :func:`free_cores` (defaults: this machine, now; measuring ``busy`` takes
            :data:`SAMPLE_S` seconds).

    Returns:
        A :class:`ThreadChoice`.

    Raises:
        ValueError: ``requested < 1``.

    Example:
        >>> choose_threads(environ={"OMP_NUM_THREADS": "1"}).reason
        'OMP_NUM_THREADS=1 in the environment'
        >>> choose_threads(environ={}, cores=2, online=2, busy=1.9)
        ThreadChoice(threads=1, reason='free cores: 2 usable, 1.90 CPUs busy (given)', source='free cores')
    """
    if requested is not None:
        if int(requested) < 1:
            raise ValueError(f"--threads must be >= 1, got {requested}: give the number of CPU threads for torch "
                             "(leave it out to use the cores that are free)")
        return ThreadChoice(int(requested), "--threads", "option")
    env = os.environ if environ is None else environ
    from_env = _env_threads(env)
    if from_env is not None:
        return ThreadChoice(from_env, f"OMP_NUM_THREADS={env['OMP_NUM_THREADS'].strip()} in the environment",
                            "environment")
    n_cores = usable_cores() if cores is None else int(cores)
    how = "given"
    if busy is None:
        busy, how = busy_cores()
    n = free_cores(cores=n_cores, online=online, busy=busy if busy is not None else float("nan"))
    busy_text = "unknown" if busy is None else f"{busy:.2f}"
    return ThreadChoice(n, f"free cores: {n_cores} usable, {busy_text} CPUs busy ({how})")


def apply_threads(requested: int | None = None, *, processes: int = 1, log: logging.Logger | None = None) -> ThreadChoice:
    """Choose the threads (:func:`choose_threads`), set them in torch, log the choice, return it.

    Args:
        requested: ``--threads`` (``None``: the rule of the module docstring).
        processes: processes that will share the cores (e.g. DDP on CPU): each gets
            ``max(1, threads // processes)`` of ``--threads`` or of the free cores; ``OMP_NUM_THREADS`` is
            already a count per process (OpenMP's meaning; what a parent passes its children).
        log: where the choice is logged (default this module's logger).

    Returns:
        The :class:`ThreadChoice` applied (threads per process).

    Raises:
        ValueError: ``requested < 1`` or ``processes < 1``.
    """
    if int(processes) < 1:
        raise ValueError(f"processes must be >= 1, got {processes}")
    choice = choose_threads(requested)
    if processes > 1 and choice.source != "environment":
        choice = ThreadChoice(max(1, choice.threads // int(processes)),
                              f"{choice.reason}; {choice.threads} threads shared by {processes} processes", choice.source)
    import torch  # only now: importing this module has no torch side effect

    torch.set_num_threads(choice.threads)
    (log or logger).info("CPU threads: %d (%s)", choice.threads, choice.reason)
    return choice


def prefer_passive_waiting(environ: MutableMapping[str, str] | None = None, *, busy: float | None = None,
                           measure: bool = True) -> bool:
    """Set ``OMP_WAIT_POLICY=PASSIVE`` when other jobs keep a CPU busy, unless the environment sets it or torch is
    already loaded.

    OpenMP threads waiting for work then sleep instead of spinning on a core another job needs (a tiny demo on a
    busy 2-core machine: 260 s spinning, 54 s sleeping; ``benchmarks/results/threads.json``). On an idle machine
    sleeping costs a wake-up per parallel region: a training run of the default preset took 12.2 s with two
    sleeping threads against 9.9 s spinning, so then the runtime's default (spinning) is kept. The OpenMP runtime
    reads the variable once, when torch loads it: call this before ``import torch``.

    Args:
        environ: the environment to set (default ``os.environ``).
        busy: busy CPUs of the machine (default: measured now with :func:`busy_cores` when ``measure``).
        measure: measure the busy CPUs when ``busy`` is not given; ``False`` sets PASSIVE whatever the load.

    Returns:
        Whether the variable was set (``False``: already set, torch already imported, or the machine is idle).
    """
    env = os.environ if environ is None else environ
    if "OMP_WAIT_POLICY" in env or "torch" in sys.modules:
        return False
    if busy is None and measure:
        busy, _ = busy_cores()
    if busy is not None and busy < IDLE_BUSY:
        return False  # nobody to yield the cores to: spinning threads are faster
    env["OMP_WAIT_POLICY"] = "PASSIVE"
    return True
