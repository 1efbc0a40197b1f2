"""The parity harness: runs one config through both backends and compares them stage by stage."""
