"""Hugging Face `transformers` export and import: native classes only, never `trust_remote_code`.

    export_run(run, out)            a run folder -> a folder AutoModelForCausalLM / AutoTokenizer load
    init_from_hf(cfg, folder)       a run config whose model is a transformers checkpoint's, its weights, and
                                    where they came from

The mapping is exact or refused (`family`):
  position learned, LayerNorm, GELU (exact, erf) or ReLU^2, heads * head_dim = width, no GQA
      -> GPT2LMHeadModel (Conv1D weights are transposed Linear weights; a model without biases exports
         zero biases, a LayerNorm without bias a zero bias; the head tied or not)
  position rope, RMSNorm, SwiGLU (GQA, any head_dim, tied or untied head, biases on or off)
      -> LlamaForCausalLM, or MistralForCausalLM when every block has the same sliding window (no biases).
  position rope, RMSNorm, GELU (exact) or ReLU^2, no window (the demo's and the reader's models)
      -> LlamaForCausalLM with hidden_act gelu or relu2 and mlp_bias: its MLP is down(act(gate x) * up x),
         and up is zero weights with a bias of ones (up x = 1 exactly), gate is vslm's fc, down its proj;
         the file holds the zero up weights beside the model's (ffn x width more a block).
         vslm's RoPE is the rotate-half form with the same frequencies as Llama's (x1, x2 = the two halves
         of a head; (x1 cos - x2 sin, x2 cos + x1 sin)), so q and k need no permutation. The fused qkv
         is [q heads | k heads | v heads]; the fused SwiGLU fc is [gate | value], silu on the gate.
         torch.nn.RMSNorm and LlamaRMSNorm both compute w * x / sqrt(mean(x^2) + eps).
Refused, naming the field: weight sharing (`order`, `sharing`), recursion LoRA, a learned root or token
injection, per-layer widths, heads or FFN sizes, attention other than softmax, per-layer windows,
and combinations of position, norm and MLP that no class computes (learned positions with RMSNorm or
SwiGLU, RoPE with LayerNorm, a sliding window with an MLP other than SwiGLU, attention-only blocks).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from vslm.config import ModelConfig, RunConfig, apply_overrides, validate
from vslm.data.shards import Corpus
from vslm.data.tokenizer import EOS, ByteTokenizer, CharTokenizer, HFTokenizer, Tokenizer
from vslm.errors import ConfigError, UsageError, VSLMError
from vslm.files import default_mode, read_jsonl, write_text
from vslm.model import GPT, parameter_count, training_flops_per_token
from vslm.train.checkpoint import checkpoint_step
from vslm.train.run_folder import METRICS, SUMMARY, load_run_at, read_run_config, saved_by_run

FAMILIES = {"gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM"}
# resume changes that leave the weights as they were: what a card's "does not reproduce" leaves out
NOT_COMPUTED = ("logging.", "name", "description", "train.threads", "train.checkpoint_minutes", "train.keep_last",
                "train.checkpoint_every", "train.snapshots",
                "data.source")  # a resume takes another path only to the same text (run_folder.same_text_elsewhere)
PARITY_TOLERANCE = 1e-4  # export refuses to write a model whose logits differ more (float32; tests check 1e-5)
# the architecture fields an import takes from the checkpoint; the rest of [model] (dropout, init) stays the config's
ARCH_FIELDS = ("vocab_size", "context", "depth", "width", "heads", "kv_heads", "head_dim", "ffn", "mlp", "norm",
               "norm_eps", "position", "rope_base", "tie_embeddings", "bias", "window")
# and those it sets to their defaults (a checkpoint of these families has none of them)
REPLACED = (*ARCH_FIELDS, "order", "sharing", "unique_blocks", "recursion_lora_rank", "root", "root_per_position",
            "inject", "schedule", "blocks", "attention", "attention_gamma", "ffn_mult", "embed_width", "ngpt")


# ------------------------------------------------------------------------------------ mapping


def _refuse(field: str, value: Any, why: str) -> UsageError:
    return UsageError(f"cannot export to transformers: model.{field} = {value!r}: {why}")


def _per_block_field(m: ModelConfig, attr: str, schedule_field: str | None) -> str:
    """Which config field makes `attr` vary per block: a schedule when one is set, else the records."""
    if m.schedule.layer_scaling != "uniform" and attr in ("heads", "ffn", "kv_heads"):
        return "schedule.layer_scaling"
    if schedule_field and getattr(m.schedule, schedule_field) not in ("uniform", "full"):
        return f"schedule.{schedule_field}"
    return "blocks"


def family(m: ModelConfig) -> str:
    """The transformers family that computes this model exactly ("gpt2", "llama", "mistral"), or a
    UsageError naming the field and value that no native class computes."""
    if m.ngpt:
        raise _refuse("ngpt", True, "the normalised transformer (unit stream, learned rates and scales) has no "
                                    "transformers class")
    order = m.depth_order()
    if len(set(order)) != len(order):
        field, value = ("order", order) if m.order is not None else ("sharing", m.sharing)
        raise _refuse(field, value, "weight sharing across depths has no transformers class")
    if m.recursion_lora_rank:
        raise _refuse("recursion_lora_rank", m.recursion_lora_rank, "per-depth LoRA has no transformers class")
    if m.root != "token":
        raise _refuse("root", m.root, "a learned root of the residual stream has no transformers class")
    if m.injects():
        raise _refuse("inject", True, "token injection at every depth has no transformers class")
    specs = m.block_specs()
    for attr, schedule_field, what in (("width", "widths", "per-layer widths"), ("heads", "widths", "per-layer heads"),
                                       ("kv_heads", "widths", "per-layer key/value heads"),
                                       ("ffn", None, "per-layer FFN sizes"), ("window", "windows", "per-layer windows"),
                                       ("attention", None, "per-layer attention"),
                                       ("attention_gamma", None, "per-layer attention gamma")):
        values = [getattr(s, attr) for s in specs]
        if len(set(values)) > 1:
            field = _per_block_field(m, attr, schedule_field)
            shown = getattr(m.schedule, field.partition(".")[2]) if field != "blocks" else values
            detail = what if field == "blocks" else f"{what} {values}"
            raise _refuse(field, shown, f"{detail}: transformers classes build every layer alike")
    spec = specs[0]
    if m.embed_width is not None and m.embed_width != spec.width:
        raise _refuse("embed_width", m.embed_width, f"an embedding apart from the blocks' width ({spec.width}), "
                      "projected to it, has no transformers class")
    if spec.attention != "softmax":  # named where it was set: model-wide, or in every block's record
        field = "blocks[].attention" if any(b.attention for b in m.blocks) else "attention"
        raise _refuse(field, spec.attention, "transformers classes compute softmax attention only")
    if m.mlp == "none":
        raise _refuse("mlp", "none", "attention-only blocks have no transformers class")
    if m.position == "learned":
        if m.norm != "layernorm":
            raise _refuse("norm", m.norm, "learned positions map to GPT-2, which uses LayerNorm")
        if m.mlp not in ("gelu", "relu2"):
            raise _refuse("mlp", m.mlp, "learned positions map to GPT-2, whose MLP is not gated")
        if spec.kv_heads != spec.heads:
            raise _refuse("kv_heads", spec.kv_heads, "GPT-2 has no grouped key/value heads")
        if spec.heads * spec.head_dim != spec.width:
            field, value = (("blocks[].heads", spec.heads) if any(b.heads for b in m.blocks) else
                            ("head_dim", spec.head_dim) if m.head_dim is not None else ("heads", spec.heads))
            raise _refuse(field, value, f"GPT-2 needs heads ({spec.heads}) x head size ({spec.head_dim}) = "
                                        f"width ({spec.width})")
        if spec.window is not None:
            raise _refuse("window", spec.window, "GPT-2 has no sliding window")
        return "gpt2"
    if m.norm != "rmsnorm":
        raise _refuse("norm", m.norm, "RoPE maps to Llama, which uses RMSNorm (a run trained with "
                      "model.norm=rmsnorm exports)")
    if spec.window is not None and m.mlp != "swiglu":
        raise _refuse("mlp", m.mlp, "a sliding window maps to Mistral, whose MLP is SwiGLU without biases (a run "
                      "trained with model.mlp=swiglu exports)")
    return "llama" if spec.window is None else "mistral"


def hf_config(m: ModelConfig, eos_id: int | None):
    """The transformers config of a model `family` accepts."""
    from transformers import GPT2Config, LlamaConfig, MistralConfig

    kind, spec, depth = family(m), m.block_specs()[0], len(m.depth_order())
    tokens = {"bos_token_id": eos_id, "eos_token_id": eos_id, "pad_token_id": None}
    if kind == "gpt2":
        return GPT2Config(
            vocab_size=m.vocab_size, n_positions=m.context, n_embd=spec.width, n_layer=depth, n_head=spec.heads,
            n_inner=spec.ffn, activation_function=m.mlp, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
            layer_norm_epsilon=m.norm_eps, scale_attn_weights=True, scale_attn_by_inverse_layer_idx=False,
            reorder_and_upcast_attn=False, tie_word_embeddings=m.tie_embeddings, initializer_range=m.init_std,
            architectures=[FAMILIES[kind]], **tokens)
    common = dict(
        vocab_size=m.vocab_size, hidden_size=spec.width, intermediate_size=spec.ffn, num_hidden_layers=depth,
        num_attention_heads=spec.heads, num_key_value_heads=spec.kv_heads, head_dim=spec.head_dim,
        hidden_act="silu" if m.mlp == "swiglu" else m.mlp, max_position_embeddings=m.context, rms_norm_eps=m.norm_eps,
        tie_word_embeddings=m.tie_embeddings, rope_parameters={"rope_type": "default", "rope_theta": m.rope_base},
        attention_dropout=0.0, initializer_range=m.init_std, architectures=[FAMILIES[kind]], **tokens)
    if kind == "llama":
        return LlamaConfig(attention_bias=m.bias, mlp_bias=m.bias or m.mlp != "swiglu", **common)  # up x = 1: a bias
    if m.bias:
        raise _refuse("bias", True, "Mistral (the sliding-window class) has no biases")
    return MistralConfig(sliding_window=spec.window, **common)


# ------------------------------------------------------------------------------------ weights


def to_hf_state(model: GPT) -> dict[str, torch.Tensor]:
    """vslm weights -> the transformers class's state dict (tied heads left out: the class ties them)."""
    m, sd = model.cfg, {k: v.detach() for k, v in model.state_dict().items()}
    kind = family(m)
    out: dict[str, torch.Tensor] = {}

    def get(name: str, zeros: int | None = None) -> torch.Tensor:
        if name in sd:
            return sd[name]
        if zeros is None:
            raise KeyError(name)
        return torch.zeros(zeros)

    if kind == "gpt2":
        out["transformer.wte.weight"] = sd["embed.weight"]
        out["transformer.wpe.weight"] = sd["pos.weight"]
        for i in range(len(model.order)):
            b, h = f"blocks.{i}.", f"transformer.h.{i}."
            for vslm_name, hf_name in (("attn_norm", "ln_1"), ("mlp_norm", "ln_2")):
                w = sd[b + vslm_name + ".weight"]
                out[h + hf_name + ".weight"] = w
                out[h + hf_name + ".bias"] = get(b + vslm_name + ".bias", w.numel())
            for vslm_name, hf_name in (("attn.qkv", "attn.c_attn"), ("attn.proj", "attn.c_proj"),
                                       ("mlp.fc", "mlp.c_fc"), ("mlp.proj", "mlp.c_proj")):
                w = sd[b + vslm_name + ".weight"]
                out[h + hf_name + ".weight"] = w.t().contiguous()  # Conv1D: (in, out)
                out[h + hf_name + ".bias"] = get(b + vslm_name + ".bias", w.shape[0])
        out["transformer.ln_f.weight"] = sd["norm.weight"]
        out["transformer.ln_f.bias"] = get("norm.bias", sd["norm.weight"].numel())
    else:
        spec = model.specs[0]
        q, kv, ffn = spec.heads * spec.head_dim, spec.kv_heads * spec.head_dim, spec.ffn
        out["model.embed_tokens.weight"] = sd["embed.weight"]
        for i in range(len(model.order)):
            b, h = f"blocks.{i}.", f"model.layers.{i}."
            out[h + "input_layernorm.weight"] = sd[b + "attn_norm.weight"]
            out[h + "post_attention_layernorm.weight"] = sd[b + "mlp_norm.weight"]
            for part in ("weight", "bias"):
                if b + "attn.qkv." + part not in sd:
                    continue
                wq, wk, wv = sd[b + "attn.qkv." + part].split([q, kv, kv], dim=0)
                for name, t in (("self_attn.q_proj", wq), ("self_attn.k_proj", wk), ("self_attn.v_proj", wv),
                                ("self_attn.o_proj", sd[b + "attn.proj." + part])):
                    out[f"{h}{name}.{part}"] = t.contiguous()
            fc, down = sd[b + "mlp.fc.weight"], sd[b + "mlp.proj.weight"]
            if m.mlp == "swiglu":  # fc is [gate | value]
                gate, up = fc.split([ffn, ffn], dim=0)
                mlp, biases = {"gate_proj": gate, "up_proj": up, "down_proj": down}, {}
                if m.bias:
                    gate, up = sd[b + "mlp.fc.bias"].split([ffn, ffn], dim=0)
                    biases = {"gate_proj": gate, "up_proj": up, "down_proj": sd[b + "mlp.proj.bias"]}
            else:  # down(act(gate x) * up x) with up x = 1: zero weights, a bias of ones
                mlp = {"gate_proj": fc, "up_proj": torch.zeros_like(fc), "down_proj": down}
                biases = {"gate_proj": get(b + "mlp.fc.bias", ffn), "up_proj": torch.ones(ffn, dtype=fc.dtype),
                          "down_proj": get(b + "mlp.proj.bias", down.shape[0])}
            for name, t in mlp.items():
                out[f"{h}mlp.{name}.weight"] = t.contiguous()
            for name, t in biases.items():
                out[f"{h}mlp.{name}.bias"] = t.to(fc.dtype).contiguous()
        out["model.norm.weight"] = sd["norm.weight"]
    if model.head is not None:
        out["lm_head.weight"] = sd["head.weight"]
    return out


