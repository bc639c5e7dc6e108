"""Size statistics of the shipped preseg's detections (cached by cache_preseg.py): median
over objects with solidity >= s, inscribed-circle and minor-axis diameters, KDE mode,
median after dropping objects over f x the median area. Usage: variants.py val train"""
import sys, glob, numpy as np
from scipy import ndimage
from skimage.measure import regionprops
sys.path.insert(0, ".")
from nucleaizer_backend.labels import equivalent_diameters

def feats(lab):
    out = []
    for p in regionprops(lab):
        dt = ndimage.distance_transform_edt(np.pad(p.image, 1)).max()
        out.append((p.equivalent_diameter_area, p.solidity, p.minor_axis_length, p.major_axis_length, 2 * dt, p.area))
    return np.array(out).reshape(-1, 6)

def variants(F):
    eq, sol, mi, ma, ins, area = F.T
    v = {}
    v["median eq"] = np.median(eq)
    for s in (0.85, 0.88, 0.9, 0.92):
        sel = sol >= s
        v[f"median eq, solidity>={s}"] = np.median(eq[sel]) if sel.sum() >= 5 else np.median(eq)
    v["median inscribed"] = np.median(ins)
    v["median minor"] = np.median(mi)
    v["median sqrt(minor*min(major,1.5minor))"] = np.median(np.sqrt(mi * np.minimum(ma, 1.5 * mi)))
    v["median sqrt(minor*min(major,2minor))"] = np.median(np.sqrt(mi * np.minimum(ma, 2 * mi)))
    from scipy.stats import gaussian_kde
    if len(eq) >= 5 and np.ptp(eq) > 0:
        for bw in (0.15, 0.25, 0.4):
            k = gaussian_kde(np.log(eq), bw_method=bw)
            g = np.linspace(np.log(eq).min(), np.log(eq).max(), 400)
            v[f"kde mode bw {bw}"] = float(np.exp(g[np.argmax(k(g))]))
    else:
        for bw in (0.15, 0.25, 0.4): v[f"kde mode bw {bw}"] = np.median(eq)
    for f in (1.6, 2.0, 2.5):
        a = area.copy()
        for _ in range(3):
            m = np.median(a); keep = a <= f * m
            if keep.sum() < 5: break
            a = a[keep]
        v[f"median eq, area<= {f} x median (iter)"] = np.sqrt(4 * np.median(a) / np.pi)
    return v

for split in sys.argv[1:]:
    rows = []
    for f in sorted(glob.glob(f"runs/size-s9/cache_{split}/*.npz")):
        z = np.load(f)
        td = np.median(equivalent_diameters(z["truth"]))
        F = feats(z["pred"]); Ft = feats(z["truth"])
        rows.append((str(z["style"]), td, variants(F) if len(F) else None, variants(Ft)))
    # calibration factors from the truth labels' own measures on this split (ratio true eq / measure)
    names = list(rows[0][3])
    print(split, len(rows))
    for n in names:
        cal = np.median([td / vt[n] for _, td, v, vt in rows])
        for c, tag in ((1.0, "raw"), (cal, f"cal {cal:.3f}")):
            hit = np.array([v is not None and abs(c * v[n] / td - 1) <= 0.2 for _, td, v, vt in rows])
            st = np.array([s for s, *_ in rows])
            print(f"  {n:45s} {tag:10s} all {hit.mean():.3f} fluo {hit[st=='fluo'].mean():.3f} he {hit[st=='he'].mean():.3f}")
