"""The cached sampling step of an earlier commit against the working tree's, in one process.

On a shared machine two benchmark runs minutes apart differ by up to 2x, so a change of 10% to a sampling
step cannot be read from two `vslm bench sample` runs. This loads the commit's `src/vslm` (from `git archive`,
renamed `vslm_ref`) beside the installed `vslm`, builds the demo model in both (each from its own config
presets, with the same weights: the reference's are loaded from the working tree's), runs each once untimed,
then alternates `generate(slide=True)` of each (crop where the model cannot slide), `--pairs` times, flipping
the order every pair. It prints one JSON line: each side's median microseconds per token, the median and
range of the per-pair speed-up (reference time over working tree time), in how many pairs the working tree
was faster, and whether the tokens agreed.

    python scripts/ab_sampling.py REF [--pairs 21] [--tokens 256] [overrides of the demo config]
"""

from __future__ import annotations

import argparse
import io
import json
import re
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def load_reference(ref: str, into: Path):
    """The commit's vslm package as `vslm_ref`: its files with their own imports renamed."""
    tar = subprocess.run(["git", "-C", str(ROOT), "archive", ref, "src/vslm"], capture_output=True, check=False)
    if tar.returncode != 0:
        raise SystemExit(f"error: git archive {ref}: {tar.stderr.decode().strip()}")
    with tarfile.open(fileobj=io.BytesIO(tar.stdout)) as archive:
        # the safe extraction filter where this Python has it (3.11.4 and later)
        archive.extractall(into, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    package = into / "vslm_ref"
    (into / "src" / "vslm").rename(package)
    for path in package.rglob("*.py"):  # its imports, and module names written as strings (its config presets)
        text = re.sub(r"\b(from|import) vslm(\.|\b)", r"\1 vslm_ref\2", path.read_text())
        path.write_text(re.sub(r"""(["'])vslm(\.|["'])""", r"\1vslm_ref\2", text))
    forget_reference()
    sys.path.insert(0, str(into))
    import vslm_ref.config
    import vslm_ref.model

    return vslm_ref.config.load_config, vslm_ref.model.GPT


def forget_reference() -> None:
    """Drop a loaded reference package from this process (sys.modules and its folder on sys.path)."""
    for name in [m for m in sys.modules if m == "vslm_ref" or m.startswith("vslm_ref.")]:
        del sys.modules[name]
    sys.path[:] = [p for p in sys.path if not (Path(p) / "vslm_ref").is_dir()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ref", help="the commit to compare against (any git revision)")
    parser.add_argument("--pairs", type=int, default=21)
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("overrides", nargs="*", help="overrides of the demo config, for both")
    args = parser.parse_args(argv)
    if args.pairs < 1 or args.tokens < 1:
        print("error: --pairs and --tokens must be at least 1", file=sys.stderr)
        return 2
    from vslm.commands.bench import interleaved, sampling_model

    with tempfile.TemporaryDirectory(prefix="vslm-ab-") as tmp:
        try:
            ref_load, RefGPT = load_reference(args.ref, Path(tmp))
            tree = sampling_model(args.overrides)
            models = {"tree": tree, "ref": RefGPT(ref_load("demo", [*args.overrides, "model.vocab_size=64"]).model)}
            models["ref"].load_state_dict(tree.state_dict())  # the same weights
            models["ref"].eval()
            slide = tree.slide_refusal() is None
            prompt = torch.zeros(1, 1, dtype=torch.long)
            for model in models.values():  # untimed: first-call costs, the rotary tables' extension
                model.generate(prompt, args.tokens, temperature=0, slide=slide)
            times, tokens = interleaved({name: lambda m=m: m.generate(prompt, args.tokens, temperature=0, slide=slide)
                                         for name, m in models.items()}, args.pairs)
        finally:
            forget_reference()
    us = {name: [t / args.tokens * 1e6 for t in v] for name, v in times.items()}
    speedups = [r / t for r, t in zip(us["ref"], us["tree"], strict=True)]
    print(json.dumps({"ref": args.ref, "tokens": args.tokens, "pairs": args.pairs, "slide": slide,
                      "threads": torch.get_num_threads(),
                      "us_per_token": {name: round(statistics.median(v), 1) for name, v in us.items()},
                      "speedup_median": round(statistics.median(speedups), 3),
                      "speedup_range": [round(min(speedups), 3), round(max(speedups), 3)],
                      "tree_faster_pairs": sum(s > 1 for s in speedups),
                      "same_tokens": torch.equal(tokens["ref"], tokens["tree"])}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
