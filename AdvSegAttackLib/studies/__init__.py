"""What is done with case folders after an attack, without torch: blinded reader sessions (`session`, the
reader's side in `reader_session`, the statistics in `reader_stats`) and case bundles for others (`export`).
"""
