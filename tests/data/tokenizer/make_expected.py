#!/usr/bin/env python3
"""Regenerates expected.json: the token ids Hugging Face gives for a varied corpus.

Reference tokenizers, all with the SmolLM2-135M-Instruct vocabulary and merges (from the GGUF file that
scripts/setup.sh installs):
  gguf          transformers' AutoTokenizer.from_pretrained(dir, gguf_file=...)
  smollm2       tokenizers, with *.template.json filled with the GGUF vocabulary and merges
  qwen2_style   (NFC + Qwen2 Split regex), llama3_style (Llama 3 Split regex, ignore_merges)
plus the SmolLM2 chat template rendered by apply_chat_template.

Needs: pip install "transformers<5" tokenizers gguf jinja2 (no torch: transformers 4 only asks for torch
when loading GGUF weights, so the check is bypassed for the tokenizer-only load below).
Usage: python3 make_expected.py [path/to/SmolLM2-135M-Instruct.Q4_1.gguf]
"""
import json
import os
import subprocess
import sys
import unicodedata

HERE = os.path.dirname(os.path.abspath(__file__))

CORPUS = [
    "",
    "Hello world",
    "Hello, world! How's it going? I'm fine; you'll see, we'd say they've DON'T 'S.",
    "  leading and trailing spaces   ",
    "a\n\n\nb\t\tc    d\r\n e",
    "\n",
    "   ",
    "\t \n \u00a0x",
    "1234567890 3.14159 1,000,000 -42 0x1F 2024-01-01 v1.2.3",
    "\u00b2\u00b3 \u00bd \u0663\u0664 \u2460 x\u00b2+y\u00b2",
    "Caf\u00e9 na\u00efve r\u00e9sum\u00e9 \u00fcber Stra\u00dfe",
    "e\u0301 A\u030a n\u0303 o\u0308 (combining marks that NFC composes)",
    "\u1100\u1161\u11a8 \u212b \u2126 \ufb01",
    "\U0001F44D\U0001F3FD \U0001F468\u200d\U0001F469\u200d\U0001F467\u200d\U0001F466 \U0001F1EB\U0001F1F7 \U0001F600\U0001F603!",
    "\u4f60\u597d\uff0c\u4e16\u754c\uff01\u4eca\u65e5\u306f\u826f\u3044\u5929\u6c17\u3067\u3059\u306d\u3002\uc548\ub155\ud558\uc138\uc694",
    "\u0645\u0631\u062d\u0628\u0627 \u0628\u0627\u0644\u0639\u0627\u0644\u0645 \u05e9\u05dc\u05d5\u05dd \u0928\u092e\u0938\u094d\u0924\u0947 \u0e2a\u0e27\u0e31\u0e2a\u0e14\u0e35",
    "\u041f\u0440\u0438\u0432\u0435\u0442 \u043c\u0438\u0440 \u0393\u03b5\u03b9\u03ac \u03c3\u03bf\u03c5",
    'def f(x):\n    return x**2  # square\n\nif __name__ == "__main__":\n\tprint(f(3))\n',
    "for (int i = 0; i < n; ++i) { a[i] += b[i]; }  // C++\n",
    '<div class="x">&amp;</div> {"key": [1, 2, null], "k2": true}',
    "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
    "<|endoftext|>",
    "x<|im_end|>y <|im_start|",
    "<filename>main.py<file_sep>code",
    "a\u0085b a\u200bb \u3000ideographic\u2028line\u2029para",
    "\x00\x01\x1f\x7f control",
    "                                                                 many spaces",
    "!!!???... --- ***  $$$ 100% @user #tag",
    "I'll've we're THEY'RE it's'",
    "The quick brown fox jumps over the lazy dog. " * 3,
    "tab\tseparated\tvalues\n1\t2\t3\n",
    "mixed\u00a0nbsp and\u2009thin\u2003em spaces",
]

CHAT = [
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! How can I help?"},
     {"role": "user", "content": "What is 2+2?"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Name a colour."},
     {"role": "assistant", "content": "Blue."}, {"role": "user", "content": "Another?"}],
]


def find_model():
    if len(sys.argv) > 1:
        return sys.argv[1]
    out = subprocess.run(["bash", os.path.join(HERE, "../../../scripts/model_path.sh")], capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(out.stderr.strip())
    return out.stdout.strip()


def gguf_vocab(path):
    import gguf
    r = gguf.GGUFReader(path)
    f = r.fields["tokenizer.ggml.tokens"]
    tokens = [bytes(f.parts[i]).decode("utf-8") for i in f.data]
    f = r.fields["tokenizer.ggml.merges"]
    merges = [bytes(f.parts[i]).decode("utf-8") for i in f.data]
    return tokens, merges


def main():
    model = find_model()
    import transformers.modeling_gguf_pytorch_utils as gu
    gu.is_torch_available = lambda: True  # the tokenizer needs no torch; only the weight loader would
    from transformers import AutoTokenizer
    from tokenizers import Tokenizer

    tok = AutoTokenizer.from_pretrained(os.path.dirname(model), gguf_file=os.path.basename(model))
    out = {"model": os.path.basename(model), "corpus": CORPUS,
           "nfc": [unicodedata.normalize("NFC", t) for t in CORPUS], "ids": {}}
    out["ids"]["gguf"] = [tok(t, add_special_tokens=False)["input_ids"] for t in CORPUS]

    tokens, merges = gguf_vocab(model)
    vocab = {t: i for i, t in enumerate(tokens)}
    for name in ["smollm2", "qwen2_style", "llama3_style"]:
        with open(os.path.join(HERE, f"{name}.template.json")) as f:
            j = json.load(f)
        j["model"]["vocab"] = vocab
        j["model"]["merges"] = merges
        t = Tokenizer.from_str(json.dumps(j))
        out["ids"][name] = [t.encode(x, add_special_tokens=False).ids for x in CORPUS]

    # A few dequantised values (gguf-py's reference dequantisation, f32) of tensors of each stored type.
    import gguf
    r = gguf.GGUFReader(model)
    out["dequant"] = {}
    for t in r.tensors:
        if t.name in ("token_embd.weight", "blk.0.attn_q.weight", "blk.0.attn_norm.weight", "blk.29.ffn_down.weight"):
            v = gguf.quants.dequantize(t.data, t.tensor_type).reshape(-1)
            out["dequant"][t.name] = {"type": t.tensor_type.name, "first": [float(x) for x in v[:64]],
                                      "last": [float(x) for x in v[-64:]], "numel": int(v.size)}

    out["chat"] = []
    for conv in CHAT:
        text = tok.apply_chat_template(conv, tokenize=False, add_generation_prompt=True)
        out["chat"].append({"messages": conv, "text": text,
                            "ids": tok(text, add_special_tokens=False)["input_ids"]})
    with open(os.path.join(HERE, "expected.json"), "w") as f:
        json.dump(out, f, ensure_ascii=True, indent=None, separators=(",", ":"))
        f.write("\n")
    print("wrote", os.path.join(HERE, "expected.json"))


if __name__ == "__main__":
    main()
