"""Embedded NTL demo: see ntl_demo.cli."""
