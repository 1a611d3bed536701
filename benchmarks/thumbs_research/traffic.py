import json, sys, collections
from common import *
import sentiment_task as S
LOG = os.path.join(HERE, "traffic.log")
N_TRAIN, N_EVAL, TEMP = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
train = S.make_questions(N_TRAIN, seed=1)
heldout = S.make_questions(N_EVAL, seed=999, exclude={q["messages"][1]["content"] for q in train})
json.dump(heldout, open(os.path.join(HERE, "heldout.json"), "w"))
model, tok = load()
t = time.time()
g = generate(model, tok, [q["messages"] for q in heldout], logpath=LOG)
ok = [S.is_correct(q["messages"], a) for q, a in zip(heldout, g)]
log(f"BASE greedy held-out: {sum(ok)}/{len(ok)} = {sum(ok)/len(ok):.3f} ({time.time()-t:.0f}s) top={collections.Counter(g).most_common(6)}", LOG)
json.dump({"outs": g, "ok": ok}, open(os.path.join(HERE, "base_eval.json"), "w"))
rows = []
for rep in range(2):
    t = time.time()
    ans = generate(model, tok, [q["messages"] for q in train], do_sample=True, temperature=TEMP, seed=100 + rep, logpath=LOG)
    ok = [S.is_correct(q["messages"], a) for q, a in zip(train, ans)]
    log(f"sample pass {rep} T={TEMP}: acc {sum(ok)}/{len(ok)} = {sum(ok)/len(ok):.3f} ({time.time()-t:.0f}s) top={collections.Counter(ans).most_common(8)}", LOG)
    for i, (q, a, o) in enumerate(zip(train, ans, ok)):
        rows.append({"qid": i, "rep": rep, "prompt": q["messages"], "reference": q["reference"], "answer": a, "up": o})
with open(os.path.join(HERE, f"traffic_T{TEMP}.jsonl"), "w") as f:
    for r in rows: f.write(json.dumps(r) + "\n")
