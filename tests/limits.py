"""The one wall-clock limit of the suite (no imports: the car-install test's subprocess, without torch, uses it).

A safety net against a hung process or a wait that never ends, never a speed limit: a busy 2-core machine can
be 10x slower than an idle one, and no test may fail because of that. Every subprocess timeout and every
wait-until deadline in the tests is this long; they return as soon as the awaited thing happens, so a passing
test never waits for it.
"""

SAFETY_S = 1800
