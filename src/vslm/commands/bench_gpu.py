"""`vslm bench gpu`: what one GPU does with vslm, measured in one command (scripts/gpu_check.sh).

1. the card's peak: the best FLOP/s of large bf16 (and float32/TF32) matrix products, measured here;
2. a ~10M and a ~50M parameter model, each trained for `seconds` after its first (compiling) step
   with what the trainer picks on CUDA (bf16 autocast, SDPA flash kernels, torch.compile, pinned
   non-blocking copies): steady tokens/s, compile and warm-up time, MFU against the measured bf16
   peak and against the card's nominal dense bf16 peak, and peak allocated memory; the 50M model also
   at twice the batch and with CUDA graphs (`train.compile_mode=reduce-overhead`). Beside each, its kernel
   ceiling: its matrix products and attention timed alone at its shapes (`kernel_ceiling`), the MFU a step
   of nothing else would reach, and the share of that the model reaches;
3. the GPU Shakespeare recipe (built-in `gpu-shakespeare`: nanoGPT's shakespeare_char, 6 layers,
   width 384, context 256, batch 64, dropout 0.2) trained until the validation loss reaches 1.47,
   with the time it took, then the same model with two shorter schedules (SHAKESPEARE_RECIPES). It
   needs tiny Shakespeare in the data folder ($VSLM_DATA_DIR); without it this part is skipped with
   a message;
4. with `profile`, first, a model's training step under torch.profiler: device time by kind of kernel.

The models train on the embedded story generator (no files, no network). Each part that fails is
recorded with its error and the next one runs: a lent GPU's minutes are not to be lost to one
failure; a part that fails under torch.compile is tried once more without it.
"""

from __future__ import annotations

import json
import math
import statistics
import tempfile
import time
import traceback
from collections import Counter
from pathlib import Path

import torch
import torch.nn.functional as F
from rich.console import Console

from vslm.commands.bench import best_seconds, measure_peak_flops, throughput
from vslm.config import load_config
from vslm.errors import UsageError, VSLMError
from vslm.files import write_text
from vslm.model import GPT
from vslm.model.accounting import StepKernels, kernel_flops, model_flops_utilisation, step_kernels
from vslm.plain import dumps
from vslm.train.callbacks import Callback, MetricsLog, StopAfter, StopAtLoss
from vslm.train.run_folder import read_metrics
from vslm.train.trainer import Trainer, TrainingStopped

# dense (no sparsity) bf16 tensor-core peaks from the vendors' data sheets, by device name
NOMINAL_BF16_PEAK = {"H200": 989e12, "H100": 989e12, "A100": 312e12}

# the models: overrides of the `tiny` config's shape; parameters with the stories' ~70-symbol vocabulary
_50M = ["model.depth=10", "model.width=640", "model.heads=10", "model.context=512"]
GPU_MODELS: dict[str, list[str]] = {
    "10M": ["model.depth=6", "model.width=384", "model.heads=6", "model.context=512", "train.batch_size=64"],
    "50M": [*_50M, "train.batch_size=64"],
    # the ways to a higher MFU at 50M that cost no more than a default compile: a larger batch, and CUDA graphs
    "50M-batch128": [*_50M, "train.batch_size=128"],
    "50M-cudagraphs": [*_50M, "train.batch_size=64", "train.compile_mode=reduce-overhead"],
    # not by default: four times the batch, and inductor's search over matrix-product kernels (minutes)
    "50M-batch256": [*_50M, "train.batch_size=256"],
    "50M-max-autotune": [*_50M, "train.batch_size=128", "train.compile_mode=max-autotune-no-cudagraphs"],
}
DEFAULT_MODELS = ("10M", "50M", "50M-batch128", "50M-cudagraphs")
TIMING = ["data.source=stories", "data.max_bytes=20000000", "model.dropout=0.0", "train.steps=1000000",
          "train.lr=6e-4", "train.min_lr=6e-5", "train.warmup=100", "train.eval_every=0",
          "train.checkpoint_every=0", "train.snapshots=false", "logging.progress=false",
          "logging.log_every=25", "logging.tensorboard=false"]
