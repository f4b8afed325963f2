"""Models leave the lab: `vslm export RUN --format hf` and `vslm train --init-from-hf`, checked through
`transformers` itself (logits within 1e-5 in float32, the same greedy generation, the run's token ids),
the refusals and bad input (one line, nothing written), and lm-evaluation-harness's own `hf` model
against `vslm eval --tasks` on a local task."""

import hashlib
import json
import os

import pytest
import torch

from conftest import SHARED, tiny_overrides
from vslm.cli import main
from vslm.config import load_config, save_config
from vslm.data.tokenizer import ByteTokenizer, CharTokenizer, HFTokenizer
from vslm.errors import VSLMError
from vslm.model import GPT
from vslm.train.checkpoint import load_checkpoint, save_checkpoint
from vslm.train.run_folder import load_run

transformers = pytest.importorskip("transformers", reason="transformers is not installed (pip install 'vslm[hf]')")
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

GPT2 = ["model.context=32", "model.depth=2", "model.width=32", "model.heads=4"]
LLAMA = [*GPT2, "model.position=rope", "model.norm=rmsnorm", "model.mlp=swiglu"]
MAPPINGS = {  # name: (overrides, the transformers class)
    "nanogpt": (GPT2, "GPT2LMHeadModel"),
    "gpt2-untied-relu2-bias": ([*GPT2, "model.tie_embeddings=false", "model.mlp=relu2", "model.bias=true",
                                "model.norm_eps=1e-6"], "GPT2LMHeadModel"),
    "llama-gqa-untied": ([*LLAMA, "model.kv_heads=2", "model.tie_embeddings=false", "model.ffn=48",
                          "model.rope_base=500"], "LlamaForCausalLM"),
    "llama-tied-bias-head-dim": ([*LLAMA, "model.head_dim=12", "model.bias=true", "model.norm_eps=1e-6"],
                                 "LlamaForCausalLM"),
    "mistral-window": ([*LLAMA, "model.kv_heads=1", "model.window=8"], "MistralForCausalLM"),
    # the demo's and the reader's blocks (RoPE, RMSNorm, GELU): Llama with up x = 1
    "llama-gelu": ([*GPT2, "model.position=rope", "model.norm=rmsnorm"], "LlamaForCausalLM"),
    "llama-relu2-bias-untied-gqa": ([*GPT2, "model.position=rope", "model.norm=rmsnorm", "model.mlp=relu2",
                                     "model.bias=true", "model.tie_embeddings=false", "model.kv_heads=2"],
                                    "LlamaForCausalLM"),
}


def make_run(folder, overrides, tokenizer=None, seed=0, checkpoint=True):
    """A run folder by hand: config, tokenizer, one checkpoint of random weights (norms and biases too)."""
    tokenizer = tokenizer or ByteTokenizer()
    cfg = load_config("tiny", [*overrides, f"data.tokenizer={tokenizer.kind}"]).with_vocab_size(tokenizer.vocab_size)
    folder.mkdir(parents=True)
    save_config(cfg, folder / "config.toml")
    tokenizer.save(folder / "tokenizer.json")
    if checkpoint:
        torch.manual_seed(seed)
        model = GPT(cfg.model)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.05 * torch.randn_like(p))
        save_checkpoint(folder / "checkpoints" / "step_00000001.safetensors", model.state_dict())
    return folder


def export(run, out, *extra) -> int:
    return main(["export", str(run), "--format", "hf", "--out", str(out), *extra])


@pytest.mark.parametrize("name", MAPPINGS)
def test_export_matches_through_transformers(name, tmp_path):
    overrides, cls = MAPPINGS[name]
    run = make_run(tmp_path / "run", overrides)
    assert export(run, tmp_path / "hf") == 0
    files = {p.name for p in (tmp_path / "hf").iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "generation_config.json", "README.md"} <= files
    assert "auto_map" not in json.loads((tmp_path / "hf" / "config.json").read_text())  # no custom code
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    assert type(hf).__name__ == cls
    _, model, _ = load_run(run)
    x = torch.randint(0, 257, (3, 32), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert (model(x) - hf(x).logits).abs().max().item() <= 1e-5
        prompt = x[:, :4]
        ours = model.generate(prompt, 24, temperature=0)
        theirs = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=24, min_new_tokens=24,
                             do_sample=False)
    assert torch.equal(ours, theirs)


