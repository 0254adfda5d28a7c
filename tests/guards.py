"""How long a test waits before it calls something hung.

These are hang guards, never performance limits: a slow or busy machine must not trip them. Each
is a generous allowance for the step on an idle machine, stretched by how busy the machine is
when the wait starts (the 1-minute load average per core, at least 1). On the shared 2-core
machine with several test runs at once a load of 10 gives five times the allowance, so a step
that takes three times as long as usual still passes, while a real hang still ends the test.
"""

import os

# Allowances, several times what each step took on the shared 2-core machine at a load of 7
# (server start-up to ready 9-14 s, ptserve info 4 s, the image-classifier example 29 s); the
# fastai vision example took 181 s on a busy machine (issue #13), hence the examples' 600 s.
SERVER_START_S = 90.0
COMMAND_S = 90.0
EXAMPLE_S = 600.0
REQUEST_S = 60.0
UI_STEP_S = 60.0


def busy_factor() -> float:
    """How many runnable processes share each core right now (at least 1)."""
    return max(1.0, os.getloadavg()[0] / (os.cpu_count() or 1))


def hang_guard(allowance_s: float) -> float:
    """The wait limit, in seconds, for a step allowed ``allowance_s`` on an idle machine."""
    return allowance_s * busy_factor()
