"""Leaf helpers of every layer: user errors (`errors`), atomic files and hashes (`fileio`), registry auto-import.
Imports nothing of mtkd."""
