"""Evaluation: class-balanced sampling, FID-InceptionV3, FID/IS/precision/recall/sFID, results table, watch service."""