def from_hf_state(hf: dict[str, torch.Tensor], kind: str, m: ModelConfig) -> dict[str, torch.Tensor]:
    """A transformers state dict of `kind` -> vslm weights for GPT(m) (the inverse of to_hf_state)."""
    out: dict[str, torch.Tensor] = {}

    def take(name: str) -> torch.Tensor:
        if name not in hf:
            raise VSLMError(f"the transformers checkpoint has no tensor {name}")
        return hf[name].float()

    if kind == "gpt2":
        out["embed.weight"] = take("transformer.wte.weight")
        out["pos.weight"] = take("transformer.wpe.weight")[: m.context]
        for i in range(m.depth):
            b, h = f"blocks.{i}.", f"transformer.h.{i}."
            for vslm_name, hf_name in (("attn_norm", "ln_1"), ("mlp_norm", "ln_2")):
                out[b + vslm_name + ".weight"] = take(h + hf_name + ".weight")
                if m.bias:
                    out[b + vslm_name + ".bias"] = take(h + hf_name + ".bias")
            for vslm_name, hf_name in (("attn.qkv", "attn.c_attn"), ("attn.proj", "attn.c_proj"),
                                       ("mlp.fc", "mlp.c_fc"), ("mlp.proj", "mlp.c_proj")):
                out[b + vslm_name + ".weight"] = take(h + hf_name + ".weight").t().contiguous()
                if m.bias:
                    out[b + vslm_name + ".bias"] = take(h + hf_name + ".bias")
        out["norm.weight"] = take("transformer.ln_f.weight")
        if m.bias:
            out["norm.bias"] = take("transformer.ln_f.bias")
    else:
        out["embed.weight"] = take("model.embed_tokens.weight")
        for i in range(m.depth):
            b, h = f"blocks.{i}.", f"model.layers.{i}."
            out[b + "attn_norm.weight"] = take(h + "input_layernorm.weight")
            out[b + "mlp_norm.weight"] = take(h + "post_attention_layernorm.weight")
            for part in ("weight", "bias") if m.bias else ("weight",):
                out[b + "attn.qkv." + part] = torch.cat([take(f"{h}self_attn.{p}_proj.{part}") for p in "qkv"], 0)
                out[b + "attn.proj." + part] = take(f"{h}self_attn.o_proj.{part}")
                gated = [take(f"{h}mlp.gate_proj.{part}")] + ([take(f"{h}mlp.up_proj.{part}")] if m.mlp == "swiglu"
                                                               else [])  # else up x = 1 (model_fields_from_hf)
                out[b + "mlp.fc." + part] = torch.cat(gated, 0)
                out[b + "mlp.proj." + part] = take(f"{h}mlp.down_proj.{part}")
        out["norm.weight"] = take("model.norm.weight")
    if not m.tie_embeddings:
        out["head.weight"] = take("lm_head.weight")
    return out


