import sys, collections, random
from common import *
import cand_tasks as T
model, tok = load()
LOG = os.path.join(HERE, "probe2.log")
base = T.make_A(64, 123)
variants = {
 "V2": lambda q: [{"role":"system","content":"You are a helpful assistant."},{"role":"user","content":f'Customer message: "{q}"\nIs this message positive or negative? Reply with one word.'}],
 "V3": lambda q: [{"role":"system","content":"You are a support assistant. Reply with one word: positive or negative."},{"role":"user","content":f'{q}\n\nWas that positive or negative?'}],
 "V4": lambda q: [{"role":"system","content":"You label customer reviews as positive or negative. Reply with the label only."},{"role":"user","content":f'Review: {q}\nLabel:'}],
 "V5": lambda q: [{"role":"user","content":f'Is the sentiment of this review positive or negative? Answer with one word.\n\n{q}'}],
}
for name, fn in variants.items():
    msgs = [fn(T.users(q["messages"])) for q in base]
    t=time.time()
    outs = generate(model, tok, msgs)
    ok = [T.clean(o).lower()==q["reference"] for o,q in zip(outs,base)]
    pos = [q["reference"]=="positive" for q in base]
    accp = sum(o for o,p in zip(ok,pos) if p)/max(1,sum(pos)); accn = sum(o for o,p in zip(ok,pos) if not p)/max(1,len(pos)-sum(pos))
    c = collections.Counter(T.clean(o).lower()[:20] for o in outs).most_common(5)
    log(f"{name}: acc {sum(ok)/len(ok):.3f} pos {accp:.2f} neg {accn:.2f} ({time.time()-t:.0f}s) top={c}", LOG)
    for o,q in list(zip(outs,base))[:6]:
        log(f"   ref={q['reference']!r} out={o!r}", LOG)
