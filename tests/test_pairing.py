"""Seed s gives every variant that changes only model or optimizer fields the same data order, validation
windows and probe set: what lets vslm.lab.stats compare variants on paired per-seed differences
(vslm.lab.experiments.seeds_pair decides which variants pair)."""

import torch

from vslm.lab.experiments import load_experiment, plan_experiment, seeds_pair
from vslm.train.probing import build_probe_set
from vslm.train.trainer import Trainer

COMMON = ["train.steps=2", "train.eval_every=0", "train.eval_windows=8", "train.checkpoint_every=0",
          "train.snapshots=false", "data.max_bytes=100000", "logging.progress=false", "logging.tensorboard=false"]


def seen_by(cfg, folder) -> dict:
    """What the seed decides beside the weights: the first training batches, the validation windows, the
    probe set's windows."""
    trainer = Trainer(cfg, folder)
    batches = [trainer.batches.next_batch()[0].clone() for _ in range(3)]
    probes = build_probe_set(trainer.corpus, cfg.model.context, trainer.cfg.model.vocab_size)
    return {"batches": torch.stack(batches), "val_x": trainer.val_x.clone(), "probes": probes.windows.clone()}


def same(a: dict, b: dict) -> dict[str, bool]:
    return {k: a[k].shape == b[k].shape and bool(torch.equal(a[k], b[k])) for k in a}


def test_seed_s_gives_model_and_optimizer_variants_the_same_data(tmp_path):
    spec = tmp_path / "exp.toml"
    spec.write_text(f'base = "tiny"\nseeds = 2\noverrides = {COMMON!r}\n'
                    '[[variants]]\nname = "base"\n'
                    '[[variants]]\nname = "wide"\noverrides = ["model.width=48", "model.depth=3"]\n'
                    '[[variants]]\nname = "optim"\noverrides = ["train.optimizer=muon", "train.lr=3e-3"]\n'
                    '[[variants]]\nname = "other-data"\noverrides = ["data.max_bytes=120000"]\n')
    _, parsed = load_experiment(str(spec))
    plan = {v: choices[""] for v, choices in plan_experiment(parsed, 2).items()}
    seen = {(v, s): seen_by(cfg, tmp_path / v / str(s)) for v, cfgs in plan.items() for s, cfg in enumerate(cfgs)}
    everything = {"batches": True, "val_x": True, "probes": True}
    for v in ("wide", "optim"):
        for s in (0, 1):
            assert seeds_pair(plan["base"][s], plan[v][s])
            assert same(seen["base", s], seen[v, s]) == everything, (v, s)
    # the test can fail: another seed draws other batches (validation windows and probes are fixed by design),
    # and a variant that changes the data sees other windows and is not paired
    assert same(seen["base", 0], seen["base", 1]) == {"batches": False, "val_x": True, "probes": True}
    assert not seeds_pair(plan["base"][0], plan["other-data"][0])
    assert not seeds_pair(plan["base"][0], plan["base"][1])
    assert same(seen["base", 0], seen["other-data", 0])["batches"] is False
