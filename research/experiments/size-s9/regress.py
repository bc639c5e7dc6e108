"""Learned correction of the preseg size estimate: ridge regression of log(true / preseg median)
on shape statistics of preseg's detections; fitted on train (5-fold CV), scored on val."""
import sys, glob, numpy as np
from skimage.measure import regionprops
sys.path.insert(0, ".")
from nucleaizer_backend.labels import equivalent_diameters

def features(lab):
    P = regionprops(lab)
    if len(P) < 5: return None
    eq = np.array([p.equivalent_diameter_area for p in P]); sol = np.array([p.solidity for p in P])
    mi = np.array([p.minor_axis_length for p in P]); ma = np.array([p.major_axis_length for p in P])
    med = np.median(eq)
    q = np.log(np.percentile(eq, [10, 25, 75, 90]) / med)
    return med, np.array([*q, np.mean(sol), np.mean(sol < 0.9), np.log(np.median(mi) / med),
                          np.log(np.median(ma / np.maximum(mi, 1))), np.log(len(P)), np.log(med),
                          np.log(lab.size)])

def load(split):
    X, y, meds, st = [], [], [], []
    for f in sorted(glob.glob(f"runs/size-s9/cache_{split}/*.npz")):
        z = np.load(f); r = features(z["pred"])
        td = np.median(equivalent_diameters(z["truth"]))
        if r is None: meds.append(np.nan); X.append(None)
        else: meds.append(r[0]); X.append(r[1])
        y.append(td); st.append(str(z["style"]))
    return X, np.array(y), np.array(meds), np.array(st)

def fit(X, t, lam):
    mu, sd = X.mean(0), X.std(0) + 1e-9
    Z = (X - mu) / sd
    A = np.c_[np.ones(len(Z)), Z]
    w = np.linalg.solve(A.T @ A + lam * np.diag([0] + [1] * Z.shape[1]), A.T @ t)
    return lambda Xn: np.c_[np.ones(len(Xn)), (Xn - mu) / sd] @ w

def hits(pred, true): return np.abs(pred / true - 1) <= 0.2

Xtr, ytr, mtr, str_ = load("train"); Xva, yva, mva, sva = load("val")
ok = np.array([x is not None for x in Xtr]); Xt = np.array([x for x in Xtr if x is not None])
t = np.log(ytr[ok] / mtr[ok])
rng = np.random.default_rng(0); fold = rng.integers(0, 5, len(t))
print(f"train: shipped median {np.mean(hits(mtr[ok], ytr[ok])):.3f} ({ok.sum()} images with >=5 nuclei)")
for lam in (1, 10, 30, 100, 300, 1000):
    cv = np.zeros(len(t))
    for k in range(5):
        g = fit(Xt[fold != k], t[fold != k], lam); cv[fold == k] = g(Xt[fold == k])
    g = fit(Xt, t, lam)
    okv = np.array([x is not None for x in Xva]); Xv = np.array([x for x in Xva if x is not None])
    pv = mva.copy(); pv[okv] = mva[okv] * np.exp(g(Xv))
    h = hits(pv, yva)
    print(f"lam {lam}: train CV {np.mean(hits(mtr[ok] * np.exp(cv), ytr[ok])):.3f}; val {h.mean():.3f} (fluo {h[sva=='fluo'].mean():.3f}, he {h[sva=='he'].mean():.3f})")
print(f"val shipped {np.mean(hits(mva, yva)):.3f}")
