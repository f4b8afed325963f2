"""`vslm bench train`: the nanogpt preset timed side by side with shared/bench/reference_gpt.py, against
this machine's measured peak; `vslm bench attention`: the attention normalisations; `vslm bench
prepare`: data preparation (speed, memory).

Both trainers run as fresh subprocesses of the same Python, one after the other, on the same text,
for the same number of steps, `repeat` times alternately; the figures are medians. Tokens per
second count training steps only (forward, backward, optimizer, and for vslm its per-step logging),
not data preparation or evaluation, as the reference counts them. Overrides of the model's shape
(`model.depth`, `model.width`, `model.heads`, `model.context`, `train.batch_size`) go to both
sides, so any shape the reference can express is compared at the identical model and batch.

MFU is the model's training FLOP/s (FLOPs per token from model/accounting.py times tokens per
second) over the peak this machine reaches in the same run: the best FLOP/s of large square
matrix products (`measure_peak_flops`), in float32, and in bf16 where the hardware has it. A
hard-coded peak would not know the cores, the threads or the neighbours this run has.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from rich.console import Console
from rich.table import Table

from vslm.data.registry import REGISTRY
from vslm.data.sources import data_dirs
from vslm.errors import UsageError, VSLMError
from vslm.model.accounting import model_flops_utilisation
from vslm.train.run_folder import read_metrics

if TYPE_CHECKING:
    from vslm.model import GPT

BENCH_CONFIG = "nanogpt-shakespeare"
# vslm override -> reference_gpt.py option, for the shapes both can express
REFERENCE_ARGS = {"model.depth": "--layers", "model.heads": "--heads", "model.width": "--width",
                  "model.context": "--block", "train.batch_size": "--batch"}


def find_reference(given: Path | None) -> Path:
    if given:
        candidates = [given]
    else:  # beside a data folder (the shared folder's bench/)
        candidates = [d.parent / "bench" / "reference_gpt.py" for d in data_dirs()]
    for c in candidates:
        if c and c.is_file():
            return c
    raise VSLMError("reference_gpt.py not found; pass --reference PATH (it lives in shared/bench/)")


def find_data(given: Path | None) -> Path:
    if given:
        if not given.is_file():
            raise VSLMError(f"bench data file {given} not found")
        return given
    shakespeare = REGISTRY["tinyshakespeare"].local["train"][0]
    for d in data_dirs():
        if (d / shakespeare).is_file():
            return d / shakespeare
    raise VSLMError("tiny Shakespeare not found; set VSLM_DATA_DIR or pass --data FILE")


# ------------------------------------------------------------------------------------ the peak


def cpu_has_bf16() -> bool:
    """Native bf16 matrix units on this CPU (AVX512-BF16 or AMX); without them bf16 is emulated."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def best_seconds(fn, sync, seconds: float = 0.05) -> float:
    """Seconds one call of fn takes: the best of three loops of about `seconds` each, after a warm-up call
    (allocation, kernel choice) and one that sizes the loops; `sync` waits for the device's queued work."""
    fn()
    sync()
    started = time.perf_counter()
    fn()
    sync()
    reps = max(1, round(seconds / max(time.perf_counter() - started, 1e-6)))
    best = math.inf
    for _ in range(3):
        started = time.perf_counter()
        for _ in range(reps):
            fn()
        sync()
        best = min(best, (time.perf_counter() - started) / reps)
    return best


def measure_peak_flops(device: torch.device, dtype: torch.dtype = torch.float32,
                       sizes: tuple[int, ...] | None = None, seconds: float = 0.3) -> float:
    """The best FLOP/s of square matrix products (2 n^3 FLOPs each) over a few sizes, each timed
    three times for about `seconds`: what the hardware delivers to a large GEMM here and now."""
    cuda = device.type == "cuda"
    sizes = sizes or ((4096, 8192) if cuda else (512, 1024, 2048))
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    best = 0.0
    for n in sizes:
        gen = torch.Generator(device=device).manual_seed(0)
        a = torch.randn(n, n, device=device, dtype=dtype, generator=gen)
        b = torch.randn(n, n, device=device, dtype=dtype, generator=gen)
        best = max(best, 2 * n**3 / best_seconds(lambda a=a, b=b: a @ b, sync, seconds))
    return best


