"""Many cases: datalists and dataset folders (`datalist`, no torch), dataset runs of attack and evaluate with
their manifest and aggregate (`runs`), and the ranks of a `torchrun` job (`distributed`).
"""
