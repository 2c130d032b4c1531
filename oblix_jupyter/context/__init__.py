"""The context selector: what to send the model each turn, as a pure function of its arguments.

It imports nothing of the package but ``errors``: no files, no threads, no clocks. The
embedder here computes vectors and stores none; the client decides when to run it.
"""
