"""Models: label names (`labels`), model cards as data (`cards`, no torch), networks built and loaded from
them (`networks`), and sliding-window segmentation (`segment`).

Importing this package imports nothing heavy.
"""
