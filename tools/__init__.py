"""Generators of files derived from template.yaml (run by make targets; never imported by functions/)."""
