"""Regenerate sample/trace.csv: 2 s of one extracellular channel sampled at 10 kHz.

Three units with different spike amplitudes and rates fire as Poisson processes (with a 2 ms
refractory period) on top of Gaussian noise and a slow 8 Hz oscillation. The spike times are
written to sample/ground_truth.csv so the analysis' output can be checked against them.
Deterministic: the same seed gives the same files.
"""
import math
import random

RATE_HZ = 10_000
SECONDS = 2.0
random.seed(7)
n = int(RATE_HZ * SECONDS)
trace = [random.gauss(0.0, 12.0) + 15.0 * math.sin(2 * math.pi * 8 * i / RATE_HZ) for i in range(n)]
units = [(-180.0, 9.0), (-120.0, 14.0), (-90.0, 6.0)]  # (peak uV, rate Hz)
shape = [0.15, 0.45, 1.0, 0.7, 0.2, -0.15, -0.3, -0.25, -0.15, -0.05]  # 1 ms waveform
truth = []
for unit, (amp, rate) in enumerate(units):
    t = 0.0
    while True:
        t += 0.002 + random.expovariate(rate)
        i = int(t * RATE_HZ)
        if i + len(shape) >= n:
            break
        for k, s in enumerate(shape):
            trace[i + k] += amp * s
        truth.append((round((i + 2) * 1000 / RATE_HZ, 1), unit))
with open("trace.csv", "w") as f:
    f.write("time_ms,voltage_uv\n")
    for i, v in enumerate(trace):
        f.write(f"{i * 1000 / RATE_HZ:.1f},{v:.2f}\n")
with open("ground_truth.csv", "w") as f:
    f.write("time_ms,unit\n")
    for t, u in sorted(truth):
        f.write(f"{t},{u}\n")
