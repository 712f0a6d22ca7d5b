"""tradetrace.sweep: parameter grids run as many traced runs (`tradetrace optimize grid.yaml`).

`grid.py` expands and validates a grid; `runner.py` skips finished combinations (run hash), runs the
rest on an executor and records every run; `executors.py` holds the local process pool (fork, market
data inherited) and Ray (`ray.put` once). DuckDB is written by the coordinator only, from a thread
while runs go on (`rowwriter.py`); PostgreSQL by the workers themselves (see runner.py).
"""
