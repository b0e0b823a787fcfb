"""Scoring and showing a case: Dice, HD95 and perturbation numbers and the metrics.json schema (`metrics`),
SSIM (`ssim`), the preview PNG (`preview`), and the one reader of case folders (`casefolder`, no torch).
"""
