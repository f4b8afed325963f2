"""TensorBoard events: scalars per logged step, probe scalars and the position-loss heat map image."""

import pytest

from conftest import tiny_overrides
from vslm.config import load_config
from vslm.errors import VSLMError
from vslm.train import figures
from vslm.train import tensorboard as tb
from vslm.train.trainer import Trainer

pytest.importorskip("tensorboard")


def test_events_hold_scalars_and_the_heatmap(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = load_config("tiny", tiny_overrides(train__steps=20, train__eval_every=10, logging__probe_every=8,
                                             logging__tensorboard="true"))
    Trainer(cfg, tmp_path / "r").fit()
    events = EventAccumulator(str(tmp_path / "r" / tb.TENSORBOARD), size_guidance={"images": 0}).Reload()
    assert [e.step for e in events.Scalars("loss")] == list(range(1, 21))
    assert [e.step for e in events.Scalars("val_loss")] == [10, 20]
    assert [e.step for e in events.Scalars("probe/M1")] == [0, 1, 2, 4, 8, 16, 20]
    images = events.Images("probe/position_loss_heatmap")
    assert [i.step for i in images] == [0, 1, 2, 4, 8, 16, 20]
    assert images[-1].height == 7 * figures.ROW_PIXELS and images[-1].width == cfg.model.context - 1


def test_a_resume_keeps_the_events_of_its_checkpoints_step(tmp_path, monkeypatch):
    """Resumed at step 4 (a checkpoint holds steps 1-4), events from step 5 on are written anew: step 4's
    loss and validation stay (purging from step 4 itself had lost them: training goes on at step 5). The
    resume's event file sorts after the first's, as TensorBoard reads them by name, also where both are of one
    second and one process whose file count goes from 9 to 10 ("10" sorts first as text: steps 5-8 were read
    twice, once the suite's other tests in the process had counted 9 files)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.summary.writer import event_file_writer

    monkeypatch.setattr(event_file_writer, "_global_uid", event_file_writer.AtomicCounter(9))

    overrides = tiny_overrides(train__steps=8, train__eval_every=4, train__checkpoint_every=4,
                               logging__tensorboard="true", logging__probe_every=0)
    Trainer(load_config("tiny", overrides), tmp_path / "r").fit()
    (tmp_path / "r" / "checkpoints" / "step_00000008.safetensors").unlink()  # as if stopped after step 4's
    Trainer(load_config("tiny", overrides), tmp_path / "r", resume=True).fit()
    files = sorted(p.name for p in (tmp_path / "r" / tb.TENSORBOARD).iterdir())
    assert [f.rsplit(".", 1)[1] for f in files] == ["9", "10"]  # the first run's file, then the resume's
    events = EventAccumulator(str(tmp_path / "r" / tb.TENSORBOARD)).Reload()
    assert [e.step for e in events.Scalars("loss")] == list(range(1, 9))
    assert [e.step for e in events.Scalars("val_loss")] == [4, 8]


def test_heatmap_image_by_hand():
    image = figures.heatmap_image([[1.0, 2.0], [3.0, 3.0]])
    assert image.shape == (2 * figures.ROW_PIXELS, 2, 3) and image.dtype.name == "uint8"
    assert (image[0, 0] != image[-1, -1]).any() and (image[-1, 0] == image[-1, 1]).all()


def test_asking_for_tensorboard_without_the_package_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(tb, "tensorboard_available", lambda: False)
    cfg = load_config("tiny", tiny_overrides(train__steps=2, logging__tensorboard="true"))
    with pytest.raises(VSLMError, match=r"needs the tensorboard package: pip install 'vslm\[tensorboard\]'"):
        Trainer(cfg, tmp_path / "r").fit()


def test_a_new_event_file_waits_for_the_next_second_at_most_a_second(tmp_path):
    """after_existing_files on its own (the resume test above depends on two files landing in one second):
    with a file of this second it returns once the clock has moved past it; a file stamped ahead (a clock
    ahead of this one) is waited for a second at most."""
    import time

    now = int(time.time())
    (tmp_path / f"events.out.tfevents.{now:010d}.host.name.1.9").write_bytes(b"")
    (tmp_path / "events.out.tfevents.odd").write_bytes(b"")  # no stamp: not waited for
    tb.after_existing_files(tmp_path)
    assert time.time() >= now + 1
    (tmp_path / f"events.out.tfevents.{now + 60:010d}.host.1.0").write_bytes(b"")
    started = time.monotonic()
    tb.after_existing_files(tmp_path)
    assert 0.9 < time.monotonic() - started < 1.5
