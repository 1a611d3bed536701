import sys, collections, random, re
from common import *
import cand_tasks as T
model, tok = load()
LOG = os.path.join(HERE, "probe3.log")
base = T.make_A(48, 7)
S1 = "You are a support assistant. Classify the sentiment of the customer's message. Reply with exactly one word: positive or negative."
variants = {
 "V6": lambda q: [{"role":"system","content":"You are a support assistant. Classify the customer's message as positive or negative. Reply with exactly one word, positive or negative, and nothing else."},{"role":"user","content":q}],
 "V7": lambda q: [{"role":"system","content":S1},{"role":"user","content":q+"\n\n(Reply: positive or negative)"}],
 "V8": lambda q: [{"role":"system","content":"Sentiment classifier. Output: positive or negative."},{"role":"user","content":q}],
 "V9": lambda q: [{"role":"system","content":S1},{"role":"user","content":f"Message: {q}\nSentiment:"}],
}
def first_label(o):
    m = re.search(r"positive|negative", o.lower()); return m.group(0) if m else None
for name, fn in variants.items():
    msgs = [fn(T.users(q["messages"])) for q in base]
    t=time.time()
    outs = generate(model, tok, msgs, bs=48)
    ok = [T.clean(o).lower()==q["reference"] for o,q in zip(outs,base)]
    lab = [first_label(o)==q["reference"] for o,q in zip(outs,base)]
    pos = [q["reference"]=="positive" for q in base]
    accp = sum(o for o,p in zip(ok,pos) if p)/max(1,sum(pos)); accn = sum(o for o,p in zip(ok,pos) if not p)/max(1,len(pos)-sum(pos))
    c = collections.Counter(T.clean(o).lower()[:20] for o in outs).most_common(5)
    log(f"{name}: acc {sum(ok)/len(ok):.3f} firstlabel-acc {sum(lab)/len(lab):.2f} pos {accp:.2f} neg {accn:.2f} ({time.time()-t:.0f}s) top={c}", LOG)