def measure_peaks(device: torch.device) -> dict[str, float]:
    """float32 peak, and bf16 where the hardware has native support."""
    peaks = {"peak_flops_per_s": measure_peak_flops(device)}
    bf16 = torch.cuda.is_bf16_supported() if device.type == "cuda" else cpu_has_bf16()
    if bf16:
        peaks["peak_bf16_flops_per_s"] = measure_peak_flops(device, torch.bfloat16)
    return peaks


# ---------------------------------------------------------------------------------- the runs


def run_measured(cmd: list[str]) -> tuple[str, float]:
    """Run cmd; its stdout and its peak resident memory in MiB (from the kernel, via wait4)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if proc.returncode != 0:
            last = err.read().decode(errors="replace").strip().splitlines()[-1:]
            raise VSLMError(f"benchmark run failed ({' '.join(cmd[:4])} ...): {last}")
        rss = usage.ru_maxrss / (2**20 if sys.platform == "darwin" else 2**10)
        return out.read().decode(), rss


def throughput(lines: list[dict]) -> dict[str, float]:
    """From a run's logged metrics: tokens per second over all steps; over the steps after the
    first logged window (steady: no compilation, no warm-up); and the first window's excess over
    the steady rate, which is the compile and warm-up time."""
    logged = [m for m in lines if "train_time_s" in m]
    if not logged:
        raise VSLMError("the run logged no step to time")
    last = logged[-1]
    out = {"tokens_per_s": last["tokens"] / last["train_time_s"], "train_s": last["train_time_s"]}
    first = logged[0]
    if len(logged) > 1 and last["train_time_s"] > first["train_time_s"]:
        steady = (last["tokens"] - first["tokens"]) / (last["train_time_s"] - first["train_time_s"])
        out["steady_tokens_per_s"] = steady
        out["warmup_s"] = max(0.0, first["train_time_s"] - first["tokens"] / steady)
    return out


def run_reference(reference: Path, data: Path, steps: int, shape: dict[str, int], eval_batches: int) -> dict:
    args = [a for key, flag in REFERENCE_ARGS.items() for a in (flag, str(shape[key]))]
    out, rss = run_measured([sys.executable, str(reference), "--data", str(data), "--iters", str(steps),
                             "--eval-batches", str(eval_batches), *args])
    return {**json.loads(out.strip().splitlines()[-1]), "peak_rss_mb": rss}


def run_vslm(data: Path, steps: int, overrides: list[str] = ()) -> dict:
    with tempfile.TemporaryDirectory(prefix="vslm-bench-") as tmp:
        _, rss = run_measured([sys.executable, "-m", "vslm", "train", BENCH_CONFIG, f"data.source={data.resolve()}",
                               f"train.steps={steps}", "logging.progress=false", "logging.log_every=100",
                               "logging.tensorboard=false", *overrides, "--out", f"{tmp}/run"])
        run = Path(tmp) / "run"
        lines = read_metrics(run)
        summary = json.loads((run / "summary.json").read_text())
    return {**throughput(lines), "val_loss": lines[-1]["val_loss"], "peak_rss_mb": rss,
            "params": summary["params"], "flops_per_token": summary["flops_per_token"]}


# the same model, recipe and arithmetic (threads: OMP_NUM_THREADS, which both sides read)
HOW_VSLM_RUNS = ("train.compile", "train.compile_mode")


def bench_shape(overrides: list[str], data: Path, steps: int) -> dict[str, int]:
    """The shape both trainers run: the preset's, with the overrides that name a shape (checked as a config
    before anything runs). Any other override would change vslm's side only (the recipe, the data, the
    seed...) under a table that says both trained alike: refused, but for those of HOW_VSLM_RUNS."""
    if one_sided := [w for w in overrides if w.partition("=")[0] not in (*REFERENCE_ARGS, *HOW_VSLM_RUNS)]:
        raise UsageError(f"bench train compares the identical model and recipe on both sides: {' '.join(one_sided)} "
                         f"would change vslm's only; it takes the shape ({', '.join(REFERENCE_ARGS)}, given to "
                         f"both) and how vslm runs ({', '.join(HOW_VSLM_RUNS)})")
    from vslm.config import load_config

    cfg = load_config(BENCH_CONFIG, [f"data.source={data.resolve()}", f"train.steps={steps}", *overrides])
    return {key: getattr(cfg.model if key.startswith("model.") else cfg.train, key.partition(".")[2])
            for key in REFERENCE_ARGS}


def run_bench(data: Path | None, steps: int, repeat: int, reference: Path | None,
              console: Console | None, overrides: list[str] = (), eval_batches: int = 200) -> dict:
    data, reference = find_data(data), find_reference(reference)
    shape = bench_shape(list(overrides), data, steps)
    vslm_words = [*overrides, f"train.eval_windows={eval_batches * shape['train.batch_size']}"]
    device = torch.device("cpu")  # both trainers run on the CPU unless told otherwise
    if console:
        console.print(f"measuring this machine's peak ({torch.get_num_threads()} threads) ...", highlight=False)
    peaks = measure_peaks(device)
    ours, theirs = [], []
    for i in range(repeat):
        if console:
            console.print(f"run {i + 1}/{repeat}: reference ...", highlight=False)
        theirs.append(run_reference(reference, data, steps, shape, eval_batches))
        if console:
            console.print(f"run {i + 1}/{repeat}: vslm ...", highlight=False)
        ours.append(run_vslm(data, steps, vslm_words))
        if theirs[-1].get("params") not in (None, ours[-1]["params"]):  # the one check of "the identical model"
            raise VSLMError(f"bench train: the reference's model has {theirs[-1]['params']:,} parameters, vslm's "
                            f"{ours[-1]['params']:,}: not the same model; nothing to compare")
    again = measure_peaks(device)  # a peak is a maximum: the best of before and after the runs
    peaks = {k: max(v, again[k]) for k, v in peaks.items()}
    med = statistics.median
    ratios = [o["tokens_per_s"] / t["tokens_per_s"] for o, t in zip(ours, theirs, strict=True)]
    vslm_tps, ref_tps = med(o["tokens_per_s"] for o in ours), med(t["tokens_per_s"] for t in theirs)
    flops = ours[0]["flops_per_token"]  # the identical model on both sides
    ours_mfu = model_flops_utilisation(flops, vslm_tps, peaks["peak_flops_per_s"])
    result = {
        "steps": steps,
        "repeat": repeat,
        "shape": shape,
        "overrides": list(overrides),
        "threads": torch.get_num_threads(),
        "params": ours[0]["params"],
        "flops_per_token": flops,
        "vslm_tokens_per_s": round(vslm_tps, 1),
        "reference_tokens_per_s": round(ref_tps, 1),
        "ratio": round(med(ratios), 3),
        "vslm_val_loss": round(med(o["val_loss"] for o in ours), 4),
        "reference_val_loss": round(med(t["val_loss"] for t in theirs), 4),
        **{k: round(v) for k, v in peaks.items()},
        "model_flops_per_s": round(ours_mfu["model_flops_per_s"]),
        "mfu": round(ours_mfu["mfu"], 4),
        "reference_mfu": round(model_flops_utilisation(flops, ref_tps, peaks["peak_flops_per_s"])["mfu"], 4),
        "peak_rss_mb": round(med(o["peak_rss_mb"] for o in ours), 1),
        "reference_peak_rss_mb": round(med(t["peak_rss_mb"] for t in theirs), 1),
    }
    if "steady_tokens_per_s" in ours[0]:
        result["vslm_steady_tokens_per_s"] = round(med(o["steady_tokens_per_s"] for o in ours), 1)
        result["vslm_warmup_s"] = round(med(o["warmup_s"] for o in ours), 2)
    if console:
        _print_bench(result, ratios, console)
    return result


def _print_bench(result: dict, ratios: list[float], console: Console) -> None:
    shape = result["shape"]
    table = Table(title=f"{BENCH_CONFIG} ({result['params']:,} parameters; depth {shape['model.depth']}, "
                        f"width {shape['model.width']}, context {shape['model.context']}, batch "
                        f"{shape['train.batch_size']}) vs reference_gpt.py, {result['steps']} steps, "
                        f"median of {result['repeat']}")
    for col in ("", "tokens/s", "model GFLOP/s", "MFU", "peak RSS MiB", "val loss"):
        table.add_column(col, justify="right")
    peak = result["peak_flops_per_s"]
    for name, rss in (("reference", "reference_peak_rss_mb"), ("vslm", "peak_rss_mb")):
        flops_per_s = result[f"{name}_tokens_per_s"] * result["flops_per_token"]
        table.add_row(name, f"{result[f'{name}_tokens_per_s']:,.0f}", f"{flops_per_s / 1e9:.1f}",
                      f"{flops_per_s / peak:.1%}", f"{result[rss]:,.0f}", f"{result[f'{name}_val_loss']:.4f}")
    console.print(table)
    bf16 = result.get("peak_bf16_flops_per_s")
    console.print(f"measured peak: float32 {peak / 1e9:.1f} GFLOP/s"
                  + (f", bf16 {bf16 / 1e9:.1f} GFLOP/s" if bf16 else ", bf16: no native support here")
                  + f" ({result['threads']} threads); MFU = model FLOP/s / float32 peak", highlight=False)
    console.print(f"ratio (vslm / reference tokens/s): {result['ratio']:.3f}  per run: "
                  f"{', '.join(f'{r:.3f}' for r in ratios)}", highlight=False)
    if "vslm_warmup_s" in result:
        console.print(f"vslm after its first logged window: {result['vslm_steady_tokens_per_s']:,.0f} tokens/s; "
                      f"warm-up and compilation {result['vslm_warmup_s']:.1f} s", highlight=False)


ATTENTION_KINDS = ("softmax", "power", "softmax1", "ssmax", "sigmoid")


def run_attention_bench(steps: int, repeat: int, console: Console | None) -> dict:
    """Training-step time of each attention normalisation on the arch-base model (context 128),
    interleaved `repeat` times in one process; medians and ratios to softmax's fast SDPA path."""
    import torch.nn.functional as F

    from vslm.config import load_config
    from vslm.model import GPT

    cfg = load_config("arch-base", ["model.vocab_size=64"])
    B, T, V = cfg.train.batch_size, cfg.model.context, 64
    models = {}
    for kind in ATTENTION_KINDS:
        torch.manual_seed(0)
        model = GPT(cfg.model.model_copy(update={"attention": kind, "attention_gamma": 0.5}))
        models[kind] = (model, torch.optim.AdamW(model.parameters(), lr=1e-3))
    idx = torch.randint(V, (B, T + 1), generator=torch.Generator().manual_seed(0))
    times: dict[str, list[list[float]]] = {kind: [] for kind in ATTENTION_KINDS}  # [repeat][step]
    for r in range(repeat):
        for kind in list(models) if r % 2 == 0 else list(models)[::-1]:  # no kind always first
            model, opt = models[kind]
            times[kind].append([])
            for i in range(steps + 2):  # two warm-up steps
                started = time.perf_counter()
                loss = F.cross_entropy(model(idx[:, :-1]).view(-1, V), idx[:, 1:].reshape(-1))
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
                if i >= 2:
                    times[kind][-1].append(time.perf_counter() - started)
    med = statistics.median
    ms = {kind: 1000 * med([t for rep in reps for t in rep]) for kind, reps in times.items()}
    # each repeat's ratio (its kinds timed side by side), then their median: a drifting machine moves a
    # repeat's kinds together, not the ratio
    ratio = {kind: med(med(rep) / med(base) for rep, base in zip(reps, times["softmax"], strict=True))
             for kind, reps in times.items()}
    result = {"steps": steps, "repeat": repeat, "batch": B, "context": T,
              "ms_per_step": {k: round(v, 2) for k, v in ms.items()},
              "ratio_to_softmax": {k: round(v, 3) for k, v in ratio.items()}}
    if console:
        table = Table(title=f"attention normalisations: training step, arch-base model, batch {B} x {T}")
        for col in ("attention", "ms/step (median)", "x softmax"):
            table.add_column(col, justify="right")
        for kind in ATTENTION_KINDS:
            table.add_row(kind, f"{ms[kind]:.1f}", f"{ms[kind] / ms['softmax']:.2f}")
        console.print(table)
    return result