def to_transformers(model: GPT, eos_id: int | None, vocab: int | None = None):
    """The transformers model computing what `model` computes (float32, eval mode). `vocab`: the tokenizer's
    size, where the model's vocabulary is padded past it (model.vocab_size): generation never picks the ids no
    text has (suppress_tokens), as `vslm sample` does not."""
    from transformers import AutoModelForCausalLM, GenerationConfig

    config = hf_config(model.cfg, eos_id)
    hf = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    state = to_hf_state(model)
    missing, unexpected = hf.load_state_dict(state, strict=False)
    missing = [k for k in missing if not (k == "lm_head.weight" and model.cfg.tie_embeddings)]
    if missing or unexpected:
        raise VSLMError(f"weight mapping to {type(hf).__name__} is incomplete: missing {missing}, "
                        f"unexpected {unexpected}")
    if model.cfg.tie_embeddings:
        hf.tie_weights()
    padded = list(range(vocab, model.cfg.vocab_size)) if vocab is not None else []
    hf.generation_config = GenerationConfig(bos_token_id=eos_id, eos_token_id=eos_id, pad_token_id=eos_id,
                                            do_sample=False, suppress_tokens=padded or None)
    return hf.eval()


# ---------------------------------------------------------------------------------- tokenizer


def hf_tokenizer(tok: Tokenizer):
    """A `tokenizers.Tokenizer` that gives the run's ids: BPE files as they are; bytes through the
    byte-level alphabet and a BPE without merges (id = byte value); characters through a BPE without
    merges over the character vocabulary (id = the run's id). End-of-text is a special token."""
    from tokenizers import Tokenizer as HF
    from tokenizers import decoders, models, pre_tokenizers

    if isinstance(tok, HFTokenizer):
        return HF.from_str(tok.hf.to_str())
    if isinstance(tok, ByteTokenizer):
        table = pre_tokenizers.ByteLevel.alphabet()
        from vslm.data.tokenizer import _byte_level_decoder

        byte_of = _byte_level_decoder()
        vocab = {ch: byte_of[ch] for ch in table}
        hf = HF(models.BPE(vocab=vocab, merges=[]))
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
        hf.decoder = decoders.ByteLevel()
    elif isinstance(tok, CharTokenizer):
        hf = HF(models.BPE(vocab={c: i for i, c in enumerate(tok.chars)}, merges=[]))
        hf.decoder = decoders.Fuse()
    else:
        raise VSLMError(f"no tokenizer.json export for the {tok.kind} tokenizer")
    if tok.eos_id is not None:
        hf.add_special_tokens([EOS])
        if hf.token_to_id(EOS) != tok.eos_id:
            raise VSLMError(f"end-of-text got id {hf.token_to_id(EOS)} in the export, not the run's {tok.eos_id}")
    return hf


