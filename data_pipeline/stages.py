"""The two Ray Data stages: read+decode+crop (stateless tasks) and encode (a stateful actor pool).

Rows flowing between them (numpy batches):
    image_id str, label int32, shard int32, pos int64 (index in the input order), variant int16,
    reason str ("" = valid), path str, pixels uint8 (R, R, 3)
A rejected image becomes ONE row with variant -1 and its reason; a valid one becomes K rows.
"""
from __future__ import annotations

import time
from typing import Dict, Optional

import numpy as np

from .augment import VariantSpec, decode_variants, to_model_input
from .sources import ImageRef, read_bytes

READ_ATTEMPTS = 3


def _read_with_retry(ref: ImageRef, fs_cache: dict, s3_endpoint: Optional[str]):
    """(bytes, "") or (None, reason). Missing/forbidden files are rejects; other errors (network) are
    retried, then raised: failing the job (it resumes) beats dropping a valid image."""
    for attempt in range(READ_ATTEMPTS):
        try:
            return read_bytes(ref, fs_cache, s3_endpoint), ""
        except FileNotFoundError:
            return None, "unreadable: file not found"
        except (PermissionError, IsADirectoryError) as e:
            return None, f"unreadable: {type(e).__name__}"
        except Exception:
            if attempt == READ_ATTEMPTS - 1:
                raise
            time.sleep(0.5 * 2 ** attempt)
    raise AssertionError("unreachable")


def decode_batch(batch: Dict[str, np.ndarray], spec: dict, s3_endpoint: Optional[str] = None) -> Dict[str, np.ndarray]:
    """Ray map_batches fn: a batch of image refs -> a batch of crop rows (K per image, 1 per reject)."""
    vs = VariantSpec(**spec)
    r = vs.resolution
    out = {k: [] for k in ("image_id", "label", "shard", "pos", "variant", "reason", "path")}
    pixels = []
    fs_cache: dict = {}
    for i in range(len(batch["image_id"])):
        ref = ImageRef(str(batch["image_id"][i]), int(batch["label"][i]), str(batch["uri"][i]),
                       int(batch["offset"][i]), int(batch["size"][i]))
        data, reason = _read_with_retry(ref, fs_cache, s3_endpoint)
        crops_KRR3, why = decode_variants(ref.image_id, data, vs) if data is not None else (None, reason)
        variants = range(vs.count) if crops_KRR3 is not None else [-1]
        for v in variants:
            out["image_id"].append(ref.image_id)
            out["label"].append(ref.label)
            out["shard"].append(int(batch["shard"][i]))
            out["pos"].append(int(batch["pos"][i]))
            out["variant"].append(v)
            out["reason"].append(why)
            out["path"].append(ref.uri if ref.size < 0 else f"{ref.uri}#{ref.image_id.split('/', 1)[1]}")
            pixels.append(crops_KRR3[v] if v >= 0 else np.zeros((r, r, 3), np.uint8))
    return {
        "image_id": np.asarray(out["image_id"], dtype=object),
        "label": np.asarray(out["label"], dtype=np.int32),
        "shard": np.asarray(out["shard"], dtype=np.int32),
        "pos": np.asarray(out["pos"], dtype=np.int64),
        "variant": np.asarray(out["variant"], dtype=np.int16),
        "reason": np.asarray(out["reason"], dtype=object),
        "path": np.asarray(out["path"], dtype=object),
        "pixels": np.stack(pixels) if pixels else np.zeros((0, r, r, 3), np.uint8),
    }


def build_tokenizer(tok_cfg: dict, state_dict=None):
    """The tokenizer from a TokenizerConfig dict; with `state_dict`, those (official-name) weights."""
    from mvar_dist.config.schema import TokenizerConfig
    from mvar_dist.vqvae import MultiScaleVQVAE

    cfg = TokenizerConfig(**{**tok_cfg, "ch_mult": tuple(tok_cfg["ch_mult"]), "patch_nums": tuple(tok_cfg["patch_nums"])})
    if state_dict is None:
        return MultiScaleVQVAE.from_config(cfg, seed=0)
    return MultiScaleVQVAE.from_official(state_dict, **cfg.hparams())


class EncodeActor:
    """Holds one tokenizer for its lifetime (loaded once per actor); encodes crop batches to token ids."""

    def __init__(self, tok_cfg: dict, expected_hash: str, state_ref=None, device: str = "auto",
                 tf32: bool = False, torch_threads: int = 0):
        import torch

        if torch_threads > 0:
            torch.set_num_threads(torch_threads)
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        # TF32 convs/matmuls move near-tie argmins: off by default so GPU ids equal the fp32 CPU ids.
        from mvar_dist.precision import set_tf32

        set_tf32(tf32)
        state = None
        if state_ref is not None:
            import ray

            state = ray.get(state_ref[0])
        vae = build_tokenizer(tok_cfg, state)
        got = vae.weights_hash()
        if got != expected_hash:
            raise RuntimeError(f"worker tokenizer hash {got[:12]} differs from the driver's {expected_hash[:12]}")
        self.vae = vae.to(device).eval()
        self.device = device

    def __call__(self, batch: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        import torch

        valid = batch["reason"] == ""
        seq_len = sum(p * p for p in self.vae.patch_nums)
        tokens_NL = np.zeros((len(valid), seq_len), dtype=np.uint16)
        if valid.any():
            x_B3HW = to_model_input(batch["pixels"][valid]).to(self.device)
            with torch.inference_mode():
                ids = self.vae.img_to_ids(x_B3HW)
            tokens_NL[valid] = torch.cat(ids, dim=1).cpu().numpy().astype(np.uint16)
        out = {k: v for k, v in batch.items() if k != "pixels"}
        out["tokens"] = tokens_NL
        return out
