"""The external-simulator benchmark of issue 18 on highway-env's racetrack (bench-only; see
docs/benchmarks.md, "External simulator"). Modules: ``env`` (the simulator and its camera), ``geometry``
(pure maths), ``expert`` (the scripted driver), ``record`` (lab-format runs), ``closed_loop`` (a Policy
drives), ``scores`` (R²), ``run_benchmark`` (everything, one table)."""
