"""Operator commands that run beside the daemon or instead of it: monitor, bench, classify and collect,
inspect."""