SHAKESPEARE_TARGET = 1.47
# the recipes raced to SHAKESPEARE_TARGET: nanoGPT's (the built-in config), then two that end their schedule
# sooner (its cosine runs to 5000 steps while the target comes near step 1750): AdamW at twice the rate with a
# cosine over 1500 steps, and Muon (its updates scaled to AdamW's RMS, so the same lr) with warmup-stable-decay
# over 1200 steps. Evaluation every 125 steps places the crossing finer. The first compiles cold, the others
# find the same graphs in inductor's cache (the optimizer is not compiled).
SHAKESPEARE_RECIPES: dict[str, list[str]] = {
    "nanogpt": [],
    "adamw-1500": ["train.steps=1500", "train.lr=2e-3", "train.min_lr=2e-4", "train.warmup=50",
                   "train.eval_every=125"],
    "muon-wsd-1200": ["train.steps=1200", "train.optimizer=muon", "train.lr=2e-3", "train.min_lr=0",
                      "train.warmup=50", "train.schedule=wsd", "train.decay_fraction=0.4", "train.eval_every=125"],
    # after the first GPU race (docs/BENCHMARKS.md): AdamW at 2e-3 reached 1.477 by step 1500 at 8 ms a step, Muon
    # 1.457 by step 1125 at 15 ms a step; a longer AdamW cosine and a shorter Muon decay
    "adamw-2000": ["train.steps=2000", "train.lr=2e-3", "train.min_lr=2e-4", "train.warmup=50",
                   "train.eval_every=125"],
    "muon-wsd-1000": ["train.steps=1000", "train.optimizer=muon", "train.lr=2e-3", "train.min_lr=0",
                      "train.warmup=50", "train.schedule=wsd", "train.decay_fraction=0.4", "train.eval_every=125"],
}
DEFAULT_RECIPES = ("nanogpt", "adamw-1500", "muon-wsd-1200")


def pick(names: str | None, table: dict[str, list[str]], default: tuple[str, ...], what: str) -> dict[str, list[str]]:
    """The entries of `table` named in a comma-separated list ('none': no entry; None: the defaults)."""
    if names is None:
        return {name: table[name] for name in default}
    if names.strip() == "none":
        return {}
    chosen = [n.strip() for n in names.split(",") if n.strip()]
    if unknown := [n for n in chosen if n not in table]:
        raise UsageError(f"unknown {what} {', '.join(unknown)} (known: {', '.join(table)}, or none)")
    return {name: table[name] for name in chosen}


def nominal_peak(device: torch.device) -> tuple[str, float | None]:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return name, next((peak for key, peak in NOMINAL_BF16_PEAK.items() if key in name), None)


def _train(cfg_name: str, overrides: list[str], callbacks: list, folder: Path) -> tuple[Trainer, list[dict]]:
    """One run with the default device choices; once more without torch.compile if compiling fails."""
    for attempt in ("as chosen", "without compile"):
        cfg = load_config(cfg_name, overrides + (["train.compile=false"] if attempt != "as chosen" else []))
        run = folder / attempt.replace(" ", "-")
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        torch._dynamo.reset()  # each part compiles afresh, never against the recompile limit
        trainer = Trainer(cfg, run, callbacks=[MetricsLog(), *callbacks])
        try:
            trainer.fit()
        except TrainingStopped:
            raise  # SIGTERM or Ctrl-C (gpu_check.sh's timeout): the check ends here, it is no compile failure
        except Exception:
            # a stop signal that came while compiling (the part's timeout: inductor's workers are signalled too)
            # ends the check; only a compile that failed by itself is tried again without
            if attempt != "as chosen" or not trainer.plan.compile or trainer.stop_signal is not None:
                raise
            traceback.print_exc()
            continue
        lines = read_metrics(run)
        return trainer, lines
    raise AssertionError("unreachable")


