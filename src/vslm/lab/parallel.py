"""Independent runs trained one after another, in N worker processes on this machine, or as tasks on a
Ray cluster: the same runs, and at the same threads per run the same numbers whichever way
(tests/test_parallel.py; see Threads below).

    jobs = [RunJob(cfg, out / "a" / "seed-0", "a seed 0"), ...]
    results = run_jobs(jobs, Launcher(jobs=2))          # or Launcher(kind="ray", address="HOST:6379")

Every run goes through vslm.lab.runner.train_or_reuse, so a finished run is read back and a half-done
one resumed, wherever it ran before: the run folders must live where every worker sees them (on a
cluster, `--out` on shared storage). A run that diverges or crashes comes back as {"failed": "reason"}
and the others go on; an error in what was asked (vslm.errors.VSLMError: a folder holding other
settings, a missing file) stops the batch and is raised here, as it would be in one process; a stopped
run (Ctrl-C, SIGTERM) stops the whole batch after every running worker has written its checkpoint, and
the caller sees KeyboardInterrupt. SIGTERM sent to the parent alone (`kill PID`, a scheduler) stops the
batch the same way and raises TrainingStopped (exit 143): no worker is left training on its own.

Threads: N workers on C cores run torch with max(1, C // N) threads each, unless the config sets
train.threads. Two trainings whose threads outnumber the cores fight for them (docs/BENCHMARKS.md
measured a 12x slower step), so the split matters more than the number of workers. torch splits some
CPU reductions by thread, so a run on 2 threads and one on 1 round differently in the last digits (about
1e-5 in the loss, far below the seed spread; docs/BENCHMARKS.md): set train.threads for numbers that do not
depend on the launcher. A finished run is reused whatever its threads (vslm.lab.runner.EXECUTION_ONLY).
"""

from __future__ import annotations

import importlib.util
import multiprocessing as mp
import os
import queue
import signal
import socket
import sys
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from vslm.config import RunConfig
from vslm.errors import ConfigError, VSLMError

MAX_AUTO_JOBS = 8  # --jobs auto on a big CPU machine: tiny models, but each worker holds a corpus and a model


@dataclass(frozen=True)
class RunJob:
    cfg: RunConfig
    folder: Path
    label: str


@dataclass(frozen=True)
class Launcher:
    """Where runs train: kind "local" with `jobs` worker processes (1: in this process, one after
    another), or kind "ray" on the cluster at `address` (None: a local Ray instance started here) with
    `cpus_per_run` CPUs per task (a run that trains on CUDA asks for one GPU instead)."""
    kind: str = "local"
    jobs: int = 1
    address: str | None = None
    cpus_per_run: int = 1

    def describe(self) -> str:
        if self.kind == "ray":
            return f"ray at {self.address or 'a local instance'}, {self.cpus_per_run} CPU(s) a run"
        return "one process" if self.jobs == 1 else f"{self.jobs} worker processes, {threads_per_worker(self.jobs)} " \
                                                      "thread(s) each"


def auto_jobs() -> int:
    """--jobs auto: one worker per core (one thread each) on a CPU machine, at most MAX_AUTO_JOBS;
    one on a CUDA machine (the runs share its GPU; one at a time keeps them from fighting over it).
    docs/BENCHMARKS.md ("Runs in parallel") measured the choice on 2 cores."""
    import torch

    if torch.cuda.is_available():
        return 1
    return max(1, min(os.cpu_count() or 1, MAX_AUTO_JOBS))


