"""Share of images within +-20% of the true median diameter for size-estimate rules computed
from the cached passes of cache_passes.py. Usage: rules.py train val"""
import json, sys
from glob import glob
import numpy as np

SOL = 0.9


def single_median(p, sol=SOL):
    d, s = np.array(p["d"]), np.array(p["sol"])
    keep = s >= sol
    d = d[keep] if keep.sum() >= 5 else d
    return float(np.median(d)) if len(d) else None


def shipped(r, sol=SOL):
    f = r["first"]
    if len(f["d"]) >= 5:
        w = np.median(f["d"]) * f["scale"]
        if not 18 <= w <= 70 and len(r["32"]["d"]) >= 5:
            return single_median(r["32"], sol)
    return single_median(f, sol)


def always(D):
    def rule(r, sol=SOL):
        p = r.get(str(D))
        if p is None or len(p["d"]) < 5:
            return single_median(r["first"], sol)
        return single_median(p, sol)
    return rule


def by_style(fluo_rule, he_rule):
    return lambda r, sol=SOL: (fluo_rule if r["style"] == "fluo" else he_rule)(r, sol)


RULES = {"shipped": shipped, "always 32": always(32), "always 40": always(40),
         "always 48": always(48),
         "fluo 40, he shipped": by_style(always(40), shipped),
         "fluo 48, he shipped": by_style(always(48), shipped),
         "fluo 32, he shipped": by_style(always(32), shipped)}

def main():
    for split in sys.argv[1:]:
        R = sum((json.load(open(f)) for f in sorted(glob(f"runs/size-s11/passes_{split}_*.json"))), [])
        st = np.array([r["style"] for r in R])
        print(f"{split}: {len(R)} images ({(st == 'fluo').sum()} fluo, {(st == 'he').sum()} he)")
        for name, rule in RULES.items():
            for sol in (SOL,):
                ok = np.array([(e := rule(r, sol)) is not None and abs(e / r["true"] - 1) <= 0.2
                               for r in R])
                print(f"  {name:24s} {ok.mean():.3f} ({ok.sum()}/{len(ok)})  fluo {ok[st == 'fluo'].mean():.3f}"
                      f"  he {ok[st == 'he'].mean():.3f}")


def most_found(keys):
    def rule(r, sol=SOL):
        passes = [r[k] for k in keys if k in r and len(r[k]["d"]) >= 5] or [r["first"]]
        return single_median(max(passes, key=lambda p: len(p["d"])), sol)
    return rule


def most_single(keys):
    def rule(r, sol=SOL):
        passes = [r[k] for k in keys if k in r and len(r[k]["d"]) >= 5] or [r["first"]]
        return single_median(max(passes, key=lambda p: (np.array(p["sol"]) >= sol).sum()), sol)
    return rule


def geo_mean(keys):
    def rule(r, sol=SOL):
        m = [single_median(r[k], sol) for k in keys if k in r and len(r[k]["d"]) >= 5]
        return float(np.exp(np.mean(np.log(m)))) if m else single_median(r["first"], sol)
    return rule


def pooled(keys):
    def rule(r, sol=SOL):
        ps = [r[k] for k in keys if k in r and len(r[k]["d"]) >= 5] or [r["first"]]
        return single_median({"d": sum((p["d"] for p in ps), []),
                              "sol": sum((p["sol"] for p in ps), [])}, sol)
    return rule


EXTRA = {"most found of first/32/40/48": most_found(["first", "32", "40", "48"]),
         "most found of 32/40/48": most_found(["32", "40", "48"]),
         "most single of first/32/40/48": most_single(["first", "32", "40", "48"]),
         "geo mean of 32/40/48": geo_mean(["32", "40", "48"]),
         "geo mean of first/32/40": geo_mean(["first", "32", "40"]),
         "pooled 32/40/48": pooled(["32", "40", "48"]),
         "pooled first/32/40/48": pooled(["first", "32", "40", "48"])}
RULES.update(EXTRA)


if __name__ == "__main__":
    main()
