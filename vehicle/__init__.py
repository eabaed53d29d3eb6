"""driver.vehicle: the on-car runtime (camera, carlink, drive loop, safety checks)."""
