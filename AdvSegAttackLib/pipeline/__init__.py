"""One case end to end (`case`): load, attack, write on the source grid, score the written file, preview and
provenance; the steps `attack`, `demo`, dataset runs and `evaluate` share.
"""
