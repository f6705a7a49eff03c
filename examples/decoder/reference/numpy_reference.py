#!/usr/bin/env python3
"""Independent reference for the C++ decoder: SmolLM2 (any GGUF llama) in float64 numpy.

Reads the GGUF with the `gguf` pip package (its own dequantisers), tokenises with the `regex` module and a
plain BPE loop, runs a dense causal Llama forward with full recomputation, and writes the fixture the C++
test compares against:

    python3 numpy_reference.py MODEL.gguf ../tests/fixtures/smollm2_reference.json
"""
import json
import sys

import numpy as np
import regex
from gguf import GGUFReader
from gguf.quants import dequantize

GPT2_SPLIT = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def field(r, key):
    return r.fields[key].contents()


class Bpe:
    def __init__(self, r):
        self.tokens = field(r, "tokenizer.ggml.tokens")
        self.ids = {t: i for i, t in enumerate(self.tokens)}
        self.ranks = {m: i for i, m in enumerate(field(r, "tokenizer.ggml.merges"))}
        types = field(r, "tokenizer.ggml.token_type")
        self.special = sorted((t for t, ty in zip(self.tokens, types) if ty in (3, 4)), key=len, reverse=True)
        printable = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
        extra = [b for b in range(256) if b not in printable]
        self.byte_char = {b: chr(b) for b in printable}
        self.byte_char.update({b: chr(256 + i) for i, b in enumerate(extra)})

    def _bpe(self, piece):
        sym = [self.byte_char[b] for b in piece.encode("utf-8")]
        while len(sym) > 1:
            pairs = [(self.ranks.get(sym[i] + " " + sym[i + 1], 1 << 30), i) for i in range(len(sym) - 1)]
            rank, i = min(pairs)
            if rank == 1 << 30:
                break
            sym[i:i + 2] = [sym[i] + sym[i + 1]]
        return [self.ids[s] for s in sym]

    def encode(self, text):
        pat = "(" + "|".join(regex.escape(s) for s in self.special) + ")"
        out = []
        for part in regex.split(pat, text):
            if not part:
                continue
            if part in self.special:
                out.append(self.ids[part])
                continue
            # smollm pre-tokenizer: every digit alone first, then the GPT-2 split.
            for chunk in regex.split(r"(\p{N})", part):
                for piece in regex.findall(GPT2_SPLIT, chunk):
                    out += self._bpe(piece)
        return out


class Llama:
    def __init__(self, r):
        g = lambda k: field(r, "llama." + k)
        self.L, self.d = g("block_count"), g("embedding_length")
        self.nh, self.nkv = g("attention.head_count"), g("attention.head_count_kv")
        self.hd = self.d // self.nh
        self.eps = g("attention.layer_norm_rms_epsilon")
        self.base = g("rope.freq_base")
        self.w = {}
        for t in r.tensors:
            a = dequantize(t.data, t.tensor_type).astype(np.float64)
            self.w[t.name] = a.reshape([int(x) for x in reversed(t.shape)]) if a.ndim == 1 and len(t.shape) > 1 else a

    def rms(self, x, w):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + self.eps) * w

    def rope(self, x):  # x [T, H, D]; GGUF llama rotates adjacent pairs
        T, _, D = x.shape
        inv = self.base ** (-np.arange(0, D, 2) / D)
        ang = np.arange(T)[:, None] * inv[None, :]
        c, s = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
        x0, x1 = x[..., 0::2], x[..., 1::2]
        out = np.empty_like(x)
        out[..., 0::2] = x0 * c - x1 * s
        out[..., 1::2] = x0 * s + x1 * c
        return out

    def logits(self, ids):
        w, T = self.w, len(ids)
        x = w["token_embd.weight"][ids]
        mask = np.triu(np.full((T, T), -np.inf), 1)
        g = self.nh // self.nkv
        for l in range(self.L):
            p = f"blk.{l}."
            h = self.rms(x, w[p + "attn_norm.weight"])
            q = self.rope((h @ w[p + "attn_q.weight"].T).reshape(T, self.nh, self.hd))
            k = self.rope((h @ w[p + "attn_k.weight"].T).reshape(T, self.nkv, self.hd))
            v = (h @ w[p + "attn_v.weight"].T).reshape(T, self.nkv, self.hd)
            o = np.empty_like(q)
            for hh in range(self.nh):
                s = q[:, hh] @ k[:, hh // g].T / np.sqrt(self.hd) + mask
                s = np.exp(s - s.max(-1, keepdims=True))
                o[:, hh] = (s / s.sum(-1, keepdims=True)) @ v[:, hh // g]
            x = x + o.reshape(T, self.d) @ w[p + "attn_output.weight"].T
            h = self.rms(x, w[p + "ffn_norm.weight"])
            a = h @ w[p + "ffn_gate.weight"].T
            x = x + (a / (1 + np.exp(-a)) * (h @ w[p + "ffn_up.weight"].T)) @ w[p + "ffn_down.weight"].T
        out = w.get("output.weight", w["token_embd.weight"])
        return self.rms(x, w["output_norm.weight"]) @ out.T


def main():
    model_path, out_path = sys.argv[1], sys.argv[2]
    r = GGUFReader(model_path)
    tok, net = Bpe(r), Llama(r)
    system = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
    chat = lambda u: f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{u}<|im_end|>\n<|im_start|>assistant\n"
    texts = [chat("What is the capital of France?"),
             "The GNU General Public License is a free, copyleft license for software and other kinds of works. "
             "In 1991 it had 2 versions;"]
    cases = []
    for text in texts:
        ids = tok.encode(text)
        seq, greedy = list(ids), []
        for step in range(8):
            lg = net.logits(seq)[-1]
            if step == 0:
                top = np.argsort(-lg)[:5]
                last_top5, last_vals = [int(i) for i in top], [float(lg[i]) for i in top]
            nxt = int(np.argmax(lg))
            greedy.append(nxt)
            seq.append(nxt)
        cases.append({"text": text, "prompt_ids": ids, "last_top5": last_top5, "last_top5_logits": last_vals,
                      "greedy": greedy, "greedy_text": "".join(tok.tokens[i] for i in greedy)})
        print(json.dumps(cases[-1])[:400], file=sys.stderr)
    with open(out_path, "w") as f:
        json.dump({"model": str(field(r, "general.name")), "generator": "examples/decoder/reference/numpy_reference.py",
                   "cases": cases}, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
