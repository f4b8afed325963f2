"""`vslm ...`: parses arguments, calls the layers below, prints. Errors are one line, never a traceback."""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import threading
from pathlib import Path

from rich.console import Console

from vslm.errors import ConfigError, ResumeRefused, UsageError, VSLMError, did_you_mean
from vslm.files import write_text
from vslm.plain import dumps

console = Console() if sys.stdout.isatty() else Console(width=140)  # logs and pipes: no wrapping at 80


def _add_config_args(p: argparse.ArgumentParser, optional: bool = False) -> None:
    p.add_argument("config", nargs="?" if optional else None, help="a built-in config name or a TOML file")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.steps=500 model.width=192")


def cmd_train(a: argparse.Namespace) -> int:
    from vslm.commands.demo import start_training
    from vslm.config import load_config
    from vslm.train.run_folder import read_run_config

    if a.config and "=" in a.config and not Path(a.config).exists():  # `train --resume --out X key=value`
        a.config, a.overrides = None, [a.config, *a.overrides]
    if a.config is None:
        if not (a.resume and a.out):
            raise UsageError("train needs a config (or --resume --out RUN_FOLDER)")
        cfg = read_run_config(Path(a.out))
        if a.overrides:
            from vslm.config import overridden

            cfg = overridden(cfg, a.overrides, saved=True)
    else:  # resumed: a run's config.toml written before a later check still continues
        cfg = load_config(a.config, a.overrides, saved=a.resume)
    out = Path(a.out or Path("runs") / cfg.name)
    if a.checkpoint and not a.resume:
        raise UsageError("--checkpoint picks where a resumed run continues from: add --resume")
    init = {}
    if a.init_from_hf:  # the architecture and weights of a transformers checkpoint (vslm.interop.hf)
        if a.resume:
            raise UsageError("--init-from-hf starts a new run from a transformers checkpoint: not with --resume")
        from vslm.data.shards import prepare_corpus
        from vslm.interop.hf import check_init_tokenizer, init_from_hf
        from vslm.train.run_folder import refuse_a_run_folder

        cfg, init["model"], init["origin"] = init_from_hf(cfg, Path(a.init_from_hf), a.overrides)
        refuse_a_run_folder(out, ": --init-from-hf starts a new run, give --out another folder")  # before the corpus
        init["corpus"] = prepare_corpus(cfg.data)  # its tokenizer judged before the trainer sizes the model
        check_init_tokenizer(Path(a.init_from_hf), init["corpus"], cfg.model.vocab_size)
    try:
        trainer = start_training(cfg, out, console, resume=a.resume,
                                 checkpoint=Path(a.checkpoint) if a.checkpoint else None, **init)
        final = trainer.fit()
    except ResumeRefused as e:  # the values a named config brought to a resume are not the run's own
        if a.config is None:
            raise
        raise ResumeRefused(f"{e}; these values are {a.config}'s: `vslm train --resume --out {out}` without a "
                            "config resumes with the run's own") from None
    if not trainer.dist.is_main:  # under torchrun, rank 0 speaks for all
        # and the other ranks leave without the interpreter's teardown: with gloo on CPU it aborted
        # one rank in about 15 runs after training had finished ("terminate called without an active
        # exception", exit -6, so torchrun failed a run whose files were complete)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    if not trainer.nothing_to_train:  # a finished run resumed as it is: its samples.txt stays
        _print_samples(trainer)
    summary = ", ".join(f"{k} {final[k]:.4f}" for k in ("loss", "val_loss", "val_bpb") if k in final)
    console.print(f"nothing trained: at step {trainer.step} (train.steps), its last logged {summary}"
                  if trainer.nothing_to_train
                  else f"trained {trainer.step} steps: {summary}{_probe_share(out)}", highlight=False, soft_wrap=True)
    print(out)
    return 0


PROBE_SHARE_SAID = 0.1  # probes taking at least this share of the training steps' time are said at the end


def _probe_share(out: Path) -> str:
    """'; the probes took N s beside M s of training ...' where the training-dynamics probes took a notable share
    of a run's time (a short run of many probe steps: more than the training itself), else ''."""
    from vslm.train.run_folder import read_summary

    summary = read_summary(out)
    share, probes = summary.get("probe_fraction"), summary.get("probe_time_s")
    if share is None or probes is None or share < PROBE_SHARE_SAID:
        return ""
    return (f"; the probes took {probes:.0f} s beside {probes / share:.0f} s of training steps "
            "(logging.probe_every=0 turns them off; fewer logging.probe_windows make them cheaper)")


def _print_samples(trainer) -> None:
    from vslm.train.callbacks import samples_of

    texts = samples_of(trainer)  # written to samples.txt at the run's end (logging.samples)
    if not texts:
        return
    for i, t in enumerate(texts):
        console.rule(f"sample {i + 1}")
        console.print(t, markup=False, highlight=False)
    console.rule()


def cmd_configs(a: argparse.Namespace) -> int:
    from vslm.config import builtin_configs

    for name, desc in builtin_configs().items():
        print(f"{name:24s} {desc}")
    return 0


def cmd_describe(a: argparse.Namespace) -> int:
    from vslm.commands.describe import describe
    from vslm.config import bare_builtin, load_config, overridden
    from vslm.train.run_folder import read_run_config

    run = not bare_builtin(a.config, "vslm.configs") and (Path(a.config) / "config.toml").is_file()  # `tiny`: built-in
    if run:  # a run folder: its config as saved (what it trained); with overrides, a new config, checked as one
        cfg = read_run_config(Path(a.config))
        cfg = overridden(cfg, a.overrides) if a.overrides else cfg
    else:
        cfg = load_config(a.config, a.overrides)
    describe(cfg, console)
    return 0


def _check_sample_args(a: argparse.Namespace) -> None:
    """Out-of-range sampling arguments: one line and exit 2, before the run is loaded (or torch imported)."""
    import math

    if not math.isfinite(a.temperature) or a.temperature < 0:
        raise UsageError(f"--temperature must be a finite number >= 0 (0 = greedy), got {a.temperature:g}")
    _at_least(a, 1, "top_k", "tokens", "num")
    if a.threads < 0:
        raise UsageError(f"--threads must be 0 (torch's choice) or more, got {a.threads}")
    _check_seed(a.seed)


def _check_seed(seed: int) -> None:
    """A sampling seed torch's generator takes as given: 0 to 2**64 - 1 (a negative one wraps to another seed's
    samples, a larger one is a traceback)."""
    if not 0 <= seed < 2**64:
        raise UsageError(f"--seed must be 0 to 2**64 - 1, got {seed}")


def cmd_sample(a: argparse.Namespace) -> int:
    _check_sample_args(a)
    from vslm.data.tokenizer import EOS
    from vslm.train.run_folder import load_run_at
    from vslm.train.sampling import sample_text
    from vslm.train.trainer import set_threads

    _, model, tokenizer, used = load_run_at(Path(a.run), Path(a.checkpoint) if a.checkpoint else None)
    prompts = a.prompt or [""]
    for prompt in prompts:
        try:
            tokenizer.encode(prompt)  # a character the run's vocabulary lacks: named before anything is printed
        except VSLMError as e:
            raise UsageError(f"--prompt: {e}") from None
    print(f"sampling from {used}", file=sys.stderr)  # which weights (stderr: stdout stays the text)
    if a.slide and (why := model.slide_refusal()) is not None:
        raise UsageError(f"--slide: {why}")
    from vslm.progress import track

    set_threads(a.threads, job="sampling", setting="--threads ")  # after every refusal, as in training
    warned: set[str] = set()

    def warn(reason: str) -> None:  # once, not once a prompt
        if reason not in warned:
            warned.add(reason)
            print(reason, file=sys.stderr)

    for j, prompt in enumerate(prompts):
        texts = sample_text(model, tokenizer, prompt, a.num, a.tokens, a.temperature, a.top_k, a.seed, track,
                            cache=not a.no_cache, warn=warn, slide=a.slide, end_of_text=EOS)
        for i, t in enumerate(texts):
            if len(prompts) > 1 or a.num > 1:
                console.rule(" ".join(([f"prompt {j + 1}"] if len(prompts) > 1 else []) +
                                      ([f"sample {i + 1}"] if a.num > 1 else [])))
            print(t)
    return 0


PROBE_OPTIONS = {  # an option of `vslm probe` -> the modes it applies to (snapshots: neither --copying nor --induction)
    "out": ("snapshots",), "invented": ("copying",), "far": ("copying",), "stories": ("copying",),
    "windows": ("copying",), "batch": ("copying",), "checkpoint": ("copying", "induction"),
    "json": ("copying", "induction"), "support": ("induction",), "sequences": ("induction",)}


def cmd_probe(a: argparse.Namespace) -> int:
    from vslm.train.probing import copying_table, probe_copying, probe_induction, probe_snapshots, snapshots_table

    mode = "induction" if a.induction is not None else "copying" if a.copying else "snapshots"
    for name, modes in PROBE_OPTIONS.items():  # an option its mode ignores: said, not dropped silently
        if getattr(a, name) is not None and getattr(a, name) is not False and mode not in modes:
            applies = " or ".join("neither --copying nor --induction" if m == "snapshots" else f"--{m}" for m in modes)
            raise UsageError(f"--{name} applies only with {applies}")
    a.stories = 300 if a.stories is None else a.stories
    a.batch = 32 if a.batch is None else a.batch
    a.sequences = 64 if a.sequences is None else a.sequences
    if a.induction is not None:
        result = probe_induction(Path(a.run), a.induction, a.support, a.sequences,
                                 Path(a.checkpoint) if a.checkpoint else None)
        if a.json:
            print(dumps(result))
        else:
            pm = ", ".join(f"layer {d}: {max(h):.3f}" for d, h in enumerate(result["prefix_matching"]))
            print(f"L = {a.induction}, {a.sequences} sequences: 1st copy {result['loss_first']:.3f} "
                  f"± {result['loss_first_se']:.3f}, 2nd copy {result['loss_second']:.3f} ± "
                  f"{result['loss_second_se']:.3f} nats (order-blind best {result['loss_multiset']:.3f}); "
                  f"prefix matching, best head: {pm}")
        return 0
    if a.copying:
        result = probe_copying(Path(a.run), a.copying, a.invented, a.far, a.stories, a.windows, a.batch,
                               Path(a.checkpoint) if a.checkpoint else None)
        print(dumps(result) if a.json else copying_table(result))
        return 0
    from vslm.progress import track

    out = probe_snapshots(Path(a.run), _output_file("--out", a.out) if a.out else None, track)
    print(snapshots_table(out))
    print(out)  # last: the file, for scripts
    return 0