def time_model(name: str, overrides: list[str], seconds: float, peaks: dict, folder: Path,
               ceiling: bool = True) -> dict:
    stop = StopAfter(seconds, min_steps=3, after_first_step=True)
    trainer, lines = _train("tiny", TIMING + overrides, [stop], folder / name)
    speed = throughput(lines)
    tps = speed.get("steady_tokens_per_s", speed["tokens_per_s"])
    out = {"params": trainer.params, "flops_per_token": trainer.flops_per_token, "steps": trainer.step,
           "tokens_per_s": round(tps, 1), "warmup_and_compile_s": round(speed.get("warmup_s", 0.0), 2),
           "compiled": trainer.plan.compile, "amp_dtype": str(trainer.amp_dtype),
           "peak_gpu_mb": lines[-1].get("peak_gpu_mb"), "peak_rss_mb": lines[-1]["peak_rss_mb"],
           "final_loss": lines[-1]["loss"], "overrides": overrides}
    for key, peak in peaks.items():
        if peak:
            out[f"mfu_vs_{key}"] = round(model_flops_utilisation(trainer.flops_per_token, tps, peak)["mfu"], 4)
    out["model_flops_per_s"] = round(trainer.flops_per_token * tps)
    if ceiling:  # a failure here keeps the model's figures
        cfg = trainer.cfg
        try:
            out["ceiling"] = kernel_ceiling(trainer.model, cfg.train.batch_size, cfg.model.context, trainer.device,
                                            trainer.amp_dtype or torch.float32, peaks)
            out["model_share_of_ceiling"] = round(tps / out["ceiling"]["tokens_per_s"], 4)
        except Exception as e:
            traceback.print_exc()
            out["ceiling"] = {"error": f"{type(e).__name__}: {e}"}
    return out


def kernel_ceiling(model: GPT, batch: int, context: int, device: torch.device, dtype: torch.dtype,
                   peaks: dict[str, float | None]) -> dict:
    """A training step's matrix products and attention calls (`step_kernels`) at the step's shapes, each timed
    alone in `dtype` (a matmul as its forward and its two backward products, attention as SDPA's causal forward
    and backward) and summed: the step time of a model that did nothing else: no norms, activations, residual
    adds, dtype casts, loss, optimizer or launch gaps. Its MFU is the most these kernels allow at this batch;
    `model_share_of_ceiling` (time_model) is how much of it the real step reaches. A window is timed as full
    causal attention; the embedding lookup is not timed (it is no FLOP)."""
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    kernels, M = step_kernels(model), batch * context
    gen = torch.Generator(device=device).manual_seed(0)
    rand = lambda *shape: torch.randn(*shape, device=device, dtype=dtype, generator=gen)  # noqa: E731
    matmuls = []
    for (fan_in, fan_out), uses in sorted(Counter(kernels.matmuls).items(), key=lambda kv: -kv[0][0] * kv[0][1]):
        x, w, dy = rand(M, fan_in), rand(fan_out, fan_in), rand(M, fan_out)
        s = best_seconds(lambda x=x, w=w, dy=dy: (x @ w.T, dy @ w, dy.T @ x), sync)
        matmuls.append({"fan_in": fan_in, "fan_out": fan_out, "uses": uses, "ms": round(s * 1e3, 4),
                        "flops_per_s": round(6 * M * fan_in * fan_out / s)})
        del x, w, dy
    attention = []
    for (heads, kv_heads, head_dim, keys), uses in Counter(kernels.attention).items():
        q = rand(batch, heads, context, head_dim).requires_grad_()
        k, v = (rand(batch, kv_heads, context, head_dim).requires_grad_() for _ in range(2))
        dy = rand(batch, heads, context, head_dim)

        def step(q=q, k=k, v=v, dy=dy, gqa=kv_heads != heads):
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
            torch.autograd.grad(y, (q, k, v), dy)

        s = best_seconds(step, sync)
        attention.append({"heads": heads, "kv_heads": kv_heads, "head_dim": head_dim, "keys": keys, "uses": uses,
                          "ms": round(s * 1e3, 4), "flops_per_s": round(12 * heads * head_dim * keys * M / s)})
        del q, k, v, dy
    matmul_s = sum(m["ms"] * m["uses"] for m in matmuls) / 1e3
    attention_s = sum(a["ms"] * a["uses"] for a in attention) / 1e3
    flops = kernel_flops(kernels) * M
    out = {"dtype": str(dtype), "tokens_per_step": M, "matmul_ms_per_step": round(matmul_s * 1e3, 3),
           "attention_ms_per_step": round(attention_s * 1e3, 3),
           "matmul_flops_per_s": round(kernel_flops(StepKernels(kernels.matmuls, [])) * M / matmul_s),
           "tokens_per_s": round(M / (matmul_s + attention_s), 1), "matmuls": matmuls, "attention": attention}
    for key, peak in peaks.items():
        if peak:
            out[f"mfu_vs_{key}"] = round(flops / (matmul_s + attention_s) / peak, 4)
    return out


