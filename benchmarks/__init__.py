"""Timed comparisons; run with `wgfm bench [--quick] [--out DIR]`."""
