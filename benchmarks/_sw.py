import os, sys, time, tempfile, resource
from pathlib import Path
sys.argv = [sys.argv[0]]
import analytics as A
with tempfile.TemporaryDirectory() as d:
    A.bench_sweep(2, 8, 40_000, Path(d))
print("PID", os.getpid(), flush=True)
for _ in range(2):
  with tempfile.TemporaryDirectory() as d:
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    A.bench_sweep(2, 48, 40_000, Path(d))
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    print("coord cpu", r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime)