def threads_per_worker(jobs: int) -> int:
    return max(1, (os.cpu_count() or 1) // jobs)


def make_launcher(jobs: str | int | None = None, launcher: str = "local", address: str | None = None,
                  cpus_per_run: int | None = None) -> Launcher:
    """A validated Launcher from the command line's words; bad input is a ConfigError that names it,
    raised before anything trains. cpus_per_run: ray's CPUs a run (None: 1)."""
    if launcher not in ("local", "ray"):
        raise ConfigError(f"unknown launcher '{launcher}' (local or ray)")
    if cpus_per_run is not None and launcher != "ray":  # local: the cores shared out (threads_per_worker)
        raise ConfigError("--cpus-per-run applies to --launcher ray; local workers share the cores "
                          "(--jobs N: cores // N threads each, or the config's train.threads)")
    cpus_per_run = 1 if cpus_per_run is None else cpus_per_run
    if cpus_per_run < 1:
        raise ConfigError(f"--cpus-per-run must be at least 1, got {cpus_per_run}")
    if launcher == "ray":
        if jobs not in (None, "auto"):
            raise ConfigError("--jobs applies to the local launcher; with --launcher ray the cluster's CPUs "
                              "and --cpus-per-run decide how many runs train at once")
        if importlib.util.find_spec("ray") is None:
            raise ConfigError("--launcher ray needs Ray: pip install 'vslm[ray]'")
        if address is not None:
            check_reachable(address)
        return Launcher("ray", address=address, cpus_per_run=cpus_per_run)
    if address is not None:
        raise ConfigError("--address applies to --launcher ray")
    if jobs in (None, "auto"):
        return Launcher(jobs=auto_jobs())
    try:
        n = int(jobs)
    except ValueError:
        raise ConfigError(f"--jobs must be a number or 'auto', got '{jobs}'") from None
    if n < 1:
        raise ConfigError(f"--jobs must be at least 1, got {n}")
    return Launcher(jobs=n)


def check_reachable(address: str, timeout: float = 5.0) -> None:
    """A Ray address (HOST:PORT, ray://HOST:PORT, or "auto" for a cluster started on this machine) that
    answers on its port; else a ConfigError, before anything trains."""
    if address == "auto":
        return
    hostport = address.removeprefix("ray://")
    host, sep, port = hostport.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ConfigError(f"--address '{address}' is not HOST:PORT, ray://HOST:PORT or auto")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as e:
        raise ConfigError(f"--address {address}: no Ray cluster answers there ({e.strerror or e})") from None


# ---------------------------------------------------------------------------------------- one run


def run_job(job: RunJob, threads: int = 0) -> dict:
    """One run's numbers (vslm.lab.runner.train_or_reuse), or {"failed": reason} for a run that
    diverged or crashed: the caller goes on with the others. A stopped run (a signal) and an error in
    what was asked (VSLMError) raise."""
    import torch

    from vslm.lab.runner import train_or_reuse
    from vslm.train.trainer import TrainingDiverged, TrainingStopped

    if threads and not job.cfg.train.threads:
        torch.set_num_threads(threads)
    try:
        return train_or_reuse(job.cfg, job.folder)
    except TrainingDiverged as e:
        return {"failed": f"diverged: {e}"}
    except (TrainingStopped, VSLMError):
        raise
    except Exception as e:  # a bug: say where, keep the other runs going
        traceback.print_exc(file=sys.stderr)
        return {"failed": f"{type(e).__name__}: {e}"}


def run_jobs(jobs: list[RunJob], launcher: Launcher | None = None,
             on_result: Callable[[RunJob, dict], None] | None = None) -> list[dict]:
    """Every job's result, in the jobs' order; on_result(job, result) as each one finishes."""
    launcher = launcher or Launcher()
    on_result = on_result or (lambda job, result: None)
    if not jobs:
        return []
    if launcher.kind == "ray":
        return _run_ray(jobs, launcher, on_result)
    if launcher.jobs == 1 or len(jobs) == 1:
        results = []
        for job in jobs:
            results.append(run_job(job))
            on_result(job, results[-1])
        return results
    return _run_processes(jobs, min(launcher.jobs, len(jobs)), threads_per_worker(launcher.jobs), on_result, run_job)


def run_in_processes(items: list, jobs: int, task: Callable, on_result: Callable | None = None) -> list[dict]:
    """task(item, threads) -> dict for every item, in `jobs` spawned worker processes that split the
    cores (threads_per_worker), with run_jobs' handling of stops, errors and dead workers: `task` is a
    module-level function (it is pickled by name) that raises TrainingStopped or VSLMError as run_job
    does and returns {"failed": reason} for what should not stop the others. Results in the items'
    order; on_result(item, result) as each one finishes."""
    on_result = on_result or (lambda item, result: None)
    if not items:
        return []
    return _run_processes(items, min(jobs, len(items)), threads_per_worker(jobs), on_result, task)


# ---------------------------------------------------------------------------------------- worker processes


def _run_reporting(job, threads: int, task: Callable = run_job) -> dict:
    """task (run_job) in a worker: what it raises, as data for the parent ({"stopped"} or {"error"})."""
    from vslm.train.trainer import TrainingStopped

    try:
        return task(job, threads)
    except TrainingStopped as e:
        return {"failed": f"stopped: {e}", "stopped": True}
    except VSLMError as e:
        return {"failed": str(e), "error": str(e)}


def stop_signal(interruptible: bool) -> int:
    """The signal the parent stops its workers' tasks with: SIGINT, as Ctrl-C reaches them; SIGTERM where the
    command was started with SIGINT ignored (nohup, `&` in a script), which the workers inherit and keep."""
    return signal.SIGINT if interruptible else signal.SIGTERM


def _run_interruptible(job, threads: int, task: Callable = run_job, interruptible: bool = True) -> dict:
    """_run_reporting with the stop signal (Ctrl-C, or the parent stopping the batch: stop_signal) raising
    KeyboardInterrupt in the task: a training's own handler writes its checkpoint first, an evaluation stops
    where it is (what it had written is whole: vslm.files), and the task comes back as {"stopped"}."""
    stop = stop_signal(interruptible)
    try:
        signal.signal(stop, signal.default_int_handler)
        try:
            return _run_reporting(job, threads, task)
        finally:
            signal.signal(stop, signal.SIG_IGN)
    except KeyboardInterrupt:  # in the task, or just after it returned
        signal.signal(stop, signal.SIG_IGN)
        return {"failed": "stopped: interrupted", "stopped": True}


def _worker(tasks, results, threads: int, task: Callable = run_job) -> None:
    os.environ["OMP_NUM_THREADS"] = str(threads)  # before torch starts its pools
    interruptible = signal.getsignal(signal.SIGINT) is not signal.SIG_IGN  # inherited from the command
    # between tasks the stop signal is ignored: a queue is never read or written half-way
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(stop_signal(interruptible), signal.SIG_IGN)
    while (item := tasks.get()) is not None:
        index, job = item
        results.put(("start", index, os.getpid()))
        result = _run_interruptible(job, threads, task, interruptible)
        results.put(("done", index, result))
        if result.get("stopped"):
            return  # the batch is stopping: take no new task


def _run_processes(jobs: list, n: int, threads: int, on_result, task: Callable = run_job) -> list[dict]:
    ctx = mp.get_context("spawn")  # a fresh interpreter: no forked torch thread pools, the same on every OS
    tasks, results = ctx.Queue(), ctx.Queue()
    for item in enumerate(jobs):
        tasks.put(item)
    for _ in range(n):
        tasks.put(None)
    # not daemonic: a training may start processes of its own (torch.compile's workers)
    workers = [ctx.Process(target=_worker, args=(tasks, results, threads, task)) for _ in range(n)]
    for w in workers:
        w.start()
    stop = stop_signal(signal.getsignal(signal.SIGINT) is not signal.SIG_IGN)  # as the workers inherit it
    out: list[dict | None] = [None] * len(jobs)
    running: dict[int, int] = {}  # worker pid -> job index
    stopped, error, terminated, stopping = False, None, [], []

    def on_sigterm(signum, frame) -> None:  # a scheduler's or `kill`'s stop, sent to this process only
        terminated.append(signum)
        if not stopping:  # while the workers stop (a second `kill`, or one after Ctrl-C): they are stopping already
            raise KeyboardInterrupt

    here = threading.current_thread() is threading.main_thread()  # handlers only in the main thread
    previous = signal.signal(signal.SIGTERM, on_sigterm) if here else None
    try:
        while any(r is None for r in out):
            try:
                kind, index, payload = results.get(timeout=1.0)
            except queue.Empty:
                for w in workers:  # a worker killed (out of memory, say) takes its run with it
                    if not w.is_alive() and w.exitcode and w.pid in running:
                        index = running.pop(w.pid)
                        out[index] = {"failed": f"worker process died (exit code {w.exitcode})"}
                        on_result(jobs[index], out[index])
                if all(not w.is_alive() for w in workers) and any(r is None for r in out):
                    raise VSLMError("every worker process exited with runs left to train") from None
                continue
            if kind == "start":
                running[payload] = index
                continue
            running = {pid: i for pid, i in running.items() if i != index}
            out[index] = payload
            if "error" in payload:
                error = payload["error"]
                break
            on_result(jobs[index], payload)
            if payload.get("stopped"):
                stopped = True
                break
    except KeyboardInterrupt:
        stopping.append(True)
        stopped = True
    except BaseException:
        stopping.append(True)
        _no_more_tasks(tasks, n)
        _stop_workers(workers, stop, grace=10.0)
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        raise
    try:  # on_sigterm stays until every worker has stopped: a second `kill` never cuts the wait short
        if stopped or error:
            stopping.append(True)
            _no_more_tasks(tasks, n)  # a worker between runs takes no new one
            _stop_workers(workers, stop)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    if stopped or error:
        if error:
            raise VSLMError(error)
        if terminated:
            from vslm.train.trainer import TrainingStopped

            raise TrainingStopped("SIGTERM: every running worker wrote a checkpoint and stopped; the same "
                                  "command reuses the finished runs and resumes the others", terminated[0])
        raise KeyboardInterrupt
    for w in workers:
        w.join()
    return out


def _no_more_tasks(tasks, n: int) -> None:
    """Empty the task queue, then one end-of-work mark for each of the n workers."""
    while True:
        try:
            tasks.get(timeout=0.1)
        except queue.Empty:
            break
    for _ in range(n):
        tasks.put(None)


def _stop_workers(workers, stop: int, grace: float = 120.0) -> None:
    """The stop signal to every worker (a training checkpoints and stops, any other task stops where it is; a
    worker between tasks ignores it and reads its end-of-work mark), then wait for them; a worker still there
    after `grace` seconds is killed."""
    for w in workers:
        if w.is_alive():
            try:
                os.kill(w.pid, stop)
            except ProcessLookupError:
                pass
    for w in workers:
        w.join(grace)
        if w.is_alive():
            w.kill()


# ---------------------------------------------------------------------------------------- Ray


def _run_ray(jobs: list[RunJob], launcher: Launcher, on_result) -> list[dict]:
    import ray

    from vslm.train.run_folder import device_of

    started_here = not ray.is_initialized()
    if started_here:
        try:
            ray.init(address=launcher.address, include_dashboard=False, log_to_driver=False,
                     configure_logging=False)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise ConfigError(f"Ray: cannot start or join a cluster at {launcher.address or 'this machine'}: "
                              f"{str(e).splitlines()[0]}") from None
    remote = ray.remote(_ray_task)
    try:
        refs = {}
        for index, job in enumerate(jobs):
            on_gpu = device_of(job.cfg.train.device).type == "cuda"
            options = {"num_gpus": 1, "num_cpus": 1} if on_gpu else {"num_cpus": launcher.cpus_per_run}
            refs[remote.options(max_retries=0, **options).remote(job, launcher.cpus_per_run)] = index
        out: list[dict | None] = [None] * len(jobs)
        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            index = refs[done[0]]
            try:
                out[index] = ray.get(done[0])
            except ray.exceptions.RayError as e:  # the task's process died, or the cluster lost it
                out[index] = {"failed": f"ray: {str(e).splitlines()[0]}"}
            if "error" in out[index]:
                raise VSLMError(out[index]["error"])
            if out[index].get("stopped"):
                raise KeyboardInterrupt
            on_result(jobs[index], out[index])
        return out
    except (KeyboardInterrupt, VSLMError):
        for ref in refs:
            ray.cancel(ref)  # the running tasks stop; finished runs stay reusable, started ones resume
        raise
    finally:
        if started_here:
            ray.shutdown()


def _ray_task(job: RunJob, threads: int) -> dict:
    return _run_reporting(job, threads)
