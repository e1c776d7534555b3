import gc
import sys

from .cli import main

# The guard matters: vLLM's engine starts worker processes that re-import the main module.
if __name__ == "__main__":
    code = main()
    if code == 130:
        # Interrupted: stop promptly. The interpreter's last garbage collection over
        # torch's and transformers' objects takes seconds and frees nothing needed.
        gc.freeze()
    sys.exit(code)
