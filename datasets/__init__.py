"""Turning files, generators or a package's bundled data into tensors."""
