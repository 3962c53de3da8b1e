"""kill -9 at random moments: what the crash tests of a run share."""

import signal
import subprocess

import numpy as np


def kill_until_finished(
    command: list[str], *, attempts: int, window: tuple[float, float], seed: int = 0
) -> int:
    """Runs ``command`` again and again, each attempt killed (SIGKILL) at a random moment
    in ``window`` seconds after its first progress line (so start-up speed does not matter),
    until one finishes (exit 0), or a last attempt runs unkilled. Returns how many were
    killed."""
    rng, kills = np.random.default_rng(seed), 0
    for _ in range(attempts):
        process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
        )
        for line in process.stdout:
            if line.startswith("step "):
                break
        try:
            process.wait(timeout=rng.uniform(*window))
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGKILL)
            process.wait()
            kills += 1
            continue
        finally:
            process.stdout.close()
        assert process.returncode == 0
        return kills
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    return kills
