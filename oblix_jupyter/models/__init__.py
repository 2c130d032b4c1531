"""The model layer: calling language models (``gateway``, through litellm) and the offline one (``local_model``).

It imports nothing of the package but ``errors``: it knows no session, no store and no
notebook, only messages in and text out.
"""