def cmd_report(a: argparse.Namespace) -> int:
    from vslm.report import write_report

    if a.port is not None and not a.serve:  # said, not ignored
        raise UsageError("--port applies to --serve")
    if a.every is not None and not (a.serve or a.watch):
        raise UsageError("--every applies to --serve and --watch")
    a.port, a.every = a.port or 0, 2.0 if a.every is None else a.every
    if a.every <= 0:
        raise UsageError("--every must be a positive number of seconds")
    if not 0 <= a.port <= 65535:
        raise UsageError(f"--port must be 0 (any free port) to 65535, not {a.port}")
    from vslm.report.experiment import CORPORA, RESULTS, write_corpora_report, write_experiment_report

    kind = next((name for name in (RESULTS, CORPORA) if (Path(a.run) / name).is_file()), None)
    if kind and not (Path(a.run) / "config.toml").exists():  # an experiment folder: its page, redrawn
        if a.serve or a.watch:
            raise UsageError(f"{a.run} is an experiment folder: --serve and --watch follow one run")
        print((write_experiment_report if kind == RESULTS else write_corpora_report)(Path(a.run)))
        return 0
    if a.serve:
        from vslm.report.serve import serve

        serve(Path(a.run), port=a.port, every=a.every, settle=5 * a.every)  # until Ctrl-C: main() exits 130
        return 0
    if a.watch:  # ends when the run has finished; the status lines on stderr, the path on stdout as without
        from vslm.report.serve import watch

        print(watch(Path(a.run), every=a.every, settle=5 * a.every, say=lambda line: print(line, file=sys.stderr)))
        return 0
    print(write_report(Path(a.run)))
    return 0


def cmd_watch(a: argparse.Namespace) -> int:
    from vslm.commands.watch import watch

    if a.every <= 0 or a.idle <= 0:
        raise UsageError("--every and --idle must be positive numbers of seconds")
    watch(Path(a.run), console, once=a.once, every=a.every, idle=a.idle)
    return 0


def cmd_compare(a: argparse.Namespace) -> int:
    from vslm.report import compare_runs

    out = _output_file("--out", a.out, makes_folder=True)  # its folder is made if missing (the default's runs/)
    print(compare_runs([Path(r) for r in a.runs], out))
    return 0


PLOT_SUFFIXES = (".png", ".pdf", ".svg")


def _output_file(flag: str, path: str, suffixes: tuple[str, ...] = (), makes_folder: bool = False) -> Path:
    """A file an option names for output: its folder exists (unless the command `makes_folder`), it is not a
    folder, and it ends in one of `suffixes` (if given); else one line and exit 2, before anything is computed."""
    out = Path(path)
    if out.is_dir():
        raise UsageError(f"{flag} {path}: a folder; give a file")
    if not out.parent.is_dir() and not makes_folder:
        raise UsageError(f"{flag} {path}: no folder {out.parent}")
    if suffixes and out.suffix.lower() not in suffixes:
        raise UsageError(f"{flag} {path}: give a file ending in {', '.join(suffixes)}")
    return out


def cmd_shape(a: argparse.Namespace) -> int:
    from rich.markup import escape

    from vslm.commands.shape import shape_run, to_json, write_plot

    if not a.prompt:
        raise UsageError("shape needs at least one --prompt")
    _at_least(a, 1, "samples", "tokens")
    default_plot = "shape-course.png" if a.over_training else "shape.png"
    plot_to = _output_file("--plot", a.plot, PLOT_SUFFIXES) if a.plot else Path(a.run) / default_plot
    from vslm.progress import track

    if a.over_training:
        return _shape_course(a, plot_to, track)

    _check_seed(a.seed)
    result = shape_run(Path(a.run), a.prompt, a.continuation, a.samples, a.tokens, a.seed, track)
    plot = write_plot(result, plot_to)
    if a.json:
        print(to_json(result))
        return 0
    from vslm.lab.tables import print_table

    num, first = _shape_num, _shape_first(result)
    columns = ("prompt", f"log p(y|prompt){'' if first == 'y1' else ', from y2'}", "KL from empty", "JS from empty",
               f"JS at {first}", "half by token", "JS slope (log-log)", "mean PMI", f"H at {first}", "H mean",
               "samples: JS from empty")
    rows = [(escape(repr(r["prompt"])) if k else r["label"], f"{r['log_prob']:.2f}",
             f"{r['kl_from_empty']:.3f}", f"{r['js_from_empty']:.3f}", num(r["js_first"], ".3f"),
             num(r["js_half_at"], ".0f"), num(r["js_slope"], "+.2f"), f"{r['pmi_mean']:+.3f}",
             f"{r['entropy_first']:.2f}", f"{r['entropy_mean']:.2f}", f"{r['sample_js_from_empty']:.3f}")
            for k, r in enumerate(result["summary"])]
    if "note" in result:
        console.print(f"note: {result['note']}", markup=False, highlight=False)
    print_table(console, f"how prompts reshape {escape(repr(a.continuation))}", columns, rows)
    for r in result["summary"]:
        console.rule(f"a sample under {escape(repr(r['prompt']))}")
        console.print(r["sample"], markup=False, highlight=False)
    print(plot)
    return 0


def _shape_num(x: float, fmt: str) -> str:
    return "-" if x != x else format(x, fmt)  # NaN: never half, or no effect to fit


def _shape_first(result: dict) -> str:
    return "y1" if "note" not in result else "1st scored"  # no end-of-text token: y is scored from y2


def _shape_course(a: argparse.Namespace, plot_to: Path, track) -> int:
    from rich.markup import escape

    from vslm.commands.shape import shape_course, to_json, write_course_plot
    from vslm.lab.tables import print_table

    result = shape_course(Path(a.run), a.prompt, a.continuation, track)
    plot = write_course_plot(result, plot_to)
    if a.json:
        print(to_json(result))
        return 0

    num, first = _shape_num, _shape_first(result)
    columns = ("step", "prompt", "log p(y|prompt) - log p(y|empty)", "JS from empty", f"JS at {first}",
               "half by token", "JS slope (log-log)")
    if "note" in result:
        console.print(f"note: {result['note']}", markup=False, highlight=False)
    rows = [(str(r["step"]), escape(repr(r["prompt"])), f"{r['log_prob_shift']:+.2f}", f"{r['js_from_empty']:.3f}",
             num(r["js_first"], ".3f"), num(r["js_half_at"], ".0f"), num(r["js_slope"], "+.2f"))
            for r in result["rows"]]
    print_table(console, f"how prompts reshape {escape(repr(a.continuation))} over training", columns, rows)
    print(plot)
    return 0


def cmd_demo(a: argparse.Namespace) -> int:
    from vslm.commands.demo import run_demo

    run_demo(Path(a.out) if a.out else None, a.overrides, console)
    return 0


def _print_json(result: dict) -> int:
    print(dumps(result))
    return 0


def _at_least(a: argparse.Namespace, low: int, *names: str) -> None:
    """Counts given on the command line (--steps, --repeat; None: not given) below `low`: one line and exit 2
    before anything is measured."""
    for name in names:
        if getattr(a, name) is not None and getattr(a, name) < low:
            raise UsageError(f"--{name.replace('_', '-')} must be at least {low}, got {getattr(a, name)}")


def cmd_bench_train(a: argparse.Namespace) -> int:
    from vslm.commands.bench import run_bench

    _at_least(a, 1, "steps", "repeat", "eval_batches")
    result = run_bench(Path(a.data) if a.data else None, a.steps, a.repeat, Path(a.reference) if a.reference else None,
                       console if not a.json else None, a.overrides, a.eval_batches)
    return _print_json(result) if a.json else 0


def cmd_bench_speedrun(a: argparse.Namespace) -> int:
    from vslm.commands.speedrun import run_speedrun

    _at_least(a, 1, "repeat")
    result = run_speedrun(Path(a.data) if a.data else None, a.repeat, Path(a.reference) if a.reference else None,
                          console if not a.json else None, a.overrides)
    return _print_json(result) if a.json else 0


def cmd_bench_prepare(a: argparse.Namespace) -> int:
    from vslm.commands.bench import run_prepare_bench

    result = run_prepare_bench(a.bytes, a.tokenizer, console if not a.json else None)
    return _print_json(result) if a.json else 0


def cmd_bench_attention(a: argparse.Namespace) -> int:
    from vslm.commands.bench import run_attention_bench

    _at_least(a, 1, "steps", "repeat")
    result = run_attention_bench(a.steps, a.repeat, console if not a.json else None)
    return _print_json(result) if a.json else 0


def cmd_bench_sample(a: argparse.Namespace) -> int:
    from vslm.commands.bench import run_sample_bench

    _at_least(a, 1, "tokens", "repeat")
    result = run_sample_bench(a.overrides, a.tokens, a.repeat, console if not a.json else None, a.profile)
    return _print_json(result) if a.json else 0