# what a training step's time is spent on, by kernel (CUDA) or op (CPU) name, first match wins
KERNEL_KINDS = (
    ("attention", ("flash", "fmha", "attention", "sdpa")),
    ("matrix products", ("gemm", "nvjet", "cutlass", "xmma", "sm90", "aten::mm", "aten::addmm", "aten::bmm",
                         "aten::matmul", "aten::linear")),
    ("optimizer", ("adam", "multi_tensor", "foreach")),
    ("fused by inductor", ("triton",)),
)


class ProfileSteps(Callback):
    """torch.profiler over `steps` training steps after `warmup` (compilation and the first steps out of
    it), then stops the run. `summary` says how many ms a step took on the wall and how many of them the
    device was busy, by kind of kernel (KERNEL_KINDS) and for the `top` kernels: where an MFU below the
    matrix products' own rate goes (launch gaps, elementwise, attention, the optimizer)."""

    def __init__(self, warmup: int = 10, steps: int = 10, top: int = 15):
        self.warmup, self.steps, self.top = warmup, steps, top
        self.prof, self.summary = None, None

    def _sync(self, trainer: Trainer) -> None:
        if trainer.device.type == "cuda":
            torch.cuda.synchronize(trainer.device)

    def on_step_end(self, trainer: Trainer, metrics: dict) -> None:
        if trainer.step == self.warmup:
            from torch.profiler import ProfilerActivity, profile

            self._sync(trainer)
            cuda = trainer.device.type == "cuda"
            self.prof = profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else []))
            self.prof.__enter__()
            self.started = time.perf_counter()
        elif self.prof is not None and trainer.step == self.warmup + self.steps:
            self._sync(trainer)
            wall = time.perf_counter() - self.started
            self.prof.__exit__(None, None, None)
            self.summary = summarise_profile(self.prof, self.steps, wall, trainer.device.type == "cuda", self.top)
            self.prof = None
            trainer.request_stop()

    def on_train_end(self, trainer: Trainer, metrics: dict) -> None:
        if self.prof is not None:  # the run ended inside the window: no summary
            self.prof.__exit__(None, None, None)
            self.prof = None


