"""tests/nemo run in .venv-nemo (nemo-toolkit[llm] 2.7.3, numpy 1.x), not in the main venv.

`make test` builds .venv-nemo and tests/integration/test_nemo_env.py runs this folder with its
python; in an environment without NeMo the folder is left out of collection.
"""

import importlib.util

if importlib.util.find_spec("nemo") is None or importlib.util.find_spec("nemo_run") is None:
    collect_ignore_glob = ["test_*.py"]