def cmd_bench_parallel(a: argparse.Namespace) -> int:
    from vslm.commands.bench_parallel import parse_launchers, run_parallel_bench

    _at_least(a, 1, "seeds", "repeat")
    result = run_parallel_bench(a.experiment, a.seeds, parse_launchers(a.launchers), a.repeat, a.overrides,
                                console if not a.json else None, Path(a.keep) if a.keep else None)
    return _print_json(result) if a.json else 0


def cmd_bench_gpu(a: argparse.Namespace) -> int:
    import os

    from vslm.commands.bench_gpu import (
        DEFAULT_MODELS,
        DEFAULT_RECIPES,
        GPU_MODELS,
        SHAKESPEARE_RECIPES,
        pick,
        run_gpu_check,
    )

    if a.repeat < 1:
        raise UsageError(f"--repeat must be at least 1, got {a.repeat}")
    if not (a.seconds > 0 and a.shakespeare_seconds > 0):  # a time limit of 0 or less trains a step or three
        raise UsageError(f"--seconds and --shakespeare-seconds must be above 0, got {a.seconds:g} and "
                         f"{a.shakespeare_seconds:g}")
    models = pick(a.models, GPU_MODELS, DEFAULT_MODELS, "model")
    recipes = pick(a.recipes, SHAKESPEARE_RECIPES, DEFAULT_RECIPES, "recipe")
    json_out = Path(a.json_out) if a.json_out else None
    if json_out is None and os.environ.get("OUT"):  # the device machine's folder of results
        json_out = Path(os.environ["OUT"]) / "gpu_check.json"
    profile = pick(a.profile or "none", GPU_MODELS, (), "model")
    result = run_gpu_check(a.seconds, a.shakespeare_seconds, json_out, console, models=models, recipes=recipes,
                           repeat=a.repeat, profile=profile)
    return _print_json(result) if a.json else 0


def cmd_plan(a: argparse.Namespace) -> int:
    from vslm.commands.demo import free_path
    from vslm.commands.plan import check_plan_args, make_plan, print_plan, write_plan

    check_plan_args(a.hours, a.seconds, a.max_measure, a.overrides)  # before the minutes of measuring
    if a.from_fit:
        from vslm.commands.scaling import read_fit

        read_fit(Path(a.from_fit))
    if a.out is None:  # as `vslm demo` picks runs/demo-2: a plan never replaces an earlier one
        a.out = free_path(Path("plan.toml"))
    elif Path(a.out).exists():  # refused before the minutes of measuring
        raise VSLMError(f"--out {a.out} exists: plan writes a new file, nothing is overwritten (pick another "
                        "--out, or leave it out for plan.toml, or plan-N.toml if taken)")
    if a.from_fit:  # the law of a scaling study instead of 20 tokens per parameter
        from vslm.commands.scaling import plan_from_fit, print_law_plan

        if a.data:
            raise UsageError("--from plans on the scaling study's data: leave out --data")
        plan = plan_from_fit(a.hours, Path(a.from_fit), a.overrides, a.seconds, a.max_measure, console)
        out = write_plan(plan, Path(a.out))
        print_law_plan(plan, out, console)
        print(out)
        return 0
    plan = make_plan(a.hours, a.data, a.overrides, a.seconds, a.max_measure, console)
    out = write_plan(plan, Path(a.out))
    print_plan(plan, out, console)
    print(out)
    return 0


def _keys_of_last(choices: list[str]) -> list[str]:
    """The keys the last of several sweep choices sets beside every key of the others (which set the same keys):
    overrides typed after the last --sweep, meant for every variant, that argparse gave to that choice. [] where
    the choices differ otherwise (--sweep model.width=64 --sweep model.depth=6)."""
    keys = [[w.partition("=")[0] for w in choice.split()] for choice in choices]
    if any(set(ks) != set(keys[0]) for ks in keys[1:-1]) or not set(keys[0]) <= set(keys[-1]):
        return []
    return [k for k in keys[-1] if k not in keys[0]]


def cmd_experiment(a: argparse.Namespace) -> int:
    from vslm.commands.experiment import run_experiment
    from vslm.lab.experiments import builtin_experiments

    if a.list:
        for name, desc in builtin_experiments().items():
            print(f"{name:24s} {desc}")
        return 0
    if not a.experiment:
        taken = [w for words in a.sweep or [] for w in words if "=" not in w]  # `--sweep X=1 NAME`: read as an override
        raise UsageError("experiment needs a NAME (a built-in experiment or a TOML file), or --list" +
                         (f": --sweep took {taken[0]!r} into its choice (it reads up to the next flag); give the "
                          "experiment first, `vslm experiment NAME --sweep ...`" if taken else ""))
    from vslm.lab.parallel import make_launcher

    out = Path(a.out) if a.out else Path("runs") / "experiments" / Path(a.experiment).stem
    if a.json and not a.dry_run:  # said, not ignored: a run's output is its folder
        raise UsageError("--json applies to --dry-run")
    sweep = [" ".join(" ".join(words).split()) for words in a.sweep] if a.sweep else None  # as a spec writes them
    if sweep and len(sweep) > 1 and (alone := _keys_of_last(sweep)):
        print(f"note: the last --sweep choice alone sets {', '.join(alone)}: the overrides after a --sweep belong to "
              "its choice; overrides for every variant go before the flags", file=sys.stderr)
    variants = list(dict.fromkeys(name.strip() for name in a.variants.split(",") if name.strip())) \
        if a.variants is not None else None
    if variants is not None and not variants:
        raise UsageError("--variants needs one or more variant names, comma-separated")
    launcher = make_launcher(a.jobs, a.launcher, a.address, a.cpus_per_run)  # its flags checked, dry run or not
    if a.dry_run:
        from vslm.commands.experiment import dry_run_experiment, print_dry_run

        plan = dry_run_experiment(a.experiment, out, a.seeds, a.overrides, a.resolve, a.max_seeds, sweep,
                                  a.sweep_seeds, variants, launcher)
        print(dumps(plan)) if a.json else print_dry_run(plan, console)
        return 0
    if a.jobs in (None, "auto") and launcher.kind == "local" and launcher.jobs > 1:
        from vslm.lab.experiments import read_experiment

        if read_experiment(a.experiment)[1].get("kind"):  # arms of a knowledge experiment: one at a time
            launcher = make_launcher(1)                   # unless --jobs asks for more
    run_experiment(a.experiment, out, a.seeds, a.overrides, console, launcher, a.resolve, a.max_seeds, sweep,
                   a.sweep_seeds, variants)
    print(out / "report.html")  # the report to look at, last (of an experiment over several corpora: all of them)
    return 0


def cmd_scaling(a: argparse.Namespace) -> int:
    from vslm.commands.scaling import run_scaling
    from vslm.lab.scaling import builtin_scaling_specs

    if a.list:
        for name, desc in builtin_scaling_specs().items():
            print(f"{name:24s} {desc}")
        return 0
    if not a.spec:
        raise UsageError("scaling needs a SPEC (a built-in scaling spec or a TOML file), or --list")
    from vslm.lab.parallel import make_launcher

    out = Path(a.out) if a.out else Path("runs") / "scaling" / Path(a.spec).stem
    launcher = make_launcher(a.jobs, a.launcher, a.address, a.cpus_per_run)
    run_scaling(a.spec, out, a.overrides, console, dry_run=a.dry_run, launcher=launcher)
    if not a.dry_run:
        print(out / "report.html")
    return 0


