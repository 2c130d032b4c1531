"""The model layer: calling language models (``gateway``, through litellm) and local ones from GGUF files (``local_model`` over ``local_engine``).

It imports nothing of the package but ``errors``: it knows no session, no store and no
notebook, only messages in and text out.
"""
