"""What a fused (torch.compile) sampling step would buy on this machine, for the question `vslm bench sample`
leaves open: the cached step of the demo model is overhead-bound, so would compiling it reach the 5x?

The demo model (random weights, seed 0, vocabulary 64, as `vslm bench sample` builds it) samples 256 greedy
tokens sliding past its context three ways, interleaved, medians of --repeat:
  model      `GPT.generate(slide=True)`, the cached path as shipped (nn.Modules, `KVCache`);
  functional the same arithmetic as plain functions over the model's own weights, with one static ring
             buffer of keys and values per layer (fixed shapes, the position a tensor), which is what
             `torch.compile` needs to compile one graph for every step;
  compiled   that step under `torch.compile(fullgraph=True)`, its compile time reported apart.
All three must give the model's tokens (checked; the script fails otherwise). This is a measurement tool,
not a second model: it covers only the demo's layout (RoPE, RMSNorm, GELU, tied head, no bias, full
attention, as many key/value heads as heads) and refuses any other.

    python scripts/bench_compiled_decode.py [--tokens 256] [--repeat 5] [--no-compile]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from vslm.commands.bench import interleaved, sampling_model
from vslm.model import GPT


def functional_step(model: GPT):
    """One greedy step of the demo model as plain functions: (token (1, 1), position (), K, V) -> next token,
    K and V (layers, 1, heads, context, head_dim) ring buffers where slot s holds the latest position p with
    p % context == s."""
    cfg = model.cfg
    C = cfg.context
    first = model.blocks[0].attn
    H, hd = first.heads, first.head_dim
    layers = [(b.attn_norm.weight, b.attn.qkv.weight, b.attn.proj.weight, b.mlp_norm.weight, b.mlp.fc.weight,
               b.mlp.proj.weight) for b in (model.blocks[i] for i in model.order)]
    first.rotary._tables(1 << 16)  # positions run on past the context: one table for every step
    cos, sin, embed, final = first.rotary.cos, first.rotary.sin, model.embed.weight, model.norm.weight
    slots = torch.arange(C)
    width, eps = cfg.width, cfg.norm_eps

    def step(token: torch.Tensor, pos: torch.Tensor, K: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
        x = F.embedding(token, embed)
        slot = (pos % C).view(1)
        visible = (pos - (pos - slots) % C >= 0).view(1, 1, 1, C)  # slots holding a position seen so far
        c = cos.index_select(0, pos.view(1)).view(1, 1, 1, hd)
        s = sin.index_select(0, pos.view(1)).view(1, 1, 1, hd)
        for depth, (n1, wqkv, wo, n2, wfc, wpr) in enumerate(layers):
            qk, v = F.linear(F.rms_norm(x, (width,), n1, eps), wqkv).split([2 * H * hd, H * hd], -1)
            qk = qk.view(1, 1, 2 * H, hd).transpose(1, 2)
            q, k = (qk * c + qk.roll(hd // 2, dims=-1) * s).split([H, H], 1)
            K[depth].index_copy_(2, slot, k)
            V[depth].index_copy_(2, slot, v.view(1, 1, H, hd).transpose(1, 2))
            y = F.scaled_dot_product_attention(q, K[depth], V[depth], attn_mask=visible)
            x = x + F.linear(y.transpose(1, 2).reshape(1, 1, H * hd), wo)
            x = x + F.linear(F.gelu(F.linear(F.rms_norm(x, (width,), n2, eps), wfc)), wpr)
        return F.linear(F.rms_norm(x, (width,), final, eps), embed)[:, -1].argmax(-1, keepdim=True)

    return step


def refusal(model: GPT) -> str | None:
    cfg = model.cfg
    specs = [model.specs[b] for b in model.order]
    if (cfg.position, cfg.norm, cfg.mlp, cfg.root) != ("rope", "rmsnorm", "gelu", "token") or cfg.bias \
            or not cfg.tie_embeddings or cfg.injects() or model.resize or model.lora:
        return "only the demo's layout (RoPE, RMSNorm, GELU, token root, tied head, no bias)"
    if any(s.window is not None and s.window < cfg.context or s.kv_heads != s.heads or s.attention != "softmax"
           or (s.width, s.heads, s.head_dim) != (cfg.width, specs[0].heads, specs[0].head_dim) for s in specs):
        return "only full softmax attention, one width and one head layout, as many key/value heads as heads"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--no-compile", action="store_true", help="only the model and the functional step")
    args = parser.parse_args(argv)
    if args.tokens < 1 or args.repeat < 1:
        print("error: --tokens and --repeat must be at least 1", file=sys.stderr)
        return 2
    model = sampling_model([])
    if (why := refusal(model)) is not None:
        print(f"error: {why}", file=sys.stderr)
        return 2
    blocks = len(model.order)
    attn = model.blocks[0].attn
    shape = (blocks, 1, attn.heads, model.cfg.context, attn.head_dim)
    prompt = torch.zeros(1, 1, dtype=torch.long)

    def run_step(step) -> torch.Tensor:
        K, V = torch.zeros(shape), torch.zeros(shape)
        token, out = prompt, [prompt]
        for p in range(args.tokens):
            token = step(token, torch.tensor(p), K, V)
            out.append(token)
        return torch.cat(out, 1)

    with torch.inference_mode():
        step = functional_step(model)
        runs = {"model": lambda: model.generate(prompt, args.tokens, temperature=0, slide=True),
                "functional": lambda: run_step(step)}
        expected = runs["model"]()
        result = {"tokens": args.tokens, "repeat": args.repeat, "threads": torch.get_num_threads()}
        if not args.no_compile:
            compiled = torch.compile(step, fullgraph=True, dynamic=False)
            started = time.perf_counter()
            runs["compiled"] = lambda: run_step(compiled)
            runs["compiled"]()  # the compile, on the first call
            result["compile_s"] = round(time.perf_counter() - started, 1)
        times, outputs = interleaved(runs, args.repeat)
    for name, out in outputs.items():
        if not torch.equal(out, expected):
            print(f"error: the {name} step gave other tokens than GPT.generate", file=sys.stderr)
            return 1
    us = {name: statistics.median(t) / args.tokens * 1e6 for name, t in times.items()}
    result["us_per_token"] = {name: round(u, 1) for name, u in us.items()}
    result["x_model"] = {name: round(us["model"] / u, 2) for name, u in us.items()}  # speed against the model
    if "compiled" in us:  # tokens after which compiling and sampling beats the model's eager step
        result["break_even_tokens"] = round(result["compile_s"] * 1e6 / (us["model"] - us["compiled"])) \
            if us["compiled"] < us["model"] else None
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