def run_prepare_bench(n_bytes: int, tokenizer: str, console: Console | None) -> dict:
    """`vslm data prepare` of n_bytes of generated stories into a fresh cache, in a subprocess: its
    tokenization speed (text bytes over the wall time spent inside the tokenizer's encode calls, from
    the shard builder's meta.json, and over their CPU time: on a busy machine the wall time measures
    the neighbours too), its overall speed, and its peak resident memory (the child's ru_maxrss,
    which covers the whole process: Python, the tokenizer's threads, the text in flight)."""
    import resource

    with tempfile.TemporaryDirectory(prefix="vslm-bench-data-") as cache:
        started = time.perf_counter()
        r = subprocess.run([sys.executable, "-m", "vslm", "data", "prepare", "stories", "--max-bytes", str(n_bytes),
                            "--tokenizer", tokenizer, "--quiet"], capture_output=True, text=True,
                           env={**os.environ, "VSLM_CACHE_DIR": cache})
        wall = time.perf_counter() - started
        if r.returncode != 0:
            raise VSLMError(f"benchmark preparation failed: {(r.stderr.strip().splitlines() or ['?'])[-1]}")
        meta = json.loads((Path(r.stdout.strip().splitlines()[-1]) / "meta.json").read_text())
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # Linux: kilobytes
    mb = meta["text_bytes"] / 1e6
    result = {"bytes": meta["text_bytes"], "tokenizer": tokenizer, "vocab_size": meta["vocab_size"],
              "tokens": meta["train_tokens"] + meta["val_tokens"], "cpus": os.cpu_count(),
              "tokenize_mb_per_s": round(mb / meta["encode_s"], 2),
              "tokenize_mb_per_cpu_s": round(mb / meta["encode_cpu_s"], 2), "tokenizer_training_s": meta["tokenizer_s"],
              "prepare_s": meta["prepare_s"], "overall_mb_per_s": round(mb / meta["prepare_s"], 2),
              "wall_s": round(wall, 1), "peak_rss_mb": round(peak_mb, 1)}
    if console:
        table = Table(title=f"vslm data prepare stories: {mb:,.0f} MB generated, {tokenizer} tokenizer, "
                            f"{os.cpu_count()} CPUs")
        for col in ("tokenization MB/s", "MB per CPU s", "tokenizer training s", "prepare s", "overall MB/s",
                    "peak RSS MB"):
            table.add_column(col, justify="right")
        table.add_row(f"{result['tokenize_mb_per_s']:.1f}", f"{result['tokenize_mb_per_cpu_s']:.1f}",
                      f"{meta['tokenizer_s']:.1f}", f"{meta['prepare_s']:.1f}", f"{result['overall_mb_per_s']:.1f}",
                      f"{peak_mb:,.0f}")
        console.print(table)
    return result