def fast_tokenizer(tok: Tokenizer, context: int):
    """The transformers tokenizer of the export. Where the run's tokenizer has an end-of-text token, it reads the
    text "<|endoftext|>" as that token, as vslm's data reads it in a text file (a document's end:
    vslm.data.sources), though the byte and character tokenizers' own encode() spells it out."""
    from transformers import PreTrainedTokenizerFast

    eos = EOS if tok.eos_id is not None else None
    return PreTrainedTokenizerFast(tokenizer_object=hf_tokenizer(tok), eos_token=eos, bos_token=eos, pad_token=eos,
                                   model_max_length=context, clean_up_tokenization_spaces=False)


# ----------------------------------------------------------------------------------- model card


def metrics_at(run: Path, step: int | None) -> dict:
    """The run's logged values as of `step` (an exported checkpoint's; None: the last logged): the tokens
    trained to it (from the rows' tokens per step when no row is at it), and the last val_loss / val_bpb
    at or before it with the step they were measured at (val_step)."""
    rows = [r for r in read_jsonl(run / METRICS, warn=lambda line: None) if isinstance(r["step"], int)]
    out: dict = {} if step is None else {"step": step}
    for row in rows:
        if step is not None and row["step"] > step:
            continue
        out |= {k: v for k, v in row.items() if v is not None and (step is None or k != "tokens" or
                                                                     row["step"] == step)}
        if row.get("val_loss") is not None:
            out["val_step"] = row["step"]
    per_step = {r["tokens"] // r["step"] for r in rows if isinstance(r.get("tokens"), int) and r["step"] > 0}
    if step is not None and "tokens" not in out and len(per_step) == 1:  # every row says the same tokens a step
        out["tokens"] = step * per_step.pop()
    return out


def model_card(run: Path, cfg: RunConfig, model: GPT, kind: str, checkpoint: str, step: int | None = None,
               eos: bool = True) -> str:
    """README.md of an export: what it is, how to load it, the numbers of the checkpoint exported (`step`),
    and the command that trains it again; `eos`: whether the tokenizer has an end-of-text token (without
    one, lm-evaluation-harness's hf model has no token to start a text from, and the card says so)."""
    from vslm.data.registry import split_name

    summary = _summary(run)
    metrics = metrics_at(run, step)
    origin = summary.get("init_from") if isinstance(summary.get("init_from"), dict) else None
    diverged = summary.get("diverged") if isinstance(summary.get("diverged"), dict) else None
    # the folder by its name (a card leaves this machine: its own paths stay in summary.json), the hash is its identity
    init = f" --init-from-hf {shlex.quote(Path(origin['hf_folder']).name)}" if origin and "hf_folder" in origin else ""
    entry, _ = split_name(cfg.data.source)
    corpus = f"{cfg.data.source} ({entry.title})" if entry else cfg.data.source
    license_ = entry.license if entry else "unknown: a local file or folder (check its own license)"

    def num(key: str, fmt: str) -> str:
        if not isinstance(metrics.get(key), int | float):
            return "not logged"
        at = metrics.get("val_step")
        return format(metrics[key], fmt) + (f" (at step {at})" if at is not None and at != metrics.get("step") else "")

    lines = [
        "---", "library_name: transformers", "pipeline_tag: text-generation", "tags: [vslm]", "---", "",
        f"# {run.resolve().name}", "",  # the run's name: several runs of one config are not one model
        f"A very small language model trained with vslm, exported as `{FAMILIES[kind]}` "
        "(native transformers, no custom code).", "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "model = AutoModelForCausalLM.from_pretrained(FOLDER)",
        "tokenizer = AutoTokenizer.from_pretrained(FOLDER)",
        "```", "",
        "| | |", "|---|---|",
        f"| parameters | {parameter_count(model):,} |",
        f"| training FLOPs per token | {training_flops_per_token(model):,} |",
        f"| tokens trained | {metrics['tokens']:,} |" if isinstance(metrics.get("tokens"), int) else
        "| tokens trained | not logged |",
        f"| steps | {metrics.get('step', 'not logged')} |",
        f"| validation loss (nats per token) | {num('val_loss', '.4f')} |",
        f"| validation bits per byte | {num('val_bpb', '.4f')} |",
        f"| config | {cfg.name}, with the run's settings (below) |",
        f"| corpus | {corpus} |",
        f"| corpus license | {license_} |",
        f"| tokenizer | {cfg.data.tokenizer}, vocabulary {summary.get('vocab_size', cfg.model.vocab_size)}"
        + (" (the training text's characters: tokenizer.json drops any other, where vslm refuses it) |"
           if cfg.data.tokenizer == "char" else " |"),
        f"| checkpoint | {checkpoint} |", "",
        *([f"The run diverged at step {diverged.get('step')} ({diverged.get('what')}): these weights are step "
           f"{step}'s, trained before it. Check the numbers above before using them.", ""] if diverged else []),
        *([] if eos else [
            "Its tokenizer has no end-of-text token (a character tokenizer of one text): nothing marks the start of "
            "a text, so lm-evaluation-harness's `hf` model needs `prefix_token_id=ID` in its model_args (a token "
            "to condition the first on, the newline's say), and scores differ from `vslm eval`'s by that token.",
            ""]),
        "## Training command", "",
        *(_own_training(run, summary["own_training"], cfg, step) if summary.get("own_training") else [
            *_reproduction(cfg, summary, step, init, origin),
            "```sh", f"vslm train vslm_config.toml{init} --out runs/{shlex.quote(run.resolve().name)}", "```", ""]),
        "## Config", "", "```toml", cfg.to_toml().rstrip(), "```", "",
    ]
    return "\n".join(lines)


def _summary(run: Path) -> dict:
    return _read_json(run / SUMMARY) if (run / SUMMARY).is_file() else {}  # damaged: one line naming it


def _own_training(run: Path, own: str, cfg: RunConfig, step: int | None) -> list[str]:
    """The card's training section for a run trained with batches or an objective of its own (summary.json's
    own_training: a reader, a capacity run, a distilled student, a relearning test or an adapter's fit), which
    `vslm train` on its config does not give: the command that made it, by its settings file
    (<name>-settings.json, written when it starts by `vslm facts <name>`), and those settings."""
    lines = [f"This run trained with batches or an objective of its own ({own}): `vslm train vslm_config.toml` would "
             "train another model (the config's text, the next-token loss).", ""]
    if step is not None and step < cfg.train.steps:
        lines += [f"These weights are step {step} of the {cfg.train.steps} steps it trains.", ""]
    settings = sorted(run.glob("*-settings.json"))
    for path in settings:
        command = f"vslm facts {path.name.removesuffix('-settings.json')}"
        lines += [f"`{command}` made it (vslm's docs/FACTS.md gives its arguments, among them the folders it read), "
                  f"with the model and schedule of vslm_config.toml; the settings it started with ({path.name}):", "",
                  "```json", path.read_text(encoding="utf-8").strip(), "```", ""]
    if not settings:
        lines += ["A knowledge experiment or `vslm facts eval` made it (a relearning test or an adapter's fit: "
                  "vslm's docs/FACTS.md).", ""]
    return lines


def _reproduction(cfg: RunConfig, summary: dict, step: int | None, init: str, origin: dict | None) -> list[str]:
    """What the card's training command gives: this model where the run trained in one go to its config's
    steps; else what differs (a resume that changed settings, summary.json's config_changes; weights from
    an earlier step)."""
    start = (f" from the transformers checkpoint folder it started from (weights SHA-256 {origin.get('sha256')})"
             if init else "")
    changes = summary.get("config_changes") if isinstance(summary.get("config_changes"), list) else []
    changed = [f"- at step {c.get('step')}: " + "; ".join(words) for c in changes if isinstance(c, dict) and (
        words := [f"{k} {v[0]} -> {v[1]}" for k, v in c.items() if k != "step" and isinstance(v, list)
                  and len(v) == 2 and not k.startswith(NOT_COMPUTED)])]
    earlier = step is not None and step < cfg.train.steps
    if not changed and not earlier:
        return [f"The run folder's resolved config (below, also in `vslm_config.toml`) reproduces it{start}:", ""]
    lines = [f"The run folder's resolved config (below, also in `vslm_config.toml`) is its last{start}; the "
             "command below trains it in one go, which does not give this model exactly:", ""]
    if earlier:
        lines += [f"- these weights are step {step} of the {cfg.train.steps} steps it trains (the learning-rate "
                  "schedule runs to the last);"]
    if changed:
        lines += ["- the run was resumed with changed settings (summary.json's config_changes), each from the "
                  "step given:", *changed]
    return [*lines, ""]


# --------------------------------------------------------------------------------------- export


def _check_out(out: Path) -> None:
    if out.is_symlink():  # the export is a folder renamed into place: a link would be replaced, or the rename fail
        raise VSLMError(f"--out {out} is a symbolic link: give the folder it points to, or a new path")
    if in_the_way := next((p for p in out.parents if p.exists() and not p.is_dir()), None):
        raise VSLMError(f"--out {out}: {in_the_way} is a file, not a folder")
    if out.exists() and not out.is_dir():
        raise VSLMError(f"--out {out} is a file: export writes a folder, nothing is overwritten")
    if out.exists() and any(out.iterdir()):
        raise VSLMError(f"--out {out} exists and is not empty: export writes a new folder, nothing is overwritten")


def check_parity(model: GPT, hf, tokens: int = 16) -> float:
    """Max |logits difference| between the two on random tokens (float32)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, model.cfg.vocab_size, (2, min(tokens, model.cfg.context)), generator=g)
    with torch.no_grad():
        return (model(x).float() - hf(x).logits.float()).abs().max().item()


def export_run(run: Path, out: Path, checkpoint: Path | None = None,
               warn: Callable[[str], None] = lambda line: print(line, file=sys.stderr)) -> Path:
    """Write `out`: config.json, model.safetensors, generation_config.json, the tokenizer, README.md and
    vslm_config.toml. Refused before anything is read when `out` is not empty or the architecture does
    not map; written into a temporary folder beside `out` and renamed, so a failure leaves nothing. A run
    that diverged is exported from its newest finite checkpoint with a warning (`warn`) and a line on its card."""
    run, out = Path(run), Path(out)
    _check_out(out)
    family(read_run_config(run).model)  # refuse an unmapped architecture before loading any weights
    try:
        import transformers  # noqa: F401
    except ImportError:
        raise VSLMError("transformers is not installed: pip install 'vslm[hf]'") from None
    if checkpoint is not None and Path(checkpoint).is_file() and saved_by_run(run, checkpoint) is None:
        raise VSLMError(f"checkpoint {checkpoint} is not one of {run}'s checkpoints or snapshots: the card would give "
                        "that run's numbers and config to other weights; export the run it belongs to")
    cfg, model, tok, used = load_run_at(run, checkpoint)  # the newest that reads, without --checkpoint
    kind = family(cfg.model)
    hf = to_transformers(model, tok.eos_id, tok.vocab_size)
    diff = check_parity(model, hf)
    if not diff <= PARITY_TOLERANCE:
        raise VSLMError(f"the {FAMILIES[kind]} export's logits differ from the run's by {diff:.2e}; nothing written")
    step = checkpoint_step(used)  # the card's numbers are this checkpoint's, not the run's last logged
    if isinstance(diverged := _summary(run).get("diverged"), dict):
        warn(f"warning: {run} diverged at step {diverged.get('step')} ({diverged.get('what')}): exporting "
             f"{used.name}, from before it (the card says so)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.export-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    from transformers.utils import logging as hf_logging

    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # stderr is for the one line a user reads
    try:
        hf.save_pretrained(tmp, safe_serialization=True)
        fast_tokenizer(tok, cfg.model.context).save_pretrained(tmp)
        _pin_tokenizer_class(tmp)
        card = model_card(run, cfg, model, kind, used.name, step, eos=tok.eos_id is not None)  # (no local path)
        (tmp / "README.md").write_text(card, encoding="utf-8")
        (tmp / "vslm_config.toml").write_text(cfg.to_toml(), encoding="utf-8")
        for path in tmp.iterdir():  # transformers writes the weights 0600: an export is for sharing, the umask's modes
            path.chmod(default_mode(folder=path.is_dir()))
        _check_out(out)
        if out.exists():
            out.rmdir()
        tmp.rename(out)
        short = f": step {step:,} of its {cfg.train.steps:,}" if step is not None and step < cfg.train.steps else ""
        warn(f"exported {used}{short}")  # which weights (a run still training: its newest checkpoint or snapshot)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if bar:
            hf_logging.enable_progress_bar()
    return out


def _pin_tokenizer_class(folder: Path) -> None:
    """AutoTokenizer would pick the family's own tokenizer class (GPT2Tokenizer, LlamaTokenizer), which
    rebuilds the pipeline from vocabulary files; the fast tokenizer reads tokenizer.json as it is."""
    path = folder / "tokenizer_config.json"
    conf = json.loads(path.read_text()) if path.is_file() else {}
    conf["tokenizer_class"] = "PreTrainedTokenizerFast"
    write_text(path, json.dumps(conf, indent=2) + "\n")


# --------------------------------------------------------------------------------------- import


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise VSLMError(f"cannot read {path}: {e}") from None


def _weight_files(folder: Path) -> list[str]:
    index = folder / "model.safetensors.index.json"
    return sorted(set(_read_json(index).get("weight_map", {}).values())) if index.is_file() else ["model.safetensors"]


def read_hf_state(folder: Path) -> dict[str, torch.Tensor]:
    """The tensors of model.safetensors (or its shards, by model.safetensors.index.json); no pickles read."""
    from safetensors.torch import load_file

    folder = Path(folder)
    state: dict[str, torch.Tensor] = {}
    for name in _weight_files(folder):
        path = folder / name
        if not path.is_file():
            raise VSLMError(f"{folder} has no {name} (import reads safetensors weights only)")
        try:
            state |= load_file(str(path))
        except Exception as e:  # safetensors' own error types: truncated, bad header
            raise VSLMError(f"cannot read {path}: {e}") from None
    # a bare GPT2Model's checkpoint (OpenAI's GPT-2) names its tensors without the "transformer." prefix
    if any(k.startswith("h.") for k in state) and not any(k.startswith("transformer.") for k in state):
        state = {f"transformer.{k}": v for k, v in state.items()}
    return state


def _import_refuse(field: str, value: Any, why: str) -> VSLMError:
    return VSLMError(f"cannot import: config.json {field} = {value!r}: {why}")


def model_fields_from_hf(conf: dict, state: dict[str, torch.Tensor]) -> tuple[str, dict]:
    """(family, vslm [model] fields) of a transformers config.json; what vslm cannot compute exactly is
    refused naming the field."""
    kind = conf.get("model_type")
    if kind not in FAMILIES:
        raise _import_refuse("model_type", kind, f"vslm imports {', '.join(FAMILIES)} checkpoints")
    if kind == "gpt2":
        act = conf.get("activation_function", "gelu_new")
        if act not in ("gelu", "relu2"):
            raise _import_refuse("activation_function", act, "vslm computes exact (erf) GELU or ReLU^2")
        for key, want in (("scale_attn_weights", True), ("scale_attn_by_inverse_layer_idx", False),
                          ("add_cross_attention", False)):
            if conf.get(key, want) != want:
                raise _import_refuse(key, conf[key], f"vslm computes {key} = {want}")
        width, heads = conf["n_embd"], conf["n_head"]
        biases = [v for k, v in state.items() if k.endswith(".bias") and k.startswith("transformer.")]
        fields = dict(vocab_size=conf["vocab_size"], context=conf["n_positions"], depth=conf["n_layer"], width=width,
                      heads=heads, kv_heads=heads, head_dim=width // heads, ffn=conf.get("n_inner") or 4 * width,
                      mlp=act, norm="layernorm", norm_eps=conf.get("layer_norm_epsilon", 1e-5), position="learned",
                      tie_embeddings=conf.get("tie_word_embeddings", True),
                      bias=any(bool(b.any()) for b in biases), window=None)
        return kind, fields
    act = conf.get("hidden_act", "silu")
    if act not in ("silu", "gelu", "relu2"):
        raise _import_refuse("hidden_act", act, "vslm's SwiGLU gates with silu, and its GELU (exact) and ReLU^2 "
                                                "MLPs are not gated")
    bias = bool(conf.get("attention_bias", False))
    if act != "silu":  # vslm's own export of a GELU or ReLU^2 MLP: up x = 1, zero weights and a bias of ones
        _check_ungated(conf, state, act, bias)
    elif conf.get("attention_bias", False) != conf.get("mlp_bias", False):
        raise _import_refuse("mlp_bias", conf.get("mlp_bias"), "vslm has one bias switch for attention and MLP")
    rope = conf.get("rope_parameters") or conf.get("rope_scaling") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type != "default":
        raise _import_refuse("rope_parameters.rope_type", rope_type, "vslm computes plain RoPE (no scaling)")
    theta = rope.get("rope_theta", conf.get("rope_theta", 10000.0))
    if conf.get("pretraining_tp", 1) not in (1, None):
        raise _import_refuse("pretraining_tp", conf["pretraining_tp"], "vslm computes pretraining_tp = 1")
    heads = conf["num_attention_heads"]
    window = conf.get("sliding_window") if kind == "mistral" else None
    if conf.get("layer_types") and len(set(conf["layer_types"])) > 1:
        raise _import_refuse("layer_types", conf["layer_types"], "vslm imports one attention kind for all layers")
    fields = dict(vocab_size=conf["vocab_size"], context=conf.get("max_position_embeddings", 2048),
                  depth=conf["num_hidden_layers"], width=conf["hidden_size"], heads=heads,
                  kv_heads=conf.get("num_key_value_heads") or heads,
                  head_dim=conf.get("head_dim") or conf["hidden_size"] // heads, ffn=conf["intermediate_size"],
                  mlp="swiglu" if act == "silu" else act, norm="rmsnorm", norm_eps=conf.get("rms_norm_eps", 1e-6),
                  position="rope", rope_base=float(theta), tie_embeddings=conf.get("tie_word_embeddings", False),
                  bias=bias, window=window)
    return kind, fields


def _check_ungated(conf: dict, state: dict[str, torch.Tensor], act: str, bias: bool) -> None:
    """A Llama MLP down(act(gate x) * up x) computes vslm's ungated `act` MLP only where up x = 1 for every x
    (up_proj zero weights, a bias of ones: how vslm exports one), and its gate and down biases are zero where
    attention has none (vslm has one bias switch); else refused, naming the field."""
    if conf.get("model_type") != "llama" or not conf.get("mlp_bias", False):
        raise _import_refuse("hidden_act", act, "vslm's SwiGLU gates with silu; an ungated MLP imports from a Llama "
                                                "checkpoint whose up_proj is zero with a bias of ones (mlp_bias), "
                                                "as vslm exports one")
    for i in range(conf["num_hidden_layers"]):
        h = f"model.layers.{i}.mlp."
        up, one = state.get(h + "up_proj.weight"), state.get(h + "up_proj.bias")
        if up is None or one is None or bool(up.any()) or not bool((one == 1).all()):
            raise _import_refuse("hidden_act", act, f"layer {i}'s up_proj is not zero weights with a bias of ones: "
                                                    "a gated MLP, which vslm computes with silu only")
        if any(state.get(h + p + ".bias") is None for p in ("gate_proj", "down_proj")):
            raise _import_refuse("mlp_bias", True, f"layer {i}'s gate_proj or down_proj has no bias tensor")
        if not bias and any(bool(state[h + p + ".bias"].any()) for p in ("gate_proj", "down_proj")):
            raise _import_refuse("mlp_bias", True, f"layer {i}'s MLP has biases and its attention none: vslm has "
                                                   "one bias switch for attention and MLP")


def check_init_tokenizer(folder: Path, corpus: Corpus, model_vocab: int) -> None:
    """Refuse (UsageError) a run whose tokenizer is not the one the checkpoint in `folder` was trained with: its
    tokenizer.json must have the run tokenizer's vocabulary size and give its ids for a piece of the run's
    corpus (end-of-text markers left out: a folder may spell them otherwise); a folder without one must have a
    model vocabulary of the tokenizer's size. Otherwise the run would train from embeddings whose rows mean
    other tokens (garbage, at a loss that says nothing)."""
    tok = corpus.tokenizer
    fix = "set data.tokenizer (and its options) to the checkpoint's (README: Leaving the lab)"
    what = f"the run's {tok.kind} tokenizer ({tok.vocab_size} tokens)"
    path = Path(folder) / "tokenizer.json"
    if not path.is_file():
        if model_vocab != tok.vocab_size:
            raise UsageError(f"--init-from-hf {folder}: its vocabulary of {model_vocab} is not {what}: {fix}")
        return
    from tokenizers import Tokenizer as HF

    try:
        theirs = HF.from_file(str(path))
    except Exception as e:  # the tokenizers library's own error types
        raise VSLMError(f"--init-from-hf {folder}: cannot read tokenizer.json ({str(e).splitlines()[0]})") from None
    if theirs.get_vocab_size() != tok.vocab_size:
        raise UsageError(f"--init-from-hf {folder}: its tokenizer.json has {theirs.get_vocab_size()} tokens, "
                         f"{what}: {fix}")
    split = corpus.val if len(corpus.val.tokens) else corpus.train
    text = tok.decode(int(t) for t in split.tokens[:2000] if t != tok.eos_id)
    ours = tok.encode(text)
    if theirs.encode(text, add_special_tokens=False).ids != ours:
        raise UsageError(f"--init-from-hf {folder}: its tokenizer.json gives other ids than {what} on the run's "
                         f"text: {fix}")


def init_from_hf(cfg: RunConfig, folder: Path, overrides: Sequence[str] = ()) -> tuple[RunConfig, GPT, dict]:
    """`cfg` with its [model] architecture taken from a transformers checkpoint folder (dropout, init and
    every other section stay the config's), the vslm model holding its weights, and where they came from
    (the folder and its weights' SHA-256: summary.json's init_from). `overrides`, the command line's, may
    not set a field the checkpoint replaces: it would be dropped without a word."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise VSLMError(f"--init-from-hf {folder}: no config.json (not a transformers model folder)")
    conf = _read_json(folder / "config.json")
    state = read_hf_state(folder) if conf.get("model_type") in FAMILIES else {}
    kind, fields = model_fields_from_hf(conf, state)
    dump = cfg.to_raw()
    model = {k: v for k, v in dump["model"].items() if k not in REPLACED}
    model |= {k: v for k, v in fields.items() if v is not None}
    new = validate(dump | {"model": model})
    kept = new.model_dump(mode="json", exclude_none=True)

    def asks_otherwise(word: str) -> bool:  # a [model] override whose value is not the checkpoint's
        field = word.partition("=")[0].removeprefix("model.").split(".")[0].split("[")[0]  # schedule.windows: schedule
        if not (word.startswith("model.") and field in REPLACED):
            return False
        try:
            return validate(apply_overrides(kept, [word])).model != new.model
        except ConfigError:
            return True

    if dropped := [w for w in overrides if asks_otherwise(w)]:  # else dropped without a word
        raise UsageError(f"--init-from-hf {folder}: the checkpoint sets the architecture, and {' '.join(dropped)} "
                         "is not its value; leave it out (model.dropout and the init fields are the config's)")
    weights = from_hf_state(state, kind, new.model)
    gpt = GPT.for_weights(new.model)
    try:
        gpt.load_state_dict(weights, strict=True)
    except RuntimeError as e:
        raise VSLMError(f"--init-from-hf {folder}: the weights do not fit the model its config.json describes: "
                        f"{str(e).splitlines()[0]}") from None
    return new, gpt, {"hf_folder": str(folder.resolve()), "sha256": _weights_sha256(folder)}


def _weights_sha256(folder: Path) -> str:
    """One SHA-256 over the folder's safetensors weight files, in read_hf_state's order."""
    import hashlib

    digest = hashlib.sha256()
    for name in _weight_files(folder):
        with open(folder / name, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()