def cmd_facts_generate(a: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from vslm.config import one_line_error
    from vslm.errors import ConfigError
    from vslm.knowledge.folder import write_world_folder
    from vslm.knowledge.world import WorldConfig

    given = {name: getattr(a, name) for name in WorldConfig.model_fields if getattr(a, name) is not None}
    try:
        settings = WorldConfig.model_validate(given)
    except ValidationError as e:
        raise ConfigError(one_line_error(e, prefix="facts generate")) from None
    out = Path(a.out)
    there = out.is_dir() and any(out.iterdir())
    files = write_world_folder(settings, out)  # a folder that is not empty: refused unless it is this world
    if there:
        print(f"{out} already holds this world (the same settings and seed): nothing written", file=sys.stderr)
    lines = [json.loads(line) for line in files["questions.jsonl"].splitlines()]
    counts = {key: sum(1 for q in lines if group(q)) for key, group in (
        ("seen train", lambda q: q["split"] == "train"), ("seen test", lambda q: q["pool"] == "seen" and
         q["split"] == "test" and not q["counterfactual"]), ("novel", lambda q: q["pool"] == "novel"),
        ("counterfactual", lambda q: q["counterfactual"]))}
    console.print(f"{files['cards.jsonl'].count(chr(10))} fact cards, questions: "
                  + ", ".join(f"{n} {key}" for key, n in counts.items()), highlight=False)
    print(a.out)
    return 0


def cmd_facts_eval(a: argparse.Namespace) -> int:
    from rich.markup import escape
    from rich.table import Table

    from vslm.knowledge.evaluate import evaluate_run, novel_summary
    from vslm.report.facts import adapter_line, hops_rows, notes, probe_line, scoring, summary_rows
    from vslm.report.run_report import write_report

    _at_least(a, 0, "distractors", "per_group", "adapters", "threads")
    _at_least(a, 1, "k", "rounds", "group_size")
    if a.adapter_parts != "both" and not a.adapters:
        raise UsageError(f"--adapter-parts {a.adapter_parts} needs --adapters STEPS (the adapters it says what to fit)")
    _threads(a.threads, "evaluation")
    result = evaluate_run(Path(a.run), Path(a.world), a.distractors, a.per_group or None, a.k, a.rounds, a.probe,
                          Path(a.checkpoint) if a.checkpoint else None, a.device, adapter_steps=a.adapters,
                          seed=a.seed, group_size=a.group_size, adapter_parts=a.adapter_parts)
    for line in notes(result):
        print(f"note: {line}", file=sys.stderr)
    report = write_report(Path(a.run))  # its "Knowledge" section: this evaluation
    if a.json:
        print(dumps(novel_summary(result) if a.json == "novel" else result))
        return 0
    table = Table(title=escape(f"{a.run} on {a.world}"), caption=escape(f"scoring: {scoring(result)}"))
    for col in ("setting", "pool", "accuracy ± se", "chance", "n"):
        table.add_column(col, justify="left" if col in ("setting", "pool") else "right")
    for row in summary_rows(result):
        table.add_row(*row)
    console.print(table)
    columns, rows = hops_rows(result)
    table = Table(title="accuracy by hops")
    for col in columns:
        table.add_column(col, justify="right")
    for row in rows:
        table.add_row(*row)
    console.print(table)
    if ad := result.get("adapters"):
        console.print(adapter_line(ad), highlight=False)
    if cf := result.get("counterfactual"):
        console.print(f"counterfactual context: memorisation ratio {cf['memorisation_ratio']:.3f}, "
                      f"answers the weights' value {cf['original']:.3f}", highlight=False)
    console.print(probe_line(result), highlight=False)
    print(Path(a.run) / "facts-eval.json")
    print(report)
    return 0


def cmd_facts_distill(a: argparse.Namespace) -> int:
    from vslm.knowledge.distill import RESULT, distill, relearn
    from vslm.knowledge.folder import load_world_folder

    weights = {}
    for word in a.weight:
        name, sep, value = word.partition("=")
        try:
            weights[name] = float(value)
        except ValueError:
            sep = ""
        if not sep:
            raise UsageError(f"--weight {word}: write NAME=NUMBER")
    _at_least(a, 0, "relearn_steps", "threads")
    if not 0 < a.relearn_fraction < 1:
        raise UsageError(f"--relearn-fraction {a.relearn_fraction:g}: the share of the people relearned, above 0 "
                         "and below 1 (the rest are the ones measured)")
    out = Path(a.out)
    _threads(a.threads, "distillation")
    result = distill(Path(a.teacher), Path(a.naive), Path(a.world), out, a.method, a.steps, a.batch_size, a.lr,
                     weights, a.beta, a.seed, a.device, a.distractors, progress=True)
    console.print(f"{a.method}: {a.steps} steps, last " + ", ".join(
        f"{k} {v:.4f}" for k, v in (result["last"] or {}).items() if k != "step"), highlight=False)
    if a.relearn_steps > 0:
        folder = load_world_folder(Path(a.world))
        result["relearning"] = {}
        for label, run in (("student", out), ("naive", Path(a.naive))):
            where = out / "relearn" / f"{label}-fraction-{a.relearn_fraction:g}-steps-{a.relearn_steps}-seed-{a.seed}"
            r = relearn(run, folder, where, a.relearn_fraction, a.relearn_steps, seed=a.seed, device=a.device,
                        progress=True)
            result["relearning"][label] = r
            console.print(f"relearning {label}: closed-book on the other {1 - a.relearn_fraction:.0%} "
                          f"{r['before']['rest']['accuracy']:.3f} -> {r['after']['rest']['accuracy']:.3f} "
                          f"(chance {r['before']['rest']['chance']:.3f}, n {r['before']['rest']['n']})",
                          highlight=False)
        write_text(out / RESULT, dumps(result, indent=1) + "\n")
    print(out)
    return 0


def cmd_facts_reader(a: argparse.Namespace) -> int:
    from dataclasses import fields

    from vslm.knowledge.reader import ReaderSettings, reader_config, train_reader

    _at_least(a, 0, "max_hops", "max_distractors", "curve_every")
    _at_least(a, 1, "curve_questions")
    if a.ramp is not None and not 0 <= a.ramp <= 1:
        raise UsageError(f"--ramp is a share of the steps, from 0 to 1, got {a.ramp:g}")
    if a.names is not None and a.names not in ("all", "seen"):
        raise UsageError(f"--names must be all or seen, got {a.names!r}")
    if a.restate and not a.steps:
        raise UsageError("--restate restates the question after each step: give --steps too")
    settings = ReaderSettings(**{f.name: getattr(a, f.name) for f in fields(ReaderSettings)
                                 if getattr(a, f.name) is not None})
    from vslm.train.trainer import TrainingStopped

    try:
        result = train_reader(Path(a.world), Path(a.out), reader_config(a.config, a.overrides), settings,
                              reuse=a.resume)
    except TrainingStopped as e:  # the same command continues it, given --resume (else it refuses the folder)
        raise TrainingStopped(f"{e.where}: the same command with --resume continues it", e.signum) from None
    last = result["last"]
    console.print(f"reader: {result['params']:,} parameters, {result['steps']} steps in {result['wall_s']:.0f} s; "
                  + ", ".join(f"{k} {v}" for k, v in last.items() if k == "loss" or k.startswith("read_h")),
                  highlight=False)
    print(a.out)
    return 0


def cmd_facts_capacity(a: argparse.Namespace) -> int:
    from vslm.knowledge.capacity import CapacitySettings, run_sweep

    _at_least(a, 1, "people", "exposures")
    settings = CapacitySettings(a.people, a.exposures, a.world_seed)

    def said(spec, seed, r):
        console.print(f"{spec} seed {seed}: {r['params']:,} parameters ({r['params'] - r['embedding_params']:,} "
                      f"without the embedding), {r['exposures']:g} exposures; {r['bits']:,.0f} of "
                      f"{r['data_bits']:,.0f} bits, {r['bits_per_param']:.3f} per parameter", highlight=False)

    run_sweep(Path(a.out), a.sizes, a.seeds, settings, a.config, a.overrides, on_run=said)
    print(Path(a.out) / "capacity.md")
    return 0


def _threads(threads: int, job: str) -> None:
    """A command's --threads for what it computes and the fine-tunes it runs (their train.threads is 0: the
    session's); warns once, as a training does, where other processes leave fewer free cores."""
    from vslm.train.trainer import set_threads

    set_threads(threads, job=job, setting="--threads ")


def _add_run_args(p: argparse.ArgumentParser, json_help: str) -> None:
    """The options of every command that reads a trained run: which checkpoint, where, and JSON output."""
    p.add_argument("--checkpoint", help="one of the run's checkpoint or snapshot files (default: the newest that reads "
                   "and holds finite weights)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N, mps, or auto (cuda if there is one)")
    p.add_argument("--json", action="store_true", help=json_help)


def _add_facts_parser(sub) -> None:
    from vslm.knowledge.world import WorldConfig

    facts = sub.add_parser("facts", help="FactWorld: generate a world of facts and questions; evaluate a run on it")
    fsub = facts.add_subparsers(dest="facts_command", required=True, metavar="ACTION")
    p = fsub.add_parser("generate", help="write a world folder: world.json, cards.jsonl, questions.jsonl, train.txt")
    p.add_argument("--out", required=True, help="the world folder (new, or empty)")
    for name, field in WorldConfig.model_fields.items():
        p.add_argument(f"--{name.replace('_', '-')}", type=field.annotation, dest=name,
                       help=f"{field.description + '; ' if field.description else ''}default {field.default}")
    p.set_defaults(func=cmd_facts_generate)
    p = fsub.add_parser("eval", help="closed-book, open-book, retrieved, counterfactual accuracy and the probe",
                        description="Closed-book, open-book, retrieved and counterfactual accuracy and the linear "
                                    "probe of a run on a world: printed, written to RUN/facts-eval.json and drawn "
                                    "in RUN/report.html (its Knowledge section).",
                        conflict_handler="resolve")  # its --json takes a value
    p.add_argument("run", help="run folder (trained on the world's train.txt)")
    p.add_argument("--world", required=True, help="the world folder")
    p.add_argument("--distractors", type=int, default=4, help="distractor cards beside the gold ones (default 4)")
    p.add_argument("--per-group", type=int, default=100, help="questions per group and hop count (default 100; 0: all)")
    p.add_argument("--k", type=int, default=8, help="cards the retriever puts in the context (default 8)")
    p.add_argument("--rounds", type=int, help="retrieval rounds (default: the world's hops)")
    p.add_argument("--probe", default="birth_city", help="the attribute the linear probe reads (default birth_city)")
    p.add_argument("--adapters", type=int, default=0, metavar="STEPS",
                   help="also fit an adapter per group of novel entities for STEPS steps (a LoRA and the rows of "
                        "its text's tokens the model never trained on) and answer through them")
    p.add_argument("--group-size", type=int, default=10, help="people per adapter (default 10)")
    p.add_argument("--seed", type=int, default=0, help="the evaluation's seed: the distractors drawn, the adapters' "
                   "groups, initialisation and batches (default 0; a knowledge experiment's seed k evaluates with k)")
    p.add_argument("--adapter-parts", choices=("both", "lora", "tokens"), default="both",  # adapters.PARTS (torch)
                   help="what each adapter trains: its LoRA and the rows of the tokens the model never trained on "
                        "(both, the default), or one of them")
    p.add_argument("--threads", type=int, default=0, help="torch's CPU threads for the scoring and the adapters' "
                   "fits (default 0: torch's choice, one per core)")
    _add_run_args(p, "print the result as one JSON object")
    p.add_argument("--json", nargs="?", const="full", choices=("full", "novel"),
                   help="print the result as one JSON object; --json novel: only accuracy by hops on the novel pool "
                        "(open_book, counterfactual, closed_book, chance)")
    p.set_defaults(func=cmd_facts_eval)
    p = fsub.add_parser("reader", help="train a small reader that reads facts from its context (word tokens, "
                                       "fresh preloaded examples, a curriculum over hops and distractors)")
    p.add_argument("--world", required=True, help="the world folder (its hops; its novel pool for the reading curve)")
    p.add_argument("--out", required=True, help="the reader's run folder")
    p.add_argument("--config", default="reader", help="model and schedule (default: the built-in 'reader')")
    p.add_argument("--resume", action="store_true", help="continue a reader stopped in --out (Ctrl-C, SIGTERM, a "
                   "kill), or read back a finished one, with the same settings")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.steps=2000 train.seed=1")
    for flag, kind, what in (("max-hops", int, "most hops of an example (default: the world's)"),
                             ("max-distractors", int, "most distractor cards of an example (6)"),
                             ("ramp", float, "share of the steps over which hops and distractors grow (0.5)"),
                             ("names", str, "name parts of the examples: all, or seen (W's seen pool only)"),
                             ("curve-every", int, "steps between reading-curve points, 0 = none (1000)"),
                             ("curve-questions", int, "W's novel questions per hop count on the curve (50)")):
        p.add_argument(f"--{flag}", type=kind, help=what)  # defaults: knowledge.reader.ReaderSettings (torch)
    p.add_argument("--steps", action="store_true", default=None,
                   help="answer with the supporting cards first, then the answer (RESEARCH.md 5b's steps); "
                        "`vslm facts eval` then lets the reader write its steps before it scores the choices")
    p.add_argument("--restate", action="store_true", default=None,
                   help="with --steps: after each card, the question it leaves (one relation shorter)")
    p.set_defaults(func=cmd_facts_reader)
    p = fsub.add_parser("capacity", help="bits of facts stored per parameter: models of several sizes trained on "
                                         "random biographies (Allen-Zhu & Li's bioS)")
    p.add_argument("--out", required=True, help="the sweep's folder: a run folder per size and seed, capacity.md")
    p.add_argument("--people", type=int, default=2000, help="biographies (default 2000; 47.6 bits each)")
    p.add_argument("--exposures", type=int, default=100, help="times each biography is trained on (default 100)")
    p.add_argument("--sizes", nargs="+", default=["1x16", "1x32", "2x32"], metavar="DxW",
                   help="depth x width of each model, heads of width 16 (default 1x16 1x32 2x32)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="training seeds (default 0 1 2)")
    p.add_argument("--world-seed", type=int, default=0, help="the biographies' seed (default 0)")
    p.add_argument("--config", default="capacity", help="model and schedule (default: the built-in 'capacity')")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.lr=1e-3")
    p.set_defaults(func=cmd_facts_capacity)
    p = fsub.add_parser("distill", help="train a student that forgets the world closed-book but reads it open-book")
    p.add_argument("teacher", help="run folder of a model that knows the world closed-book")
    p.add_argument("--naive", required=True, help="run folder of a model never shown the world (same tokenizer)")
    p.add_argument("--world", required=True, help="the world folder")
    p.add_argument("--out", required=True, help="the student's run folder")
    p.add_argument("--method", default="combined", choices=("combined", "gradient-ascent", "npo"),
                   help="the forgetting term: KL to the naive model (combined, the default), gradient ascent, or "
                   "NPO")
    p.add_argument("--steps", type=int, default=200, help="training steps of the student (default 200)")
    p.add_argument("--batch-size", type=int, default=16, help="examples a step (default 16)")
    p.add_argument("--lr", type=float, default=1e-3, help="the student's learning rate (default 1e-3)")
    p.add_argument("--beta", type=float, default=0.1, help="NPO's beta (default 0.1)")
    p.add_argument("--weight", action="append", default=[], metavar="TERM=W",
                   help="a loss term's weight: open_book, counterfactual, forget, retain, gradient_ascent, npo")
    p.add_argument("--distractors", type=int, default=4, help="wrong facts beside the gold ones in an open-book "
                   "context (default 4)")
    p.add_argument("--relearn-steps", type=int, default=0,
                   help="then the relearning test on the student and the naive model, this many steps")
    p.add_argument("--relearn-fraction", type=float, default=0.1, help="share of the people relearned (0.1)")
    p.add_argument("--seed", type=int, default=0, help="the student's seed: its batches and contexts (default 0)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N, mps, or auto (cuda if there is one)")
    p.add_argument("--threads", type=int, default=0, help="torch's CPU threads for the distillation and relearning "
                   "(default 0: torch's choice, one per core)")
    p.set_defaults(func=cmd_facts_distill)


def parse_size(text: str) -> int:
    """'50M' -> 50_000_000, '1G' -> 1_000_000_000, '300k' -> 300_000, '1200' -> 1200."""
    scale = {"k": 10**3, "m": 10**6, "g": 10**9}.get(text[-1:].lower(), 1)
    try:
        value = float(text[:-1] if scale > 1 else text) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (examples: 5000, 300k, 50M, 1G)") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"a size must be positive, got {text!r}")
    return int(value)


def cmd_data_list(a: argparse.Namespace) -> int:
    from rich.table import Table

    from vslm.data.registry import ENTRIES
    from vslm.data.sources import data_dirs, local_splits

    table = Table(title="data sources (data.source = NAME or NAME:SPLIT; or a path)", show_lines=False)
    for col in ("name", "Hugging Face hub", "license", "text", "local copy"):
        table.add_column(col, overflow="fold")
    for e in ENTRIES:
        hub = f"{e.hub}" + (f" ({e.hub_config})" if e.hub_config else "") if e.hub else "-"
        local = "generated" if e.hub is None and e.folder == "-" else ", ".join(local_splits(e)) or "-"
        table.add_row(e.name, hub, e.license, e.text, local)
    console.print(table, crop=False)
    for e in ENTRIES:  # what makes a source's numbers differ from another copy's (wikitext's tokenized release)
        if e.note:
            console.print(f"{e.name}: {e.note}", highlight=False, markup=False, soft_wrap=True)
    console.print(f"data folders searched: {', '.join(str(d) for d in data_dirs())}", highlight=False, markup=False)
    return 0


def cmd_data_prepare(a: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from vslm.config import DataConfig, apply_overrides, one_line_error
    from vslm.data.shards import max_bytes_note, prepare_corpus, split_note

    if others := [w for w in a.overrides if not w.startswith("data.")]:
        key = others[0].partition("=")[0]  # a field without its section: the data field meant
        hint = did_you_mean(key, DataConfig.model_fields, "data.") if "." not in key else ""
        raise ConfigError(f"data prepare takes data.* overrides only, got {' '.join(others)}{hint}")
    raw = {"source": a.name, "tokenizer": a.tokenizer, "vocab_size": a.vocab_size, "max_tokens": a.tokens,
           "max_bytes": a.max_bytes, "origin": a.origin}
    flags = {"source": "the NAME argument", "tokenizer": "--tokenizer", "vocab_size": "--vocab-size",
             "max_tokens": "--tokens", "max_bytes": "--max-bytes", "origin": "--origin"}
    for word in a.overrides:  # one setting given twice, by its flag and by an override: which one was meant?
        if raw.get(field := word.partition("=")[0].removeprefix("data.")) is not None:
            raise UsageError(f"{word} sets what {flags[field]} sets; give one of them")
    raw = apply_overrides({"data": {k: v for k, v in raw.items() if v is not None}}, a.overrides)
    tokenizer = raw["data"].get("tokenizer", DataConfig.model_fields["tokenizer"].default)
    if a.vocab_size is not None and tokenizer != "bpe":  # char, byte and gpt2 have their own vocabulary: the flag
        raise UsageError(f"--vocab-size applies to --tokenizer bpe; {tokenizer} has its own vocabulary")  # named
    try:
        cfg = DataConfig.model_validate(raw["data"])
    except ValidationError as e:
        raise ConfigError(one_line_error(e, prefix="data", root=DataConfig)) from None
    corpus = prepare_corpus(cfg, progress=not a.quiet and sys.stdout.isatty())
    m = corpus.meta
    state = "cached" if corpus.cache_hit else f"prepared in {m['prepare_s']:.1f} s"
    console.print(f"{m['source']}: {m['documents']:,} documents, {m['text_bytes']:,} bytes -> {m['train_tokens']:,} "
                  f"train + {m['val_tokens']:,} validation tokens ({m['tokenizer']}, vocabulary {m['vocab_size']:,}); "
                  f"{state}", highlight=False, markup=False)
    total = m["train_tokens"] + m["val_tokens"]
    if cfg.max_tokens is not None and total < cfg.max_tokens and not m.get("truncated_by_budget", True):
        # the text read stops at data.max_bytes, at a document's end: near it, the cap stopped it, not the source
        capped = cfg.max_bytes is not None and m["text_bytes"] >= 0.9 * cfg.max_bytes
        print(f"note: data.max_bytes={cfg.max_bytes:,} stopped {m['source']} at {total:,} tokens, short of the "
              f"{cfg.max_tokens:,} asked for: raise it" if capped else
              f"note: {m['source']} ran out at {total:,} tokens, short of the {cfg.max_tokens:,} asked for: all of "
              "it is used", file=sys.stderr)
    elif note := max_bytes_note(m, cfg.max_bytes):
        print(note, file=sys.stderr)
    if note := split_note(m, cfg.val_fraction):
        print(note, file=sys.stderr)
    print(corpus.folder)
    return 0


def cmd_eval(a: argparse.Namespace) -> int:
    if not a.on and not a.tasks:
        raise UsageError("eval needs --on CORPUS ... and/or --tasks TASK ...")
    for flag, value, half in (("--limit", a.limit, "--tasks"), ("--num-fewshot", a.num_fewshot, "--tasks"),
                              ("--include-path", a.include_path, "--tasks"), ("--batch-size", a.batch_size, "--on"),
                              ("--max-bytes", a.max_bytes, "--on"), ("--lengths", a.lengths, "--on")):
        if value is not None and not (a.tasks if half == "--tasks" else a.on):  # the other half's: said, not ignored
            raise UsageError(f"{flag} applies to {half}")
    a.batch_size = 32 if a.batch_size is None else a.batch_size
    _at_least(a, 1, "batch_size")
    if a.lengths is not None and (min(a.lengths) < 1 or max(a.lengths) > 64 or len(set(a.lengths)) < len(a.lengths)):
        raise UsageError(f"--lengths takes multiples of the context, each 1 to 64 (as train.eval_lengths), none "
                         f"twice; got {' '.join(map(str, a.lengths))}")
    _at_least(a, 0, "num_fewshot")
    if a.limit is not None and not (0 < a.limit < 1 or (1 <= a.limit < math.inf and a.limit.is_integer())):
        raise UsageError(f"--limit is a count of examples per task, or a fraction between 0 and 1, got {a.limit:g}")
    checkpoint = Path(a.checkpoint) if a.checkpoint else None
    out: dict = {"run": a.run}
    manager = None
    if a.tasks and a.on:  # the tasks' names checked before the corpora are scored (minutes that a typo would lose)
        from vslm.eval.harness import task_manager

        manager = task_manager(a.tasks, Path(a.include_path) if a.include_path else None)
    if a.on:
        from vslm.eval.corpus import evaluate_run
        from vslm.progress import track

        results = evaluate_run(Path(a.run), a.on, checkpoint, a.max_bytes, a.batch_size, a.device, track,
                               tuple(a.lengths or (1,)), a.text_field)
        out["corpora"] = [r.to_dict() for r in results]
    if a.tasks:
        from vslm.eval.harness import run_tasks

        out["tasks"] = run_tasks(Path(a.run), a.tasks, Path(a.include_path) if a.include_path else None, a.limit,
                                 a.num_fewshot, checkpoint, a.device, manager)
    if a.json:
        print(dumps(out))
        return 0
    from rich.markup import escape
    from rich.table import Table

    if a.on:
        table = Table(title=escape(f"{a.run}: loss per token (nats), bits per byte, word perplexity (word-level "
                                   "benchmarks)"))
        lengths = ("x context",) if a.lengths else ()
        for col in ("corpus", "split", *lengths, "tokens", "bytes", "loss", "bits/byte", "word ppl"):
            table.add_column(col, justify="left" if col in ("corpus", "split") else "right")
        for r in out["corpora"]:
            ppl = f"{r['word_perplexity']:,.2f}" if "word_perplexity" in r else "-"
            table.add_row(escape(r["corpus"]), r["split"], *([str(r["length"])] if a.lengths else []),
                          f"{r['tokens']:,}", f"{r['bytes']:,}", f"{r['loss']:.4f}", f"{r['bpb']:.4f}", ppl)
        console.print(table, crop=False)
        from vslm.data.registry import split_name

        entries = [split_name(r["corpus"])[0] for r in out["corpora"]]
        for entry in {e.name: e for e in entries if e is not None and e.note}.values():  # which release was read
            console.print(f"{entry.name}: {entry.note}", highlight=False, markup=False, soft_wrap=True)
    for task, metrics in out.get("tasks", {}).items():
        console.print(f"{task}: " + ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                                             for k, v in metrics.items()), highlight=False)
    return 0


def cmd_export(a: argparse.Namespace) -> int:
    from vslm.interop.hf import export_run

    print(export_run(Path(a.run), Path(a.out), Path(a.checkpoint) if a.checkpoint else None))
    return 0


def _add_bench_parser(sub) -> None:
    bench = sub.add_parser("bench", help="benchmarks: train, speedrun, prepare, attention, sample, parallel, gpu",
                           description="Benchmarks; `vslm bench ACTION --help` for each one's options.")
    bench.set_defaults(func=lambda a: _usage(bench))  # a bare `vslm bench` lists the benchmarks
    bsub = bench.add_subparsers(dest="bench_command", metavar="ACTION")

    def json_flag(p: argparse.ArgumentParser) -> None:
        p.add_argument("--json", action="store_true", help="print one JSON line")

    def reference_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--data", help="text file (default: tiny Shakespeare from the data folder)")
        p.add_argument("--reference", help="path of reference_gpt.py (default: ../shared/bench/)")

    p = bsub.add_parser("train", help="time the nanogpt preset side by side with shared/bench/reference_gpt.py")
    reference_args(p)
    p.add_argument("--steps", type=int, default=2000, help="training steps (default 2000)")
    p.add_argument("--repeat", type=int, default=1, help="alternate runs of both; report medians (default 1)")
    p.add_argument("--eval-batches", type=int, default=200, help="validation batches of both trainers (default 200)")
    json_flag(p)
    p.add_argument("overrides", nargs="*", help="overrides of the nanogpt preset; its shape (model.depth, "
                   "model.width, model.heads, model.context, train.batch_size) goes to the reference too")
    p.set_defaults(func=cmd_bench_train)

    p = bsub.add_parser("speedrun", help="time the speedrun-shakespeare config to val loss 1.88 against the reference")
    reference_args(p)
    p.add_argument("--repeat", type=int, default=1, help="alternate runs of both; report medians (default 1)")
    json_flag(p)
    p.add_argument("overrides", nargs="*", help="overrides of the speedrun-shakespeare config")
    p.set_defaults(func=cmd_bench_speedrun)

    p = bsub.add_parser("prepare", help="data preparation of generated stories: tokenization MB/s and peak memory")
    p.add_argument("--bytes", type=parse_size, default=10**9, help="text generated (default 1G)")
    p.add_argument("--tokenizer", choices=["char", "byte", "bpe", "gpt2"], default="bpe",
                   help="the tokenizer (default bpe, vocabulary 2048)")
    json_flag(p)
    p.set_defaults(func=cmd_bench_prepare)

    p = bsub.add_parser("attention", help="time each attention normalisation")
    p.add_argument("--steps", type=int, default=20, help="training steps (default 20)")
    p.add_argument("--repeat", type=int, default=1, help="runs of each; report medians (default 1)")
    json_flag(p)
    p.set_defaults(func=cmd_bench_attention)

    p = bsub.add_parser("sample", help="sampling tokens/s of the demo model with and without the key/value cache")
    p.add_argument("--tokens", type=int, default=256, help="new tokens per sample, batch 1 (default 256)")
    p.add_argument("--repeat", type=int, default=3, help="interleaved runs of each; report medians (default 3)")
    p.add_argument("--profile", type=int, default=0, metavar="N",
                   help="also the N ops that take most of a cached step's time (torch.profiler)")
    json_flag(p)
    p.add_argument("overrides", nargs="*", help="model.* overrides of the demo config (not model.vocab_size: 64)")
    p.set_defaults(func=cmd_bench_sample)

    p = bsub.add_parser("parallel", help="an experiment's wall time one run after another, in N worker processes, "
                        "and on a local Ray instance")
    p.add_argument("experiment", nargs="?", default="arch-root", help="the experiment (default arch-root)")
    p.add_argument("--seeds", type=int, default=3, help="seeds (default 3)")
    p.add_argument("--launchers", default="1,2", help="comma-separated worker counts and 'ray' (default 1,2); "
                   "the first is the ratios' baseline")
    p.add_argument("--repeat", type=int, default=1, help="rounds of every launcher in turn; report medians (default 1)")
    p.add_argument("--keep", metavar="DIR", help="keep each launcher's experiment folder (results, runs) in DIR")
    json_flag(p)
    p.add_argument("overrides", nargs="*", help="overrides of every variant")
    p.set_defaults(func=cmd_bench_parallel)

    p = bsub.add_parser("gpu", help="the GPU check: 10M and 50M models, peak, memory, the GPU Shakespeare recipe "
                        "(scripts/gpu_check.sh)")
    p.add_argument("--seconds", type=float, default=60, help="training seconds per model (default 60)")
    p.add_argument("--shakespeare-seconds", type=float, default=150,
                   help="at most this long for the Shakespeare recipe (default 150)")
    p.add_argument("--models", help="comma-separated models to time, or none (default 10M,50M,50M-batch128,"
                                    "50M-cudagraphs; also 50M-batch256, 50M-max-autotune)")
    p.add_argument("--recipes", help="comma-separated Shakespeare recipes, or none (default nanogpt,adamw-1500,"
                                     "muon-wsd-1200; also adamw-2000, muon-wsd-1000)")
    p.add_argument("--repeat", type=int, default=1, help="runs of each Shakespeare recipe, with their medians "
                   "(default 1)")
    p.add_argument("--profile", help="comma-separated models whose training step to profile (torch.profiler: "
                                     "device time by kind of kernel), before the timed ones")
    p.add_argument("--json-out", help="write the results here (default $OUT/gpu_check.json if OUT is set)")
    json_flag(p)
    p.set_defaults(func=cmd_bench_gpu)


def _usage(parser: argparse.ArgumentParser) -> int:
    """A command group called without its action: its help, on stderr, and the usage-error exit code."""
    parser.print_help(sys.stderr)
    return 2


def _version() -> str:
    """vslm's version and the torch and Python it runs with (torch's from its metadata: not imported)."""
    from importlib.metadata import PackageNotFoundError, version

    from vslm import __version__

    try:
        torch = version("torch")
    except PackageNotFoundError:
        torch = "not installed"
    return f"vslm {__version__} (torch {torch}, Python {sys.version.split()[0]})"


class _Version(argparse.Action):
    """--version: the versions looked up only when asked (torch's metadata takes 25 ms, every command would pay)."""

    def __call__(self, parser, namespace, values, option_string=None):
        print(_version())
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="vslm", description="A lab for very small language models.")
    ap.add_argument("--version", action=_Version, nargs=0, help="show vslm's, torch's and Python's versions and exit")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train a model from a config",
                       description="Train a model from a config (a built-in name or a TOML file) and dotted "
                                   "overrides, into --out; --resume continues a run exactly.")
    _add_config_args(p, optional=True)
    p.add_argument("--out", help="run folder (default runs/<config name>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out exactly")
    p.add_argument("--checkpoint", help="with --resume: continue from this checkpoint file (default: the newest "
                                        "that reads and holds finite weights)")
    p.add_argument("--init-from-hf", metavar="DIR", help="start from a transformers checkpoint folder (GPT-2, Llama, "
                   "Mistral: an export or a model on disk): its architecture replaces [model]'s, its weights the init")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("configs", help="list the built-in configs")
    p.set_defaults(func=cmd_configs)

    p = sub.add_parser("describe", help="per-layer table of a config's model: parameters and FLOPs")
    _add_config_args(p)
    p.set_defaults(func=cmd_describe)

    p = sub.add_parser("sample", help="generate text from a trained run",
                       description="Generate text from a run's newest good checkpoint (or --checkpoint); the file "
                                   "used is named on stderr, the samples go to stdout; where the model ends a "
                                   "document, <|endoftext|> stands, as in the text files it reads.")
    p.add_argument("run", help="run folder")
    p.add_argument("--prompt", action="append", default=[], help="text the samples continue (default: none, from "
                   "end-of-text); repeat for several prompts, --num samples each, the same seed for each")
    p.add_argument("--tokens", type=int, default=200, help="tokens generated per sample (default 200)")
    p.add_argument("--num", type=int, default=1, help="samples (default 1)")
    p.add_argument("--temperature", type=float, default=0.8, help="> 0 samples; 0 is greedy (default 0.8)")
    p.add_argument("--top-k", type=int, default=40, help="sample from the k likeliest tokens, k >= 1 (default 40)")
    p.add_argument("--seed", type=int, default=0, help="random seed; the same seed, the same samples (default 0)")
    p.add_argument("--checkpoint", help="one of the run's checkpoint or snapshot files (default: the newest that "
                                        "reads and holds finite weights)")
    p.add_argument("--no-cache", action="store_true", help="recompute every position at each step (the same "
                   "tokens, slower; default: keep keys and values, with the reason on stderr where it cannot)")
    p.add_argument("--threads", type=int, default=0, help="torch's CPU threads (default 0: torch's choice, one "
                   "per core); on a busy machine 1 can be many times faster, and a warning says when")
    p.add_argument("--slide", action="store_true", help="past the context, every layer attends to its last "
                   "`context` keys with positions running on (RoPE models; the cache keeps its speed there) "
                   "instead of cropping to the last `context` tokens from position 0 (the default, nanoGPT's)")
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("probe", help="run the training-dynamics probes over a run's snapshots")
    p.add_argument("run", help="run folder")
    p.add_argument("--out", help="output file (default RUN/probes-snapshots.jsonl)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--copying", choices=("names", "lists", "tokens", "songs"),
                   help="instead: does the model copy from context, on held-out stories (vslm.probes.copying): "
                        "names and lists need a character tokenizer; loss where copying helps against where it "
                        "cannot, attention per depth and head to the copy source")
    p.add_argument("--invented", action="store_true", help="--copying names/lists/songs: stories with invented names")
    p.add_argument("--far", action="store_true", help="--copying songs: the song sung again only far from the first")
    p.add_argument("--stories", type=int, help="--copying: held-out stories (default 300)")
    p.add_argument("--windows", type=int, help="--copying names/tokens: windows read (default 300/200)")
    p.add_argument("--batch", type=int, help="--copying: windows per forward pass (default 32)")
    p.add_argument("--checkpoint", help="--copying, --induction: one of the run's checkpoint or snapshot files "
                   "(default: the newest that reads and holds finite weights)")
    p.add_argument("--json", action="store_true", help="--copying, --induction: the numbers as JSON")
    mode.add_argument("--induction", type=int, metavar="L",
                   help="instead: the induction probe at copy distance L on the newest good checkpoint (or "
                        "--checkpoint)")
    p.add_argument("--support", help="--induction: draw the sequences from these characters' tokens "
                                     "(default: every token of the training text)")
    p.add_argument("--sequences", type=int, help="--induction: sequences written twice (default 64)")
    p.set_defaults(func=cmd_probe)

    p = sub.add_parser("report", help="write RUN/report.html: loss curves and training-dynamics probes (of an "
                       "experiment folder: its variants, curves and dynamics)")
    p.add_argument("run", help="run folder, or experiment folder")
    live = p.add_mutually_exclusive_group()
    live.add_argument("--serve", action="store_true", help="serve the report on http://127.0.0.1:PORT/, redrawn as "
                      "the run advances, the page reloading itself, until Ctrl-C")
    live.add_argument("--watch", action="store_true", help="redraw RUN/report.html in place as the run advances, "
                      "until the run ends")
    p.add_argument("--port", type=int, help="--serve: the port (default 0: any free one, printed)")
    p.add_argument("--every", type=float, help="--serve/--watch: seconds between looks at the run's files "
                   "(default 2)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("watch", help="a live view of a running run: progress, ETA, loss, probes, checkpoints",
                       description="Follow a run from its files (another process trains it): progress and ETA, a "
                                   "loss sparkline, the last validation loss and bits per byte, tokens/s, the latest "
                                   "probes, the last checkpoint. Ends when the run reaches its last step.")
    p.add_argument("run", help="run folder")
    p.add_argument("--once", action="store_true", help="print one view and exit")
    p.add_argument("--every", type=float, default=2.0, help="seconds between reads of the files (default 2)")
    p.add_argument("--idle", type=float, default=600.0,
                   help="stop after this many seconds without a new step (default 600): a fallback, for a run that "
                        "holds its lock but no longer steps; a run no process trains in is told by its lock at once")
    p.set_defaults(func=cmd_watch)

    p = sub.add_parser("compare", help="overlay several runs' curves in one HTML page")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folders")
    p.add_argument("--out", default=str(Path("runs") / "compare.html"),
                   help="output file, replaced if there: the runs redraw it (default runs/compare.html)")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("shape", help="how prompts reshape the distribution of a continuation")
    p.add_argument("run", help="run folder")
    p.add_argument("--prompt", action="append", default=[], help="a prompt (at least one; repeat for several), "
                   "compared with the empty prompt, always measured")
    p.add_argument("--continuation", required=True, help="the continuation y to score under each prompt")
    p.add_argument("--samples", type=int, default=8, help="sampled continuations per prompt (default 8)")
    p.add_argument("--tokens", type=int, default=100, help="tokens per sampled continuation (default 100)")
    p.add_argument("--seed", type=int, default=0, help="the sampling seed (default 0)")
    p.add_argument("--plot", help="PNG path (default RUN/shape.png, with --over-training RUN/shape-course.png)")
    p.add_argument("--over-training", action="store_true",
                   help="the measurements at every snapshot of the run (steps 0, 1, 2, 4, ...), no sampling")
    p.add_argument("--json", action="store_true", help="print the measurements as one JSON object")
    p.set_defaults(func=cmd_shape)

    p = sub.add_parser("demo", help="train a ~1M-parameter model on the embedded stories and show what it learned")
    p.add_argument("overrides", nargs="*", help="dotted overrides of the demo config")
    p.add_argument("--out", help="run folder (default runs/demo, or runs/demo-N if taken)")
    p.set_defaults(func=cmd_demo)

    _add_bench_parser(sub)

    p = sub.add_parser("plan", help="the model size and token budget that fit in H hours here; writes a config")
    p.add_argument("--hours", type=float, required=True, help="the training time to plan for")
    p.add_argument("--data", help="data source of the run (default: the embedded stories)")
    p.add_argument("--out", help="the config to write, a new file (default plan.toml, or plan-N.toml if taken)")
    p.add_argument("--seconds", type=float, default=5, help="seconds of training per measured size (default 5)")
    p.add_argument("--max-measure", type=int, default=5, help="sizes measured at most (default 5)")
    p.add_argument("--from", dest="from_fit", metavar="FIT_JSON",
                   help="a scaling study's fit.json (vslm scaling): choose by its law, not 20 tokens per parameter")
    p.add_argument("overrides", nargs="*", help="overrides of the plan's base config, e.g. model.context=128")
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("data", help="the dataset registry: list the corpora, prepare one into token shards")
    data = p.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    q = data.add_parser("list", help="the named corpora: hub source, license, text field, local copies")
    q.set_defaults(func=cmd_data_list)
    q = data.add_parser("prepare", help="stream a corpus into the cached token shards (with a progress bar)")
    q.add_argument("name", help="a registry name, NAME:SPLIT, or a path")
    q.add_argument("overrides", nargs="*", help="data.* overrides, e.g. data.val_fraction=0.05")
    q.add_argument("--tokens", type=parse_size, help="token budget (e.g. 50M); without --max-bytes, no byte limit")
    q.add_argument("--tokenizer", choices=["char", "byte", "bpe", "gpt2"], help="default char")
    q.add_argument("--vocab-size", type=int, help="bpe: vocabulary size (default 2048)")
    q.add_argument("--max-bytes", type=parse_size, help="text read at most (default 8M without --tokens)")
    q.add_argument("--origin", choices=["auto", "local", "hub"], help="registry names: local copy or the hub")
    q.add_argument("--quiet", action="store_true", help="no progress bar")
    q.set_defaults(func=cmd_data_prepare)

    p = sub.add_parser("eval", help="a run on corpora (loss, bits per byte, word perplexity) or harness tasks")
    p.add_argument("run", help="run folder")
    p.add_argument("--on", nargs="+", default=[], metavar="CORPUS",
                   help="registry names (their evaluation split), NAME:SPLIT, or paths")
    p.add_argument("--tasks", nargs="+", default=[], metavar="TASK", help="lm-evaluation-harness tasks")
    p.add_argument("--include-path", help="a folder of harness task YAML files (then only those are known)")
    p.add_argument("--limit", type=float, help="harness: examples per task (a fraction if < 1)")
    p.add_argument("--num-fewshot", type=int, help="harness: few-shot examples")
    p.add_argument("--text-field", help="--on: the field holding the text in JSON lines and parquet files (default: "
                   "the run's data.text_field)")
    p.add_argument("--max-bytes", type=parse_size, help="--on: corpus text read at most (default: all of an "
                   "evaluation split or a file; the run's data.max_bytes for a corpus's held-out documents); for the "
                   "run's own corpus, the held-out text scored")
    p.add_argument("--batch-size", type=int, help="--on: windows per forward pass (default 32)")
    p.add_argument("--lengths", type=int, nargs="+", metavar="M",
                   help="--on: also in windows of M times the context, every position attending over all of its "
                        "past (RoPE models: length generalisation), e.g. --lengths 1 2 4")
    _add_run_args(p, "print one JSON line")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("export", help="write a run as a Hugging Face transformers model folder (no custom code)")
    p.add_argument("run", help="run folder")
    p.add_argument("--format", choices=["hf"], default="hf", help="hf: transformers' native classes (default)")
    p.add_argument("--out", required=True, help="the folder to write (must not exist, or be empty)")
    p.add_argument("--checkpoint", help="one of the run's checkpoint or snapshot files (default: the newest that reads "
                   "and holds finite weights)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("experiment", help="train the variants of an experiment over seeds and compare them",
                       description="Train the variants of an experiment over seeds and compare them. An experiment "
                                   "file's keys (base, seeds, overrides, [[variants]] with name, overrides, sweep) "
                                   "are in the README, 'Experiments'.")
    p.add_argument("experiment", nargs="?", help="a built-in experiment name or a TOML file")
    p.add_argument("overrides", nargs="*", help="dotted overrides applied to every variant")
    p.add_argument("--seeds", type=int, help="number of seeds (default: the experiment's)")
    p.add_argument("--out", help="folder of the runs and results (default runs/experiments/<name>)")
    p.add_argument("--list", action="store_true", help="list the built-in experiments")
    p.add_argument("--resolve", type=float, metavar="WIDTH",
                   help="add seeds in rounds until every variant's 95%% interval is at most ±WIDTH nats")
    p.add_argument("--max-seeds", type=int, help="with --resolve: the most seeds per variant (default 12)")
    p.add_argument("--sweep", action="append", nargs="+", metavar="OVERRIDE",
                   help="repeatable, one choice each: every variant trains each choice (its overrides, up to the "
                        "next flag) on seed 0 (--sweep-seeds K: seeds 0..K-1) and keeps its best, in place of the "
                        "experiment's sweeps; e.g. --sweep train.lr=3e-3 train.min_lr=3e-4 --sweep train.lr=6e-3 "
                        "train.min_lr=6e-4")
    p.add_argument("--sweep-seeds", type=int, metavar="K",
                   help="a sweep keeps the choice of the lowest mean validation loss over seeds 0..K-1 (default: "
                        "the experiment's sweep_seeds, 1), and the comparison reuses those runs")
    p.add_argument("--variants", metavar="NAMES",
                   help="comma-separated: train and compare only these variants and the baseline (the first), "
                        "e.g. --variants ssmax,sigmoid; their runs are the full experiment's, reused either way, and "
                        "the Holm correction counts these (refused where --out holds results of the others)")
    p.add_argument("--dry-run", action="store_true", help="check everything and list the runs (parameters, "
                   "FLOPs, tokens, what --out already holds; a knowledge experiment's arms); train and write nothing")
    p.add_argument("--json", action="store_true", help="with --dry-run: one JSON line")
    launcher_args(p)
    p.set_defaults(func=cmd_experiment)

    p = sub.add_parser("scaling", help="train a grid of sizes x token budgets on one token stream; fit L(N, D)")
    p.add_argument("spec", nargs="?", help="a built-in scaling spec (scaling-tiny, scaling-hour) or a TOML file")
    p.add_argument("overrides", nargs="*", help="dotted overrides applied to every run, e.g. train.threads=1")
    p.add_argument("--out", help="folder of the runs, fit.json and report.html (default runs/scaling/<name>)")
    p.add_argument("--dry-run", action="store_true", help="validate and print the grid; train nothing")
    p.add_argument("--list", action="store_true", help="list the built-in scaling specs")
    launcher_args(p)
    p.set_defaults(func=cmd_scaling)

    _add_facts_parser(sub)
    return ap


