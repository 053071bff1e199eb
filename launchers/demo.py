"""`make demo`: the main job on the embedded default dataset, stage by stage; prints where outputs are."""
from __future__ import annotations

import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def stage_dataset(cfg) -> Path:
    from mvar_dist.demo_data import write_dataset

    root = Path(cfg.data.image_root)
    out = write_dataset(root, images_per_class=20, size=cfg.tokenizer.resolution * 2, seed=cfg.seed)
    print(f"[demo] embedded dataset: 10 classes x 20 images -> {out}")
    return out


def main() -> int:
    from mvar_dist.config import load_config, save_config

    t0 = time.time()
    cfg = load_config("demo128", sys.argv[1:])
    save_config(cfg, cfg.out_dir)
    stage_dataset(cfg)
    print(f"[demo] resolved config: {Path(cfg.out_dir) / 'config.yaml'}")
    print(f"[demo] done in {time.time() - t0:.1f}s; outputs under {Path(cfg.out_dir).resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
