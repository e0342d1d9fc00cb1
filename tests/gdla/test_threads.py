"""The registry from several threads, each scenario in a fresh process (the race is only at the first load).

Before the fix, a registry marked itself loaded before it had loaded: a second thread's lookup
found nothing (``UnknownNameError: ... none registered``) every time.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

SCENARIOS = {
    # the first reproduction: a listing in a thread, a solve in the main thread
    "listing-thread-then-solve": """
        thread = threading.Thread(target=gdla.optimizers)
        thread.start()
        result = gdla.solve("inverse", max_steps=5, tol=0)
        thread.join()
        print(result.stop_reason, result.steps)
    """,
    # the second reproduction: two threads looking up names
    "two-threads-get-problem": """
        barrier, found = threading.Barrier(2), []

        def look_up(name):
            barrier.wait()
            found.append(gdla.get_problem(name).name)

        threads = [threading.Thread(target=look_up, args=(name,)) for name in ("inverse", "svd")]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        print(" ".join(sorted(found)))
    """,
    # eight threads released at once on a cold registry: lookups, listings and solves
    "eight-threads-race": """
        barrier = threading.Barrier(8)
        found, failures = [], []

        def work(index):
            barrier.wait()
            try:
                if index % 3 == 0:
                    found.append(gdla.get_problem("inverse").name)
                elif index % 3 == 1:
                    found.append(str("momentum" in gdla.optimizers()))
                else:
                    found.append(gdla.solve("inverse", optimizer="momentum", max_steps=3, tol=0).stop_reason)
            except Exception as exc:
                failures.append(f"{type(exc).__name__}: {exc}")

        threads = [threading.Thread(target=work, args=(index,)) for index in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        print(failures or sorted(found))
    """,
}

EXPECTED = {
    "listing-thread-then-solve": "max_steps 5",
    "two-threads-get-problem": "inverse svd",
    "eight-threads-race": str(sorted(["inverse"] * 3 + ["True"] * 3 + ["max_steps"] * 2)),
}


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_first_lookups_from_threads_in_a_fresh_process(scenario: str) -> None:
    source = "import threading\nimport warnings\nimport gdla\nwarnings.simplefilter('ignore')\n"
    source += textwrap.dedent(SCENARIOS[scenario])
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    env.pop("GDLA_STRICT_PLUGINS", None)
    done = subprocess.run(
        [sys.executable, "-c", source], capture_output=True, text=True, timeout=240, env=env, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == EXPECTED[scenario], done.stderr
