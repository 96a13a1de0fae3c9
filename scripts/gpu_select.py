"""Checks the GPU test stage's selection without a GPU: `pytest tests/ -m gpu -k "not native"
--collect-only` (with the stage's own plugin, -p gpu_tf32_off) must select tests, and none of them a
CPU instance (a `cpu` parameter id), which on a CUDA machine would run outside the interpreter and
error. Prints the count; exit 1 on a CPU instance."""

import os
import re
import subprocess
import sys

CPU_ID = re.compile(r"[\[-]cpu[\]-]")


def main() -> int:
    here = os.path.dirname(os.path.abspath(__file__))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.path.dirname(here), here, os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-m", "pytest", "tests/", "-m", "gpu", "-k", "not native", "--collect-only",
                          "-q", "-p", "no:cacheprovider", "-p", "gpu_tf32_off"], capture_output=True, text=True,
                         env=env).stdout
    ids = [line for line in out.splitlines() if "::" in line]
    cpu = [i for i in ids if CPU_ID.search(i)]
    print(f"-m gpu selects {len(ids)} tests; CPU instances among them: {len(cpu)}")
    for i in cpu:
        print(f"  CPU instance selected: {i}")
    return 1 if cpu or not ids else 0


if __name__ == "__main__":
    sys.exit(main())
