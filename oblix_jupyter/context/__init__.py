"""The context selector: what to send the model each turn, as a pure function of its arguments.

The selector (``selector``, ``relevance``) imports nothing of the package but ``errors``:
no files, no threads, no clocks. What it reads besides the conversation is made beside
it: the embedder computes vectors and stores none; ``vector_cache`` keeps them between
turns and computes what is missing on threads of its own, keeping their bytes in
whatever the caller hands it (the session store); the client decides when each runs.
"""
