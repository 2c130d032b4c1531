"""The store layer: every byte oblix keeps, and the session files people move in and out.

It imports nothing of the package but ``errors`` (and ``render``, for files meant for
people): it knows no model, no selector and no notebook.
"""
