"""asv (airspeed velocity) benchmarks for ferroq: see ../asv.conf.json and benchmarks.py."""
