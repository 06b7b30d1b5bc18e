"""The NeMo recipe test (tests/nemo) run with .venv-nemo's python.

nemo-toolkit[llm] 2.7.3 needs numpy 1.x, so it cannot share the main venv; `make test` builds
.venv-nemo (`make setup-nemo`) before the suite, and this test runs tests/nemo in it.
"""

import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
NEMO_PYTHON = REPO / ".venv-nemo" / "bin" / "python"


@pytest.mark.slow
def test_nemo_recipe_builds_and_dry_runs_in_the_nemo_env():
    if not NEMO_PYTHON.exists():
        pytest.skip(f"{NEMO_PYTHON.parent.parent} is missing: `make setup-nemo` builds it (nemo-toolkit[llm]==2.7.3, "
                    "about 3 GB); `make test` does so first")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("VIRTUAL_ENV", None)
    out = subprocess.run(
        [str(NEMO_PYTHON), "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "ignore::DeprecationWarning",
         str(REPO / "tests" / "nemo")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=850,
    )
    assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-3000:]
    assert " passed" in out.stdout and "failed" not in out.stdout.splitlines()[-1]
