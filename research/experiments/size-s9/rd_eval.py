"""Share of images within +-20% for the refine_d.py variants. Usage: rd_eval.py train val"""
import json, sys, numpy as np
for split in sys.argv[1:]:
    R = json.load(open(f"runs/size-s9/refine_d_{split}.json"))
    st = np.array([r["style"] for r in R])
    def score(fn, name):
        h = []
        for r in R:
            e = fn(r)
            h.append(e is not None and abs(e / r["true"] - 1) <= 0.2)
        h = np.array(h)
        print(f"{split:5s} {name:40s} {h.mean():.3f} fluo {h[st=='fluo'].mean():.3f} he {h[st=='he'].mean():.3f}")
    score(lambda r: r["shipped"][0], "shipped")
    for D in ("40", "48", "56", "64"):
        score(lambda r, D=D: (r.get(D) or r["shipped"])[0] if (r.get(D) and r[D][1] >= 5) else r["shipped"][0], f"refine at {D}")
    for D in ("40", "48", "56", "64"):
        def most(r, D=D):
            if r.get(D) and r[D][1] > r["shipped"][1]: return r[D][0]
            return r["shipped"][0]
        score(most, f"more nuclei of shipped/{D}")
