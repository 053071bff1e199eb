"""Tokenizer evaluation (issue 14 part 2): PSNR / SSIM / LPIPS / rFID / per-scale codebook usage on a
held-out image folder, as results rows keyed by checkpoint (`launchers/eval_tokenizer.py`)."""
