import os, time, sys
os.environ.setdefault("HF_HUB_OFFLINE", "1")
import torch
torch.set_num_threads(2)
from transformers import AutoModelForCausalLM, AutoTokenizer

MODEL = "/work/main/var/models/smollm2-135m-instruct"
HERE = os.path.dirname(os.path.abspath(__file__))

def log(msg, path=None):
    line = f"[{time.strftime('%H:%M:%S')}] {msg}"
    print(line, flush=True)
    if path:
        with open(path, "a") as f:
            f.write(line + "\n")

def load():
    tok = AutoTokenizer.from_pretrained(MODEL)
    model = AutoModelForCausalLM.from_pretrained(MODEL, dtype=torch.float32, attn_implementation="sdpa")
    model.eval()
    return model, tok

@torch.no_grad()
def generate(model, tok, prompts, do_sample=False, temperature=1.0, max_new_tokens=40, bs=32, seed=0, logpath=None):
    """prompts: list of message lists (system+user). Returns list of strings."""
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model.eval()
    outs = []
    g = torch.manual_seed(seed)
    for i in range(0, len(prompts), bs):
        chunk = prompts[i:i+bs]
        texts = [tok.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in chunk]
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        kw = dict(max_new_tokens=max_new_tokens, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
        if do_sample:
            kw.update(do_sample=True, temperature=temperature, top_p=1.0, top_k=0)
        else:
            kw.update(do_sample=False)
        out = model.generate(**enc, **kw)
        for row in out[:, enc["input_ids"].shape[1]:]:
            outs.append(tok.decode(row, skip_special_tokens=True).strip())
        if logpath:
            log(f"  gen {i+len(chunk)}/{len(prompts)}", logpath)
    return outs