UNICODE = ["héllo wörld — ünïcode ✓ 日本", " two  spaces\n\ttab "]


def shared_texts() -> list[str]:
    """Real text of several corpora from ../shared; without it (CI's clean clone), generated stories with the
    Unicode and whitespace cases, so that the char, byte and BPE exports are checked anywhere."""
    data = SHARED / "data"
    if not data.is_dir():
        from vslm.data.stories import stories_text

        return [stories_text(seed, 3000) for seed in range(3)] + UNICODE
    texts = [(data / "tinystories" / "tinystories_sample_cs336.txt").read_text()[:3000],
             (data / "tinyshakespeare" / "input.txt").read_text()[:3000],
             (data / "wikitext-2" / "wiki.valid.tokens").read_text()[:3000]]
    with open(data / "dolma" / "cc_en_head-0091.jsonl") as f:
        texts += [json.loads(next(f))["text"][:3000] for _ in range(3)]
    return [t.replace("<|endoftext|>", "") for t in texts] + UNICODE


@pytest.mark.parametrize("kind", ["char", "byte", "bpe", "gpt2"])
def test_exported_tokenizer_gives_the_runs_ids(kind, tmp_path):
    texts = shared_texts()
    if kind == "char":
        tok = CharTokenizer.train(texts, eos=True)
    elif kind == "byte":
        tok = ByteTokenizer()
    elif kind == "bpe":
        tok = HFTokenizer.train(texts, 400)
    elif (SHARED / "data" / "tokenizers" / "gpt2").is_dir():
        tok = HFTokenizer.gpt2(SHARED / "data" / "tokenizers" / "gpt2")
    else:
        pytest.skip("../shared/data/tokenizers/gpt2 is absent")
    run = make_run(tmp_path / "run", [*GPT2, "model.width=8", "model.heads=1", "model.depth=1"], tok)
    assert export(run, tmp_path / "hf") == 0
    hf = AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert hf.eos_token_id == tok.eos_id and hf.convert_ids_to_tokens(tok.eos_id) == "<|endoftext|>"
    for text in texts:
        ids = tok.encode(text)
        assert hf(text)["input_ids"] == ids, text[:60]
        assert hf.decode(ids) == tok.decode(ids)
    assert hf("a" + "<|endoftext|>")["input_ids"][-1] == tok.eos_id


def test_model_card_names_what_a_user_needs(tmp_path):
    run = make_run(tmp_path / "run", GPT2)
    (run / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 2.0, "tokens": 256}) + "\n"
                                       + json.dumps({"step": 1, "val_loss": 1.5, "val_bpb": 2.25}) + "\n")
    assert export(run, tmp_path / "hf") == 0
    card = (tmp_path / "hf" / "README.md").read_text()
    for needle in ("# run\n", "| config | tiny, ", "--out runs/run\n", "GPT2LMHeadModel", "parameters",
                   "FLOPs per token", "| tokens trained | 256 |", "1.5000", "2.2500", "stories",
                   "MIT (generated by vslm)", "vslm train", "[model]"):
        assert needle in card, needle
    # every file with the umask's modes, the weights too (transformers writes them 0600): an export is shared
    from vslm.files import default_mode

    modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "hf").iterdir()}
    assert "model.safetensors" in modes and set(modes.values()) == {default_mode()}, modes