def summarise_profile(prof, steps: int, wall_s: float, cuda: bool, top: int) -> dict:
    """ms a step by kind and by kernel: CUDA kernels' durations on a GPU, ops' self CPU time on a CPU."""
    from torch.autograd import DeviceType

    times: dict[str, list[float]] = {}  # name -> [ms, calls]
    if cuda:
        for event in prof.events():
            if event.device_type == DeviceType.CUDA:
                entry = times.setdefault(event.name, [0.0, 0])
                entry[0] += event.device_time_total / 1e3  # the kernel's duration (us) in ms
                entry[1] += 1
    else:
        for avg in prof.key_averages():
            if avg.self_cpu_time_total > 0:
                times[avg.key] = [avg.self_cpu_time_total / 1e3, avg.count]
    busy = sum(ms for ms, _ in times.values())
    kinds = {kind: 0.0 for kind, _ in KERNEL_KINDS} | {"other": 0.0}
    for name, (ms, _) in times.items():
        low = name.lower()
        kind = next((k for k, keys in KERNEL_KINDS if any(key in low for key in keys)), "other")
        kinds[kind] += ms
    ranked = sorted(times.items(), key=lambda kv: -kv[1][0])[:top]
    return {"steps": steps, "events": sum(calls for _, calls in times.values()),
            "wall_ms_per_step": round(wall_s * 1e3 / steps, 3),
            "busy_ms_per_step": round(busy / steps, 3), "busy_share_of_wall": round(busy / (wall_s * 1e3), 4),
            "kinds": {k: {"ms_per_step": round(ms / steps, 3), "share_of_busy": round(ms / busy, 4) if busy else 0.0}
                      for k, ms in kinds.items()},
            "top": [[name[:120], round(ms / steps, 3), round(calls / steps, 2)] for name, (ms, calls) in ranked]}


def profile_model(name: str, overrides: list[str], folder: Path, warmup: int = 10, steps: int = 10) -> dict:
    """The `name` model's training step under torch.profiler (ProfileSteps), as the trainer runs it."""
    profiler = ProfileSteps(warmup, steps)
    _train("tiny", TIMING + overrides, [profiler], folder / f"profile-{name}")
    if profiler.summary is None:
        raise VSLMError(f"the profile of {name} did not finish (fewer than {warmup + steps} steps)")
    return profiler.summary


def shakespeare_run(max_seconds: float, folder: Path, overrides: list[str] = ()) -> dict:
    target = StopAtLoss(SHAKESPEARE_TARGET)
    try:
        words = ["logging.progress=false", "logging.tensorboard=false", *overrides]
        trainer, lines = _train("gpu-shakespeare", words, [target, StopAfter(max_seconds)], folder)
    except VSLMError as e:  # tiny Shakespeare not in the data folder
        return {"skipped": str(e)}
    evals = [(m["step"], m["val_loss"], m["train_time_s"]) for m in lines if "val_loss" in m]
    speed = throughput(lines)
    return {"target": SHAKESPEARE_TARGET, "reached": target.reached, "steps": trainer.step,
            "best_val_loss": min((v for _, v, _ in evals), default=None), "evals": evals,
            "tokens_per_s": round(speed.get("steady_tokens_per_s", speed["tokens_per_s"]), 1),
            "params": trainer.params, "peak_gpu_mb": lines[-1].get("peak_gpu_mb"), "overrides": list(overrides)}