def interleaved(runs: dict, repeat: int) -> tuple[dict, dict]:
    """Each of `runs` (name -> a call of no arguments) once per repeat, in turn, the order reversed every other
    repeat so that no run always goes first on a machine whose speed drifts: each name's wall times in
    seconds, and its last output. The sampling benchmarks' one timing loop (and the scripts' beside it)."""
    times: dict = {name: [] for name in runs}
    outputs: dict = {}
    for r in range(repeat):
        for name in list(runs) if r % 2 == 0 else list(runs)[::-1]:
            started = time.perf_counter()
            outputs[name] = runs[name]()
            times[name].append(time.perf_counter() - started)
    return times, outputs


def sampling_model(overrides: list[str], context: int | None = None) -> GPT:
    """The model `vslm bench sample` times (and scripts/ab_sampling.py, scripts/bench_compiled_decode.py): the
    demo config with a vocabulary of 64, random weights from seed 0 moved away from the init (at the init every
    greedy token is the same one, and no cache or mask bug could change the tokens the benchmarks compare), in
    eval mode; `context` replaces the config's. Overrides: model.* but the vocabulary (the only settings it
    reads)."""
    from vslm.config import load_config
    from vslm.model import GPT

    if ignored := [w for w in overrides if not w.startswith("model.") or w.startswith("model.vocab_size")]:
        raise UsageError(f"the sampling benchmark's model takes model.* overrides but model.vocab_size (64), got "
                         f"{' '.join(ignored)}")
    cfg = load_config("demo", [*overrides, "model.vocab_size=64"]).model
    torch.manual_seed(0)
    model = GPT(cfg if context is None else cfg.model_copy(update={"context": context})).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return model