def test_a_reader_leaves_the_lab_with_its_word_tokens_and_the_command_that_made_it(tmp_path):
    """The reader (RoPE, RMSNorm, GELU; word tokens; batches of its own) exports as Llama: the same logits and ids
    through transformers, and a card that gives `vslm facts reader` and its settings, not `vslm train`."""
    from vslm.knowledge.folder import write_world_folder
    from vslm.knowledge.reader import ReaderSettings, reader_config, train_reader
    from vslm.knowledge.world import WorldConfig

    world = tmp_path / "world"
    write_world_folder(WorldConfig(seed=1, people=8, novel_people=4, hops=2, questions_per_hop=3), world)
    cfg = reader_config("reader", ["train.steps=3", "model.depth=1", "model.width=32", "train.eval_windows=2"])
    train_reader(world, tmp_path / "r", cfg, ReaderSettings(max_hops=1, curve_every=0))
    assert export(tmp_path / "r", tmp_path / "hf") == 0
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    assert type(hf).__name__ == "LlamaForCausalLM" and hf.config.hidden_act == "gelu"
    _, model, tokenizer = load_run(tmp_path / "r")
    text = (world / "train.txt").read_text()[:400]
    ids = AutoTokenizer.from_pretrained(tmp_path / "hf")(text).input_ids
    assert ids == tokenizer.encode(text)
    x = torch.tensor([ids[:64]])
    with torch.no_grad():
        assert (model(x) - hf(x).logits).abs().max().item() <= 1e-5
    card = (tmp_path / "hf" / "README.md").read_text()
    assert "own (ReaderBatches): `vslm train vslm_config.toml` would train another model" in card
    assert "`vslm facts reader` made it" in card and '"max_hops": 1' in card and "--out runs/" not in card


def test_a_char_exports_card_says_what_its_tokenizer_does_with_other_characters(tmp_path):
    tok = CharTokenizer(list("ab "), eos=True)
    run = make_run(tmp_path / "run", GPT2, tok)
    assert export(run, tmp_path / "hf") == 0
    hf = AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert hf("ab zb")["input_ids"] == [0, 1, 2, 1]  # the z dropped, as the card says
    with pytest.raises(VSLMError, match="not in this character vocabulary"):
        tok.encode("ab zb")
    card = (tmp_path / "hf" / "README.md").read_text()
    assert "| tokenizer | char, vocabulary 4 (the training text's characters: tokenizer.json drops any other" in card
    assert "prefix_token_id" not in card
    plays = make_run(tmp_path / "plays", GPT2, CharTokenizer(list("ab \n"), eos=False))  # one text: no end-of-text
    assert export(plays, tmp_path / "hf-plays") == 0
    assert "needs `prefix_token_id=ID` in its model_args" in (tmp_path / "hf-plays" / "README.md").read_text()


@pytest.mark.parametrize("overrides, field", [
    (["model.blocks=[{width=32}, {width=48}]", "model.tie_embeddings=false"], "model.blocks"),
    (["model.schedule.widths=increasing", "model.schedule.width_range=[16,32]", "model.tie_embeddings=false"],
     "model.schedule.widths"),
    (["model.sharing=all"], "model.sharing"),
    (["model.depth=3", "model.order=[0,1,0]"], "model.order"),
    (["model.order=[0,0]", "model.recursion_lora_rank=2"], "model.order"),
    (["model.root=learned"], "model.root"),
    (["model.embed_width=48"], "model.embed_width"),
    (["model.attention=power", "model.attention_gamma=0.5"], "model.attention"),
    (["model.attention=sigmoid"], "model.attention"),
    (["model.blocks=[{attention='sigmoid'}, {attention='sigmoid'}]"], "model.blocks[].attention"),
    (["model.blocks=[{heads=3}, {heads=3}]"], "model.blocks[].heads"),  # 3 heads of 8 on a width of 32
    ([*LLAMA[4:], "model.schedule.windows=interleave", "model.schedule.window_range=[8,32]"],
     "model.schedule.windows"),
    (["model.position=rope"], "model.norm"),
    (["model.position=rope", "model.norm=rmsnorm", "model.window=8"], "model.mlp"),  # Mistral: SwiGLU only
    (["model.mlp=swiglu"], "model.mlp"),
    (["model.mlp=none"], "model.mlp"),
    (["model.kv_heads=2"], "model.kv_heads"),
])
def test_what_no_class_computes_is_refused(overrides, field, tmp_path, capsys):
    run = make_run(tmp_path / "run", [*GPT2, *overrides], checkpoint=False)  # refused before weights are read
    assert export(run, tmp_path / "hf") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{field} = " in err, err
    assert not (tmp_path / "hf").exists()