def launcher_args(p: argparse.ArgumentParser) -> None:
    """Where many runs train (vslm.lab.parallel): --jobs, --launcher, --address, --cpus-per-run."""
    p.add_argument("--jobs", help="runs trained at once in worker processes, cores split between them "
                                  "(default auto: one per core on a CPU machine, 1 with CUDA)")
    p.add_argument("--launcher", choices=("local", "ray"), default="local",
                   help="ray: each run a task on a Ray cluster (pip install 'vslm[ray]')")
    p.add_argument("--address", help="with --launcher ray: the cluster (HOST:PORT, ray://HOST:PORT or auto); "
                                     "default a local instance")
    p.add_argument("--cpus-per-run", type=int, help="with --launcher ray: CPUs (torch threads) per run (default 1)")


def _command_parser(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.ArgumentParser:
    """The parser of the (sub)command that `args` were parsed for: `vslm bench train`'s, say."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) and getattr(args, action.dest, None) in action.choices:
            return _command_parser(action.choices[getattr(args, action.dest)], args)
    return parser


def _given_beside_list(command: argparse.ArgumentParser, args: argparse.Namespace) -> list[str]:
    """The arguments of `command` that the command line set to other than their defaults, besides --list."""
    given = []
    for action in command._actions:
        value = getattr(args, action.dest, None)
        if action.dest in ("help", "list") or value == action.default or (action.nargs == "*" and value == []):
            continue
        given.append(action.option_strings[-1] if action.option_strings else action.dest)
    return given


class Terminated(BaseException):
    """SIGTERM outside a training (which checkpoints first and raises TrainingStopped): an evaluation, a report.
    A BaseException, as KeyboardInterrupt is: no `except Exception` takes it for a failed run and goes on."""


def _peer_lost(e: RuntimeError) -> bool:
    """Whether `e` is torch.distributed's word that another process of the run is gone (gloo's 'Connection reset
    by peer' or 'closed by peer'), under torchrun: one line then, not a traceback per rank. An error of this
    rank's own (NCCL's out of memory, a CUDA error) keeps its traceback."""
    return "WORLD_SIZE" in os.environ and any(
        words in str(e) for words in ("Connection reset by peer", "Connection closed by peer"))


# commands that take up what they finished when run again (their runs, a distillation's checkpoints)
REUSES_FINISHED = {("experiment",), ("scaling",), ("facts", "capacity"), ("facts", "distill")}


def _terminate(signum, frame) -> None:
    raise Terminated


def main(argv: list[str] | None = None) -> int:
    here = threading.current_thread() is threading.main_thread()  # handlers only in the main thread
    previous = signal.signal(signal.SIGTERM, _terminate) if here else None
    try:
        return _main(argv)
    except Terminated:
        words = sys.argv[1:] if argv is None else argv
        reuses = tuple(words[:2]) in REUSES_FINISHED or tuple(words[:1]) in REUSES_FINISHED  # the others: nothing
        print("vslm: stopped by SIGTERM" + (" (what was finished is kept: the same command reuses it)" if reuses
                                            else ""), file=sys.stderr)
        return 143
    finally:
        if here:
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    words = sys.argv[1:] if argv is None else argv
    commands = next(a.choices for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    if not words:  # a bare `vslm`: the commands, as a bare `vslm bench` lists its benchmarks
        return _usage(parser)
    if words and not words[0].startswith("-") and words[0] not in commands:  # a command typed wrong: the one meant
        parser.error(f"unknown command '{words[0]}'{did_you_mean(words[0], commands)}; the commands: "
                     f"{', '.join(commands)}")
    args, extra = parser.parse_known_args(argv)
    # overrides may come after options too: `vslm train cfg --out x train.steps=5`
    unknown = [w for w in extra if w.startswith("-") or "=" not in w or not hasattr(args, "overrides")]
    if unknown:  # the command's own usage, and the option meant
        command = _command_parser(parser, args)
        options = [o for action in command._actions for o in action.option_strings]
        hint = next((h for w in unknown if w.startswith("--") and (h := did_you_mean(w.split("=")[0], options))), "")
        command.error(f"unrecognized arguments: {' '.join(unknown)}{hint}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    if getattr(args, "list", False) and (given := _given_beside_list(_command_parser(parser, args), args)):
        print(f"vslm: error: --list lists the built-in names and takes nothing else; got {', '.join(given)}",
              file=sys.stderr)
        return 2
    try:
        if isinstance(getattr(args, "device", None), str):  # a device this machine lacks: said before a
            from vslm.train.run_folder import device_of  # checkpoint is read (its load would be blamed)

            args.device = str(device_of(args.device, "--device "))  # auto: cuda or cpu
        return args.func(args)
    except VSLMError as e:
        print(f"vslm: {e.label}{e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("vslm: interrupted", file=sys.stderr)
        return 130
    except RuntimeError as e:
        if not _peer_lost(e):
            raise
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        on = ("; `vslm train --resume` continues from the run's last checkpoint" if args.command == "train" and
              getattr(args, "out", None) else "")
        print(f"vslm: error: rank {os.environ.get('RANK', '?')} lost the other processes of the run ({first}): "
              f"another rank stopped or died, and its own lines say why{on}", file=sys.stderr)
        return 1
    except OSError as e:
        import errno

        if e.errno in (errno.EROFS, errno.EACCES, errno.EPERM) and e.filename:  # a folder the command cannot write
            print(f"vslm: error: cannot write {e.filename}: {e.strerror}; give a folder you can write to (--out)",
                  file=sys.stderr)
            return 1
        if e.errno not in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
            raise
        where = f" in {Path(e.filename).parent}" if e.filename else ""
        print(f"vslm: error: cannot write{where}: {e.strerror}; free space, then resume with --resume", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
