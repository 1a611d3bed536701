import sys, collections
from common import *
import cand_tasks as T
model, tok = load()
LOG = os.path.join(HERE, "probe.log")
for name in sys.argv[1:]:
    qs = getattr(T, "make_"+name)(64, 123)
    t=time.time()
    outs = generate(model, tok, [q["messages"] for q in qs])
    acc = sum(T.clean(o).lower()==q["reference"].lower() for o,q in zip(outs,qs))/len(qs)
    log(f"task {name}: greedy ref-match acc {acc:.3f} ({time.time()-t:.0f}s)", LOG)
    for o,q in list(zip(outs,qs))[:14]:
        log(f"   ref={q['reference']!r} out={o!r}", LOG)
