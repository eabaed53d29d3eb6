"""driver.sim: the driving world, replay metrics and closed-loop evaluation."""