def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys):
    def refused(code_ok=lambda c: c != 0):
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("vslm: error:"), err
        return err

    empty = make_run(tmp_path / "empty", GPT2, checkpoint=False)
    assert export(empty, tmp_path / "out1") != 0
    assert "no checkpoint" in refused() and not (tmp_path / "out1").exists()

    run = make_run(tmp_path / "run", GPT2)
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    assert export(run, taken) != 0
    assert "not empty" in refused() and [p.name for p in taken.iterdir()] == ["keep.txt"]
    assert (taken / "keep.txt").read_text() == "mine"
    assert export(run, taken / "keep.txt") != 0  # a file: named as one, kept
    assert "keep.txt is a file: export writes a folder" in refused() and (taken / "keep.txt").read_text() == "mine"

    ckpt = run / "checkpoints" / "step_00000001.safetensors"
    cut = run / "snapshots" / "step_00000002.safetensors"
    cut.parent.mkdir()
    cut.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    assert export(run, tmp_path / "out2", "--checkpoint", str(cut)) != 0
    assert "cannot read checkpoint" in refused() and not (tmp_path / "out2").exists()
    # a NaN in a checkpoint asked for by name: refused in one line, by export, eval and sample alike
    weights, _ = load_checkpoint(ckpt)
    weights["embed.weight"][3, 1] = float("nan")
    save_checkpoint(cut, weights)
    assert export(run, tmp_path / "out2", "--checkpoint", str(cut)) == 1
    assert "holds non-finite values (1 tensors, embed.weight first)" in refused() and not (tmp_path / "out2").exists()
    for command in (["eval", str(run), "--on", "stories", "--max-bytes", "2000"], ["sample", str(run)]):
        assert main([*command, "--checkpoint", str(cut)]) == 1
        assert "holds non-finite values" in refused()
    cut.unlink()
    elsewhere = tmp_path / "step_00000001.safetensors"  # another run's weights: the card would give this run's numbers
    elsewhere.write_bytes(ckpt.read_bytes())
    assert export(run, tmp_path / "out2", "--checkpoint", str(elsewhere)) == 1
    assert f"is not one of {run}'s checkpoints or snapshots" in refused() and not (tmp_path / "out2").exists()
    assert export(run, tmp_path / "out2", "--checkpoint", str(tmp_path / "nope")) == 2  # a mistyped argument
    assert "nope: no such file" in refused()
    (tmp_path / "afile").write_text("mine")
    assert export(run, tmp_path / "afile" / "sub") == 1
    assert "afile is a file, not a folder" in refused() and (tmp_path / "afile").read_text() == "mine"
    (tmp_path / "target").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "target")
    assert export(run, tmp_path / "link") == 1
    assert "is a symbolic link" in refused() and (tmp_path / "link").is_symlink()

    assert export(tmp_path / "nothing", tmp_path / "out3") != 0
    refused()

    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 32}))
    assert main(["train", "tiny", *tiny_overrides(), "--init-from-hf", str(bert), "--out", str(tmp_path / "r")]) != 0
    assert "model_type = 'bert'" in refused() and not (tmp_path / "r").exists()

    assert export(run, tmp_path / "hf") == 0  # a truncated model.safetensors on import
    assert capsys.readouterr().err == f"exported {run / 'checkpoints' / 'step_00000001.safetensors'}\n"
    weights = tmp_path / "hf" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    assert main(["train", "tiny", *tiny_overrides(), "--init-from-hf", str(tmp_path / "hf"),
                 "--out", str(tmp_path / "r")]) != 0
    assert "cannot read" in refused() and not (tmp_path / "r").exists()

    # the run's tokenizer is not the checkpoint's (bytes, 257 tokens): refused before a step, nothing written
    assert export(run, tmp_path / "hf2") == 0
    capsys.readouterr()
    args = ["train", "tiny", *tiny_overrides(), "data.tokenizer=char", "--init-from-hf", str(tmp_path / "hf2"),
            "--out", str(tmp_path / "r")]
    assert main(args) == 2
    assert "tokenizer.json has 257 tokens, the run's char tokenizer" in refused() and not (tmp_path / "r").exists()
    # the run's own kind and size, other ids: "e" and "t" swapped, as a tokenizer trained elsewhere would number them
    same_size = ["train", "tiny", *tiny_overrides(), "data.tokenizer=byte", "--init-from-hf", str(tmp_path / "hf2"),
                 "--out", str(tmp_path / "r")]
    spelled = json.loads((tmp_path / "hf2" / "tokenizer.json").read_text())
    vocab = spelled["model"]["vocab"]
    vocab["e"], vocab["t"] = vocab["t"], vocab["e"]
    (tmp_path / "hf2" / "tokenizer.json").write_text(json.dumps(spelled))
    assert main(same_size) == 2
    assert "gives other ids than the run's byte tokenizer (257 tokens)" in refused() and not (tmp_path / "r").exists()
    (tmp_path / "hf2" / "tokenizer.json").unlink()  # a folder without one: the model's vocabulary decides
    assert main(args) == 2
    assert "its vocabulary of 257 is not the run's char tokenizer" in refused() and not (tmp_path / "r").exists()


