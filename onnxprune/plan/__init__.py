"""Planning: score channel units (data-free here, data criteria via calibrate/) and choose
what goes."""
