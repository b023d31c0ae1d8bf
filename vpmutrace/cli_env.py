"""Process settings of the ``vpmutrace`` command, made before numpy is imported (imported first by cli.py).

numpy's OpenBLAS starts a worker thread per core when numpy is imported, and the workers spin
waiting for work: on this 2-core host ``import numpy`` took 116 ms of CPU with them and 96 ms
with one (``perf stat -r 8``), 0.35 s and 0.24 s of wall time under load. The command does no
linear algebra large enough to use them. Set only when the user has not chosen a number.
"""

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