@pytest.mark.parametrize("arch", ["nanogpt", "llama-gqa-untied", "llama-gelu"])
def test_import_round_trip_and_training_continues(arch, tmp_path, capsys):
    from safetensors.torch import load_file

    from vslm.interop.hf import init_from_hf

    overrides = [*tiny_overrides(), *MAPPINGS[arch][0], "train.steps=3", "train.eval_every=0", "train.eval_windows=8"]
    run = tmp_path / "run"
    assert main(["train", "tiny", *overrides, "--out", str(run)]) == 0
    assert export(run, tmp_path / "hf") == 0
    cfg, model, _ = load_run(run)
    # the transformers checkpoint -> vslm: the same logits as the run and as transformers
    new_cfg, imported, origin = init_from_hf(load_config("tiny", overrides), tmp_path / "hf", overrides)
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    x = torch.randint(0, cfg.model.vocab_size, (2, 32), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(imported.eval()(x), model(x))
        assert (imported(x) - hf(x).logits).abs().max().item() <= 1e-5
    assert new_cfg.model.block_specs() == cfg.model.block_specs()
    for field in ("vocab_size", "context", "depth", "position", "norm", "norm_eps", "mlp", "tie_embeddings", "bias"):
        assert getattr(new_cfg.model, field) == getattr(cfg.model, field), field
    # the checkpoint's architecture wins over the run config's, an embedding width apart included
    wide, _, _ = init_from_hf(load_config("tiny", [*overrides, "model.embed_width=64"]), tmp_path / "hf")
    assert wide.model.embed_width is None and wide.model.block_specs() == cfg.model.block_specs()
    if cfg.model.position == "rope":  # an nGPT config: replaced by the checkpoint's transformer; asked for, refused
        ngpt = [*overrides, "model.ngpt=true"]
        plain, _, _ = init_from_hf(load_config("tiny", ngpt), tmp_path / "hf")
        assert not plain.model.ngpt and plain.model.block_specs() == cfg.model.block_specs()
        with pytest.raises(VSLMError, match="model.ngpt=true is not its value"):
            init_from_hf(load_config("tiny", ngpt), tmp_path / "hf", ngpt)
    # vslm train --init-from-hf starts from those weights (its step-0 snapshot) and trains on
    again = tmp_path / "again"
    capsys.readouterr()
    assert main(["train", "tiny", *overrides, "--init-from-hf", str(tmp_path / "hf"), "--out", str(again)]) == 0
    said = capsys.readouterr().out  # the header says the model is not the config's
    assert f"  its architecture and weights from the transformers checkpoint {(tmp_path / 'hf').resolve()}\n" in said
    snapshot = load_file(again / "snapshots" / "step_00000000.safetensors")
    start = {k.removeprefix("model/"): v for k, v in snapshot.items() if k.startswith("model/")}
    for k, v in model.state_dict().items():
        assert torch.equal(start[k], v), k
    rows = [json.loads(line) for line in (again / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 3 and all(torch.isfinite(torch.tensor(r["loss"])) for r in rows if "loss" in r)
    # where it started is kept (the folder and its weights' hash), and its export's card trains it again so
    origin = json.loads((again / "summary.json").read_text())["init_from"]
    assert origin == {"hf_folder": str((tmp_path / "hf").resolve()),
                      "sha256": hashlib.sha256((tmp_path / "hf" / "model.safetensors").read_bytes()).hexdigest()}
    assert export(again, tmp_path / "hf-again") == 0
    card = (tmp_path / "hf-again" / "README.md").read_text()
    assert "vslm train vslm_config.toml --init-from-hf hf --out runs/" in card and str(tmp_path) not in card
    assert origin["sha256"] in card

    def refused(words, line):
        out = tmp_path / "refused"
        hf = ["--init-from-hf", str(tmp_path / "hf")]
        assert main(["train", "tiny", *overrides, *words, *hf, "--out", str(out)]) == 2
        assert line in capsys.readouterr().err and not out.exists()

    # an architecture override that is not the checkpoint's would be dropped: refused, naming it
    refused(["model.width=64"], "the checkpoint sets the architecture, and model.width=64 is not its value")
    # a run tokenizer larger than the checkpoint's: the tokenizer is named, not model.vocab_size
    refused(["data.tokenizer=byte"], f"its tokenizer.json has {cfg.model.vocab_size} tokens, the run's byte "
                                     "tokenizer (257 tokens)")


def test_a_llama_checkpoint_with_a_gelu_mlp_imports_only_as_vslm_exports_one(tmp_path):
    """hidden_act gelu in a Llama is down(gelu(gate x) * up x): vslm's ungated GELU MLP only where up x = 1 (zero
    weights, a bias of ones, as its export writes); a gated GELU, or MLP biases beside an attention without any, is
    refused naming the field."""
    from vslm.interop.hf import model_fields_from_hf, read_hf_state

    run = make_run(tmp_path / "run", MAPPINGS["llama-gelu"][0])
    assert export(run, tmp_path / "hf") == 0
    conf = json.loads((tmp_path / "hf" / "config.json").read_text())
    state = read_hf_state(tmp_path / "hf")
    assert (conf["hidden_act"], conf["mlp_bias"], conf["attention_bias"]) == ("gelu", True, False)
    kind, fields = model_fields_from_hf(conf, state)
    assert (kind, fields["mlp"], fields["bias"]) == ("llama", "gelu", False)
    up = "model.layers.1.mlp.up_proj"
    for change, words in (({f"{up}.weight": state[f"{up}.weight"] + 0.01}, "layer 1's up_proj is not zero weights"),
                          ({f"{up}.bias": 2 * state[f"{up}.bias"]}, "layer 1's up_proj is not zero weights"),
                          ({"model.layers.0.mlp.down_proj.bias": state["model.layers.0.mlp.down_proj.bias"] + 1},
                           "mlp_bias = True: layer 0's MLP has biases and its attention none")):
        with pytest.raises(VSLMError, match=words):
            model_fields_from_hf(conf, state | change)
    with pytest.raises(VSLMError, match="hidden_act = 'gelu'.*mlp_bias"):  # no biases: up x = 0, nothing vslm computes
        model_fields_from_hf(conf | {"mlp_bias": False}, state)
    with pytest.raises(VSLMError, match="hidden_act = 'gelu_pytorch_tanh'"):
        model_fields_from_hf(conf | {"hidden_act": "gelu_pytorch_tanh"}, state)
    with pytest.raises(VSLMError, match="layer 0's gate_proj or down_proj has no bias tensor"):
        model_fields_from_hf(conf, {k: v for k, v in state.items() if k != "model.layers.0.mlp.gate_proj.bias"})
    # with one sliding window the class is Mistral, whose MLP has no biases: no up x = 1, refused
    windowed = make_run(tmp_path / "windowed", [*MAPPINGS["llama-gelu"][0], "model.window=8"], checkpoint=False)
    with pytest.raises(VSLMError, match="model.mlp = 'gelu': a sliding window maps to Mistral, whose MLP is SwiGLU"):
        from vslm.interop.hf import export_run
        export_run(windowed, tmp_path / "hf-windowed")


def test_the_card_gives_the_exported_checkpoints_numbers(tmp_path, capsys):
    """Not the run's last logged ones: the step and tokens of the checkpoint exported, and the last
    validation at or before it, with its step."""
    run = tmp_path / "run"
    assert main(["train", "tiny", *tiny_overrides(), *GPT2, "train.steps=5", "train.eval_every=3",
                 "train.eval_windows=8", "logging.samples=0", "--out", str(run)]) == 0
    rows = {r["step"]: r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())}

    def card(step: int) -> str:
        out = tmp_path / f"hf-{step}"
        capsys.readouterr()
        snapshot = run / "snapshots" / f"step_{step:08d}.safetensors"
        assert export(run, out, "--checkpoint", str(snapshot)) == 0
        assert capsys.readouterr().err == f"exported {snapshot}: step {step} of its 5\n"  # which weights, said
        return (out / "README.md").read_text()

    first = card(1)
    assert f"| tokens trained | {rows[1]['tokens']:,} |" in first and "| steps | 1 |" in first
    assert "| validation loss (nats per token) | not logged |" in first
    fourth = card(4)  # validated at step 3: said so
    assert f"| tokens trained | {rows[4]['tokens']:,} |" in fourth and "| steps | 4 |" in fourth
    assert f"| validation loss (nats per token) | {rows[3]['val_loss']:.4f} (at step 3) |" in fourth
    assert "these weights are step 4 of the 5 steps it trains" in fourth and "reproduces it" not in fourth
    assert export(run, tmp_path / "hf-last") == 0  # the latest checkpoint: its own step's validation
    last = (tmp_path / "hf-last" / "README.md").read_text()
    assert f"| validation loss (nats per token) | {rows[5]['val_loss']:.4f} |" in last and "| steps | 5 |" in last
    assert "reproduces it:" in last and "does not give this model" not in last
    # resumed with another schedule: the config is its last, and the card says what the command does not give
    assert main(["train", "--resume", "--out", str(run), "train.steps=6", "train.keep_last=4"]) == 0
    assert export(run, tmp_path / "hf-resumed") == 0
    resumed = (tmp_path / "hf-resumed" / "README.md").read_text()
    assert "does not give this model exactly" in resumed and "- at step 5: train.steps 5 -> 6\n" in resumed


def test_a_padded_vocabulary_is_never_generated(tmp_path):
    """model.vocab_size past the tokenizer's (a multiple of 64, say): the ids no text has get probability but
    `vslm sample` never draws them; neither does the export's generate (suppress_tokens), greedy or sampled."""
    run = make_run(tmp_path / "run", [*GPT2, "model.vocab_size=320", "model.tie_embeddings=false"])
    _, model, _ = load_run(run)
    prompt = torch.tensor([[72, 105]])
    with torch.no_grad():  # the padded ids the likeliest after the prompt: a greedy decoder would pick one
        logits = model(prompt)[0, -1]
        top = logits[:257].argmax()
        model.head.weight[257:] = model.head.weight[top] * (3 if logits[top] > 0 else -3)
    save_checkpoint(run / "checkpoints" / "step_00000002.safetensors", model.state_dict())
    assert export(run, tmp_path / "hf") == 0
    conf = json.loads((tmp_path / "hf" / "generation_config.json").read_text())
    assert conf["suppress_tokens"] == list(range(257, 320))
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    with torch.no_grad():
        assert hf(prompt).logits[0, -1].argmax().item() >= 257  # the padded ids are the likeliest here
        greedy = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=12, min_new_tokens=12)
        sampled = hf.generate(prompt.repeat(8, 1), attention_mask=torch.ones(8, 2, dtype=torch.long),
                              max_new_tokens=12, min_new_tokens=12, do_sample=True)
    assert greedy[0, 2:].max().item() < 257 and sampled[:, 2:].max().item() < 257
    assert torch.equal(greedy, model.generate(prompt, 12, temperature=0, vocab=257))


def test_a_run_that_diverged_is_said_in_its_summary_report_and_export(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "tiny", *tiny_overrides(), *GPT2, "train.steps=30", "train.lr=1e4", "train.min_lr=1e3",
                 "train.checkpoint_every=1", "logging.samples=0", "--out", str(run)]) == 1
    err = capsys.readouterr().err
    diverged = json.loads((run / "summary.json").read_text())["diverged"]
    step, what = diverged["step"], diverged["what"]
    assert f"{what} at step {step}: training stopped" in err and 1 < step < 30 and "not finite" in what
    assert main(["report", str(run)]) == 0
    assert f"(diverged at step {step}: {what})" in (run / "report.html").read_text()
    assert main(["export", str(run), "--out", str(tmp_path / "hf")]) == 0
    warned = capsys.readouterr().err
    assert f"warning: {run} diverged at step {step} ({what}): exporting step_{step - 1:08d}.safetensors" in warned
    card = (tmp_path / "hf" / "README.md").read_text()
    assert f"The run diverged at step {step} ({what}): these weights are step {step - 1}'s" in card
    # given by its path, the checkpoint is named on the card by its file name: a card leaves this machine
    snapshot = sorted((run / "snapshots").glob("step_*.safetensors"))[0]
    assert main(["export", str(run), "--out", str(tmp_path / "hf-0"), "--checkpoint", str(snapshot)]) == 0
    card = (tmp_path / "hf-0" / "README.md").read_text()
    assert f"| checkpoint | {snapshot.name} |" in card and str(tmp_path) not in card
    # a run resumed past where it diverged no longer says so (this one's weights are too far gone to: one by hand)
    healthy = tmp_path / "healthy"
    assert main(["train", "tiny", *tiny_overrides(), "train.steps=2", "logging.samples=0", "--out", str(healthy)]) == 0
    summary = json.loads((healthy / "summary.json").read_text())
    (healthy / "summary.json").write_text(json.dumps(summary | {"diverged": {"step": 2, "what": "loss is nan"}}))
    assert main(["train", "--resume", "--out", str(healthy), "train.steps=3"]) == 0
    assert json.loads((healthy / "summary.json").read_text()).keys() == summary.keys() | {"config_changes"}


