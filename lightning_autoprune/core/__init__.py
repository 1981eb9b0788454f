"""Pure-torch pruning mechanics: which tensors, masks, selection, calibration, FLOPs, snapshots, the engine.

Nothing in here imports Lightning, :mod:`lightning_autoprune.structured` or
:mod:`lightning_autoprune.scoring`: the engine is handed a selector and scores, and the callback wires it.
"""
