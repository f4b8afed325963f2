"""Models leave the lab and come back: Hugging Face `transformers` export and import (hf.py).

    hf.py   the architecture mapping (nanoGPT settings -> GPT2LMHeadModel; RoPE + RMSNorm + SwiGLU ->
            LlamaForCausalLM, or MistralForCausalLM with one sliding window), weights both ways, the
            tokenizer as tokenizer.json, generation_config.json and a model card; what no native class
            computes is refused naming the field.

Needs the `hf` extra (`pip install 'vslm[hf]'`) for export; import reads config.json and safetensors only.
"""
