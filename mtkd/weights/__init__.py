"""Checkpoints: load weights (`loading`), foreign key layouts (`formats`), the pretrained manifest, downloads.
Imports only the utils and transforms layers."""