def run_gpu_check(seconds: float, shakespeare_seconds: float, json_out: Path | None, console: Console,
                  models: dict[str, list[str]] | None = None, extra: list[str] = (),
                  device: torch.device | None = None,
                  recipes: dict[str, list[str]] | None = None, repeat: int = 1,
                  profile: dict[str, list[str]] | None = None) -> dict:
    """The three parts above; `extra` overrides go to every run (the CPU smoke test uses them). The
    first Shakespeare recipe's result is `shakespeare`, each other one's `shakespeare_<label>` (with
    `repeat` > 1, `_<i>` after it for each repeat, and `shakespeare_medians` over them); each is
    stopped after `shakespeare_seconds` if it has not reached the target by then. Each model of `profile`
    is profiled first (`profile_<label>`: ProfileSteps): a few seconds, and what a cut-off call most needs."""
    models = pick(None, GPU_MODELS, DEFAULT_MODELS, "model") if models is None else models
    recipes = pick(None, SHAKESPEARE_RECIPES, DEFAULT_RECIPES, "recipe") if recipes is None else recipes
    device = device or torch.device("cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise VSLMError("vslm bench gpu needs a CUDA device, and torch.cuda.is_available() is False here")
    name, nominal = nominal_peak(device)
    result: dict = {"device": name, "torch": torch.__version__, "seconds_per_model": seconds}
    console.print(f"[bold]{name}[/], torch {torch.__version__}: measuring the peak ...")
    bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")
    # a second a timing: long enough for the clocks to rise from idle (0.3 s read 697 TFLOP/s on 2026-11-28)
    result["peak_bf16_flops_per_s"] = round(measure_peak_flops(device, torch.bfloat16, seconds=1.0)) if bf16 else None
    result["peak_fp32_flops_per_s"] = round(measure_peak_flops(device, torch.float32))
    result["nominal_bf16_flops_per_s"] = nominal
    peaks = {"measured_bf16": result["peak_bf16_flops_per_s"], "nominal_bf16": nominal}
    if not bf16:  # the CPU smoke run
        peaks["measured_fp32"] = result["peak_fp32_flops_per_s"]
    console.print(f"  bf16 {(result['peak_bf16_flops_per_s'] or 0) / 1e12:.1f} TFLOP/s, float32 (TF32) "
                  f"{result['peak_fp32_flops_per_s'] / 1e12:.1f} TFLOP/s measured; nominal bf16 "
                  f"{(nominal or 0) / 1e12:.0f} TFLOP/s", highlight=False)
    with tempfile.TemporaryDirectory(prefix="vslm-gpu-check-") as tmp:
        for label, overrides in (profile or {}).items():
            console.print(f"model {label}: where a training step's time goes (torch.profiler) ...", highlight=False)
            result[f"profile_{label}"] = _guarded(lambda o=overrides, lb=label: profile_model(
                lb, [*o, *extra], Path(tmp)), console)
            _save(result, json_out)
        for label, overrides in models.items():
            console.print(f"model {label}: ~{seconds:.0f} s of training ...", highlight=False)
            result[f"model_{label}"] = _guarded(lambda o=overrides, lb=label: time_model(
                lb, [*o, *extra], seconds, peaks, Path(tmp)), console)
            _save(result, json_out)
        skipped = False
        for i, (label, overrides) in enumerate(recipes.items()):
            for r in range(repeat):
                key = ("shakespeare" if i == 0 else f"shakespeare_{label}") + (f"_{r + 1}" if repeat > 1 else "")
                console.print(f"GPU Shakespeare, recipe {label}{f' ({r + 1} of {repeat})' if repeat > 1 else ''}, "
                              f"to val loss {SHAKESPEARE_TARGET} (at most {shakespeare_seconds:.0f} s) ...",
                              highlight=False)
                result[key] = _guarded(lambda o=overrides, lb=label, k=key: shakespeare_run(
                    shakespeare_seconds, Path(tmp) / k, [*o, *extra]), console)
                result[key]["recipe"] = label
                _save(result, json_out)
                skipped = "skipped" in result[key]
                if skipped:
                    break  # no tiny Shakespeare: the other recipes would say the same
            if skipped:
                break
        if repeat > 1 and not skipped:
            result["shakespeare_medians"] = shakespeare_medians(result)
    _save(result, json_out)
    _print_summary(result, console)
    return result


def shakespeare_medians(result: dict) -> dict:
    """Per recipe, over its repeats: how many reached the target, and the median wall and training
    seconds to it (a run that did not reach it counts as slower than every one that did)."""
    runs: dict[str, list[dict]] = {}
    for key, part in result.items():
        if key.startswith("shakespeare") and "recipe" in part:
            runs.setdefault(part["recipe"], []).append(part)
    out = {}
    for label, parts in runs.items():
        reached = [p["reached"] for p in parts if p.get("reached")]
        entry = {"runs": len(parts), "reached": len(reached)}
        for field in ("wall_s", "train_time_s"):
            times = sorted([r[field] for r in reached] + [math.inf] * (len(parts) - len(reached)))
            median = statistics.median(times)
            entry[f"median_{field}"] = round(median, 2) if math.isfinite(median) else None
            entry[field] = [round(t, 2) for t in times if math.isfinite(t)]
        out[label] = entry
    return out


def _guarded(part, console: Console) -> dict:
    started = time.perf_counter()
    try:
        out = part()
    except TrainingStopped:
        raise  # stopped by a signal: what is saved so far stays, nothing more runs
    except Exception as e:  # record it and go on to the next part
        traceback.print_exc()
        out = {"error": f"{type(e).__name__}: {e}"}
    out["wall_s"] = round(time.perf_counter() - started, 1)
    console.print(f"  {json.dumps({k: v for k, v in out.items() if k not in ('evals', 'overrides', 'top')})}",
                  highlight=False, markup=False)
    return out


def _save(result: dict, path: Path | None) -> None:
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text(path, dumps(result, indent=1) + "\n")


def _print_summary(result: dict, console: Console) -> None:
    console.rule("summary")
    for key, part in result.items():
        if key.startswith("model_") and "tokens_per_s" in part:
            console.print(f"{key[6:]:>4}: {part['params'] / 1e6:.1f}M params, {part['tokens_per_s']:,.0f} tokens/s, "
                          f"MFU {part.get('mfu_vs_measured_bf16', 0):.1%} of measured bf16 peak, "
                          f"{part.get('mfu_vs_nominal_bf16', 0):.1%} of nominal; peak memory "
                          f"{part['peak_gpu_mb'] or 0:,.0f} MiB; compile+warm-up {part['warmup_and_compile_s']} s",
                          highlight=False)
            if (ceiling := part.get("ceiling")) and "error" not in ceiling:  # (a failed one: its error, in the JSON)
                console.print(f"      its matrix products and attention alone, at its shapes: "
                              f"{ceiling['matmul_ms_per_step'] + ceiling['attention_ms_per_step']:.1f} ms a step, MFU "
                              f"{ceiling.get('mfu_vs_measured_bf16', 0):.1%}; the model reaches "
                              f"{part['model_share_of_ceiling']:.0%} of that", highlight=False)
    for key, part in result.items():
        if key.startswith("profile_") and "kinds" in part:
            shares = ", ".join(f"{kind} {v['share_of_busy']:.0%}" for kind, v in part["kinds"].items())
            console.print(f"{key[8:]} step: {part['wall_ms_per_step']} ms, device busy {part['busy_share_of_wall']:.0%}"
                          f" of it; of the busy time: {shares}", highlight=False)
    for label, entry in result.get("shakespeare_medians", {}).items():
        console.print(f"shakespeare {label}: reached in {entry['reached']} of {entry['runs']} runs; median "
                      f"{entry['median_wall_s']} s wall, {entry['median_train_time_s']} s of training", highlight=False)
    for key, shakespeare in result.items():
        if not key.startswith("shakespeare") or key == "shakespeare_medians":
            continue
        name = f"shakespeare {shakespeare.get('recipe', '')}"
        if shakespeare.get("reached"):
            r = shakespeare["reached"]
            console.print(f"{name}: val loss {r['val_loss']} at step {r['step']}, {r['train_time_s']:.1f} s of "
                          f"training, {r['wall_s']:.1f} s wall (compile and evaluation included)", highlight=False)
        else:
            console.print(f"{name}: {shakespeare.get('skipped') or shakespeare.get('error') or 'target not reached'}"
                          f"; best val loss {shakespeare.get('best_val_loss')}", highlight=False)
