"""The tokenizer results table: one CSV row per (checkpoint id, protocol hash), rewritten atomically.

The per-scale columns depend on the number of scales, so the table takes whatever columns its rows
bring, after the key and identity columns. Locking and the atomic rewrite are the generator table's
(`mvar_dist.eval.results.KeyedCsvTable`): a re-run for the same checkpoint and protocol replaces its row
and concurrent writers never lose one.
"""
from __future__ import annotations

from pathlib import Path

from mvar_dist.eval.results import KeyedCsvTable

RESULTS_NAME = "tokenizer_results.csv"
LEAD_COLUMNS = ["checkpoint_id", "protocol_hash", "step", "status", "note", "num_images", "rejected",
                "resolution", "psnr", "psnr_exact", "ssim", "lpips", "rfid", "usage_all"]


class TokenizerResultsTable(KeyedCsvTable):
    def __init__(self, path):
        path = Path(path)  # a folder (the table goes inside) or a .csv path
        super().__init__(path / RESULTS_NAME if path.is_dir() or not path.suffix else path, LEAD_COLUMNS,
                         open_columns=True, kind="tokenizer results")
