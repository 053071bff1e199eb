"""Training the VAR multi-scale VQVAE tokenizer (docs/tokenizer_training.md).

The network (`mvar_dist.vqvae.MultiScaleVQVAE`) is built frozen for its users; this sub-package
re-enables its gradients and adds what only training needs: the straight-through
residual quantiser with its codebook/commitment losses, codebook health (usage, perplexity,
dead-code re-initialisation), reconstruction / perceptual / adversarial losses, the image stream,
and the data-parallel trainer with step checkpoints and official-key export.
"""
from .config import TokTrainConfig, load_tok_config
from .quant import QuantOut, quantize_train

__all__ = ["TokTrainConfig", "load_tok_config", "QuantOut", "quantize_train"]
