import re
import subprocess
import sys

import pytest
import tomli_w

from vslm.config import BlockSpec, RunConfig, builtin_configs, load_config, parse_override, save_config, validate
from vslm.errors import ConfigError


def test_every_builtin_config_validates():
    names = builtin_configs()
    assert {"demo", "nanogpt-shakespeare", "tiny"} <= set(names)
    for name in names:
        assert load_config(name).name == name


def test_overrides_are_typed_toml_values():
    cfg = load_config("tiny", ["train.steps=500", "model.width=64", "train.lr=3e-4", "data.source=stories",
                               "train.betas=[0.8, 0.95]", "logging.progress=false"])
    assert (cfg.train.steps, cfg.model.width, cfg.train.lr) == (500, 64, 3e-4)
    assert cfg.train.betas == (0.8, 0.95) and cfg.logging.progress is False
    assert load_config("tiny", ["train.lr=1"]).train.lr == 1.0  # an integer where a float goes: the one conversion
    assert parse_override("data.source=path/to/file.txt") == (["data", "source"], "path/to/file.txt")
    assert load_config("tiny", "train.steps=7").train.steps == 7  # one override as a string (a notebook's)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model.widht=64"], "unknown field 'model.widht'"),
        (["model.width=33"], "width 33 is not divisible by heads 2"),
        (["train.steps=-5"], "train.steps: Input should be greater than 0"),
        (["model.width=wide"], "model.width: Input should be a valid integer"),
        (['train.steps="5"'], "train.steps: Input should be a valid integer, got '5'"),  # strict: nothing converted
        (["train.steps=5.0"], "train.steps: Input should be a valid integer, got 5.0"),
        (['logging.progress="no"'], "logging.progress: Input should be a valid boolean, got 'no'"),
        (['train.betas=[0.9, "0.95"]'], "train.betas.1: Input should be a valid number, got '0.95'"),
        (["train.betas=0.9"], "train.betas: should be a list, written [a, b, ...] .a TOML array; quoted on a command "
                              "line: 'key=[a, b]'., got 0.9"),  # not Python's "a valid tuple"
        (["train.eval_lengths=2"], "train.eval_lengths: should be a list, written [a, b, ...]"),
        (['model.blocks=[{width="32"}, {}]'], "Input should be a valid integer, got '32'"),
        (["model.mlp=tanh"], "model.mlp"),
        (["train.compile_mode=fastest"], "train.compile_mode: Input should be 'default', 'reduce-overhead'"),
        (["train.min_lr=1.0"], "min_lr 1.0 is above lr"),
        (["model.depth=3", "model.blocks=[{width=32}]"],
         "blocks lists 1 of 3 unique blocks: give one record per block"),
        (["model.kv_heads=3", "model.heads=4"], "heads 4 is not divisible by kv_heads 3"),
        (["train"], "not of the form section.key=value"),
        (["train.steps.x=1"], "'steps' is a value, not a section"),
        (["model.blocks=[{width=16}"], "override 'model.blocks=[{width=16}': the value is not valid TOML"),
        (['data.source="stories'], "the value is not valid TOML"),
        (["data.tokenizer=bpe", "data.vocab_size=100"], "vocab_size 100 of tokenizer=bpe must be 260-65535"),
        # refused before anything is built per depth (a list of 10^8 records was an out-of-memory kill)
        (["model.depth=100000000"], "a depth of 100,000,000 is past the 2,048 this lab builds"),
        (["model.ffn_mult=0.001"], "model: the MLP's hidden size rounds to 0"),
        (["model.context=3"], "model.context 3 is too short for the induction probe"),
        (["model.context=1", "model.attention=ssmax", "logging.probe_every=0"], "it needs a context of 2 or more"),
        (["model.depth=3", "model.order=[0,0,1]", "model.depth=4"], r"order has 3 entries but depth is 4 \(give "
                                                                     r"model.depth=3 with it, or 4 entries\)"),
        # a setting that would change nothing is refused, naming what it applies to
        (["model.recursion_lora_rank=4"], "recursion_lora_rank adds a LoRA per depth to shared blocks, and no block "
                                          "is shared"),
        (["model.root_per_position=true"], "root_per_position applies to root = learned"),
        (["model.unique_blocks=1"], "unique_blocks applies to sharing = immediate or cyclic"),
        (["model.order=[0,1]", "model.sharing=all"], "order and sharing are both set, and order decides"),
        (["model.schedule.windows=increasing", "model.window=2"], "window is replaced by schedule.windows"),
        (["model.schedule.width_range=[16,64]"], "schedule.width_range applies to schedule.widths other than"),
        (["model.schedule.window_range=[4,16]"], "schedule.window_range applies to schedule.windows other than"),
        (["model.schedule.global_every=5"], "schedule.global_every applies to schedule.windows = interleave"),
        (["model.schedule.heads_scale=[0.1,3]"], "schedule.heads_scale and ffn_scale apply to layer_scaling"),
        (["model.attention_gamma=0.3"], "attention_gamma applies to attention = power"),
        (["model.blocks=[{attention_gamma=0.5}, {}]"], "block 0: attention_gamma applies to attention = power, and "
                                                       "its attention is softmax"),
        (["model.rope_base=500"], "rope_base applies to position = rope"),
        (["model.mlp=none", "model.blocks=[{ffn=1}, {}]"], "ffn and ffn_mult size an MLP, and mlp = none has none"),
        (["model.ffn=64", "model.ffn_mult=2.0"], "ffn_mult is replaced by ffn, which is set"),
        (["data.max_bytes=none"], "data.source stories is generated without end: with max_bytes = none it needs "
                                  "max_tokens"),
        (["model.schedule.layer_scaling=openelm", "model.ffn=64"], "ffn and ffn_mult are replaced by "
                                                                   "schedule.ffn_scale"),
        (["model.window=8", "model.blocks=[{window=4}, {window=2}]"], "window is replaced by every block record"),
    ],
)
def test_bad_values_name_the_field(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")) as e:
        load_config("tiny", overrides)
    assert "\n" not in str(e.value)


def test_none_lifts_a_base_configs_byte_limit():
    cfg = load_config("tiny", ["data.max_bytes=none", "data.max_tokens=5000"])  # tiny sets 300,000 bytes
    assert cfg.data.max_bytes is None and cfg.data.max_tokens == 5000


def test_a_setting_at_its_default_passes_where_it_would_be_idle():
    """A base config may spell a default out; only a value that would change something, and cannot, is refused."""
    cfg = load_config("tiny", ["model.rope_base=10000.0", "model.attention_gamma=1.0", "model.recursion_lora_rank=0"])
    assert cfg.model.position == "learned"
    blind = load_config("tiny", ["model.root=learned", "model.inject=false"]).model.blind()  # the arch-root control
    assert blind.startswith("root = learned without inject: the residual stream never receives the tokens")
    assert load_config("tiny", ["model.root=learned"]).model.blind() is None



@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors")  # describe builds its MLP of size 0
def test_a_run_folder_written_before_a_check_still_reads(tmp_path):
    """A config.toml saved by an earlier version may hold a setting now refused as idle, or an MLP of size 0:
    what the run trained is read back (sample, export, resume), only new configs are refused."""
    from vslm.train.run_folder import read_run_config

    raw = load_config("tiny").model_dump(mode="json", exclude_none=True)
    raw["model"] |= {"rope_base": 500.0, "ffn_mult": 0.001}
    (tmp_path / "config.toml").write_text(tomli_w.dumps(raw))
    cfg = read_run_config(tmp_path)
    assert cfg.model.rope_base == 500.0 and cfg.model.block_specs()[0].ffn == 0
    from vslm.cli import main

    assert main(["describe", str(tmp_path)]) == 0  # a run folder: described as saved
    with pytest.raises(ConfigError, match="model: the MLP's hidden size rounds to 0"):
        validate(raw)  # a new config: refused


def test_a_vocabulary_size_binds_only_the_tokenizer_that_learns_one():
    """char, byte and gpt2 bring their own vocabulary: data.vocab_size is bpe's, its range checked only there,
    and another value than the default given with them is refused (it was ignored without a word). A run
    folder's saved config is read as it trained."""
    assert load_config("tiny", ["data.tokenizer=bpe", "data.vocab_size=260"]).data.vocab_size == 260
    assert load_config("tiny", ["data.tokenizer=gpt2"]).data.vocab_size == 2048  # the default: every dump holds it
    for tokenizer in ("char", "byte", "gpt2"):
        with pytest.raises(ConfigError, match=rf"^config error: data: vocab_size 500 is the size bpe learns; "
                           rf"tokenizer={tokenizer} has its own vocabulary: drop data.vocab_size, or set "
                           r"data.tokenizer=bpe$"):
            load_config("tiny", [f"data.tokenizer={tokenizer}", "data.vocab_size=500"])
    raw = load_config("tiny", []).to_raw()
    raw["data"]["vocab_size"] = 500  # a run of char written before it was refused
    assert validate(raw, saved=True).data.vocab_size == 500


def test_malformed_and_missing_files(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[model\nwidth = 3")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_config(str(bad))
    with pytest.raises(ConfigError, match="no config 'nope'"):
        load_config("nope")


def test_base_inheritance_and_resolved_round_trip(tmp_path):
    f = tmp_path / "wide.toml"
    f.write_text('base = "tiny"\n[model]\nwidth = 64\n')
    cfg = load_config(str(f))
    assert cfg.name == "wide" and cfg.model.width == 64 and cfg.model.depth == load_config("tiny").model.depth
    again = validate(__import__("tomllib").loads(cfg.to_toml()))
    assert again == cfg


def test_a_bare_built_in_name_is_the_built_in_whatever_file_of_that_name_lies_here(tmp_path, monkeypatch):
    """`vslm train tiny` beside a file or folder called `tiny` (a script, notes, a run) trains the built-in; `./tiny`
    reads the file. A spec's `base = "tiny"` is the built-in too, beside a file called tiny."""
    from vslm.lab.experiments import read_experiment
    from vslm.lab.scaling import load_scaling_spec

    monkeypatch.chdir(tmp_path)
    for name in ("tiny", "arch-root", "scaling-tiny"):
        (tmp_path / name).write_text("x = 1\n")
    (tmp_path / "demo").mkdir()
    assert load_config("tiny").name == "tiny" and load_config("demo").name == "demo"
    assert config_error("./tiny") == "config error: unknown field 'x'"
    assert read_experiment("arch-root")[2] == "built-in experiment 'arch-root'"
    assert load_scaling_spec("scaling-tiny")[0] == "scaling-tiny"
    (tmp_path / "mine.toml").write_text('base = "tiny"\n[model]\nwidth = 48\n')
    assert load_config("mine.toml").model.depth == load_config("tiny").model.depth
    (tmp_path / "exp.toml").write_text('base = "tiny"\nvariants = {a = []}\n')
    assert read_experiment("exp.toml")[1]["base"] == "tiny"
    # a path that is no file here is not a built-in either (it was joined to the package's folder: './tiny' trained
    # the built-in, 'experiments/smoke' read an experiment as a config)
    (tmp_path / "tiny").unlink()
    for path in ("./tiny", "../configs/tiny", "experiments/smoke"):
        assert config_error(path).startswith(f"no config '{path}'") and "not a file" in config_error(path)
    for path, read in (("./arch-root", read_experiment), ("./scaling-tiny", load_scaling_spec)):  # specs alike
        (tmp_path / path[2:]).unlink()  # no file of that name here
        with pytest.raises(ConfigError, match=f"no (experiment|scaling spec) '{path}'"):
            read(path)


def test_a_relative_data_path_is_read_from_where_the_command_runs_and_checked_on_resume(tmp_path, monkeypatch,
                                                                                        capsys):
    """`data.source=shak.txt` stays as typed (a project folder can move); a resume from another folder says
    where it looked, and one that finds another shak.txt there is refused by the corpus check, never trained on."""
    from vslm.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "shak.txt").write_text("To be, or not to be, that is the question.\n" * 400)
    assert load_config("tiny", ["data.source=shak.txt"]).data.source == "shak.txt"
    words = ["train.steps=2", "train.eval_windows=2", "logging.progress=false", "model.context=16"]
    assert main(["train", "tiny", "data.source=shak.txt", *words, "--out", "run"]) == 0
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    capsys.readouterr()
    assert main(["train", "--resume", "--out", str(tmp_path / "run"), "train.steps=4"]) == 2
    assert (f"unknown data source 'shak.txt': not a file or folder here ({tmp_path / 'elsewhere'}: a relative path "
            "is read from the folder a command runs in, a run's too)") in capsys.readouterr().err
    (tmp_path / "elsewhere" / "shak.txt").write_text("another text entirely, of other characters: xyz\n" * 400)
    assert main(["train", "--resume", "--out", str(tmp_path / "run"), "train.steps=4"]) != 0
    assert "tokens" in capsys.readouterr().err  # the corpus check: other counts (and other characters)


def config_error(path, overrides=()) -> str:
    with pytest.raises(ConfigError) as e:
        load_config(str(path), list(overrides))
    return str(e.value)


def test_an_error_in_a_base_config_names_that_file(tmp_path):
    (tmp_path / "a.toml").write_text('base = "tiny"\n[train]\nstep = 3\n[model]\nwidth = 40\n')
    (tmp_path / "b.toml").write_text('base = "a.toml"\n[model]\nwidth = 64\n')
    assert config_error(tmp_path / "b.toml") == (f"config error in {tmp_path / 'a.toml'} (a base of "
                                                 f"{tmp_path / 'b.toml'}): unknown field 'train.step' (did you mean "
                                                 "train.steps?)")
    # the command line sets it too: the user's own input, whatever the base sets
    assert config_error(tmp_path / "b.toml", ["train.step=4"]).startswith("config error: unknown field 'train.step' ")
    # brought in by the named file or the command line: no file to name beyond the one the user typed
    (tmp_path / "c.toml").write_text('base = "tiny"\n')
    for name, overrides in (("c.toml", ["train.step=4"]), ("a.toml", [])):
        assert config_error(tmp_path / name, overrides).startswith("config error: unknown field 'train.step' ")


def test_a_check_across_a_sections_fields_names_the_base_that_brings_it_in(tmp_path):
    (tmp_path / "a.toml").write_text('base = "tiny"\n[model]\nwidth = 40\nheads = 3\n')
    (tmp_path / "b.toml").write_text('base = "a.toml"\n[train]\nsteps = 3\n')
    expected = (f"config error in {tmp_path / 'a.toml'} (a base of {tmp_path / 'b.toml'}): model: width 40 is not "
                "divisible by heads 3")
    assert config_error(tmp_path / "b.toml") == expected  # tiny sets model fields too, but not the pair that fails
    # the named file or an override setting another field of that section does not hide the base
    (tmp_path / "c.toml").write_text('base = "a.toml"\n[model]\ndepth = 1\n')
    assert config_error(tmp_path / "c.toml") == expected.replace("b.toml", "c.toml")
    assert config_error(tmp_path / "b.toml", ["model.depth=1"]) == expected
    # the pair made to fail by the named file, or by an override: no base named
    (tmp_path / "d.toml").write_text('base = "tiny"\n[model]\nwidth = 40\n')
    (tmp_path / "e.toml").write_text('base = "d.toml"\n[model]\nheads = 3\n')
    assert config_error(tmp_path / "e.toml") == "config error: model: width 40 is not divisible by heads 3"
    assert config_error(tmp_path / "d.toml", ["model.heads=3"]) == \
        "config error: model: width 40 is not divisible by heads 3"
    # a value a base two files down sets, a field-level check of the model's (audit of stop 51: no file named)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "g.toml").write_text('base = "tiny"\n[model]\nrope_base = 5000.0\n')
    (tmp_path / "f.toml").write_text('base = "sub/g.toml"\n[model]\ndepth = 2\n')
    assert config_error(tmp_path / "f.toml", ["model.depth=1"]).startswith(
        f"config error in {tmp_path / 'sub' / 'g.toml'} (a base of {tmp_path / 'f.toml'}): model: rope_base applies")
    # an override that changes a value the message shows still leaves the base that brings in the other
    assert config_error(tmp_path / "b.toml", ["model.width=50"]) == (
        f"config error in {tmp_path / 'a.toml'} (a base of {tmp_path / 'b.toml'}): model: width 50 is not divisible "
        "by heads 3")
    # a value of a field's own check that the named file gives, over a base's bad one: the named file's
    (tmp_path / "g.toml").write_text('base = "tiny"\n[model]\ndepth = 2\nblocks = [{heads=0}, {heads=2}]\n')
    (tmp_path / "h.toml").write_text('base = "g.toml"\n[model]\nblocks = [{heads=-1}, {heads=2}]\n')
    assert config_error(tmp_path / "h.toml").startswith("config error: model.blocks.0.heads: ")
    (tmp_path / "n.toml").write_text('base = "tiny"\n[train]\nsteps = 0\n')
    (tmp_path / "p.toml").write_text('base = "n.toml"\n')
    assert config_error(tmp_path / "p.toml", ["train.steps=-3"]).startswith("config error: train.steps")
    # a failure of another section in the deeper merge hides nothing: the base is still named
    assert config_error(tmp_path / "b.toml", ["train.steps=-3"]) == expected
    # a deeper base that fails another check first hides whether this one passes there: no file named
    (tmp_path / "k.toml").write_text('base = "tiny"\n[model]\nwidth = 40\nheads = 3\nkv_heads = 4\n')
    (tmp_path / "m.toml").write_text('base = "k.toml"\n[model]\nwidth = 48\n')
    assert config_error(tmp_path / "m.toml").startswith("config error: model: ")


def test_a_missing_base_names_the_file_that_names_it(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "d.toml").write_text('base = "nosuch.toml"\n')
    (tmp_path / "a.toml").write_text('base = "sub/d.toml"\n')
    assert config_error(tmp_path / "a.toml").startswith(
        f"no config 'nosuch.toml' (the base {tmp_path / 'sub' / 'd.toml'} names): not a file "
        f"({tmp_path / 'sub' / 'nosuch.toml'}), nor a built-in config (")


def test_block_specs_resolve_model_defaults():
    cfg = load_config("tiny", ["model.depth=2", "model.blocks=[{ffn=64}, {window=8, kv_heads=1}]"])
    assert cfg.model.block_specs() == [BlockSpec(32, 2, 2, 16, 64, None), BlockSpec(32, 2, 1, 16, 128, 8)]


def test_cli_config_error_is_one_line_exit_2(tmp_path):
    r = subprocess.run([sys.executable, "-m", "vslm", "train", "tiny", "model.width=33", "--out", str(tmp_path / "r")],
                       capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "Traceback" not in r.stderr
    assert "width 33 is not divisible by heads 2" in r.stderr
    assert not (tmp_path / "r").exists()


def test_defaults_are_the_nanogpt_recipe():
    assert RunConfig().train.betas == (0.9, 0.99)


def test_an_override_the_shell_cut_at_a_space_says_to_quote_it():
    with pytest.raises(ConfigError) as e:
        load_config("tiny", ["model.blocks=[{window=16},", "{}]"])  # model.blocks=[{window=16}, {}] unquoted
    assert str(e.value).endswith("the shell cut it at a space? quote the whole word: 'model.blocks=...'")
    with pytest.raises(ConfigError) as e:  # whole, but not TOML: no such hint
        load_config("tiny", ["model.blocks=[{window=}]"])
    assert "shell" not in str(e.value)


def test_a_run_folder_given_as_a_config_points_to_its_config(tmp_path, capsys):
    from vslm.cli import main

    run = tmp_path / "run"
    run.mkdir()
    save_config(load_config("tiny", ["model.width=48"]), run / "config.toml")
    with pytest.raises(ConfigError) as e:
        load_config(str(run))
    assert str(e.value) == (f"no config '{run}': a run folder (its config: {run / 'config.toml'}; "
                            f"`vslm train --resume --out {run}` continues it)")
    assert main(["describe", str(run)]) == 0  # describe takes the run's config
    assert "48" in capsys.readouterr().out


@pytest.mark.parametrize("words, message", [
    (["model.depth=4", "model.order=[0,1,2,3]", "model.recursion_lora_rank=2"],
     "recursion_lora_rank adds a LoRA per depth to shared blocks, and no block is shared"),
    (["model.kv_heads=1", "model.blocks=[{kv_heads=2}, {kv_heads=2}]"], "kv_heads is replaced by every block"),
    (["model.ffn=64", "model.blocks=[{ffn=32}, {ffn=32}]"], "ffn and ffn_mult are replaced by every block"),
    (["model.attention=sigmoid", 'model.blocks=[{attention="softmax"}, {attention="softmax"}]'],
     "attention is replaced by every block"),
    (["model.schedule.widths=increasing", "model.schedule.width_range=[16, 48]", "model.tie_embeddings=false",
      "model.blocks=[{width=32}, {width=48, heads=4}]"], "schedule.widths = increasing is replaced by every block"),
    (["model.depth=3", "model.sharing=cyclic"], "sharing = cyclic at depth 3 needs unique_blocks"),
])
def test_a_setting_that_no_block_uses_is_refused(words, message):
    """Accepted before, changing nothing (recursion LoRA with no block shared: recorded, never built; a model-wide
    value every block record overrides) or something unasked (cyclic sharing at depth 3: one block everywhere).
    A run that trained so reads back as it did."""
    from vslm.config import validate

    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config("tiny", words)
    if "model.sharing=cyclic" in words:  # trained before the refusal: its saved config still reads, as it trained
        raw = load_config("tiny").to_raw()
        raw["model"] |= {"depth": 3, "sharing": "cyclic"}
        assert validate(raw, saved=True).model.depth_order() == [0, 0, 0]


def test_describe_reads_a_built_in_name_as_the_built_in_and_a_runs_overrides_as_a_new_config(tmp_path, monkeypatch,
                                                                                            capsys):
    from vslm.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["train", "tiny", "train.steps=1", "logging.progress=false", "data.max_bytes=100000",
                 "model.width=64", "--out", "tiny"]) == 0  # a run folder named like the built-in
    capsys.readouterr()
    assert main(["describe", "tiny"]) == 0
    assert "27,616" in capsys.readouterr().out  # the built-in's parameters, not the 64-wide run's
    assert main(["describe", "./tiny"]) == 0 and "27,616" not in capsys.readouterr().out
    assert main(["describe", "./tiny", "model.window=1000"]) == 2  # checked as a new config (window > context)
    assert "window" in capsys.readouterr().err
    assert main(["describe", "tiny", "model.vocab_size=10000000000000000000"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "more elements than torch can address" in err
