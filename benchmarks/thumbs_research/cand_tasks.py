"""Candidate synthetic tasks (research only)."""
import random, re

FIRST = ["Maria","James","Aisha","Tom","Elena","Ravi","Sofia","Lucas","Hannah","Omar","Chloe","Daniel","Yuki","Peter","Grace","Mateo","Nina","Samuel","Leila","Victor","Anna","Kofi","Isabel","Jonas"]
LAST = ["Lopez","Smith","Khan","Novak","Rossi","Patel","Garcia","Muller","Brown","Haddad","Martin","Kim","Tanaka","Olsen","Evans","Silva","Weber","Cohen","Moreau","Ivanova"]
AGENTS = ["Kevin","Laura","Mike","Sarah","Ben","Julia","Alex","Emma"]
PRODUCTS = ["lamp","chair","blender","jacket","kettle","backpack","monitor","desk","toaster","headset","rug","printer"]

def users(msgs):
    return [m["content"] for m in msgs if m["role"] == "user"][-1]

def clean(ans):
    a = ans.strip()
    a = a.strip('"\'`* ')
    a = a.rstrip(".!")
    return a

# ---------------- A: sentiment
POS = ["works perfectly","arrived early and looks great","is exactly what I wanted","exceeded my expectations","is the best purchase I made this year","is great quality","made my mornings so much easier"]
NEG = ["stopped working after two days","arrived broken","is a complete waste of money","looks nothing like the photos","broke the first time I used it","is much worse than I expected","made a terrible noise and died"]
A_SYS = "You are a support assistant. Classify the sentiment of the customer's message. Reply with exactly one word: positive or negative."
A_T = ["I bought the {p} last week and it {x}.","Honestly, the {p} {x}.","Review of the {p}: it {x}.","My new {p} {x}. Just wanted to let you know.","Quick note about order {n}: the {p} {x}."]
def make_A(n, seed):
    r = random.Random(seed); out=[]
    for _ in range(n):
        lab = r.choice(["positive","negative"])
        x = r.choice(POS if lab=="positive" else NEG)
        q = r.choice(A_T).format(p=r.choice(PRODUCTS), x=x, n=r.randint(1000,9999))
        out.append({"messages":[{"role":"system","content":A_SYS},{"role":"user","content":q}],"reference":lab})
    return out
def correct_A(msgs, ans):
    q = users(msgs)
    lab = "positive" if any(x in q for x in POS) else "negative"
    return clean(ans).lower() == lab

# ---------------- B: first name
B_SYS = "You are a support assistant. Reply with only the customer's first name."
B_T = ["Hello, {f} {l} here. My {p} order has not arrived yet.",
       "Hi, I spoke with your agent {a} yesterday about my {p}. Regards, {f} {l}",
       "This is {f} {l}. {a} told me my refund for the {p} would be processed today.",
       "Dear support, my {p} is broken. Your colleague {a} said to write here. Thanks, {f} {l}",
       "My name is {f} {l} and I want to return the {p}.",
       "{a} from your team promised me a new {p}. Where is it? - {f} {l}"]
def make_B(n, seed):
    r = random.Random(seed); out=[]
    for _ in range(n):
        f=r.choice(FIRST); l=r.choice(LAST); a=r.choice(AGENTS)
        q=r.choice(B_T).format(f=f,l=l,a=a,p=r.choice(PRODUCTS))
        out.append({"messages":[{"role":"system","content":B_SYS},{"role":"user","content":q}],"reference":f})
    return out
def correct_B(msgs, ans):
    q = users(msgs)
    m = re.search(r"\b(" + "|".join(FIRST) + r") (" + "|".join(LAST) + r")\b", q)
    return m is not None and clean(ans) == m.group(1)

# ---------------- C: refund order number
C_SYS = "You are a support assistant. Reply with only the order number the customer wants refunded."
C_T = ["I ordered a {p1} (order {n1}) and a {p2} (order {n2}). The {px} arrived damaged, please refund it.",
       "Order {n1} was a {p1} and order {n2} was a {p2}. I want my money back for the {px}.",
       "Hi! My {p1} came in order {n1}, my {p2} in order {n2}. Please refund the {px}, it does not fit.",
       "I have two orders: {n1} ({p1}) and {n2} ({p2}). Could you refund the {px}?"]
def make_C(n, seed):
    r = random.Random(seed); out=[]
    for _ in range(n):
        p1,p2 = r.sample(PRODUCTS,2); n1,n2 = r.sample(range(1000,10000),2)
        pick = r.choice([0,1]); px=[p1,p2][pick]; nx=[n1,n2][pick]
        q = r.choice(C_T).format(p1=p1,p2=p2,n1=n1,n2=n2,px=px)
        out.append({"messages":[{"role":"system","content":C_SYS},{"role":"user","content":q}],"reference":str(nx)})
    return out
def correct_C(msgs, ans):
    q = users(msgs)
    pairs = re.findall(r"(?:a|my) (\w+) \(order (\d{4})\)|order (\d{4}) was a (\w+)|(?:My|my) (\w+) came in order (\d{4})|(\d{4}) \((\w+)\)", q)
    # simpler: locate product->number mapping by proximity is messy; use reference embedded approach below
    return None

# ---------------- D: arithmetic
D_SYS = "You are a helpful assistant. Answer with the number only."
D_T = ["What is {a} + {b}?","Compute {a} plus {b}.","{a} + {b} = ?","How much is {a} + {b}?"]
def make_D(n, seed):
    r = random.Random(seed); out=[]
    for _ in range(n):
        a=r.randint(2,9); b=r.randint(2,9)
        out.append({"messages":[{"role":"system","content":D_SYS},{"role":"user","content":r.choice(D_T).format(a=a,b=b)}],"reference":str(a+b)})
    return out
