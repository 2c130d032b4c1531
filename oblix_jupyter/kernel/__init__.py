"""What the kernel knows: which notebook it runs, its variables, its last error and cells, and the ``.env`` beside it.

It builds the selector's inputs (``context.inputs``) and knows no store or model.
"""