def run_sample_bench(overrides: list[str], tokens: int, repeat: int, console: Console | None,
                     profile: int = 0) -> dict:
    """Sampling speed of the demo model (random weights, vocabulary 64, batch 1, a one-token prompt):
    `GPT.generate` with and without the key/value cache, `tokens` new tokens, interleaved `repeat` times in
    one process (`interleaved`: the order reversed every other repeat); medians of the tokens/s, and the
    median of each repeat's ratio (its two runs adjacent).
    Rows: the demo as it is, cropping past the context (nanoGPT's way: the cache
    must rebuild from the cropped window at every such step, as costly as the uncached step); the same
    model sliding past it (`slide=True`, where the model allows it: each token's keys computed once); and
    the model at a context that holds every token, where only the cache's own gain shows. `profile` N > 0
    adds where a cached step's time goes: the N ops of most self CPU time under `torch.profiler` over one
    more cached generation of the slide row (the crop row where the model cannot slide)."""
    if tokens < 1 or repeat < 1 or profile < 0:
        raise UsageError(f"--tokens and --repeat must be at least 1 and --profile at least 0, "
                         f"got {tokens}, {repeat} and {profile}")
    demo = sampling_model(overrides)
    context = demo.cfg.context
    cases = [("crop" if tokens + 1 > context else "within", context, demo)]  # (past the context, context, model)
    if tokens + 1 > context:
        if demo.slide_refusal() is None:
            cases.append(("slide", context, demo))
        cases.append(("within", tokens + 1, sampling_model(overrides, context=tokens + 1)))
    prompt = torch.zeros(1, 1, dtype=torch.long)
    times, outputs = interleaved({  # (case, cache) -> one generation
        (i, cache): lambda model=model, cache=cache, slide=beyond == "slide": model.generate(
            prompt, tokens, temperature=0, cache=cache, slide=slide)
        for i, (beyond, _, model) in enumerate(cases) for cache in (True, False)}, repeat)
    rows = []
    for i, (beyond, context, _) in enumerate(cases):
        cached, plain = (tokens / statistics.median(times[i, c]) for c in (True, False))
        # the ratio of each repeat's two runs, side by side in time, then their median: a machine whose speed
        # drifts during the benchmark moves both runs of a pair, not the ratio
        pairs = zip(times[i, True], times[i, False], strict=True)
        paired = statistics.median(t_plain / t_cached for t_cached, t_plain in pairs)
        rows.append({"context": context, "past_context": beyond, "tokens_per_s_cache": round(cached, 1),
                     "tokens_per_s_no_cache": round(plain, 1), "ratio": round(paired, 2),
                     "same_tokens": torch.equal(outputs[i, True], outputs[i, False]),
                     "distinct_tokens": len(outputs[i, True].unique())})  # how much "the same" says
    result = {"config": "demo", "overrides": overrides, "new_tokens": tokens, "batch": 1, "repeat": repeat,
              "threads": torch.get_num_threads(), "rows": rows}
    if profile:
        beyond, _, model = cases[1] if len(cases) > 1 and cases[1][0] == "slide" else cases[0]
        result["profile"] = {"past_context": beyond, **_cached_step_profile(model, prompt, tokens, beyond, profile)}
    if console:
        table = Table(title=f"sampling, demo model (random weights), batch 1, {tokens} new tokens, greedy, "
                            f"{torch.get_num_threads()} threads; tokens/s: median of {repeat} "
                            f"repeat{'s' * (repeat != 1)}; x: median of each repeat's cached/uncached speed ratio")
        for col in ("context", "past the context", "tokens/s cache", "tokens/s no cache", "x", "same tokens"):
            table.add_column(col, justify="right")
        for r in rows:
            table.add_row(str(r["context"]), r["past_context"], f"{r['tokens_per_s_cache']:.0f}",
                          f"{r['tokens_per_s_no_cache']:.0f}", f"{r['ratio']:.2f}", "yes" if r["same_tokens"] else "NO")
        console.print(table)
        if profile:
            prof = result["profile"]
            table = Table(title=f"where a cached step's time goes ({prof['past_context']}, torch.profiler): "
                                f"{prof['us_per_token']:.0f} us a token, {prof['ops_share']:.0%} of it inside ops")
            for col in ("op (self time)", "share of the step", "calls per token", "us per call"):
                table.add_column(col, justify="right")
            for op in prof["ops"]:
                table.add_row(op["op"], f"{op['share']:.1%}", f"{op['calls_per_token']:g}", f"{op['us_per_call']:.1f}")
            console.print(table)
    return result


def _cached_step_profile(model: GPT, prompt: torch.Tensor, tokens: int, beyond: str, top: int) -> dict:
    """One cached greedy generation of `tokens` tokens under `torch.profiler`: its wall time per token, the
    share of it spent inside ops (the rest is Python between them), and the `top` ops of most self CPU time,
    each with its share of the wall time, calls per new token and microseconds per call (the profiler's own
    overhead included in all of them)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        started = time.perf_counter()
        model.generate(prompt, tokens, temperature=0, cache=True, slide=beyond == "slide")
        wall_us = (time.perf_counter() - started) * 1e6
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    events.sort(key=lambda e: e.self_cpu_time_total, reverse=True)
    ops = [{"op": e.key, "share": round(e.self_cpu_time_total / wall_us, 4),
            "calls_per_token": round(e.count / tokens, 2), "us_per_call": round(e.self_cpu_time_total / e.count, 2)}
           for e in events[:top]]
    return {"us_per_token": round(wall_us / tokens, 1),
            "ops_share": round(sum(e.self_cpu_time_total for e in events) / wall_us, 4), "ops": ops}
