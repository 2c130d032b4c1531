"""The front ends: the magics, the chat panel, the command line and the terminal chat, and how they display.

They parse what a person typed and show what came back; everything else is a call on
``OblixClient``. They import only ``client``, ``errors``, ``render``, ``kernel/`` and
each other.
"""
