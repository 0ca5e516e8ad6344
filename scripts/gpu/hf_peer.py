"""HF transformers on the same checkpoint: the GPU benchmark's peer.

Eager attention, fp16, batch 1, greedy, the token read back to the host every step (as
agentrt's benchmark does). Usage: hf_peer.py CHECKPOINT_DIR PROMPT_TOKENS DECODE_TOKENS
Prints one JSON line.
"""

import json
import sys
import time

import torch
import transformers
from transformers import AutoModelForCausalLM


def load(path):
    kwargs = {"attn_implementation": "eager"}
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float16, **kwargs)
    except TypeError:
        model = AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.float16, **kwargs)
    return model.cuda().eval()


def decode_rate(model, ids, decode):
    with torch.no_grad():
        out = model(ids, use_cache=True)
        past = out.past_key_values
        nxt = out.logits[:, -1].argmax(-1, keepdim=True)
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(decode):
            out = model(nxt, past_key_values=past, use_cache=True)
            past = out.past_key_values
            nxt = out.logits[:, -1].argmax(-1, keepdim=True)
            nxt.item()
        torch.cuda.synchronize()
        return decode / (time.perf_counter() - start)


def main():
    path, prompt_len, decode = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    model = load(path)
    vocab = model.config.vocab_size
    ids = torch.tensor([[(i * 7919 + 13) % vocab for i in range(prompt_len)]], device="cuda")
    decode_rate(model, ids, 16)  # warm-up
    rates = [decode_rate(model, ids, decode) for _ in range(2)]
    print(json.dumps({
        "peer": "HF transformers, eager attention, fp16",
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(0),
        "prompt": prompt_len,
        "decode": decode,
        "decode_tok_s": max(rates),
    }))


if __name__ == "__main__":
    main()