def test_the_harness_hf_model_agrees_with_vslm_eval(tmp_path, capsys):
    pytest.importorskip("lm_eval", reason="lm-evaluation-harness is not installed")
    import lm_eval
    import lm_eval.models  # noqa: F401  registers "hf" (the registry skips it once "vslm" is in)
    from lm_eval.tasks import TaskManager

    from test_harness import DOCS, write_task

    run = tmp_path / "run"
    assert main(["train", "tiny", *tiny_overrides(), "data.tokenizer=byte", "train.steps=20", "train.eval_every=0",
                 "train.eval_windows=8", "--out", str(run)]) == 0
    assert export(run, tmp_path / "hf") == 0
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    write_task(tasks, "vslm_export_rolling", [{"text": t} for t in DOCS],
               'output_type: loglikelihood_rolling\ndoc_to_text: ""\ndoc_to_target: "{{text}}"\nmetric_list:\n'
               "  - metric: word_perplexity\n  - metric: bits_per_byte\n")
    capsys.readouterr()
    assert main(["eval", str(run), "--tasks", "vslm_export_rolling", "--include-path", str(tasks), "--limit", "3",
                 "--json"]) == 0
    ours = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["tasks"]["vslm_export_rolling"]
    theirs = lm_eval.simple_evaluate(model="hf", model_args=f"pretrained={tmp_path / 'hf'},dtype=float32",
                                     tasks=["vslm_export_rolling"], task_manager=TaskManager(include_path=str(tasks)),
                                     limit=3, device="cpu", batch_size=1)["results"]["vslm_export_rolling"]
    for metric in ("word_perplexity", "bits_per_byte"):
        assert theirs[f"{metric},none"] == pytest.approx(ours[metric], rel=1e-5), metric


def test_export_loads_no_custom_code_offline(tmp_path):
    run = make_run(tmp_path / "run", MAPPINGS["llama-gqa-untied"][0])
    assert export(run, tmp_path / "hf") == 0
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    conf = transformers.AutoConfig.from_pretrained(tmp_path / "hf", trust_remote_code=False)
    assert conf.model_type == "llama" and conf.num_key_value_heads == 2
