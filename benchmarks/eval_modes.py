"""How far the two Inception modes (adm, pytorch-fid) are apart, and how close adm is to the fixture's truth.

    python benchmarks/eval_modes.py                                   # the vendored cut (tests/fixtures)
    python benchmarks/eval_modes.py --fixture ../shared/fixtures/adm_protocol/adm_protocol_visible.npz

Runs the fixture's images through our net (random weights `random_state_dict(11)`, the fixture's) in both
modes and prints, per resolution, max |d| / max |ref| of pool / spatial / IS-logit features against the
fixture (TensorFlow-exact torch-fidelity features), and with 10 images at 256 px (the full fixture) FID, sFID
between its sets A = rows 0-4 and B = rows 5-9, and IS over every image, in each mode. Prints Markdown.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

FIXTURE = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "adm_protocol.npz"


def _rel(a, b) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--fixture", default=str(FIXTURE))
    a = p.parse_args(argv)
    from mvar_dist.eval.inception import IS_LOGITS, FIDInceptionV3, random_state_dict
    from mvar_dist.eval.metrics import frechet_distance, gaussian_stats, inception_score
    from mvar_dist.eval.reference import extract_features

    fx = dict(np.load(a.fixture))
    rows_256 = fx.get("images_256_rows", np.arange(len(fx["images_256"])))
    sd = random_state_dict(11)
    feats = {}
    print("| mode | res | pool | spatial | IS logits |\n|---|---|---|---|---|")
    for mode in ("adm", "pytorch-fid"):
        net = FIDInceptionV3(mode)
        net.load_checked(sd)
        for res in (64, 256, 512):
            imgs = fx[f"images_{res}"]
            sel = rows_256 if res == 256 else np.arange(len(imgs))
            f = feats[mode, res] = extract_features(net, [imgs])
            print(f"| {mode} | {res} | {_rel(f['pool'], fx[f'pool_{res}'][sel]):.2e} | "
                  f"{_rel(f['spatial'], fx[f'spatial_{res}'][sel]):.2e} | "
                  f"{_rel(f[IS_LOGITS[mode]], fx[f'logits_unbiased_{res}'][sel]):.2e} |")
    print("\n| mode | FID A-B | sFID A-B | IS (the images run, one split) |\n|---|---|---|---|")
    for mode in ("adm", "pytorch-fid"):
        is_all = inception_score(np.concatenate([feats[mode, r][IS_LOGITS[mode]] for r in (256, 64, 512)]))
        fid = sfid = "n/a (needs all 10 images at 256 px)"
        if len(rows_256) == 10:
            f = feats[mode, 256]
            fid = f"{frechet_distance(*gaussian_stats(f['pool'][:5]), *gaussian_stats(f['pool'][5:])):.6f}"
            sfid = f"{frechet_distance(*gaussian_stats(f['spatial'][:5]), *gaussian_stats(f['spatial'][5:])):.6f}"
        print(f"| {mode} | {fid} | {sfid} | {is_all:.6f} |")
    is_ref = f"{float(fx['isc_all']):.6f}" if len(rows_256) == 10 else "n/a (the fixture's is over all 16 images)"
    print(f"| fixture (torch-fidelity, TF-exact) | {float(fx['fid_ab']):.6f} | {float(fx['sfid_ab']):.6f} | "
          f"{is_ref} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
