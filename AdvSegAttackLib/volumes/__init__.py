"""Volumes on disk and in model space: reading and writing images and label maps (`io`), staged and atomic
writes (`staging`), no link followed inside case and session folders (`nofollow`), claimed and locked output
folders (`outputs`), the synthetic CT phantom (`phantom`), and the model-space grid and its way back to the
source grid (`preprocess`, the only one that needs torch).
"""
